"""Polling a job's batches until they end: their status in the chunk states, progress, cancelling
(``max_wait`` or the user's), resubmitting retryable failures, settling provisionally adopted batches."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from ..errors import BatchFailed, ProviderRejected
from ..providers.base import BatchInfo, BatchProvider, BatchStatus
from ..results import short
from ..spec import EMBEDDINGS_ENDPOINT, RunOptions
from ..store import ChunkState, JobStore
from .budget import Budget
from .chunks import chunk_custom_ids
from .identity import JobRef

logger = logging.getLogger("prefect_llm_batch")


#: Batch failure codes that a later resubmission can fix.
RETRYABLE_BATCH_CODES = frozenset({"token_limit_exceeded"})
#: How many times one chunk is submitted at most (after retryable batch failures).
MAX_CHUNK_ATTEMPTS = 3


def apply_status(state: ChunkState, info: BatchInfo) -> bool:
    """Copy a batch's status into a chunk state; True when anything visible changed."""
    before = (state.status, state.completed, state.failed, state.total)
    state.status = info.status.value
    state.raw_status = info.raw_status
    state.total, state.completed, state.failed = info.total, info.completed, info.failed
    if info.usage:
        state.usage = dict(info.usage)
    if info.errors:
        state.error = short(info.error_summary())
        state.error_code = info.first_error_code
    return before != (state.status, state.completed, state.failed, state.total)


def _cancel(provider: BatchProvider, batch_id: str) -> BatchInfo:
    """Cancel a batch; one that ended since it was last read (so the provider refuses) is just read."""
    try:
        return provider.cancel(batch_id)
    except ProviderRejected:
        info = provider.retrieve(batch_id)
        if info.status.ended:
            return info
        raise


def ended(state: ChunkState) -> bool:
    """True once the chunk's batch will not change any more and is proven to be the chunk's
    (a provisional batch has not ended for the job until its results say whose it is)."""
    return state.status is not None and BatchStatus(state.status).ended and not state.provisional


class Progress(BaseModel):
    """Where a job's batches stand, for progress displays.

    ``requests_done`` counts requests the provider reports finished; a batch that is
    ``finalizing`` may already show all of them, so ``ended`` is what says a batch is done.
    """

    batches: int
    batches_ended: int
    requests: int
    requests_done: int
    statuses: dict[str, int]

    def describe(self) -> str:
        """One line for logs.

        Examples:
            >>> Progress(batches=3, batches_ended=1, requests=600, requests_done=340,
            ...          statuses={"completed": 1, "in_progress": 2}).describe()
            'batches 1/3 ended, requests 340/600 done (completed: 1, in_progress: 2)'
        """
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"batches {self.batches_ended}/{self.batches} ended, "
            f"requests {self.requests_done}/{self.requests} done ({statuses})"
        )


def progress(ref: JobRef, chunk_ids: list[int] | None = None) -> Progress:
    """Read the progress of a job's chunks (all, or ``chunk_ids``) from its state directory (no HTTP)."""
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()
    plans = [c for c in record.chunks if chunk_ids is None or c.chunk_id in chunk_ids]
    statuses: Counter[str] = Counter()
    done = ended_count = 0
    for plan in plans:
        state = store.read_chunk(plan.chunk_id)
        statuses[state.status or "not submitted"] += 1
        if ended(state):
            ended_count += 1
        done += min(plan.requests, (state.completed or 0) + (state.failed or 0))
    return Progress(
        batches=len(plans),
        batches_ended=ended_count,
        requests=sum(p.requests for p in plans),
        requests_done=done,
        statuses=dict(statuses),
    )


class Poll(BaseModel):
    """What one pass over a job's running batches found."""

    pending: list[int]
    resubmit: list[int]
    changed: bool


