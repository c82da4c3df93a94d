"""The lease under faults: one state directory spelled two ways is one lease; a lost lease stops the run.

A detached job submitted with one spelling of its state directory (relative, ``file://``, through
a symlink) is collected by ``collect_jobs`` given another spelling: the run does not lock itself
out. A run whose lease expired (it was suspended) and was taken over by another run creates no
batch and writes no output any more: it raises JobLocked saying the lease was lost.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.errors import JobLocked
from prefect_llm_batch.lease import Lease
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-FAKE-lease-faults-0000"
ROWS = 6


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, in_progress_seconds=0.1, seed=3)) as srv:
        yield srv


def write_source(tmp_path: Path) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(ROWS)), "text": [f"text {i}" for i in range(ROWS)]}), path)
    return str(path)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("spelling", ["relative", "file-url", "symlink"])
def test_a_detached_job_submitted_with_one_spelling_of_the_state_dir_is_collected_with_another(
    spelling: str,
    server: FakeProviderServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect_llm_batch.flows import collect_jobs, enrich_table

    real = tmp_path / "state"
    real.mkdir()
    if spelling == "relative":
        monkeypatch.chdir(tmp_path)
        submitted_as = "state"
    elif spelling == "file-url":
        submitted_as = real.as_uri()
    else:
        (tmp_path / "link").symlink_to(real, target_is_directory=True)
        submitted_as = str(tmp_path / "link")
    output = tmp_path / "out.parquet"
    ref = enrich_table(
        source=write_source(tmp_path), output=str(output), prompt="Say {{ text }}", model="gpt-4o-mini",
        provider="openai", base_url=server.base_url, state_dir=submitted_as, detached=True,
        max_requests_per_batch=3, retry_backoff=0,
    )  # fmt: skip
    assert isinstance(ref, jobs.JobRef) and server.stats.creates == 2
    finished: list[Any] = []
    deadline = time.monotonic() + 60
    while not finished and time.monotonic() < deadline:
        finished = collect_jobs(state_dir=str(real))
        if not finished:
            time.sleep(0.1)
    assert [s.job_id for s in finished] == [ref.job_id], "the job was never collected"
    assert pq.read_table(output).column("response").null_count == 0
    assert server.stats.creates == 2  # nothing sent twice
    assert "held by another run" not in caplog.text
    assert JobStore(str(real), ref.job_id).lease().holder() is None  # released


def test_a_lease_spelled_another_way_is_reentered_not_taken_again(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state", target_is_directory=True)
    with JobStore(str(tmp_path / "state"), "job1").lease() as outer:
        for spelling in (f"{tmp_path}/link", (tmp_path / "state").as_uri(), f"{tmp_path}/state/"):
            with JobStore(spelling, "job1").lease() as inner:
                assert inner.owner == outer.owner
        assert outer.holder() is not None  # the inner exits released nothing


def test_a_lease_held_by_this_very_process_says_so_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = JobStore(str(tmp_path / "state"), "job1")
    refused: list[BaseException] = []

    def other_context() -> None:
        try:
            with store.lease():
                pass
        except JobLocked as exc:
            refused.append(exc)

    with caplog.at_level(logging.WARNING, logger="prefect_llm_batch"), store.lease():
        thread = threading.Thread(target=other_context)
        thread.start()
        thread.join()
    assert len(refused) == 1 and "this very process" in str(refused[0])
    assert any("this very process" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


class SuspendedRenewal:
    """Holds back the first renewal of a lease until ``resume`` is set (as if the process were
    suspended), then lets it run: it then finds whoever holds the lease by then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resume = threading.Event()
        self.renewed = threading.Event()
        original = Lease.renew

        def renew(lease: Lease) -> None:
            self.resume.wait(30)
            try:
                original(lease)
            finally:
                self.renewed.set()

        monkeypatch.setattr(Lease, "renew", renew)


def take_over(store: JobStore) -> Lease:
    """Another run (another context: a thread) takes the job's expired lease."""
    taken: list[Lease] = []
    thread = threading.Thread(target=lambda: taken.append(store.lease(ttl=60)))
    thread.start()
    thread.join()
    other = taken[0]
    other.acquire()
    return other


