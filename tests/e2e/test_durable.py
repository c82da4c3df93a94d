"""Durable jobs without Prefect: the response cache, retry rounds, the lease, capacity limits,
``max_wait`` and a user's cancel, over real HTTP to the fake server, with real Parquet read back."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.cache import ResponseCache
from prefect_llm_batch.errors import JobLocked
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.providers.base import BatchProvider
from prefect_llm_batch.spec import SIMULATOR_KEY_BASE_URL, JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "test-key-durable-0000"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)
PROMPT = "Summarise {{ text }}"


def target(server: FakeProviderServer, key_base_url: str | None = None) -> ProviderTarget:
    return ProviderTarget(
        provider="openai", base_url=server.base_url, key_base_url=key_base_url or server.base_url
    )


def provider_for(where: ProviderTarget) -> BatchProvider:
    return make_provider(where, api_key=KEY, backoff=0.01)


def spec(**overrides: Any) -> JobSpec:
    options: dict[str, Any] = {"prompt": PROMPT, "model": "gpt-4o-mini", "provider": "openai"}
    return JobSpec(**{**options, **overrides})


def texts(n: int) -> list[str]:
    return [f"text {i:03d}" for i in range(n)]  # equal lengths: equal request sizes


def write_source(path: Path, values: list[str]) -> str:
    pq.write_table(pa.table({"id": list(range(len(values))), "text": values}), path)
    return str(path)


class Runner:
    """Runs whole jobs the way the flow does (rounds of submit, wait, collect, plan a retry)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.outputs = 0

    def run(
        self,
        src: str,
        state_dir: str | Path,
        where: ProviderTarget,
        job: JobSpec | None = None,
        options: RunOptions = FAST,
    ) -> tuple[jobs.JobRef, jobs.JobSummary, pa.Table]:
        self.outputs += 1
        out = str(self.tmp_path / f"out-{self.outputs}.parquet")
        with provider_for(where) as provider:
            ref = jobs.prepare(
                src, job or spec(), provider, where, state_dir=str(state_dir), cache=options.cache
            )
            run_rounds(ref, provider, options)
        summary = jobs.assemble(ref, output=out)
        return ref, summary, pq.read_table(out)


def run_rounds(ref: jobs.JobRef, provider: BatchProvider, options: RunOptions) -> None:
    """Every round of the job (what is left of them), through the job driver with plain steps."""
    jobs.run_batches(ref, provider, options)


def calls(server: FakeProviderServer) -> int:
    return sum(server.stats.calls.values())


def data(table: pa.Table, drop: tuple[str, ...] = ()) -> pa.Table:
    """The table without its file metadata (which holds a creation time) and ``drop`` columns."""
    return table.drop_columns(list(drop)).replace_schema_metadata(None)


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeServerConfig(seed=3)) as srv:
        yield srv


# ----- response cache ------------------------------------------------------------------------


