"""Prepare's threads: lines are packed in another thread, yet errors come in row order, from
whichever step raised them, and no thread is left behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.errors import InputError, TemplateError
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget
from prefect_llm_batch.table import reading as table_reading

BASE = "https://x/v1"
TARGET = ProviderTarget(provider="openai", base_url=BASE, key_base_url=BASE)
OPENAI = OpenAIBatchProvider(api_key="unused", base_url=BASE)
SMALL = BatchLimits(max_batch_bytes=1024)


def _no_threads_left() -> None:
    names = {t.name for t in threading.enumerate()}
    assert not any(name.startswith("prefect-llm-batch-") for name in names), names


@pytest.mark.parametrize(
    ("long_row", "zero_row", "error", "message"),
    [
        (12, 20, InputError, "row 12 is"),  # the long line's slice comes first
        (12, 30, InputError, "row 12 is"),  # ... also when the bad row is slices later
        (20, 12, TemplateError, "row 12"),  # the template error's slice comes first
        (3, 4, TemplateError, "row 4"),  # the same slice: rendering fails before packing
        (39, None, InputError, "row 39 is"),  # the last row: raised after every slice was keyed
        (0, None, InputError, "row 0 is"),  # the first row
    ],
)
def test_errors_come_in_row_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    long_row: int,
    zero_row: int | None,
    error: type[Exception],
    message: str,
) -> None:
    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 8)
    texts = ["short"] * 40
    texts[long_row] = "long " * 400
    n = [1] * 40
    if zero_row is not None:
        n[zero_row] = 0
    pq.write_table(pa.table({"n": n, "t": texts}), tmp_path / "in.parquet")
    spec = JobSpec(prompt="{{ t }}{{ 10 // n }}", model="m", provider="openai", limits=SMALL)
    with pytest.raises(error, match=message):
        jobs.prepare(str(tmp_path / "in.parquet"), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))
    _no_threads_left()
    assert not list((tmp_path / "s").glob("jobs/*/job.json"))


def test_a_prepared_job_leaves_no_thread_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 8)
    pq.write_table(pa.table({"t": [f"text {i % 30}" for i in range(100)]}), tmp_path / "in.parquet")
    spec = JobSpec(
        prompt="{{ t }}", model="m", provider="openai", limits=BatchLimits(max_requests_per_batch=7)
    )
    ref = jobs.prepare(str(tmp_path / "in.parquet"), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))
    assert ref.rows == 100 and ref.unique_requests == 30 and ref.chunks == 5
    _no_threads_left()


@pytest.mark.parametrize("failing", [(0,), (3,), (14,), (5, 6)])
def test_a_failed_batch_file_write_fails_the_job_whichever_write_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: tuple[int, ...]
) -> None:
    # Two batch files are written at once: a failure of any one (the first, one in the middle,
    # the last, written by close(); of two, the older is raised) fails prepare, no job.json is
    # written, and no thread is left behind.
    from prefect_llm_batch.store import JobStore

    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 8)
    pq.write_table(pa.table({"t": [f"text {i}" for i in range(100)]}), tmp_path / "in.parquet")
    spec = JobSpec(
        prompt="{{ t }}", model="m", provider="openai", limits=BatchLimits(max_requests_per_batch=7)
    )
    real = JobStore.write_chunk_input

    def write(self: JobStore, chunk_id: int, data: object) -> None:
        if chunk_id in failing:
            raise OSError(f"disk full at chunk {chunk_id} (test)")
        real(self, chunk_id, data)  # type: ignore[arg-type]

    monkeypatch.setattr(JobStore, "write_chunk_input", write)
    with pytest.raises(Exception, match=f"disk full at chunk {failing[0]} "):
        jobs.prepare(str(tmp_path / "in.parquet"), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))
    _no_threads_left()
    assert not list((tmp_path / "s").glob("jobs/*/job.json"))


def test_batch_files_are_the_lines_of_their_requests_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lines reach the files as views of the slices' lines (runs broken by repeated requests),
    # several files in flight: each file is exactly its requests' lines, in row order.
    import orjson

    from prefect_llm_batch.store import JobStore

    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 8)
    texts = [f"text {i % 23}" if i % 3 else f"unique {i}" for i in range(120)]
    pq.write_table(pa.table({"t": texts}), tmp_path / "in.parquet")
    spec = JobSpec(
        prompt="{{ t }}", model="m", provider="openai", limits=BatchLimits(max_requests_per_batch=5)
    )
    ref = jobs.prepare(str(tmp_path / "in.parquet"), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))
    store = JobStore(ref.state_dir, ref.job_id)
    prompts = [
        orjson.loads(line)["body"]["messages"][0]["content"]
        for chunk in store.read_job().chunks
        for line in store.read_chunk_input(chunk.chunk_id).splitlines()
    ]
    assert prompts == list(dict.fromkeys(texts))  # every distinct prompt once, first rows first
    assert ref.chunks == -(-len(prompts) // 5)
