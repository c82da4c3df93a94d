"""Detached mode: submit returns at once, collect (run on a schedule) finishes, same output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import ConfigError
from prefect_llm_batch.flows import collect_jobs, enrich_table
from prefect_llm_batch.jobs import JobRef
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "test-key-detached"


def source(tmp_path: Path) -> str:
    path = tmp_path / "in.parquet"
    texts = [f"review {i}: {'great' if i % 3 else 'awful'}" for i in range(9)]
    texts[4] = "flaky [[fake:500]]"
    pq.write_table(pa.table({"id": list(range(9)), "text": texts}), path)
    return str(path)


def options(server: Any, tmp_path: Path, name: str) -> dict[str, Any]:
    return {
        "prompt": "Sentiment of: {{ text }}", "model": "gpt-4o-mini", "provider": "openai",
        "base_url": server.base_url, "state_dir": str(tmp_path / f"state-{name}"), "poll_interval": 0.05,
        "retry_backoff": 0, "max_requests_per_batch": 4, "max_error_rate": 0.5,
    }  # fmt: skip


def test_detached_submit_then_collect_equals_blocking(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src = source(tmp_path)
    with FakeProviderServer(FakeServerConfig(in_progress_seconds=0.3)) as server:
        enrich_table(source=src, output=str(tmp_path / "blocking.parquet"), **options(server, tmp_path, "a"))
        opts = options(server, tmp_path, "b")
        before = server.stats.creates
        ref = enrich_table(source=src, output=str(tmp_path / "detached.parquet"), detached=True, **opts)
        assert isinstance(ref, JobRef)
        assert server.stats.creates - before == 3  # submitted, not waited for
        assert not (tmp_path / "detached.parquet").exists()
        finished: list[Any] = []
        for _ in range(200):  # what a schedule does, compressed
            finished += collect_jobs(state_dir=opts["state_dir"])
            if finished:
                break
        assert len(finished) == 1 and finished[0].job_id == ref.job_id
        assert collect_jobs(state_dir=opts["state_dir"]) == []  # nothing pending any more
    blocking = pq.read_table(tmp_path / "blocking.parquet")
    detached = pq.read_table(tmp_path / "detached.parquet")
    keep = ["id", "text", "response", "response_error_kind", "response_attempts"]
    assert detached.select(keep).equals(blocking.select(keep))
    assert detached.column("response_attempts")[4].as_py() == 3  # retry rounds happened in collect


def test_detached_refuses_the_simulator(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="detached"):
        enrich_table(
            source=source(tmp_path), output=str(tmp_path / "o.parquet"), prompt="{{ text }}", model="m",
            state_dir=str(tmp_path / "s"), detached=True,
        )  # fmt: skip


def test_cli_submit_then_collect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from prefect_llm_batch.cli import app

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "out.parquet"
    state = str(tmp_path / "state")
    runner = CliRunner()
    with FakeProviderServer(FakeServerConfig()) as server:
        submitted = runner.invoke(
            app,
            ["submit", source(tmp_path), str(out), "--prompt", "Sentiment of: {{ text }}", "--model", "m",
             "--provider", "openai", "--base-url", server.base_url, "--state-dir", state,
             "--retry-backoff", "0", "--max-error-rate", "0.5"],
        )  # fmt: skip
        assert submitted.exit_code == 0, submitted.output
        assert "submitted" in submitted.output and not out.exists()
        for _ in range(100):
            collected = runner.invoke(app, ["collect", "--state-dir", state])
            assert collected.exit_code == 0, collected.output
            if "1 job(s) finished" in collected.output:
                break
    assert pq.read_table(out).num_rows == 9


def collect_until_finished(state_dir: str, rounds: int = 200) -> list[Any]:
    finished: list[Any] = []
    for _ in range(rounds):  # what a schedule does, compressed
        finished += collect_jobs(state_dir=state_dir)
        if finished:
            break
    return finished


def submit_detached(src: str, out: Path, opts: dict[str, Any]) -> JobRef:
    ref = enrich_table(source=src, output=str(out), detached=True, **opts)
    assert isinstance(ref, JobRef)
    return ref


def test_a_damaged_pending_record_is_a_warning_and_the_other_jobs_are_collected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(in_progress_seconds=0.1)) as server:
        opts = options(server, tmp_path, "shared")
        good = submit_detached(source(tmp_path), tmp_path / "good.parquet", opts)
        other = tmp_path / "other.parquet"
        pq.write_table(pa.table({"id": [1, 2], "text": ["another table", "another job"]}), other)
        damaged = submit_detached(str(other), tmp_path / "bad.parquet", opts)
        assert good.job_id != damaged.job_id
        record = Path(opts["state_dir"]) / "pending" / f"{damaged.job_id}.json"
        record.write_text('{"ref": {"job_id": "cut off by a full disk')
        with caplog.at_level("WARNING"):
            finished = collect_until_finished(opts["state_dir"])
    assert [s.job_id for s in finished] == [good.job_id]
    assert pq.read_table(tmp_path / "good.parquet").num_rows == 9
    warning = next(
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "damaged" in r.getMessage()
    )
    assert str(record) in warning
    assert (
        f"delete the file, or the job with `prefect-llm-batch jobs clean --force {damaged.job_id}`" in warning
    )
    assert record.exists()  # left for the user to look at


def test_collect_finishes_a_job_whatever_the_spelling_of_its_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(in_progress_seconds=0.1)) as server:
        opts = options(server, tmp_path, "spelt")
        ref = submit_detached(source(tmp_path), tmp_path / "out.parquet", opts)
        (tmp_path / "elsewhere").mkdir()
        other_spelling = str(tmp_path / "elsewhere" / ".." / "state-spelt")
        finished = collect_until_finished(other_spelling, rounds=100)
    assert [s.job_id for s in finished] == [ref.job_id]
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 9
