"""Print a few enriched rows and the answer counts of an output Parquet file.

Usage: python examples/show_output.py out/reviews.parquet
"""

from __future__ import annotations

import json
import sys

import pyarrow.parquet as pq


def main(path: str) -> None:
    """Show what the demo wrote."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"prefect_llm_batch", b"{}"))
    frame = table.to_pandas()
    print(f"\n{path}: {table.num_rows} rows, columns: {', '.join(table.column_names)}")
    print(f"provider={meta.get('provider')} model={meta.get('model')} job={meta.get('job_id')}\n")
    shown = frame[["review_id", "review", "response", "response_error_kind"]].head(8).copy()
    shown["review"] = shown["review"].str.replace("\n", " ").str.slice(0, 60)
    shown["response_error_kind"] = shown["response_error_kind"].fillna("-")
    print(shown.to_string(index=False))
    print("\nanswers:", frame["response"].value_counts(dropna=False).to_dict())
    print(f"answered from the response cache: {int(frame['response_cached'].sum())} of {len(frame)} rows")
    if meta.get("provider") == "simulator":
        print(
            "\nNote: these answers come from the bundled simulator, not from a model. "
            "Run `make demo LIVE=1` (with OPENAI_API_KEY set) to ask the real OpenAI Batch API."
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/reviews.parquet")
