"""The job lifecycle without Prefect: never paying twice, over real HTTP to the fake server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "test-key-jobs-0000"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)


def target(server: FakeProviderServer) -> ProviderTarget:
    return ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)


def source(tmp_path: Path, n: int = 5) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(n)), "text": [f"text {i}" for i in range(n)]}), path)
    return str(path)


def prepared(server: FakeProviderServer, tmp_path: Path, **provider_options: Any) -> tuple[jobs.JobRef, Any]:
    spec = JobSpec(prompt="Summarise {{ text }}", model="gpt-4o-mini", provider="openai")
    provider = make_provider(target(server), api_key=KEY, backoff=0.01, **provider_options)
    ref = jobs.prepare(source(tmp_path), spec, provider, target(server), state_dir=str(tmp_path / "state"))
    return ref, provider


def test_create_that_times_out_after_the_batch_was_made_is_adopted(tmp_path: Path) -> None:
    with FakeProviderServer(FakeServerConfig()) as server:
        server.stall_next_create(seconds=2.0)
        ref, provider = prepared(server, tmp_path, read_timeout=0.5)
        with provider:
            state = jobs.submit_chunk(ref, 0, provider)
        assert server.stats.creates == 1
        assert server.stats.calls["POST /v1/batches"] == 1
        assert state.batch_id == next(iter(server.batches))


def test_ambiguous_create_that_made_nothing_is_created_once(tmp_path: Path) -> None:
    with FakeProviderServer(FakeServerConfig()) as server:
        server.fail_next("POST", "/v1/batches", status=502, times=1)
        ref, provider = prepared(server, tmp_path)
        with provider:
            state = jobs.submit_chunk(ref, 0, provider)
            again = jobs.submit_chunk(ref, 0, provider)
        assert server.stats.creates == 1
        assert server.stats.calls["GET /v1/batches"] == 1  # looked before creating again
        assert state.batch_id == again.batch_id


def test_intent_recorded_then_crash_is_adopted_on_resume(tmp_path: Path) -> None:
    with FakeProviderServer(FakeServerConfig()) as server:
        ref, provider = prepared(server, tmp_path)
        with provider:
            jobs.submit_chunk(ref, 0, provider)
            store = JobStore(ref.state_dir, ref.job_id)
            state = store.read_chunk(0)
            batch_id = state.batch_id
            state.batch_id = None  # as if the process died right after the create answered
            store.write_chunk(state)
            resumed = jobs.submit_chunk(ref, 0, provider)
        assert resumed.batch_id == batch_id
        assert server.stats.creates == 1


def test_state_files_are_written_before_and_after_create(tmp_path: Path) -> None:
    with FakeProviderServer(FakeServerConfig()) as server:
        ref, provider = prepared(server, tmp_path)
        store = JobStore(ref.state_dir, ref.job_id)
        assert store.read_chunk(0).intent_at is None
        with provider:
            state = jobs.submit_chunk(ref, 0, provider)
        assert state.intent_at is not None and state.input_file_id and state.batch_id
        assert store.read_chunk(0).batch_id == state.batch_id
        assert server.batches[state.batch_id].metadata == {
            "job_id": ref.job_id,
            "chunk_id": "0",
            "attempt": "1",
        }


def test_state_dir_on_memory_filesystem(tmp_path: Path) -> None:
    spec = JobSpec(prompt="Summarise {{ text }}", model="gpt-4o-mini", provider="openai")
    with FakeProviderServer(FakeServerConfig()) as server:
        with make_provider(target(server), api_key=KEY) as provider:
            ref = jobs.prepare(
                source(tmp_path), spec, provider, target(server), state_dir="memory://plb-state"
            )
            jobs.submit_chunk(ref, 0, provider)
            jobs.wait(ref, provider, FAST)
            jobs.collect_chunk(ref, 0, provider)
        summary = jobs.assemble(ref, output="memory://plb-out/out.parquet")
    assert summary.ok_rows == 5 and summary.rows == 5


def test_token_limit_failure_is_resubmitted_after_running_batches_finish(tmp_path: Path) -> None:
    config = FakeServerConfig(enqueued_token_limit=20, in_progress_seconds=0.3)
    spec = JobSpec(
        prompt="Summarise {{ text }}",
        model="gpt-4o-mini",
        provider="openai",
        limits={"max_requests_per_batch": 3},
    )
    with FakeProviderServer(config) as server, make_provider(target(server), api_key=KEY) as provider:
        ref = jobs.prepare(source(tmp_path, 6), spec, provider, target(server), state_dir=str(tmp_path / "s"))
        assert ref.chunks == 2
        for chunk in range(2):
            jobs.submit_chunk(ref, chunk, provider)
        retry = jobs.wait(ref, provider, FAST)
        assert retry == [1]
        jobs.submit_chunk(ref, 1, provider)
        assert jobs.wait(ref, provider, FAST) == []
        for chunk in range(2):
            jobs.collect_chunk(ref, chunk, provider)
        summary = jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    assert summary.ok_rows == 6
    state = JobStore(ref.state_dir, ref.job_id).read_chunk(1)
    assert state.attempt == 2 and state.history[0]["status"] == "failed"
    assert server.stats.creates == 3


def _run_cli(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    # Its own process group, so that the kill also reaches the temporary Prefect server it starts.
    command = [sys.executable, "-m", "prefect_llm_batch.cli", "run", *args]
    return subprocess.Popen(command, env=env, start_new_session=True, **kwargs)


@pytest.mark.usefixtures("prefect_harness")
def test_sigkill_between_create_and_state_write_then_rerun_creates_nothing(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    src = source(tmp_path, 7)
    out = tmp_path / "out.parquet"
    state_dir = tmp_path / "state"
    # The session's Prefect server: the runs need not start (and leave behind) their own.
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        args = [
            src,
            str(out),
            "--prompt",
            "Summarise {{ text }}",
            "--model",
            "gpt-4o-mini",
            "--provider",
            "openai",
            "--base-url",
            server.base_url,
            "--state-dir",
            str(state_dir),
            "--poll-interval",
            "0.1",
        ]
        server.stall_next_create(seconds=120)
        proc = _run_cli(args, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while server.stats.creates < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert server.stats.creates == 1, "the run never reached the create call"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

        [chunk_file] = state_dir.glob("jobs/*/chunks/chunk-00000.json")
        chunk = json.loads(chunk_file.read_text())
        assert chunk["intent_at"] is not None and chunk["batch_id"] is None

        rerun = _run_cli(args, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, output.decode()[-3000:]
        assert server.stats.creates == 1
    table = pq.read_table(out)
    assert table.num_rows == 7 and table.column("response_error_kind").null_count == 7
    assert KEY not in output.decode()