def test_unchanged_rerun_in_the_same_state_dir_makes_no_http_call(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    src = write_source(tmp_path / "in.parquet", texts(100))
    job = spec(limits={"max_requests_per_batch": 40})
    _, first, table1 = runner.run(src, tmp_path / "state", target(server), job)
    assert server.stats.creates == 3 and server.stats.requests_received == 100 and first.ok_rows == 100
    before = calls(server)
    _, second, table2 = runner.run(src, tmp_path / "state", target(server), job)
    assert calls(server) == before
    assert data(table2).equals(data(table1))
    assert second.batch_ids == first.batch_ids


def test_job_folder_deleted_cache_kept_answers_everything_from_the_cache(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    src = write_source(tmp_path / "in.parquet", texts(100))
    state = tmp_path / "state"
    _, _, table1 = runner.run(src, state, target(server), spec(limits={"max_requests_per_batch": 40}))
    shutil.rmtree(state / "jobs")
    before = calls(server)
    _, summary, table2 = runner.run(src, state, target(server), spec(limits={"max_requests_per_batch": 40}))
    assert calls(server) == before
    assert summary.cached_requests == 100 and summary.ok_rows == 100 and summary.rounds == 0
    assert table2.column("response").to_pylist() == table1.column("response").to_pylist()
    assert table2.column("response_cached").to_pylist() == [True] * 100
    assert table2.column("response_attempts").to_pylist() == [0] * 100
    assert summary.input_tokens == 0  # nothing was billed to this job


def test_one_percent_new_rows_sends_only_the_new_requests(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    runner.run(write_source(tmp_path / "a.parquet", texts(100)), state, target(server))
    received, creates = server.stats.requests_received, server.stats.creates
    _, summary, table = runner.run(write_source(tmp_path / "b.parquet", texts(101)), state, target(server))
    assert server.stats.requests_received - received == 1
    assert server.stats.creates - creates == 1
    assert summary.cached_requests == 100 and summary.ok_rows == 101
    assert table.column("response_cached").to_pylist() == [True] * 100 + [False]
    assert table.column("response")[100].as_py() == "[simulated] Summarise text 100"


def test_changed_rows_are_the_only_ones_sent(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    values = texts(50)
    runner.run(write_source(tmp_path / "a.parquet", values), state, target(server))
    received = server.stats.requests_received
    values[5], values[17] = "edited five", "edited seventeen"
    _, _, table = runner.run(write_source(tmp_path / "b.parquet", values), state, target(server))
    assert server.stats.requests_received - received == 2
    [batch] = list(server.batches.values())[-1:]
    assert len(batch.outcomes) == 2
    cached = table.column("response_cached").to_pylist()
    assert [i for i, c in enumerate(cached) if not c] == [5, 17]
    assert table.column("response")[17].as_py() == "[simulated] Summarise edited seventeen"


def test_edited_template_sends_only_the_rows_whose_prompt_changed(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    src = write_source(tmp_path / "a.parquet", texts(20))
    runner.run(src, state, target(server))
    received = server.stats.requests_received
    edited = spec(prompt="Summarise {{ text }}{% if id in (2, 9) %} briefly{% endif %}")
    _, summary, table = runner.run(src, state, target(server), edited)
    assert server.stats.requests_received - received == 2
    assert summary.cached_requests == 18
    assert table.column("response")[9].as_py() == "[simulated] Summarise text 009 briefly"


@pytest.mark.parametrize("change", ["model", "params", "base_url", "provider"])
def test_model_params_base_url_or_provider_change_is_a_cache_miss(
    change: str, server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    src = write_source(tmp_path / "in.parquet", texts(30))
    _, _, first = runner.run(src, state, target(server))
    job, where = spec(), target(server)
    if change == "model":
        job = spec(model="gpt-4o")
    elif change == "params":
        job = spec(params={"temperature": 0.5})
    elif change == "provider":
        where = ProviderTarget(
            provider="simulator", base_url=server.base_url, key_base_url=SIMULATOR_KEY_BASE_URL
        )
    with FakeProviderServer(FakeServerConfig()) as other:
        if change == "base_url":
            where = target(other)
        received = server.stats.requests_received + other.stats.requests_received
        _, summary, table = runner.run(src, state, where, job)
        sent = server.stats.requests_received + other.stats.requests_received - received
    assert sent == 30 and summary.cached_requests == 0
    assert table.column("response_cached").to_pylist() == [False] * 30
    if change == "model":
        assert table.column("response_model").to_pylist() == ["gpt-4o"] * 30
    assert first.column("response_cached").to_pylist() == [False] * 30


def test_refresh_sends_everything_and_later_runs_get_the_fresh_answers(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    src = write_source(tmp_path / "in.parquet", texts(20))
    runner.run(src, state, target(server))
    # Another server answering differently, under the same request keys (same key base URL).
    with FakeProviderServer(FakeServerConfig(answer=lambda body: "fresh")) as fresh:
        where = target(fresh, key_base_url=server.base_url)
        _, summary, table = runner.run(
            src, state, where, options=FAST.model_copy(update={"cache": "refresh"})
        )
        assert fresh.stats.requests_received == 20 and summary.cached_requests == 0
    assert table.column("response").to_pylist() == ["fresh"] * 20
    shutil.rmtree(state / "jobs")
    before = calls(server)
    _, summary, table = runner.run(src, state, target(server))
    assert calls(server) == before and summary.cached_requests == 20
    assert table.column("response").to_pylist() == ["fresh"] * 20  # the refreshed answers, not the old ones


def test_cache_lookup_prefers_the_answer_written_last(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path / "state"))
    cache.add("zzz-job-chunk-00000-a1", pa.table({"custom_id": ["k1", "k2"], "response": ["old", "old"]}))
    cache.add("aaa-job-chunk-00000-a1", pa.table({"custom_id": ["k1"], "response": ["new"]}))
    hits = cache.lookup(["k1", "k2", "k3"])
    assert hits is not None
    assert sorted(
        zip(hits.column("custom_id").to_pylist(), hits.column("response").to_pylist(), strict=True)
    ) == [
        ("k1", "new"),
        ("k2", "old"),
    ]


def test_rows_that_failed_are_never_answered_from_the_cache(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    values = texts(12)
    values[4] = "bad [[fake:400]]"
    values[9] = "flaky [[fake:500]]"
    src = write_source(tmp_path / "in.parquet", values)
    state = tmp_path / "state"
    options = FAST.model_copy(update={"max_attempts": 1})
    ref, first, _ = runner.run(src, state, target(server), options=options)
    assert first.error_rows == 2
    # The cache's segment holds the job's stored results (errors included), in a file of its own.
    [segment] = (state / "cache" / "results").iterdir()
    stored = Path(JobStore(str(state), ref.job_id).results_path(0))
    assert segment.read_bytes() == stored.read_bytes() and segment.stat().st_nlink == 1
    assert ResponseCache(str(state)).stats()[1] == 10  # answers: the 10 rows without an error
    shutil.rmtree(state / "jobs")
    received = server.stats.requests_received
    _, summary, table = runner.run(src, state, target(server), options=options)
    assert server.stats.requests_received - received == 2  # only the two failed rows, again
    assert summary.cached_requests == 10
    cached = table.column("response_cached").to_pylist()
    assert [i for i, c in enumerate(cached) if not c] == [4, 9]
    kinds = table.column("response_error_kind").to_pylist()
    assert (kinds[4], kinds[9]) == ("invalid_request", "server_error")


def test_stored_results_in_the_cache_give_answers_only_newest_first(tmp_path: Path) -> None:
    from prefect_llm_batch.results import RowResult, results_to_table
    from prefect_llm_batch.spec import ErrorKind

    state = str(tmp_path / "state")
    store, cache = JobStore(state, "job1"), ResponseCache(state)
    cache.add("job0-chunk-00000-a1", pa.table({"custom_id": ["k1", "k2"], "response": ["old", "old"]}))
    table = results_to_table(
        [RowResult("k1", response="new"), RowResult("k2", error_kind=ErrorKind.SERVER_ERROR, error="down")]
    )
    cache.add_results("job1-chunk-00000-a1", store.write_results(0, table))
    table = results_to_table([RowResult("k3", error_kind=ErrorKind.INVALID_REQUEST, error="bad")])
    cache.add_results("job1-chunk-00001-a1", store.write_results(1, table))
    hits = cache.lookup(["k1", "k2", "k3"])
    assert hits is not None
    ids, responses = hits.column("custom_id").to_pylist(), hits.column("response").to_pylist()
    answers = dict(zip(ids, responses, strict=True))
    assert answers == {"k1": "new", "k2": "old"}  # a later error does not hide an earlier answer
    assert "response_error_kind" in hits.column_names and hits.column("response_error_kind").null_count == 2
    assert sorted(cache.ids().to_pylist()) == ["k1", "k2"]
    assert cache.stats()[:2] == (3, 3)  # segments; answers: k1, k2 (old), k1 (new)
    # Only answers are under segments/, the one folder versions before this one read.
    only_answers = pq.read_table(next((tmp_path / "state" / "cache" / "segments").iterdir()))
    assert only_answers.column("response").to_pylist() == ["old", "old"]
    cache.add("job2-chunk-00000-a1", pa.table({"custom_id": ["k1"], "response": ["newest"]}))
    newest = cache.lookup(["k1"])  # a later segment of answers wins over the older stored results
    assert newest is not None and newest.column("response").to_pylist() == ["newest"]
    assert cache.clear().files == 4 and cache.lookup(["k1"]) is None
    assert pq.read_table(store.results_path(0)).num_rows == 2  # the job's own file stays


def test_cache_off_neither_reads_nor_writes(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    src = write_source(tmp_path / "in.parquet", texts(20))
    off = FAST.model_copy(update={"cache": "off"})
    fresh_state = tmp_path / "fresh"
    runner.run(src, fresh_state, target(server), options=off)
    assert server.stats.requests_received == 20
    assert not [p for p in (fresh_state / "cache").rglob("*") if p.is_file()]

    state = tmp_path / "state"
    runner.run(src, state, target(server))  # fills the cache
    segments = sorted(p.name for p in (state / "cache").rglob("*") if p.is_file())
    received = server.stats.requests_received
    _, summary, table = runner.run(src, state, target(server), options=off)
    assert server.stats.requests_received - received == 20 and summary.cached_requests == 0
    assert table.column("response_cached").to_pylist() == [False] * 20
    assert sorted(p.name for p in (state / "cache").rglob("*") if p.is_file()) == segments


# ----- retry only what failed ----------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_transient_rows_are_retried_up_to_max_attempts_and_terminal_ones_never(
    max_attempts: int, server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    values = texts(20)
    values[3] = "flaky [[fake:500]]"
    values[7] = "bad [[fake:400]]"
    values[11] = "vanishes [[fake:drop]]"
    options = FAST.model_copy(update={"max_attempts": max_attempts})
    _, summary, table = runner.run(
        write_source(tmp_path / "in.parquet", values), tmp_path / "s", target(server), options=options
    )
    assert server.stats.creates == max_attempts
    assert server.stats.requests_received == 20 + 2 * (max_attempts - 1)  # only rows 3 and 11 again
    for batch in list(server.batches.values())[1:]:
        assert len(batch.outcomes) == 2
    kinds = table.column("response_error_kind").to_pylist()
    attempts = table.column("response_attempts").to_pylist()
    assert (kinds[3], attempts[3]) == ("server_error", max_attempts)
    assert (kinds[7], attempts[7]) == ("invalid_request", 1)
    assert (kinds[11], attempts[11]) == ("missing", max_attempts)
    ok = [i for i in range(20) if i not in (3, 7, 11)]
    assert all(kinds[i] is None and attempts[i] == 1 for i in ok)
    assert summary.rounds == max_attempts and summary.error_rows == 3


def test_expired_batch_keeps_its_finished_rows_and_retries_only_the_rest(
    runner: Runner, tmp_path: Path
) -> None:
    with FakeProviderServer(FakeServerConfig(expire_after_requests=6, in_progress_seconds=0.05)) as server:
        _, summary, table = runner.run(
            write_source(tmp_path / "in.parquet", texts(10)), tmp_path / "s", target(server)
        )
        first, second = server.batches.values()
    assert first.status == "expired" and second.status == "completed"
    assert server.stats.requests_received == 14
    retried = {o.custom_id for o in second.outcomes}
    assert retried == {o.custom_id for o in first.outcomes[6:]}  # the unrun four, nothing else
    assert table.column("response_error_kind").null_count == 10
    assert table.column("response_batch_id").to_pylist() == [first.id] * 6 + [second.id] * 4
    assert table.column("response_attempts").to_pylist() == [1] * 6 + [2] * 4
    assert summary.rounds == 2


# ----- one runner per job --------------------------------------------------------------------


def lease_record(**fields: Any) -> bytes:
    record = {"id": "someone-else", "host": socket.gethostname(), "pid": os.getpid(), **fields}
    record.setdefault("acquired_at", time.time())
    record.setdefault("expires_at", time.time() + 600)
    return orjson.dumps(record)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_live_lease_refuses_a_second_runner_with_a_clear_message(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "state"), "job1")
    with store.lease() as held:
        with pytest.raises(JobLocked, match=rf"job job1 is being run by process {os.getpid()} on "):
            store.lease().acquire()
        assert held.holder() is not None and held.holder()["id"] == held.owner["id"]
    assert store.lease().holder() is None  # released on exit
    with store.lease():
        pass  # free again


@pytest.mark.parametrize("how", ["dead_pid", "expired", "torn"])
def test_stale_lease_is_taken_over_at_once(how: str, tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "state"), "job1")
    path = tmp_path / "state" / "jobs" / "job1" / "lease.json"
    path.parent.mkdir(parents=True)
    if how == "dead_pid":
        path.write_bytes(lease_record(pid=dead_pid()))
    elif how == "expired":
        path.write_bytes(lease_record(host="another-host", expires_at=time.time() - 1))
    else:
        path.write_bytes(b'{"id": "half')
    started = time.monotonic()
    with store.lease() as lease:
        assert lease.holder()["id"] == lease.owner["id"]  # type: ignore[index]
    assert time.monotonic() - started < 2


def test_live_lease_of_another_host_is_respected(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "state"), "job1")
    path = tmp_path / "state" / "jobs" / "job1" / "lease.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(lease_record(host="another-host", pid=dead_pid()))  # that pid means nothing here
    with pytest.raises(JobLocked, match="on another-host"):
        store.lease().acquire()


@pytest.mark.parametrize("stale", [False, True])
def test_racing_runners_never_both_hold_the_lease(stale: bool, tmp_path: Path) -> None:
    gone = dead_pid()
    for attempt in range(30):
        store = JobStore(str(tmp_path / f"state{attempt}"), "job1")
        if stale:
            path = tmp_path / f"state{attempt}" / "jobs" / "job1" / "lease.json"
            path.parent.mkdir(parents=True)
            path.write_bytes(lease_record(pid=gone))
        barrier = threading.Barrier(4)
        outcomes: list[str] = []

        def race(
            store: JobStore = store, barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes
        ) -> None:
            lease = store.lease()
            barrier.wait()
            try:
                lease.acquire()
            except JobLocked:
                outcomes.append("locked")
            except Exception as exc:  # anything else is a bug too
                outcomes.append(f"error: {exc!r}")
            else:
                outcomes.append("held")

        threads = [threading.Thread(target=race) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["held", "locked", "locked", "locked"], (attempt, outcomes)


def test_two_concurrent_runs_of_one_job_submit_once(runner: Runner, tmp_path: Path) -> None:
    """As the flow does it: identify the job, then plan and everything that sends under the lease."""
    src = write_source(tmp_path / "in.parquet", texts(9))
    job = spec(limits={"max_requests_per_batch": 3})
    state = str(tmp_path / "state")
    outcomes: dict[str, Any] = {}
    barrier = threading.Barrier(2)
    with FakeProviderServer(FakeServerConfig(in_progress_seconds=0.5)) as server:

        def run(name: str) -> None:
            with provider_for(target(server)) as provider:
                identity = jobs.identify(src, job, provider, target(server))
                barrier.wait()
                try:
                    with JobStore(state, identity.job_id).lease():
                        ref = jobs.prepare(
                            src, job, provider, target(server), state_dir=state, identity=identity
                        )
                        run_rounds(ref, provider, FAST)
                except JobLocked as exc:
                    outcomes[name] = exc
                else:
                    outcomes[name] = jobs.assemble(ref, output=str(tmp_path / f"{name}.parquet"))

        threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.stats.creates == 3 and server.stats.requests_received == 9
    locked = [o for o in outcomes.values() if isinstance(o, JobLocked)]
    done = [o for o in outcomes.values() if isinstance(o, jobs.JobSummary)]
    assert len(locked) == 1 and len(done) == 1 and done[0].ok_rows == 9
    assert "is being run by process" in str(locked[0]) or "just taken" in str(locked[0])


# ----- capacity ------------------------------------------------------------------------------

DURATION = 0.3  # seconds each fake batch runs


def overlaps(server: FakeProviderServer) -> list[int]:
    """For each batch, how many of the others were running when it was created."""
    batches = sorted(server.batches.values(), key=lambda b: b.created_clock)
    return [
        sum(
            1
            for o in batches
            if o is not b and o.created_clock <= b.created_clock < o.created_clock + DURATION
        )
        for b in batches
    ]


@pytest.mark.parametrize("limit", [None, 1])
def test_max_in_flight_batches(limit: int | None, runner: Runner, tmp_path: Path) -> None:
    options = FAST.model_copy(update={"max_in_flight_batches": limit})
    src = write_source(tmp_path / "in.parquet", texts(30))
    with FakeProviderServer(FakeServerConfig(in_progress_seconds=DURATION)) as server:
        _, summary, _ = runner.run(
            src, tmp_path / "s", target(server), spec(limits={"max_requests_per_batch": 10}), options
        )
        assert all(b.status == "completed" for b in server.batches.values())
        assert summary.ok_rows == 30 and server.stats.creates == 3
        if limit is None:
            assert overlaps(server) == [0, 1, 2]  # the measure sees overlap when there is some
        else:
            assert overlaps(server) == [0, 0, 0]


def test_max_enqueued_tokens_keeps_the_estimate_under_the_budget(runner: Runner, tmp_path: Path) -> None:
    src = write_source(tmp_path / "in.parquet", texts(40))
    job = spec(limits={"max_requests_per_batch": 10})
    with FakeProviderServer(FakeServerConfig(in_progress_seconds=DURATION)) as server:
        with provider_for(target(server)) as provider:
            ref = jobs.prepare(src, job, provider, target(server), state_dir=str(tmp_path / "s"))
        record = JobStore(ref.state_dir, ref.job_id).read_job()
        per_chunk = {c.est_tokens for c in record.chunks}
        assert len(record.chunks) == 4 and len(per_chunk) == 1
        budget = int(per_chunk.pop() * 2.5)  # two chunks fit, three do not
        options = FAST.model_copy(update={"max_enqueued_tokens": budget})
        _, summary, _ = runner.run(src, tmp_path / "s", target(server), job, options)
        assert summary.ok_rows == 40 and server.stats.creates == 4
        assert max(overlaps(server)) == 1  # never three at once, but two did run together


def test_chunk_bigger_than_the_token_budget_is_sent_alone(runner: Runner, tmp_path: Path) -> None:
    options = FAST.model_copy(update={"max_enqueued_tokens": 1})
    src = write_source(tmp_path / "in.parquet", texts(20))
    with FakeProviderServer(FakeServerConfig(in_progress_seconds=DURATION)) as server:
        _, summary, _ = runner.run(
            src, tmp_path / "s", target(server), spec(limits={"max_requests_per_batch": 10}), options
        )
        assert summary.ok_rows == 20 and overlaps(server) == [0, 0]


# ----- max_wait ------------------------------------------------------------------------------


def test_stalled_batch_past_max_wait_is_cancelled_and_only_its_unrun_rows_retried(tmp_path: Path) -> None:
    src = write_source(tmp_path / "in.parquet", texts(10))
    options = FAST.model_copy(update={"max_wait": 1.2})
    with (
        FakeProviderServer(FakeServerConfig(in_progress_seconds=0.5)) as server,
        provider_for(target(server)) as provider,
    ):
        ref = jobs.prepare(src, spec(), provider, target(server), state_dir=str(tmp_path / "s"))
        state = jobs.submit_chunk(ref, 0, provider, options)
        assert state.batch_id is not None
        deadline = time.monotonic() + 5
        while server.batches[state.batch_id].finished < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stall_batches("in_progress")  # stuck part-way, as a real batch can be
        finished = server.batches[state.batch_id].finished
        assert 2 <= finished < 10
        started = time.monotonic()
        assert jobs.wait(ref, provider, options) == []
        assert time.monotonic() - started < 3.0
        store = JobStore(ref.state_dir, ref.job_id)
        assert store.read_chunk(0).cancelled_by == "max_wait" and store.read_chunk(0).status == "cancelled"
        jobs.collect_chunk(ref, 0, provider, options)
        assert jobs.plan_retry_round(ref, 1, options) == [1]

        server.unstall_batches()
        run_rounds(ref, provider, options)  # round 1 is done: resumes at round 2
        assert server.stats.creates == 2 and server.stats.requests_received == 10 + (10 - finished)
    summary = jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    table = pq.read_table(tmp_path / "out.parquet")
    assert summary.ok_rows == 10
    assert table.column("response_attempts").to_pylist() == [1] * finished + [2] * (10 - finished)


def test_batch_that_ends_while_being_cancelled_for_max_wait_is_collected(
    runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_source(tmp_path / "in.parquet", texts(10))
    options = FAST.model_copy(update={"max_wait": 0.1})
    with (
        FakeProviderServer(FakeServerConfig(in_progress_seconds=0.4)) as server,
        provider_for(target(server)) as provider,
    ):
        real_cancel = provider.cancel

        def late_cancel(batch_id: str) -> Any:  # the batch completes between the poll and the cancel
            while server.batch(batch_id)["status"] != "completed":
                time.sleep(0.01)
            return real_cancel(batch_id)

        monkeypatch.setattr(provider, "cancel", late_cancel)
        ref = jobs.prepare(src, spec(), provider, target(server), state_dir=str(tmp_path / "s"))
        jobs.submit_chunk(ref, 0, provider, options)
        assert jobs.wait(ref, provider, options) == []
        assert server.stats.calls["POST /v1/batches/{id}/cancel"] == 1
        state = JobStore(ref.state_dir, ref.job_id).read_chunk(0)
        assert state.status == "completed" and state.cancelled_by is None
        jobs.collect_chunk(ref, 0, provider, options)
    assert jobs.assemble(ref, output=str(tmp_path / "out.parquet")).ok_rows == 10


def test_batch_stalled_in_every_round_ends_with_a_clear_row_error(runner: Runner, tmp_path: Path) -> None:
    options = FAST.model_copy(update={"max_wait": 0.3, "max_attempts": 2})
    with FakeProviderServer(FakeServerConfig(stall_in="validating")) as server:
        _, summary, table = runner.run(
            write_source(tmp_path / "in.parquet", texts(4)), tmp_path / "s", target(server), options=options
        )
        assert server.stats.creates == 2
        assert all(b.status == "cancelled" for b in server.batches.values())
    assert summary.errors_by_kind == {"batch_cancelled": 4}
    assert table.column("response_attempts").to_pylist() == [2] * 4


# ----- a user's cancel -----------------------------------------------------------------------


def test_cancel_keeps_finished_rows_stops_retries_and_a_later_run_finishes(tmp_path: Path) -> None:
    src = write_source(tmp_path / "in.parquet", texts(10))
    out = str(tmp_path / "out.parquet")
    with (
        FakeProviderServer(FakeServerConfig(in_progress_seconds=0.5)) as server,
        provider_for(target(server)) as provider,
    ):
        ref = jobs.prepare(src, spec(), provider, target(server), state_dir=str(tmp_path / "s"))
        store = JobStore(ref.state_dir, ref.job_id)
        state = jobs.submit_chunk(ref, 0, provider, FAST)
        deadline = time.monotonic() + 5
        while server.batches[state.batch_id].finished < 3 and time.monotonic() < deadline:  # type: ignore[index]
            time.sleep(0.01)
        server.stall_batches("in_progress")  # so that the cancel catches it part-way
        assert jobs.cancel_job(ref, provider) == [state.batch_id]
        assert jobs.wait(ref, provider, FAST) == []
        jobs.collect_chunk(ref, 0, provider, FAST)
        assert store.read_chunk(0).cancelled_by == "user"
        assert jobs.plan_retry_round(ref, 1, FAST) == []  # no retry round while the cancel applies
        summary = jobs.assemble(ref, output=out)
        finished = server.batches[state.batch_id].finished  # type: ignore[index]
        assert 3 <= finished < 10 and summary.ok_rows == finished
        assert summary.errors_by_kind == {"batch_cancelled": 10 - finished}
        assert pq.read_table(out).column("response").to_pylist()[:finished] == [
            f"[simulated] Summarise text {i:03d}" for i in range(finished)
        ]

        store.clear_cancel()  # what a later run of the flow does first
        server.unstall_batches()
        run_rounds(ref, provider, FAST)
        summary = jobs.assemble(ref, output=out, overwrite=True)
        assert server.stats.creates == 2 and server.stats.requests_received == 10 + (10 - finished)
    table = pq.read_table(out)
    assert summary.ok_rows == 10 and table.column("response_error_kind").null_count == 10
    assert table.column("response_attempts").to_pylist() == [1] * finished + [2] * (10 - finished)


def test_cancel_job_skips_a_batch_that_ended_since_the_last_poll_and_cancels_the_rest(
    tmp_path: Path,
) -> None:
    src = write_source(tmp_path / "in.parquet", texts(4))
    job = spec(limits={"max_requests_per_batch": 2})
    with (
        FakeProviderServer(FakeServerConfig(in_progress_seconds=0.1)) as server,
        provider_for(target(server)) as provider,
    ):
        ref = jobs.prepare(src, job, provider, target(server), state_dir=str(tmp_path / "s"))
        done = jobs.submit_chunk(ref, 0, provider, FAST)
        while server.batch(done.batch_id or "")["status"] != "completed":
            time.sleep(0.01)
        server.stall_batches("validating")
        running = jobs.submit_chunk(ref, 1, provider, FAST)
        store = JobStore(ref.state_dir, ref.job_id)
        assert store.read_chunk(0).status == "validating"  # what the state last saw
        assert jobs.cancel_job(ref, provider) == [running.batch_id]
        assert server.batch(running.batch_id or "")["status"] in ("cancelling", "cancelled")
        assert store.read_chunk(0).status == "completed" and store.read_chunk(0).cancelled_by is None
        assert store.read_chunk(1).cancelled_by == "user"
