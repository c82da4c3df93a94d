"""Durable jobs through the ``enrich_table`` flow and the CLI: one runner per job, a user's cancel
then a rerun, and SIGKILL-and-rerun of the CLI process (the fake server lives in this process, so
it survives the kill and counts every create)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prefect_llm_batch.cli import app
from prefect_llm_batch.errors import BatchCancelled, JobLocked
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.providers.openai import chat_body
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig, default_answer

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "test-key-durable-flow-0000"
PROMPT = "Summarise {{ text }}"
MODEL = "gpt-4o-mini"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, in_progress_seconds=0.2, seed=5)) as srv:
        yield srv


def write_source(path: Path, n: int) -> str:
    pq.write_table(pa.table({"id": list(range(n)), "text": [f"text {i:03d}" for i in range(n)]}), path)
    return str(path)


def expected(n: int) -> list[str]:
    return [default_answer(chat_body(MODEL, f"Summarise text {i:03d}")) for i in range(n)]


def run_flow(server: FakeProviderServer, src: str, out: Path, state_dir: Path, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "prompt": PROMPT,
        "model": MODEL,
        "provider": "openai",
        "base_url": server.base_url,
        "state_dir": str(state_dir),
        "poll_interval": 0.05,
        "retry_backoff": 0,
        **kwargs,
    }
    return enrich_table(source=src, output=str(out), **options)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def chunk_states(state_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(state_dir.glob("jobs/*/chunks/chunk-*.json"))]


def test_a_second_run_of_a_running_job_exits_with_a_clear_message_and_submits_nothing(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    src = write_source(tmp_path / "in.parquet", 9)
    state = tmp_path / "state"
    server.stall_batches("in_progress")  # the first run stays in its wait step
    first, outcome = in_thread(
        lambda: run_flow(server, src, tmp_path / "a.parquet", state, max_requests_per_batch=3)
    )
    try:
        wait_until(lambda: server.stats.creates == 3, "the first run to submit its 3 batches")
        with pytest.raises(JobLocked, match=rf"is being run by process {os.getpid()}.*wait for it to finish"):
            run_flow(server, src, tmp_path / "b.parquet", state, max_requests_per_batch=3)
        assert server.stats.creates == 3 and server.stats.uploads == 3
    finally:
        server.unstall_batches()
        first.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["value"].ok_rows == 9 and server.stats.creates == 3
    assert not (tmp_path / "b.parquet").exists()


def test_cancel_command_keeps_finished_rows_and_a_rerun_finishes_the_job(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    src = write_source(tmp_path / "in.parquet", 10)
    state, out = tmp_path / "state", tmp_path / "out.parquet"
    with FakeProviderServer(FakeServerConfig(api_key=KEY, in_progress_seconds=1.0)) as slow:
        thread, outcome = in_thread(lambda: run_flow(slow, src, out, state))
        try:
            wait_until(lambda: slow.stats.creates == 1, "the batch")
            [batch_id] = slow.batches
            wait_until(lambda: slow.batches[batch_id].finished >= 3, "some requests to finish")
            slow.stall_batches("in_progress")
            finished = slow.batches[batch_id].finished
            [job_dir] = (state / "jobs").iterdir()
            result = CliRunner().invoke(app, ["cancel", job_dir.name, "--state-dir", str(state)])
            assert result.exit_code == 0, result.output
            assert f"cancel requested for 1 batch(es): {batch_id}" in result.output
        finally:
            thread.join(60)
        error = outcome.get("error")
        assert isinstance(error, BatchCancelled), outcome
        assert f"{finished} of 10 rows are answered" in str(error) and "run the same command again" in str(
            error
        )
        table = pq.read_table(out)
        assert table.column("response").to_pylist()[:finished] == expected(finished)
        assert table.column("response_error_kind").to_pylist()[finished:] == ["batch_cancelled"] * (
            10 - finished
        )

        slow.unstall_batches()
        summary = run_flow(slow, src, out, state, overwrite=True)
        assert slow.stats.creates == 2 and slow.stats.requests_received == 10 + (10 - finished)
    assert summary.ok_rows == 10 and summary.rounds == 2
    table = pq.read_table(out)
    assert table.column("response").to_pylist() == expected(10)
    assert table.column("response_attempts").to_pylist() == [1] * finished + [2] * (10 - finished)


# ----- SIGKILL and rerun ---------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """The test process's environment, pointed at the session's Prefect server (no startup per run)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "OPENAI_API_KEY": KEY}
    api_url = PREFECT_API_URL.value()
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def cli_args(server: FakeProviderServer, src: str, out: Path, state: Path) -> list[str]:
    return [
        sys.executable, "-m", "prefect_llm_batch.cli", "run", src, str(out),
        "--prompt", PROMPT, "--model", MODEL, "--provider", "openai", "--base-url", server.base_url,
        "--state-dir", str(state), "--poll-interval", "0.05", "--retry-backoff", "0",
        "--max-requests-per-batch", "4",
    ]  # fmt: skip