def poll_once(
    ref: JobRef, provider: BatchProvider, options: RunOptions | None = None, budget: Budget | None = None
) -> Poll:
    """Check every submitted, unfinished batch of a job once (no sleeping).

    A batch older than ``options.max_wait`` is cancelled (its unrun requests are retried in the
    next round); while a user's cancel applies, running batches are cancelled. A batch that failed
    with ``token_limit_exceeded`` is reset for resubmission (its old batch kept in ``history``).
    A batch adopted provisionally is never cancelled: once it ends, its results decide whether it
    is the chunk's; if not (or once ``max_wait`` has passed), the chunk lets it go and is
    resubmitted (see :func:`_settle_provisional`).

    With a shared ``budget``, each running batch's leases are renewed, and given back once it ended.

    Returns:
        The chunks still running, the chunks to resubmit, and whether anything visible changed.

    Raises:
        BatchFailed: A chunk was submitted :data:`MAX_CHUNK_ATTEMPTS` times and still fails.
    """
    options = options or RunOptions()
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()
    states = [store.read_chunk(c.chunk_id) for c in record.chunks]
    running = [s for s in states if s.batch_id and not ended(s)]
    cancelled_by_user = store.is_cancelled()
    poll = Poll(pending=[], resubmit=[], changed=False)
    for state in running:
        chunk_id = state.chunk_id
        assert state.batch_id is not None
        info = provider.retrieve(state.batch_id)
        if apply_status(state, info):
            poll.changed = True
            if info.status.ended:
                logger.info("chunk %d: batch %s %s", chunk_id, info.id, info.status.value)
            store.write_chunk(state)
        if budget is not None and state.budget_leases:
            if info.status.ended:
                budget.release(state.budget_leases)
                state.budget_leases = []
                store.write_chunk(state)
            else:
                budget.renew(state.budget_leases)
        if state.provisional:
            verdict = _settle_provisional(store, state, info, provider, options, cancelled_by_user)
            if verdict == "running":
                poll.pending.append(chunk_id)
            else:
                poll.changed = True
                if verdict == "resubmit":
                    poll.resubmit.append(chunk_id)
            continue
        if not info.status.ended:
            poll.pending.append(chunk_id)
            reason = _cancel_reason(state, options, cancelled_by_user)
            if reason is not None and state.cancelled_by is None:
                logger.warning("chunk %d: cancelling batch %s (%s)", chunk_id, info.id, reason)
                cancelled = _cancel(provider, state.batch_id)
                apply_status(state, cancelled)
                if not cancelled.status.ended:  # else it ended on its own meanwhile
                    state.cancelled_by = reason
                store.write_chunk(state)
            continue
        if info.status is BatchStatus.FAILED and info.first_error_code in RETRYABLE_BATCH_CODES:
            if state.attempt >= MAX_CHUNK_ATTEMPTS:
                raise BatchFailed(
                    f"batch {info.id} of chunk {chunk_id} failed {state.attempt} times: "
                    f"{info.error_summary()}",
                    batch_id=info.id,
                    code=info.first_error_code,
                )
            logger.warning(
                "chunk %d: batch %s failed (%s); it will be resubmitted",
                chunk_id,
                info.id,
                info.error_summary(),
            )
            _reset_for_resubmission(store, state)
            poll.resubmit.append(chunk_id)
    return poll


def wait(
    ref: JobRef,
    provider: BatchProvider,
    options: RunOptions | None = None,
    *,
    on_change: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    budget: Budget | None = None,
) -> list[int]:
    """Poll (see :func:`poll_once`) until every submitted batch of a job has ended.

    Returns:
        The chunks whose batch failed in a retryable way and were reset for resubmission.
    """
    options = options or RunOptions()
    store = JobStore(ref.state_dir, ref.job_id)
    watched = [c.chunk_id for c in store.read_job().chunks if store.read_chunk(c.chunk_id).batch_id]
    resubmit: list[int] = []
    if on_change is not None and any(not ended(store.read_chunk(i)) for i in watched):
        on_change(progress(ref, watched))
    while True:
        poll = poll_once(ref, provider, options, budget)
        resubmit.extend(poll.resubmit)
        if poll.changed and on_change is not None:
            on_change(progress(ref, watched))
        if not poll.pending:
            return resubmit
        sleep(options.poll_interval)


def _cancel_reason(state: ChunkState, options: RunOptions, cancelled_by_user: bool) -> str | None:
    if cancelled_by_user:
        return "user"
    too_old = options.max_wait is not None and state.intent_at is not None
    if too_old and time.time() - (state.intent_at or 0) > (options.max_wait or 0):
        return "max_wait"
    return None


