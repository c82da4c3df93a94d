"""Page-cache drop-behind of the job's files: off unless ``PREFECT_LLM_BATCH_DROP_BEHIND=1``."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.spec import JobSpec, ProviderTarget
from prefect_llm_batch.table import DROP_BEHIND_ENV, drop_behind


def prepare_counting_drops(tmp_path: Path, name: str) -> int:
    """Prepare a job of two batch files (no HTTP) and count the pages it let the kernel drop."""
    drops: list[int] = []

    def spy(descriptor: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            drops.append(descriptor)

    source = tmp_path / f"{name}.parquet"
    pq.write_table(pa.table({"text": [f"{name} {i}" for i in range(20)]}), source)
    where = "https://api.openai.com/v1"
    target = ProviderTarget(provider="openai", base_url=where, key_base_url=where)
    spec = JobSpec(prompt="{{ text }}", model="gpt-4o-mini", limits={"max_requests_per_batch": 10})
    with (
        pytest.MonkeyPatch.context() as patch,
        make_provider(target, api_key="sk-test-FAKE-drop") as provider,
    ):
        patch.setattr(os, "posix_fadvise", spy)
        ref = jobs.prepare(str(source), spec, provider, target, state_dir=str(tmp_path / name))
    assert ref.chunks == 2
    return len(drops)


def test_job_files_stay_in_the_page_cache_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DROP_BEHIND_ENV, raising=False)
    assert not drop_behind()
    assert prepare_counting_drops(tmp_path, "default") == 0


@pytest.mark.parametrize(("value", "on"), [("1", True), ("0", False), ("", False)])
def test_drop_behind_is_turned_on_by_its_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, on: bool
) -> None:
    monkeypatch.setenv(DROP_BEHIND_ENV, value)
    assert drop_behind() is on
    drops = prepare_counting_drops(tmp_path, "opted")
    assert (drops >= 3) is on  # two batch files and the row ids, at least
