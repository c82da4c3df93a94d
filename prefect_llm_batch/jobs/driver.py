"""The job's round loop, written once, with its steps injected.

A prepared job runs in rounds::

    submit     every chunk of the round (each at most once)
    wait       until every batch has ended; batches that failed with a token limit are submitted
               again, and waited for again
    collect    the round's batches (a few at a time)
    plan       the next round from the requests that failed in a retryable way
    back off   ``retry_backoff`` seconds before round 2, doubling per round; then the next round

:func:`run_rounds` is that loop; the *steps* decide how each step runs:

* :class:`PlainSteps` calls the :mod:`prefect_llm_batch.jobs` functions in this process
  (notebooks, scripts, :func:`run_job`);
* ``prefect_llm_batch.tasks.TaskSteps`` runs each step as a Prefect task (the flows: the UI shows
  ``submit-batch-N``, ``wait-for-batches``, ``collect-batch-N``, ``plan-retry``);
* :func:`tick` is one non-blocking pass of the same loop, for detached jobs: it polls once,
  submits what is due, collects an ended round and plans the next, and never waits.

The run holds the job's lease throughout (re-entrant: a caller that holds it already keeps it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigError
from ..providers.base import BatchProvider
from ..providers.realtime import RealtimeClient
from ..spec import JobSpec, ProviderTarget, RunOptions
from ..store import JobStore
from .budget import Budget
from .collect import collect_chunks
from .identity import JobRef, identify
from .output import JobSummary, assemble
from .poll import Poll, Progress, ended, poll_once, wait
from .prepare import prepare
from .realtime import run_chunk_realtime
from .retry import plan_retry_round
from .submit import submit_chunk

logger = logging.getLogger("prefect_llm_batch")

Log = logging.Logger | logging.LoggerAdapter[Any]


class Steps(Protocol):
    """The steps of a round, as :func:`run_rounds` calls them."""

    def submit(self, chunk_id: int) -> None:
        """Create the chunk's batch, at most once (a chunk with a batch is left alone)."""

    def wait(self) -> list[int]:
        """Wait until every submitted batch of the job has ended; return the chunks to submit again."""

    def collect(self, chunk_ids: list[int]) -> None:
        """Collect the ended batches of these chunks."""

    def realtime(self, chunk_id: int) -> None:
        """Send the chunk's requests in realtime and store their results."""

    def plan_retry(self, round_: int) -> list[int]:
        """Plan the round after ``round_``; return its chunks (none: the job is done)."""


class TickSteps(Protocol):
    """The steps of a round, as :func:`tick` calls them (a poll instead of a wait)."""

    def submit(self, chunk_id: int) -> None:
        """As :meth:`Steps.submit`."""

    def poll(self) -> Poll:
        """Check every running batch of the job once."""

    def collect(self, chunk_ids: list[int]) -> None:
        """As :meth:`Steps.collect`."""

    def plan_retry(self, round_: int) -> list[int]:
        """As :meth:`Steps.plan_retry`."""


