"""Prepare's threads: lines are packed in another thread, yet errors come in row order, from
whichever step raised them, and no thread is left behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch import table as table_module
from prefect_llm_batch.errors import InputError, TemplateError
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget

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
    monkeypatch.setattr(table_module, "SCAN_BATCH_ROWS", 8)
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
    monkeypatch.setattr(table_module, "SCAN_BATCH_ROWS", 8)
    pq.write_table(pa.table({"t": [f"text {i % 30}" for i in range(100)]}), tmp_path / "in.parquet")
    spec = JobSpec(
        prompt="{{ t }}", model="m", provider="openai", limits=BatchLimits(max_requests_per_batch=7)
    )
    ref = jobs.prepare(str(tmp_path / "in.parquet"), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))
    assert ref.rows == 100 and ref.unique_requests == 30 and ref.chunks == 5
    _no_threads_left()
