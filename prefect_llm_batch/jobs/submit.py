"""Submitting a chunk at most once: wait for capacity, upload, record the intent, create the batch
(or adopt the one an interrupted or ambiguous create made), record the batch id."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import AmbiguousCreate
from ..providers.base import BatchInfo, BatchProvider, BatchStatus
from ..spec import RunOptions
from ..store import ChunkState, JobRecord, JobStore
from .budget import Budget
from .identity import JobRef
from .poll import apply_status

logger = logging.getLogger("prefect_llm_batch")


#: How far back (seconds) before the intent to create to look when adopting a batch whose create
#: was ambiguous, where the provider proves whose a batch is (metadata and input file).
ADOPT_LOOKBACK_S = 3600.0
#: How far back (seconds) before the intent to create to look where the provider cannot prove
#: whose a batch is (``proves_adoption`` False): the chunk's batch is made after the intent was
#: recorded, so an earlier batch can only be another's; this margin covers the difference between
#: this machine's clock and the provider's. A wider window would only let another client's batch
#: of the same size be adopted provisionally (and the chunk wait until it ends).
ADOPT_CLOCK_SKEW_S = 60.0


def _metadata(ref: JobRef, state: ChunkState) -> dict[str, str]:
    return {"job_id": ref.job_id, "chunk_id": str(state.chunk_id), "attempt": str(state.attempt)}


def _record_batch(store: JobStore, state: ChunkState, info: BatchInfo) -> ChunkState:
    state.batch_id = info.id
    apply_status(state, info)
    store.write_chunk(state)
    return state


def _adopt(store: JobStore, state: ChunkState, info: BatchInfo, provider: BatchProvider) -> ChunkState:
    """Record a batch found after an ambiguous create: as the chunk's when the provider proves it
    (metadata and input file), else provisionally (see :func:`~prefect_llm_batch.jobs.poll.poll_once`)."""
    state.provisional = not provider.proves_adoption
    if state.provisional:
        logger.warning(
            "chunk %d: adopted batch %s provisionally: it is not proven to be this job's, so it is "
            "never cancelled, and counts as the chunk's only if its results carry the chunk's "
            "request ids",
            state.chunk_id,
            info.id,
        )
    else:
        logger.info("chunk %d: adopted batch %s", state.chunk_id, info.id)
    return _record_batch(store, state, info)


def adopt_after(provider: BatchProvider, intent_at: float) -> float:
    """The earliest creation time (unix seconds) of a batch that may be adopted for a chunk whose
    intent to create was recorded at ``intent_at``: :data:`ADOPT_LOOKBACK_S` before it where the
    provider proves adoption, else only :data:`ADOPT_CLOCK_SKEW_S` before it.

    Examples:
        >>> from prefect_llm_batch.providers.anthropic import AnthropicBatchProvider
        >>> adopt_after(AnthropicBatchProvider(api_key="sk-test-FAKE"), 1000.0)
        940.0
    """
    margin = ADOPT_LOOKBACK_S if provider.proves_adoption else ADOPT_CLOCK_SKEW_S
    return intent_at - margin


def _in_flight(store: JobStore, record: JobRecord, exclude: int) -> list[ChunkState]:
    states = (store.read_chunk(c.chunk_id) for c in record.chunks if c.chunk_id != exclude)
    # a batch that ended frees its place even before it is proven to be the chunk's
    return [s for s in states if s.batch_id and not (s.status and BatchStatus(s.status).ended)]


def _owned_batches(store: JobStore, chunk_id: int) -> set[str]:
    """Batch ids other chunks of the job own (never to be adopted for ``chunk_id``)."""
    owned: set[str] = set()
    for plan in store.read_job().chunks:
        if plan.chunk_id == chunk_id:
            continue
        state = store.read_chunk(plan.chunk_id)
        owned.update(h["batch_id"] for h in state.history if h.get("batch_id"))
        if state.batch_id:
            owned.add(state.batch_id)
    return owned


def _not_adoptable(store: JobStore, state: ChunkState) -> set[str]:
    """Batches ``state``'s chunk must never adopt: other chunks' and those it already let go."""
    return _owned_batches(store, state.chunk_id) | {h["batch_id"] for h in state.history if h.get("batch_id")}


def wait_for_capacity(
    ref: JobRef,
    chunk_id: int,
    provider: BatchProvider,
    options: RunOptions,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Block until submitting ``chunk_id`` keeps the job within ``max_in_flight_batches`` and
    ``max_enqueued_tokens``, refreshing the status of the job's running batches meanwhile.
    A chunk that alone exceeds the token budget is sent once nothing else is in flight."""
    if options.max_in_flight_batches is None and options.max_enqueued_tokens is None:
        return
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()
    tokens = {c.chunk_id: c.est_tokens for c in record.chunks}
    logged = False
    while True:
        running = _in_flight(store, record, chunk_id)
        full = options.max_in_flight_batches is not None and len(running) >= options.max_in_flight_batches
        enqueued = sum(tokens.get(s.chunk_id, 0) for s in running)
        over = (
            options.max_enqueued_tokens is not None
            and running
            and enqueued + tokens.get(chunk_id, 0) > options.max_enqueued_tokens
        )
        if not full and not over:
            return
        if not logged:
            logger.info(
                "chunk %d waits: %d batch(es) with ~%d tokens in flight", chunk_id, len(running), enqueued
            )
            logged = True
        sleep(options.poll_interval)
        for state in running:
            assert state.batch_id is not None
            if apply_status(state, provider.retrieve(state.batch_id)):
                store.write_chunk(state)