@dataclass
class PlainSteps:
    """The steps as direct calls of :mod:`prefect_llm_batch.jobs` functions, in this process.

    Args:
        ref: The prepared job.
        provider: Its provider client.
        options: How it runs.
        on_change: Called with the progress when it changes while waiting.
        sleep: How to wait (tests pass a fake).
        realtime_client: Sends realtime chunks (needed only in realtime mode).
        budget: A provider budget shared with other jobs (see :mod:`~prefect_llm_batch.jobs.budget`).
        wait_for_budget: Wait in ``submit`` while the shared budget is full (False: a poller that
            must not block leaves the chunk for its next pass).
    """

    ref: JobRef
    provider: BatchProvider
    options: RunOptions
    on_change: Callable[[Progress], None] | None = None
    sleep: Callable[[float], None] = time.sleep
    realtime_client: RealtimeClient | None = None
    budget: Budget | None = None
    wait_for_budget: bool = True

    def submit(self, chunk_id: int) -> None:
        """:func:`~prefect_llm_batch.jobs.submit_chunk`."""
        submit_chunk(
            self.ref, chunk_id, self.provider, self.options, self.sleep, self.budget, self.wait_for_budget
        )

    def wait(self) -> list[int]:
        """:func:`~prefect_llm_batch.jobs.wait`."""
        return wait(
            self.ref,
            self.provider,
            self.options,
            on_change=self.on_change,
            sleep=self.sleep,
            budget=self.budget,
        )

    def poll(self) -> Poll:
        """:func:`~prefect_llm_batch.jobs.poll_once`."""
        return poll_once(self.ref, self.provider, self.options, self.budget)

    def collect(self, chunk_ids: list[int]) -> None:
        """:func:`~prefect_llm_batch.jobs.collect_chunks` (``COLLECTS_IN_FLIGHT`` at a time)."""
        collect_chunks(self.ref, chunk_ids, self.provider, self.options)

    def realtime(self, chunk_id: int) -> None:
        """:func:`~prefect_llm_batch.jobs.realtime.run_chunk_realtime`."""
        if self.realtime_client is None:
            raise ConfigError("realtime mode needs a realtime client (PlainSteps.realtime_client)")
        run_chunk_realtime(self.ref, chunk_id, self.realtime_client, self.options)

    def plan_retry(self, round_: int) -> list[int]:
        """:func:`~prefect_llm_batch.jobs.plan_retry_round`."""
        return plan_retry_round(self.ref, round_, self.options)


def backoff(options: RunOptions, round_: int) -> float:
    """Seconds to pause after ``round_`` before the next one: ``retry_backoff``, doubling per round.

    Examples:
        >>> [backoff(RunOptions(retry_backoff=60), r) for r in (1, 2, 3)]
        [60.0, 120.0, 240.0]
    """
    return float(options.retry_backoff * 2 ** (round_ - 1))


def _begin(store: JobStore) -> list[int]:
    """Start a run of the job (the caller holds its lease): a new run resumes a job a user
    cancelled earlier. Returns the chunks of the first round."""
    store.clear_cancel()
    return store.read_job().round_chunks(1)


def run_rounds(
    ref: JobRef,
    steps: Steps,
    options: RunOptions,
    *,
    realtime: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    log: Log = logger,
) -> None:
    """Run every round of a prepared job (or what is left of them), holding its lease.

    Args:
        ref: The prepared job.
        steps: How each step runs.
        options: How the job runs (``retry_backoff``).
        realtime: Send the chunks in realtime; chunks an earlier batch-mode run submitted finish
            as batches.
        sleep: How to back off between rounds (tests pass a fake).
        log: Where the rounds are logged.

    Raises:
        JobLocked: Another run holds the job.
    """
    store = JobStore(ref.state_dir, ref.job_id)
    with store.lease():
        round_, chunks = 1, _begin(store)
        while chunks:
            _run_round(store, steps, chunks, realtime)
            chunks = steps.plan_retry(round_)
            if chunks:
                pause = backoff(options, round_)
                log.info("round %d: retrying %d batch(es) in %.0f s", round_ + 1, len(chunks), pause)
                sleep(pause)
                round_ += 1


def _run_round(store: JobStore, steps: Steps, chunks: list[int], realtime: bool) -> None:
    """Send one round: realtime chunks first, then submit, wait for (resubmitting token-limit
    failures) and collect the batches."""
    as_batches = [c for c in chunks if store.read_chunk(c).batch_id] if realtime else list(chunks)
    for chunk_id in chunks:
        if chunk_id not in as_batches:
            steps.realtime(chunk_id)
    if not as_batches:
        return
    pending = as_batches
    while pending:
        for chunk_id in pending:  # one after the other: each may wait for capacity
            steps.submit(chunk_id)
        pending = steps.wait()
    steps.collect(as_batches)


def submit_first_round(ref: JobRef, steps: Steps | TickSteps) -> None:
    """Submit the first round of a detached job, holding its lease; :func:`tick` does the rest."""
    store = JobStore(ref.state_dir, ref.job_id)
    with store.lease():
        for chunk_id in _begin(store):
            steps.submit(chunk_id)


