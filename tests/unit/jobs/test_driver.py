"""The job driver: one round loop with its steps injected, a non-blocking tick, the guards.

The steps here are fakes that record what the driver asked for, over a real prepared job (its
state directory, its lease), so that the order of steps, the resubmissions and the backoff
pauses are checked exactly and without waiting.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.costs import Estimate
from prefect_llm_batch.errors import (
    BatchCancelled,
    BatchFailed,
    CostLimitExceeded,
    ErrorRateExceeded,
)
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore

ROWS, PER_BATCH = 6, 2  # three chunks in round 1
NOWHERE = ProviderTarget(
    provider="openai", base_url="http://127.0.0.1:9/v1", key_base_url="http://127.0.0.1:9/v1"
)


@pytest.fixture
def ref(tmp_path: Path) -> Iterator[jobs.JobRef]:
    """A prepared job of three chunks (planning sends nothing, so the target is never reached)."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"text {i}" for i in range(ROWS)]}), source)
    spec = JobSpec(
        prompt="{{ text }}", model="gpt-4o-mini", provider="openai", limits={"max_requests_per_batch": 2}
    )
    with make_provider(NOWHERE, api_key="fake-key-FAKE-driver-0000") as provider:
        prepared = jobs.prepare(str(source), spec, provider, NOWHERE, state_dir=str(tmp_path / "state"))
    assert prepared.chunks == ROWS // PER_BATCH
    yield prepared


class FakeSteps:
    """Records each step; ``waits`` and ``retries`` script what wait and plan_retry return."""

    def __init__(self, ref: jobs.JobRef, waits: list[list[int]], retries: list[list[int]]) -> None:
        self.store = JobStore(ref.state_dir, ref.job_id)
        self.waits, self.retries = waits, retries
        self.polls: list[jobs.Poll] = []
        self.calls: list[tuple[str, object]] = []

    def submit(self, chunk_id: int) -> None:
        self.calls.append(("submit", chunk_id))
        if chunk_id < 3:  # a real chunk of the job: it has a batch now
            state = self.store.read_chunk(chunk_id)
            state.batch_id = state.batch_id or f"batch-{chunk_id}"
            self.store.write_chunk(state)

    def wait(self) -> list[int]:
        self.calls.append(("wait", None))
        return self.waits.pop(0)

    def poll(self) -> jobs.Poll:
        self.calls.append(("poll", None))
        return self.polls.pop(0)

    def collect(self, chunk_ids: list[int]) -> None:
        self.calls.append(("collect", list(chunk_ids)))

    def realtime(self, chunk_id: int) -> None:
        self.calls.append(("realtime", chunk_id))

    def plan_retry(self, round_: int) -> list[int]:
        self.calls.append(("plan_retry", round_))
        return self.retries.pop(0)


def test_rounds_resubmit_what_wait_returns_and_back_off_doubling(ref: jobs.JobRef) -> None:
    steps = FakeSteps(ref, waits=[[1], [], [], []], retries=[[7, 8], [9], []])
    sleeps: list[float] = []

    jobs.run_rounds(ref, steps, RunOptions(retry_backoff=10), sleep=sleeps.append)

    assert steps.calls == [
        ("submit", 0), ("submit", 1), ("submit", 2), ("wait", None),
        ("submit", 1), ("wait", None),  # chunk 1 failed with a token limit: submitted again
        ("collect", [0, 1, 2]), ("plan_retry", 1),
        ("submit", 7), ("submit", 8), ("wait", None), ("collect", [7, 8]), ("plan_retry", 2),
        ("submit", 9), ("wait", None), ("collect", [9]), ("plan_retry", 3),
    ]  # fmt: skip
    assert sleeps == [10.0, 20.0]  # before round 2 and round 3, none after the last


def test_realtime_rounds_send_unsubmitted_chunks_in_realtime_and_finish_submitted_ones_as_batches(
    ref: jobs.JobRef,
) -> None:
    store = JobStore(ref.state_dir, ref.job_id)
    earlier = store.read_chunk(1)
    earlier.batch_id = "batch-from-an-earlier-batch-mode-run"
    store.write_chunk(earlier)
    steps = FakeSteps(ref, waits=[[]], retries=[[]])

    jobs.run_rounds(ref, steps, RunOptions(retry_backoff=10), realtime=True, sleep=pytest.fail)

    assert steps.calls == [
        ("realtime", 0), ("realtime", 2),
        ("submit", 1), ("wait", None), ("collect", [1]), ("plan_retry", 1),
    ]  # fmt: skip