def _settle_provisional(
    store: JobStore,
    state: ChunkState,
    info: BatchInfo,
    provider: BatchProvider,
    options: RunOptions,
    cancelled_by_user: bool,
) -> Literal["running", "proven", "released", "resubmit"]:
    """Decide about a batch adopted provisionally (never cancelling it).

    Once it has ended, its results are read: if the ``custom_id`` values of its readable lines
    are some of the chunk's request ids (at least one, none other) it becomes the chunk's batch
    (``proven``: collected as usual); else it is another client's, left alone, and the chunk is
    created again (``resubmit``). Lines that cannot be read, and requests with no line, do not
    count against the proof: collecting marks those rows ``missing`` and the next round sends them
    again. Custom ids are hashes of the requests, so a batch whose ids are a subset of the chunk's
    answers exactly the chunk's own requests, even if another client (e.g. a copy of this job)
    made it: joining its answers is correct. While it runs, a user's cancel lets it go and marks
    the chunk not sent (``released``); once ``max_wait`` has passed, the job lets it go and creates
    the chunk again (``resubmit``: if it was the chunk's after all, that chunk is paid twice, never
    joined twice); else it is still ``running``.
    """
    batch_id = state.batch_id
    if not info.status.ended:
        if cancelled_by_user:
            _let_go(store, state, "the job was cancelled", user=True)
            return "released"
        if _cancel_reason(state, options, cancelled_by_user=False) is None:
            return "running"
        logger.warning(
            "chunk %d: batch %s is still running after max_wait and is not proven to be this job's: "
            "it is left alone, and the chunk is created again",
            state.chunk_id,
            batch_id,
        )
        _let_go(store, state, "max_wait")
        return "resubmit"
    expected = set(chunk_custom_ids(store, state.chunk_id))
    found: set[str] = set()
    if info.status.has_results:
        embeddings = store.read_job().endpoint == EMBEDDINGS_ENDPOINT
        read = provider.read_results(info, embeddings=embeddings)
        found = {cid for cid in read.table.column("custom_id").to_pylist() if cid is not None}
        del read
    if found and found <= expected:
        state.provisional = False
        store.write_chunk(state)
        logger.info(
            "chunk %d: batch %s is its own (its results carry its request ids)", state.chunk_id, batch_id
        )
        return "proven"
    logger.warning(
        "chunk %d: batch %s is not this job's (%d of its %d result ids are the chunk's): it is left "
        "alone, and the chunk is created again",
        state.chunk_id,
        batch_id,
        len(found & expected),
        len(found),
    )
    _let_go(store, state, "not this job's", user=cancelled_by_user)
    return "released" if cancelled_by_user else "resubmit"


def _let_go(store: JobStore, state: ChunkState, reason: str, *, user: bool = False) -> None:
    """Forget a provisional batch (kept in ``history``, never adopted by the job again) without
    cancelling it; with ``user``, the chunk is marked cancelled before it was sent."""
    state.history.append(
        {"batch_id": state.batch_id, "status": state.status, "attempt": state.attempt, "let_go": reason}
    )
    state.batch_id = state.intent_at = None
    state.provisional = False
    state.status = state.raw_status = state.error = state.error_code = None
    state.total = state.completed = state.failed = None
    if user:
        state.status, state.raw_status, state.cancelled_by = (
            BatchStatus.CANCELLED.value,
            "not submitted",
            "user",
        )
    store.write_chunk(state)


def _reset_for_resubmission(store: JobStore, state: ChunkState) -> None:
    state.history.append(
        {"batch_id": state.batch_id, "status": state.status, "error": state.error, "attempt": state.attempt}
    )
    state.attempt += 1
    state.batch_id = state.intent_at = None
    state.status = state.raw_status = state.error = state.error_code = None
    state.total = state.completed = state.failed = None
    store.write_chunk(state)


def cancel_job(ref: JobRef, provider: BatchProvider, reason: str = "cancelled by the user") -> list[str]:
    """Cancel every running batch of a job and mark the job cancelled (no retry rounds this run).

    A batch adopted provisionally (not proven to be this job's) is never cancelled. If it has
    already ended, its results are read first (see :func:`_settle_provisional`): when they prove it
    the chunk's, it stays the chunk's, and running the job again collects it instead of paying for
    the chunk again. Otherwise the chunk lets it go and is marked not sent. Finished rows are kept;
    running the job again resumes the rest. Returns the cancelled batch ids.
    """
    store = JobStore(ref.state_dir, ref.job_id)
    store.write_cancel(reason)
    cancelled = []
    for plan in store.read_job().chunks:
        state = store.read_chunk(plan.chunk_id)
        if state.provisional and state.batch_id:  # not proven to be this job's: never cancelled
            info = provider.retrieve(state.batch_id)
            if info.status.ended:  # paid for: its results may prove it the chunk's
                apply_status(state, info)  # saved by the settling
                _settle_provisional(store, state, info, provider, RunOptions(), cancelled_by_user=True)
                continue
            logger.warning(
                "chunk %d: batch %s is not proven to be this job's: left alone", plan.chunk_id, state.batch_id
            )
            _let_go(store, state, "the job was cancelled", user=True)
            continue
        if state.batch_id and not ended(state):
            info = _cancel(provider, state.batch_id)
            apply_status(state, info)
            if not info.status.ended:
                state.cancelled_by = "user"
                cancelled.append(state.batch_id)
            store.write_chunk(state)
    logger.info("job %s: cancel requested for %d batch(es)", ref.job_id, len(cancelled))
    return cancelled


def failed_batches(ref: JobRef) -> list[ChunkState]:
    """Chunks whose batch failed for good (validation), for the caller to report."""
    store = JobStore(ref.state_dir, ref.job_id)
    states = [store.read_chunk(c.chunk_id) for c in store.read_job().chunks]
    return [
        s
        for s in states
        if s.status == BatchStatus.FAILED.value and s.error_code not in RETRYABLE_BATCH_CODES
    ]