def kill_then_rerun(
    server: FakeProviderServer,
    tmp_path: Path,
    kill_when: Callable[[], bool],
    what: str,
    before_rerun: Callable[[], None],
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Start the CLI, SIGKILL it once ``kill_when()``, check no output exists, run it again to the end.

    Returns the output of the rerun and the chunk states the killed run left."""
    src = write_source(tmp_path / "in.parquet", 10)
    state, out = tmp_path / "state", tmp_path / "out.parquet"
    args, env = cli_args(server, src, out, state), cli_env()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: kill_when() or proc.poll() is not None, what)
        assert proc.poll() is None, f"the run ended before {what}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not out.exists()
    killed_at = chunk_states(state)
    creates, uploads = server.stats.creates, server.stats.uploads
    before_rerun()
    rerun = subprocess.run(args, env=env, capture_output=True, timeout=180)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr).decode()[-3000:]
    assert (server.stats.creates, server.stats.uploads) == (creates, uploads)  # nothing submitted twice
    return pq.read_table(out), killed_at


def reference(server: FakeProviderServer, tmp_path: Path) -> pa.Table:
    """An uninterrupted run of the same job in a fresh state directory."""
    out = tmp_path / "reference.parquet"
    run_flow(server, str(tmp_path / "in.parquet"), out, tmp_path / "ref-state", max_requests_per_batch=4)
    return pq.read_table(out)


def same_data(table: pa.Table, other: pa.Table) -> bool:
    """Equal apart from file metadata (a creation time) and the batch ids (other runs, other batches)."""

    def strip(t: pa.Table) -> pa.Table:
        return t.drop_columns(["response_batch_id"]).replace_schema_metadata(None)

    return strip(table).equals(strip(other))


def test_sigkill_while_waiting_then_rerun_polls_the_same_batches(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    server.stall_batches("in_progress")
    table, killed_at = kill_then_rerun(
        server,
        tmp_path,
        lambda: server.stats.creates == 3,
        "the 3 batches to be created",
        before_rerun=server.unstall_batches,
    )
    assert server.stats.creates == 3
    assert len(killed_at) == 3 and not any(s["collected"] for s in killed_at)
    assert set(table.column("response_batch_id").to_pylist()) == set(server.batches)
    assert table.column("response").to_pylist() == expected(10)
    assert same_data(table, reference(server, tmp_path))


def test_sigkill_while_downloading_results_then_rerun_collects_without_resubmitting(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    route = "GET /v1/files/{id}/content"
    server.fail_next("GET", "/v1/files/{id}/content", status=500, times=12)

    def drain() -> None:  # use up the faults the killed run left, so that the rerun downloads
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
            while client.get(f"{server.base_url}/files/none/content").status_code == 500:
                pass

    table, killed_at = kill_then_rerun(
        server, tmp_path, lambda: server.stats.calls[route] >= 3, "the 3 downloads to start", drain
    )
    assert server.stats.creates == 3
    assert [s["status"] for s in killed_at] == ["completed"] * 3 and not any(
        s["collected"] for s in killed_at
    )
    assert set(table.column("response_batch_id").to_pylist()) == set(server.batches)
    assert table.column("response").to_pylist() == expected(10)
    assert same_data(table, reference(server, tmp_path))
