"""Write examples/reviews-dataset: the example reviews as a hive-partitioned Parquet dataset.

One folder per month of ``review_date`` (``month=2025-01`` ...), one part each, row groups of 20
rows, so a sharded job has a few shards to spread (``rows_per_shard=40``). Run it again after changing
``reviews.csv``::

    python examples/make_reviews_dataset.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

HERE = Path(__file__).parent


def main() -> None:
    table = pa_csv.read_csv(HERE / "reviews.csv")
    target = HERE / "reviews-dataset"
    shutil.rmtree(target, ignore_errors=True)
    months = pc.strftime(table.column("review_date"), format="%Y-%m")
    for month in sorted(set(months.to_pylist())):
        part = table.filter(pc.equal(months, month))
        folder = target / f"month={month}"
        folder.mkdir(parents=True)
        pq.write_table(part, folder / "part-0.parquet", row_group_size=20)
        print(f"{folder}: {part.num_rows} rows")


if __name__ == "__main__":
    main()