def test_a_run_resumes_a_job_the_user_cancelled_and_holds_its_lease_throughout(ref: jobs.JobRef) -> None:
    store = JobStore(ref.state_dir, ref.job_id)
    store.write_cancel("by the test")
    seen: list[tuple[bool, int | None]] = []

    class Probe(FakeSteps):
        def wait(self) -> list[int]:
            holder = store.lease().holder()
            seen.append((store.is_cancelled(), holder["pid"] if holder else None))
            return super().wait()

    jobs.run_rounds(ref, Probe(ref, waits=[[]], retries=[[]]), RunOptions(), sleep=pytest.fail)
    assert seen == [(False, os.getpid())]  # the cancel was cleared; this process held the job
    assert store.lease().holder() is None  # and let it go at the end


def test_tick_moves_a_job_forward_once_and_never_sleeps(
    ref: jobs.JobRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    steps = FakeSteps(ref, waits=[], retries=[[5], []])
    none = jobs.Poll(pending=[], resubmit=[], changed=False)
    steps.polls = [
        none,  # nothing submitted yet: the round's chunks are
        jobs.Poll(pending=[0], resubmit=[], changed=False),  # a batch still runs
        jobs.Poll(pending=[], resubmit=[1], changed=True),  # one failed with a token limit
        none,  # the round ended: collect it, plan the next, submit it
        none,
    ]

    results = [jobs.tick(ref, steps) for _ in range(3)]
    assert results == [False, False, False]
    assert steps.calls == [
        ("poll", None), ("submit", 0), ("submit", 1), ("submit", 2),
        ("poll", None),
        ("poll", None), ("submit", 1),
    ]  # fmt: skip
    steps.calls.clear()
    assert jobs.tick(ref, steps) is False
    assert steps.calls == [("poll", None), ("collect", [0, 1, 2]), ("plan_retry", 1), ("submit", 5)]
    steps.calls.clear()
    assert jobs.tick(ref, steps) is True
    assert steps.calls == [("poll", None), ("collect", [0, 1, 2]), ("plan_retry", 1)]
    assert slept == []


def estimate(cost: float | None) -> Estimate:
    return Estimate(
        job_id="job-1", model="gpt-4o-mini", rows=10, unique_requests=10, cached_requests=0,
        requests_to_send=10, batches=1, input_tokens=1000, output_tokens=1000, cost_usd=cost,
    )  # fmt: skip


def test_the_cost_guard_refuses_a_job_over_budget_or_without_a_price() -> None:
    jobs.check_cost(estimate(0.5), 0.5)
    jobs.check_cost(estimate(None), None)
    with pytest.raises(
        CostLimitExceeded, match=r"job job-1 is \$0\.5000, over max_cost_usd=\$0\.1000: .*Nothing"
    ):
        jobs.check_cost(estimate(0.5), 0.1)
    with pytest.raises(
        CostLimitExceeded, match=r"is unknown \(no price for it\), over max_cost_usd=\$1\.0000"
    ):
        jobs.check_cost(estimate(None), 1.0)


def summary(ref: jobs.JobRef, errors: int) -> jobs.JobSummary:
    return jobs.JobSummary(
        job_id=ref.job_id, output="out.parquet", state_dir=ref.state_dir, provider="openai", model="m",
        rows=ROWS, unique_requests=ROWS, ok_rows=ROWS - errors, error_rows=errors,
        errors_by_kind={"server_error": errors} if errors else {},
    )  # fmt: skip


def test_the_outcome_guards_raise_for_a_cancel_a_failed_batch_or_too_many_errors(ref: jobs.JobRef) -> None:
    jobs.check_outcome(ref, summary(ref, 0), "out.parquet", 0.1, cancelled=False)
    with pytest.raises(BatchCancelled, match=f"job {ref.job_id} was cancelled: 6 of 6 rows are answered"):
        jobs.check_outcome(ref, summary(ref, 0), "out.parquet", 0.1, cancelled=True)
    with pytest.raises(
        ErrorRateExceeded, match=r"3 of 6 rows failed \(50\.0% > max_error_rate 10\.0%\)"
    ) as exc:
        jobs.check_outcome(ref, summary(ref, 3), "out.parquet", 0.1, cancelled=False)
    assert (exc.value.failed, exc.value.total, exc.value.output) == (3, 6, "out.parquet")
    store = JobStore(ref.state_dir, ref.job_id)
    state = store.read_chunk(2)
    state.batch_id, state.status, state.error, state.error_code = (
        "b-2",
        "failed",
        "bad line 3",
        "invalid_json",
    )
    store.write_chunk(state)
    with pytest.raises(BatchFailed, match=r"1 batch\(es\) failed validation.*Batch b-2: bad line 3"):
        jobs.check_outcome(ref, summary(ref, 0), "out.parquet", 0.1, cancelled=False)


def test_the_collect_guard_names_every_job_over_its_error_rate(ref: jobs.JobRef) -> None:
    jobs.check_error_rates([(summary(ref, 0), 0.1), (summary(ref, 1), 0.5)])
    with pytest.raises(ErrorRateExceeded, match=f"outputs written\\): {ref.job_id}: 3 of 6 rows failed$"):
        jobs.check_error_rates([(summary(ref, 3), 0.1), (summary(ref, 1), 0.5)])