def submit_chunk(
    ref: JobRef,
    chunk_id: int,
    provider: BatchProvider,
    options: RunOptions | None = None,
    sleep: Callable[[float], None] = time.sleep,
    budget: Budget | None = None,
    wait_for_budget: bool = True,
) -> ChunkState:
    """Make sure chunk ``chunk_id`` has a provider batch, creating one at most once.

    Order of events, so that no crash can make us pay twice: if the chunk already has a batch,
    nothing is sent; if an earlier run recorded the intent to create but no batch id, the
    provider's batches are listed and one carrying this chunk's ``{job_id, chunk_id, attempt}``
    metadata and made from the input file this chunk uploaded is adopted; otherwise the input
    file is uploaded, the intent recorded, and the batch created. A create that fails ambiguously
    is resolved by listing, and only created again when no batch carries the metadata. Where
    batches carry no metadata (the provider's ``proves_adoption`` is False), a found batch is
    adopted provisionally: :func:`~prefect_llm_batch.jobs.poll.poll_once` settles whose it is once it ends.

    With a shared ``budget`` (see :mod:`~prefect_llm_batch.jobs.budget`), the chunk's estimated
    tokens are taken from it before the upload, and given back if no batch comes of it. While it
    is full, the call waits (refreshing the job's own running batches, whose end gives their share
    back), or, with ``wait_for_budget=False`` (a poller that must not block), returns the chunk
    unsubmitted: the next pass tries again.
    """
    options = options or RunOptions()
    store = JobStore(ref.state_dir, ref.job_id)
    state = store.read_chunk(chunk_id)
    if state.batch_id:
        return state
    metadata = _metadata(ref, state)
    n_requests = next(c.requests for c in store.read_job().chunks if c.chunk_id == chunk_id)
    if state.intent_at is not None:
        found = provider.find_batch(
            metadata,
            created_after=adopt_after(provider, state.intent_at),
            requests=n_requests,
            exclude=_not_adoptable(store, state),
            input_file_id=state.input_file_id,
        )
        if found is not None:
            logger.info("chunk %d: found batch %s, created by an earlier run", chunk_id, found.id)
            return _adopt(store, state, found, provider)
    wait_for_capacity(ref, chunk_id, provider, options, sleep)
    if store.is_cancelled():  # the user cancelled while this chunk waited: do not pay for it
        state.status, state.raw_status, state.cancelled_by = (
            BatchStatus.CANCELLED.value,
            "not submitted",
            "user",
        )
        store.write_chunk(state)
        logger.info("chunk %d: not submitted, the job was cancelled", chunk_id)
        return state
    if budget is not None and not state.budget_leases:
        leases = _take_budget(ref, store, chunk_id, provider, options, sleep, budget, wait_for_budget)
        if leases is None:
            return state
        state.budget_leases = leases
        store.write_chunk(state)
    try:
        return _create(ref, store, state, provider, metadata, n_requests, options)
    except BaseException:
        if budget is not None and state.budget_leases and not state.batch_id:
            budget.release(state.budget_leases)
            state.budget_leases = []
            store.write_chunk(state)
        raise


