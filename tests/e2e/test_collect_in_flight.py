"""Batches are collected two at a time, in the flow and without Prefect: memory holds two batches'
results however many batches a job has, and one's download overlaps the other's store."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.jobs import collect
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "test-key-in-flight-0000"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)
ROWS, PER_BATCH = 14, 2  # seven batches


class Tracker:
    """Wraps ``collect_chunk``: counts the calls running at once, can hold them or fail one."""

    def __init__(self, real: Callable[..., int], hold: float, fail: int | None = None) -> None:
        self.real, self.hold, self.fail = real, hold, fail
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.started: list[int] = []

    def __call__(self, ref: jobs.JobRef, chunk_id: int, *args: Any, **kwargs: Any) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(chunk_id)
        try:
            if chunk_id == self.fail:
                time.sleep(0.1)  # the other chunk in flight has started by then
                raise RuntimeError(f"download of chunk {chunk_id} broke")
            time.sleep(self.hold)
            return self.real(ref, chunk_id, *args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def write_source(tmp_path: Path) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(ROWS)), "text": [f"text {i}" for i in range(ROWS)]}), path)
    return str(path)


@pytest.fixture
def ended_job(tmp_path: Path) -> Iterator[tuple[jobs.JobRef, Any]]:
    """A prepared job of seven batches, every one submitted and ended at the fake server."""
    spec = JobSpec(
        prompt="Summarise {{ text }}",
        model="gpt-4o-mini",
        provider="openai",
        limits={"max_requests_per_batch": PER_BATCH},
    )
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        target = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
        with make_provider(target, api_key=KEY) as provider:
            ref = jobs.prepare(write_source(tmp_path), spec, provider, target, state_dir=str(tmp_path / "s"))
            assert ref.chunks == ROWS // PER_BATCH
            for chunk in range(ref.chunks):
                jobs.submit_chunk(ref, chunk, provider)
            assert jobs.wait(ref, provider, FAST) == []
            yield ref, provider


def flow_args(server: FakeProviderServer, tmp_path: Path, state_dir: str) -> dict[str, Any]:
    """``enrich_table``'s arguments for the seven-batch job against ``server``."""
    return {
        "source": write_source(tmp_path),
        "output": str(tmp_path / "out.parquet"),
        "prompt": "Summarise {{ text }}",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "base_url": server.base_url,
        "state_dir": state_dir,
        "poll_interval": 0.05,
        "max_requests_per_batch": PER_BATCH,
    }


def collected(ref: jobs.JobRef) -> list[int]:
    store = JobStore(ref.state_dir, ref.job_id)
    return [c for c in range(ref.chunks) if store.read_chunk(c).collected]


