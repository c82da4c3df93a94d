"""A state directory written by an earlier version of the package is still resumed and collected."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer
from tests.paths import FIXTURES

#: Made by ``tests/fixtures/make_packed_ids_state.py`` with the code of commit 1d8d4a9.
FIXTURE = FIXTURES / "packed_ids_state"
JOB_ID = "2d32dcea6b9e8873b03f49e90f88931e"
TEXTS = ["apple", "pear", "plum", "apple", "fig", "kiwi", "lime"]
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)


def test_a_job_prepared_with_packed_ids_files_is_resumed_and_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_provider: FakeProviderServer
) -> None:
    work = tmp_path / "job"
    shutil.copytree(FIXTURE, work)
    monkeypatch.chdir(work)  # the job's source and state are relative paths
    requests = work / "state" / "jobs" / JOB_ID / "requests"
    assert sorted(p.name for p in requests.glob("*.ids*")) == ["chunk-00000.ids", "chunk-00001.ids"]
    # the same job as the fixture's: prepare finds it prepared and resumes it (no HTTP)
    where = "https://api.openai.com/v1"
    planned = ProviderTarget(provider="openai", base_url=where, key_base_url=where)
    spec = JobSpec(
        prompt="Name the colour of {{ text }}",
        model="gpt-4o-mini",
        provider="openai",
        limits={"max_requests_per_batch": 4},
    )
    with make_provider(planned, api_key="sk-test-FAKE-compat") as offline:
        ref = jobs.prepare("in.parquet", spec, offline, planned, state_dir="state")
    assert (ref.job_id, ref.chunks) == (JOB_ID, 2)
    served = ProviderTarget(provider="openai", base_url=fake_provider.base_url, key_base_url=where)
    with make_provider(served, api_key="sk-test-FAKE-compat") as provider:
        for chunk_id in range(ref.chunks):
            jobs.submit_chunk(ref, chunk_id, provider)
        assert jobs.wait(ref, provider, FAST) == []

        def no_batch_file(self: JobStore, chunk_id: int) -> bytes:
            raise AssertionError("collecting read the batch file, not the ids file")

        monkeypatch.setattr(JobStore, "read_chunk_input", no_batch_file)
        assert jobs.collect_chunks(ref, range(ref.chunks), provider, FAST) == 6
    summary = jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    assert (summary.rows, summary.ok_rows) == (7, 7)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("text").to_pylist() == TEXTS
    answers = out.column("response").to_pylist()
    assert all(answers) and answers[0] == answers[3]  # the repeated row got its request's answer
    assert fake_provider.stats.creates == 2
