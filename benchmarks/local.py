"""The ``local`` provider on this machine: rows per second and CPU per row by realtime concurrency,
and the bundled model's accuracy on ``examples/sentiment.csv`` (reported, not asserted).

Usage (after ``make install-local``)::

    python benchmarks/local.py                        # concurrency 1, 2, 4; 50 rows each; + the CLI
    python benchmarks/local.py --concurrency 1,2 --repeat 2
    python benchmarks/local.py --model path/to/other.gguf

One llama.cpp server (:class:`prefect_llm_batch.local_model.LocalModelServer`, the bundled
SmolLM2-135M-Instruct unless ``--model``) serves every case; a 5-row warm-up goes first. Each case
sends the 50 reviews through :class:`~prefect_llm_batch.providers.realtime.RealtimeClient` with the
local provider's request bodies (``max_tokens`` 16, temperature 0; an answer cut at ``max_tokens``
keeps its text and counts as answered) and measures the wall time and the
CPU seconds (user + system) of the server process (from ``/proc``) and of this process. Then:

* accuracy of the plain answers (the first word, lower-cased, against the label), and of a schema
  job (``{"label": "positive" | "negative"}``, sent as llama.cpp's ``json_object`` + ``schema``);
* ``prefect-llm-batch run --provider local`` on the same 50 rows, end to end (server start and model
  load included), with a fresh state directory: wall time and CPU of its process tree.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefect_llm_batch.local_model import LocalModelServer, check_gguf  # noqa: E402
from prefect_llm_batch.providers.openai import OpenAIBatchProvider  # noqa: E402
from prefect_llm_batch.providers.realtime import RealtimeClient  # noqa: E402
from prefect_llm_batch.schemas import ResponseSchema  # noqa: E402
from prefect_llm_batch.spec import ErrorKind  # noqa: E402

SENTIMENT = ROOT / "examples" / "sentiment.csv"
PROMPT = "Is this review positive or negative? Answer with one word. Review: {review}"
SCHEMA = ResponseSchema(
    {"type": "object", "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}}},
    name="sentiment",
)
PARAMS = {"max_tokens": 16, "temperature": 0}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reviews() -> list[dict[str, str]]:
    with SENTIMENT.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def lines(
    provider: OpenAIBatchProvider, rows: list[dict[str, str]], schema: bool = False
) -> list[dict[str, Any]]:
    params = {**PARAMS, "max_tokens": 24} if schema else PARAMS
    return [
        provider.build_line(
            f"row-{row['id']}",
            provider.build_body("local", PROMPT.format(review=row["review"]), None, params,
                                SCHEMA if schema else None),
        )
        for row in rows
    ]  # fmt: skip


def run_case(server: LocalModelServer, provider: OpenAIBatchProvider, batch: list[dict[str, Any]],
             concurrency: int) -> tuple[dict[str, float], list[Any]]:  # fmt: skip
    client = RealtimeClient(
        provider, api_key=server.api_key, base_url=server.base_url, wire="openai", max_concurrency=concurrency
    )
    assert server.pid is not None
    server_before, own_before, started = process_cpu(server.pid), own_cpu(), time.monotonic()
    results = client.run(batch)
    wall = time.monotonic() - started
    server_cpu, client_cpu = process_cpu(server.pid) - server_before, own_cpu() - own_before
    failed = sum(1 for r in results if not r.ok and r.error_kind is not ErrorKind.LENGTH)  # cut: text kept
    n = len(batch)
    return {
        "concurrency": concurrency, "rows": n, "failed": failed, "wall_s": wall, "rows_per_s": n / wall,
        "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
        "cpu_per_row_s": (server_cpu + client_cpu) / n, "cpu_use": (server_cpu + client_cpu) / wall,
    }, results  # fmt: skip


def label_of(answer: str | None) -> str | None:
    """The label an answer names first ("This review is positive, as..." -> positive), or None."""
    text = (answer or "").lower()
    found = [(text.find(label), label) for label in ("positive", "negative") if label in text]
    return min(found)[1] if found else None


def accuracy(rows: list[dict[str, str]], answers: list[str | None]) -> float:
    return sum(label_of(a) == row["label"] for row, a in zip(rows, answers, strict=True)) / len(rows)


def cli_case(model: str | None, rows: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out.parquet"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        command = [
            sys.executable, "-m", "prefect_llm_batch.cli", "run", str(SENTIMENT), str(out),
            "--prompt", PROMPT.replace("{review}", "{{ review }}"), "--model", "smollm2", "--provider",
            "local", "--param", "max_tokens=16", "--param", "temperature=0", "--max-error-rate", "1",
            "--limit", str(rows),
            "--state-dir", str(Path(scratch) / "state"),
        ] + (["--local-model", model] if model else [])  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"the CLI failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rows": rows, "wall_s": wall, "cpu_s": cpu, "rows_per_s": rows / wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,2,4", help="Comma-separated realtime concurrencies.")
    parser.add_argument("--repeat", type=int, default=1, help="Runs per concurrency (the fastest counts).")
    parser.add_argument("--model", default=None, help="A GGUF file (default: the bundled SmolLM2).")
    parser.add_argument("--no-cli", action="store_true", help="Skip the end-to-end CLI case.")
    args = parser.parse_args()
    model = check_gguf(args.model)
    rows = reviews()
    size, load = model.stat().st_size / 1e6, os.getloadavg()[0]
    print(f"model {model.name} ({size:.0f} MB), {len(rows)} rows, {os.cpu_count()} CPUs, load {load:.1f}, "
          f"Python {platform.python_version()}")  # fmt: skip
    started = time.monotonic()
    with LocalModelServer(model) as server, OpenAIBatchProvider(api_key=server.api_key) as plain:
        up = time.monotonic() - started
        print(f"server up in {up:.1f} s ({server.n_threads} threads, n_ctx {server.n_ctx})")
        run_case(server, plain, lines(plain, rows[:5]), 1)  # warm-up
        table: list[dict[str, float]] = []
        answers: list[Any] = []
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            runs = [run_case(server, plain, lines(plain, rows), concurrency) for _ in range(args.repeat)]
            best, results = min(runs, key=lambda r: r[0]["wall_s"])
            table.append(best)
            answers = answers or results
        print("\n| concurrency | rows/s | CPU per row (server + client) | CPU in use (cores) | failed |")
        print("|---:|---:|---:|---:|---:|")
        for r in table:
            split = f"({r['server_cpu_s']:.1f} + {r['client_cpu_s']:.1f} s)"
            print(f"| {r['concurrency']:.0f} | {r['rows_per_s']:.2f} | {r['cpu_per_row_s']:.3f} s {split} "
                  f"| {r['cpu_use']:.2f} | {r['failed']:.0f} |")  # fmt: skip
        plain_accuracy = accuracy(rows, [r.response for r in answers])
        with OpenAIBatchProvider(api_key=server.api_key, schema_style="json_object_schema") as styled:
            schema_case, schema_results = run_case(server, styled, lines(styled, rows, schema=True), 2)
        labels = [json.loads(r.response)["label"] if r.ok and r.response else None for r in schema_results]
        schema_accuracy = accuracy(rows, labels)
        print(f"\naccuracy on {SENTIMENT.name}: plain answers {plain_accuracy:.0%}, "
              f"schema job {schema_accuracy:.0%} ({schema_case['rows_per_s']:.2f} rows/s, "
              f"{schema_case['failed']:.0f} failed); always 'positive' would score "
              f"{sum(r['label'] == 'positive' for r in rows) / len(rows):.0%}")  # fmt: skip
    if not args.no_cli:
        cli = cli_case(args.model, len(rows))
        print(f"\nCLI `run --provider local`, {cli['rows']:.0f} rows, end to end: "
              f"{cli['wall_s']:.1f} s wall, {cli['cpu_s']:.1f} s CPU "
              f"({cli['rows_per_s']:.2f} rows/s, server start included)")  # fmt: skip


if __name__ == "__main__":
    main()