def prepared(server: FakeProviderServer, tmp_path: Path, provider: Any) -> jobs.JobRef:
    """A prepared job of two batches (three requests each)."""
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    spec = JobSpec(
        prompt="Say {{ text }}", model="gpt-4o-mini", provider="openai",
        limits=BatchLimits(max_requests_per_batch=3),
    )  # fmt: skip
    return jobs.prepare(write_source(tmp_path), spec, provider, where, state_dir=str(tmp_path / "state"))


def openai(server: FakeProviderServer) -> Any:
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    return make_provider(where, api_key=KEY)


def lose(lease: Lease, store: JobStore, suspended: SuspendedRenewal) -> Lease:
    """The run holding ``lease`` is suspended past its life; another run takes the job over;
    then the suspended renewal runs. Returns the other run's lease."""
    deadline = time.monotonic() + 10
    while lease.holder() is not None and float(lease.holder()["expires_at"]) >= time.time():  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    other = take_over(store)
    suspended.resume.set()
    assert suspended.renewed.wait(10)
    return other


def test_a_run_that_lost_its_lease_creates_no_more_batches_and_cannot_reenter(
    server: FakeProviderServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suspended = SuspendedRenewal(monkeypatch)
    with openai(server) as provider:
        ref = prepared(server, tmp_path, provider)
        store = JobStore(ref.state_dir, ref.job_id)
        with store.lease(ttl=0.3) as lease:
            jobs.submit_chunk(ref, 0, provider)  # held: the first batch is created
            assert server.stats.creates == 1
            other = lose(lease, store, suspended)
            assert lease.lost  # the renewal found the other holder
            with pytest.raises(JobLocked, match="lost its lease"):
                jobs.submit_chunk(ref, 1, provider)
            assert server.stats.creates == 1  # the lost run paid for nothing more
            with pytest.raises(JobLocked, match="lost its lease"), store.lease():
                pass  # re-entering (a later step of the same run) is refused too
            with pytest.raises(JobLocked, match="lost its lease"):
                store.ensure_held()
        holder = other.holder()
        assert holder is not None and holder["id"] == other.owner["id"]  # the other's lease is kept


def test_a_run_that_lost_its_lease_writes_no_output(
    server: FakeProviderServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suspended = SuspendedRenewal(monkeypatch)
    output = tmp_path / "out.parquet"
    with openai(server) as provider:
        ref = prepared(server, tmp_path, provider)
        store = JobStore(ref.state_dir, ref.job_id)
        with store.lease(ttl=0.3) as lease:
            for chunk_id in (0, 1):
                jobs.submit_chunk(ref, chunk_id, provider)
            jobs.wait(ref, provider, sleep=lambda _: time.sleep(0.05))
            jobs.collect_chunks(ref, [0, 1], provider)
            lose(lease, store, suspended)
            with pytest.raises(JobLocked, match="lost its lease"):
                jobs.assemble(ref, output=str(output))
            assert not output.exists()
        jobs.assemble(ref, output=str(output))  # the job itself is whole: a holder can write it
        assert pq.read_table(output).column("response").null_count == 0


def test_a_lease_taken_over_between_renewals_is_found_lost_before_the_create(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    with openai(server) as provider:
        ref = prepared(server, tmp_path, provider)
        store = JobStore(ref.state_dir, ref.job_id)
        with store.lease() as lease:
            other = store.lease()
            other.owner = {**other.owner, "pid": os.getpid() + 10**6, "host": "elsewhere"}
            lease.release()  # (as if it had expired) the other run takes it
            other.acquire()
            with pytest.raises(JobLocked, match="lost its lease"):
                jobs.submit_chunk(ref, 0, provider)
            assert server.stats.creates == 0 and lease.lost


def test_a_run_that_lost_its_lease_sends_no_realtime_request(
    server: FakeProviderServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch.jobs.realtime import realtime_client, run_chunk_realtime
    from prefect_llm_batch.spec import RunOptions

    suspended = SuspendedRenewal(monkeypatch)
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    with openai(server) as provider:
        ref = prepared(server, tmp_path, provider)
        store = JobStore(ref.state_dir, ref.job_id)
        with store.lease(ttl=0.3) as lease:
            lose(lease, store, suspended)
            with pytest.raises(JobLocked, match="lost its lease"):
                run_chunk_realtime(ref, 0, realtime_client(provider, where, KEY), RunOptions())
    assert server.stats.calls["POST /v1/chat/completions"] == 0  # the lost run sent nothing