def test_collect_chunks_runs_two_at_a_time_and_collects_every_batch(
    ended_job: tuple[jobs.JobRef, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, provider = ended_job
    tracker = Tracker(collect.collect_chunk, hold=0.1)
    monkeypatch.setattr(collect, "collect_chunk", tracker)

    stored = jobs.collect_chunks(ref, range(ref.chunks), provider, FAST)

    assert tracker.most == jobs.COLLECTS_IN_FLIGHT == 2
    assert sorted(tracker.started) == list(range(ref.chunks))
    assert stored == ROWS and collected(ref) == list(range(ref.chunks))
    summary = jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    assert summary.ok_rows == ROWS
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == list(range(ROWS))


def test_a_failed_collect_raises_leaves_unstarted_chunks_and_a_rerun_finishes(
    ended_job: tuple[jobs.JobRef, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, provider = ended_job
    real = collect.collect_chunk
    tracker = Tracker(real, hold=0.5, fail=1)
    monkeypatch.setattr(collect, "collect_chunk", tracker)

    with pytest.raises(RuntimeError, match="download of chunk 1 broke"):
        jobs.collect_chunks(ref, range(ref.chunks), provider, FAST)

    # chunk 1 failed while chunk 0 ran: chunk 0 finished, no other chunk started
    assert sorted(tracker.started) == [0, 1]
    assert collected(ref) == [0]
    monkeypatch.setattr(collect, "collect_chunk", real)
    assert jobs.collect_chunks(ref, range(ref.chunks), provider, FAST) == ROWS  # collected ones are read back
    assert collected(ref) == list(range(ref.chunks))
    assert jobs.assemble(ref, output=str(tmp_path / "out.parquet")).ok_rows == ROWS


def test_every_failure_is_reported_the_first_chunks_raised(
    ended_job: tuple[jobs.JobRef, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ref, provider = ended_job
    real = collect.collect_chunk

    def broken(ref: jobs.JobRef, chunk_id: int, *args: Any) -> int:
        if chunk_id in (0, 1):
            time.sleep(0.1 * (1 - chunk_id))  # chunk 1 fails first, chunk 0 after it
            raise RuntimeError(f"chunk {chunk_id} broke")
        return real(ref, chunk_id, *args)

    monkeypatch.setattr(collect, "collect_chunk", broken)
    with (
        caplog.at_level("WARNING", logger="prefect_llm_batch"),
        pytest.raises(RuntimeError, match="chunk 0 broke"),
    ):
        jobs.collect_chunks(ref, range(ref.chunks), provider, FAST)
    assert "chunk 1: collecting it failed too: chunk 1 broke" in caplog.text
    assert collected(ref) == []


class Interrupted(BaseException):
    """What a Ctrl-C would be (pytest treats KeyboardInterrupt itself as the end of the run)."""


def test_an_interrupt_starts_no_more_chunks(
    ended_job: tuple[jobs.JobRef, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, provider = ended_job
    tracker = Tracker(collect.collect_chunk, hold=0.5)
    monkeypatch.setattr(collect, "collect_chunk", tracker)

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)  # while chunks 0 and 1 are being collected
        started = time.perf_counter()
        with pytest.raises(Interrupted):
            jobs.collect_chunks(ref, range(ref.chunks), provider, FAST)
        waited = time.perf_counter() - started
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert sorted(tracker.started) == [0, 1]  # the two running finished; none started after
    assert collected(ref) == [0, 1]
    assert waited < 3 * 0.5  # not the seven chunks' 3.5 s


def test_in_flight_below_one_is_refused(ended_job: tuple[jobs.JobRef, Any]) -> None:
    ref, provider = ended_job
    with pytest.raises(ValueError, match="in_flight must be at least 1, not 0"):
        jobs.collect_chunks(ref, [0], provider, in_flight=0)


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_collects_two_batches_at_a_time(
    tmp_path: Path, state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch.flows import enrich_table

    tracker = Tracker(jobs.collect_chunk, hold=0.2)
    monkeypatch.setattr(jobs, "collect_chunk", tracker)  # what the collect-batch task calls
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "out.parquet"
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        summary = enrich_table(**flow_args(server, tmp_path, state_dir))
    assert sorted(tracker.started) == list(range(ROWS // PER_BATCH))
    assert tracker.most == 2  # the bound, and the overlap: two ran at once, never more
    assert summary.ok_rows == ROWS
    assert pq.read_table(out).column("response").null_count == 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_collect_fails_the_flow_run_and_a_rerun_finishes_the_job(
    tmp_path: Path, state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch.flows import enrich_table

    real = jobs.collect_chunk
    tracker = Tracker(real, hold=0.3, fail=1)
    monkeypatch.setattr(jobs, "collect_chunk", tracker)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "out.parquet"
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        run = flow_args(server, tmp_path, state_dir)
        with pytest.raises(RuntimeError, match="download of chunk 1 broke"):
            enrich_table(**run)
        # no collect started once chunk 1 had failed (chunk 0 was running and finished)
        assert sorted(set(tracker.started)) == [0, 1] and tracker.most == 2
        assert not out.exists()
        monkeypatch.setattr(jobs, "collect_chunk", real)
        summary = enrich_table(**run)
        creates = server.stats.creates
    assert creates == ROWS // PER_BATCH  # the rerun sent nothing again
    assert summary.ok_rows == ROWS
    assert pq.read_table(out).column("response").null_count == 0