def advance(ref: JobRef, steps: TickSteps) -> list[int] | None:
    """Poll a job's running batches once and submit what is due, without waiting; the caller
    holds the job's lease.

    Submits again the batches that failed with a token limit, and the chunks of the current
    round not sent yet.

    Returns:
        The chunks of the current round once every one has ended (ready to collect), else None.
    """
    store = JobStore(ref.state_dir, ref.job_id)
    poll = steps.poll()
    for chunk_id in poll.resubmit:
        steps.submit(chunk_id)
    record = store.read_job()
    chunks = record.round_chunks(max(record.rounds, 1))
    unsent = [c for c in chunks if not (s := store.read_chunk(c)).batch_id and not ended(s)]
    for chunk_id in unsent:
        steps.submit(chunk_id)
    if unsent or poll.pending or poll.resubmit:
        return None
    return chunks


def finish_round(ref: JobRef, steps: TickSteps, *, log: Log = logger) -> bool:
    """After the current round is collected: plan the next round and submit it; True when there
    is none (every result is collected). The caller holds the job's lease."""
    record = JobStore(ref.state_dir, ref.job_id).read_job()
    round_ = max(record.rounds, 1)
    following = steps.plan_retry(round_)
    if following:
        log.info("job %s: round %d sends %d batch(es)", ref.job_id, round_ + 1, len(following))
        for chunk_id in following:
            steps.submit(chunk_id)
        return False
    return True


def tick(ref: JobRef, steps: TickSteps, *, log: Log = logger) -> bool:
    """Move a job forward once, without waiting; True once every result is collected.

    :func:`advance`, then, when the round has ended, collects it and :func:`finish_round`. The
    caller writes the output once this is True, holding the job's lease around both; this holds
    it too (re-entrant).

    Raises:
        JobLocked: Another run holds the job.
    """
    with JobStore(ref.state_dir, ref.job_id).lease():
        chunks = advance(ref, steps)
        if chunks is None:
            return False
        steps.collect(chunks)
        return finish_round(ref, steps, log=log)


def run_job(
    source: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    options: RunOptions,
    *,
    state_dir: str,
    output: str,
    overwrite: bool = False,
    limit: int | None = None,
    parser: Callable[[str], Any] | None = None,
    on_change: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    realtime_client: RealtimeClient | None = None,
) -> JobSummary:
    """Plan (or resume), run every round of and write the output of a job in this process (no
    Prefect), holding its lease throughout: a second run of the same job meanwhile fails with
    :class:`~prefect_llm_batch.errors.JobLocked` and changes nothing.

    Args:
        source: The table.
        spec: The job.
        provider: Its provider client.
        target: Where its HTTP goes.
        options: How it runs.
        state_dir: The state directory.
        output: The Parquet file to write.
        overwrite: Replace ``output`` if it exists.
        limit: Only the first rows.
        parser: Parses answers for a response schema (see :func:`~prefect_llm_batch.jobs.assemble`).
        on_change: Called with the progress when it changes.
        sleep: How to wait (tests pass a fake).
        realtime_client: Send the job in realtime mode through this client (else in batches).

    Returns:
        The job's summary.
    """
    identity = identify(source, spec, provider, target, limit=limit, cache=options.cache)
    with JobStore(state_dir, identity.job_id).lease():
        ref = prepare(
            source, spec, provider, target, state_dir=state_dir, limit=limit, cache=options.cache,
            identity=identity,
        )  # fmt: skip
        run_batches(ref, provider, options, on_change=on_change, sleep=sleep, realtime_client=realtime_client)
        return assemble(ref, output=output, overwrite=overwrite, parser=parser)


def run_batches(
    ref: JobRef,
    provider: BatchProvider,
    options: RunOptions,
    *,
    on_change: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    realtime_client: RealtimeClient | None = None,
) -> None:
    """:func:`run_rounds` of a prepared job with :class:`PlainSteps`, holding its lease (in
    realtime mode when a ``realtime_client`` is given)."""
    steps = PlainSteps(
        ref, provider, options, on_change=on_change, sleep=sleep, realtime_client=realtime_client
    )
    run_rounds(ref, steps, options, sleep=sleep, realtime=realtime_client is not None)