def _take_budget(
    ref: JobRef,
    store: JobStore,
    chunk_id: int,
    provider: BatchProvider,
    options: RunOptions,
    sleep: Callable[[float], None],
    budget: Budget,
    wait: bool,
) -> list[str] | None:
    """The chunk's share of the shared budget (None: full, and not waiting)."""
    record = store.read_job()
    tokens = next(c.est_tokens for c in record.chunks if c.chunk_id == chunk_id)
    logged = False
    while True:
        leases = budget.try_acquire(tokens)
        if leases is not None or not wait:
            return leases
        if not logged:
            logger.info("chunk %d waits for the shared provider budget (%s)", chunk_id, budget.describe())
            logged = True
        sleep(options.poll_interval)
        for state in _in_flight(store, record, chunk_id):  # the job's own batches give their share back
            assert state.batch_id is not None
            if apply_status(state, provider.retrieve(state.batch_id)):
                if state.status and BatchStatus(state.status).ended and state.budget_leases:
                    budget.release(state.budget_leases)
                    state.budget_leases = []
                store.write_chunk(state)


def _create(
    ref: JobRef,
    store: JobStore,
    state: ChunkState,
    provider: BatchProvider,
    metadata: dict[str, str],
    n_requests: int,
    options: RunOptions,
) -> ChunkState:
    """Upload the chunk's batch file (once), record the intent, create the batch (see
    :func:`submit_chunk`). Where the provider can be told (``expires_remote_files``), the input
    file and the batch's output files expire after ``options.input_file_expiry`` and
    ``options.output_expiry`` seconds."""
    chunk_id = state.chunk_id
    data = store.read_chunk_input(chunk_id)
    expiring = provider.expires_remote_files
    upload_expiry: dict[str, Any] = {"expires_after": options.input_file_expiry} if expiring else {}
    output_expiry: dict[str, Any] = {"output_expires_after": options.output_expiry} if expiring else {}
    if state.input_file_id is None:
        name = f"{ref.job_id}-chunk-{chunk_id:05d}.jsonl"
        state.input_file_id = provider.upload(data, name, **upload_expiry)
        store.write_chunk(state)
    store.ensure_held()  # a run that lost its lease to another creates nothing more
    state.intent_at = time.time()
    store.write_chunk(state)
    try:
        info = provider.create(data, state.input_file_id, metadata, requests=n_requests, **output_expiry)
    except AmbiguousCreate as exc:
        logger.warning("chunk %d: create had no clear answer (%s); looking for the batch", chunk_id, exc)
        found = provider.find_batch(
            metadata,
            created_after=adopt_after(provider, state.intent_at),
            requests=n_requests,
            exclude=_not_adoptable(store, state),
            input_file_id=state.input_file_id,
        )
        if found is None:
            logger.warning("chunk %d: no batch carries its metadata; creating it", chunk_id)
            info = provider.create(data, state.input_file_id, metadata, requests=n_requests, **output_expiry)
        else:
            return _adopt(store, state, found, provider)
    logger.info("chunk %d: batch %s has %d requests", chunk_id, info.id, n_requests)
    return _record_batch(store, state, info)
