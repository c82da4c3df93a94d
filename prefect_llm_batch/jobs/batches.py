"""Driving provider batches: submit at most once, wait, collect, cancel."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from ..batchfile import ID_HEAD, fixed_width_ids
from ..cache import ResponseCache
from ..errors import AmbiguousCreate, BatchFailed, ProviderRejected, StateError
from ..keys import split_fixed_width
from ..providers.base import BatchInfo, BatchProvider, BatchStatus
from ..results import EMBEDDING_COLUMN, RowResult, results_to_table, short
from ..spec import EMBEDDINGS_ENDPOINT, ErrorKind, RunOptions
from ..store import ChunkState, JobRecord, JobStore
from .plan import JobRef

logger = logging.getLogger("prefect_llm_batch")

#: Batch failure codes that a later resubmission can fix.
RETRYABLE_BATCH_CODES = frozenset({"token_limit_exceeded"})
#: How many times one chunk is submitted at most (after retryable batch failures).
MAX_CHUNK_ATTEMPTS = 3
#: How far back (seconds) before the intent to create to look when adopting a batch whose create
#: was ambiguous, where the provider proves whose a batch is (metadata and input file).
ADOPT_LOOKBACK_S = 3600.0
#: How far back (seconds) before the intent to create to look where the provider cannot prove
#: whose a batch is (``proves_adoption`` False): the chunk's batch is made after the intent was
#: recorded, so an earlier batch can only be another's; this margin covers the difference between
#: this machine's clock and the provider's. A wider window would only let another client's batch
#: of the same size be adopted provisionally (and the chunk wait until it ends).
ADOPT_CLOCK_SKEW_S = 60.0
#: Unknown ``custom_id`` s quoted in the one warning about them (the rest are counted).
UNKNOWN_EXAMPLES = 3
#: Batches whose results are collected at once (downloaded, parsed and stored): one batch's
#: download or parse overlaps the other's store, and memory holds two batches' results at most,
#: however many batches the job has.
COLLECTS_IN_FLIGHT = 2


def _metadata(ref: JobRef, state: ChunkState) -> dict[str, str]:
    return {"job_id": ref.job_id, "chunk_id": str(state.chunk_id), "attempt": str(state.attempt)}


def _apply(state: ChunkState, info: BatchInfo) -> bool:
    """Copy a batch's status into a chunk state; True when anything visible changed."""
    before = (state.status, state.completed, state.failed, state.total)
    state.status = info.status.value
    state.raw_status = info.raw_status
    state.total, state.completed, state.failed = info.total, info.completed, info.failed
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


def _record_batch(store: JobStore, state: ChunkState, info: BatchInfo) -> ChunkState:
    state.batch_id = info.id
    _apply(state, info)
    store.write_chunk(state)
    return state


def _adopt(store: JobStore, state: ChunkState, info: BatchInfo, provider: BatchProvider) -> ChunkState:
    """Record a batch found after an ambiguous create: as the chunk's when the provider proves it
    (metadata and input file), else provisionally (see :func:`poll_once`)."""
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


def ended(state: ChunkState) -> bool:
    """True once the chunk's batch will not change any more and is proven to be the chunk's
    (a provisional batch has not ended for the job until its results say whose it is)."""
    return state.status is not None and BatchStatus(state.status).ended and not state.provisional


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
            if _apply(state, provider.retrieve(state.batch_id)):
                store.write_chunk(state)


def submit_chunk(
    ref: JobRef,
    chunk_id: int,
    provider: BatchProvider,
    options: RunOptions | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ChunkState:
    """Make sure chunk ``chunk_id`` has a provider batch, creating one at most once.

    Order of events, so that no crash can make us pay twice: if the chunk already has a batch,
    nothing is sent; if an earlier run recorded the intent to create but no batch id, the
    provider's batches are listed and one carrying this chunk's ``{job_id, chunk_id, attempt}``
    metadata and made from the input file this chunk uploaded is adopted; otherwise the input
    file is uploaded, the intent recorded, and the batch created. A create that fails ambiguously
    is resolved by listing, and only created again when no batch carries the metadata. Where
    batches carry no metadata (the provider's ``proves_adoption`` is False), a found batch is
    adopted provisionally: :func:`poll_once` settles whose it is once it ends.
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
    data = store.read_chunk_input(chunk_id)
    if state.input_file_id is None:
        state.input_file_id = provider.upload(data, f"{ref.job_id}-chunk-{chunk_id:05d}.jsonl")
        store.write_chunk(state)
    store.ensure_held()  # a run that lost its lease to another creates nothing more
    state.intent_at = time.time()
    store.write_chunk(state)
    try:
        info = provider.create(data, state.input_file_id, metadata, requests=n_requests)
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
            info = provider.create(data, state.input_file_id, metadata, requests=n_requests)
        else:
            return _adopt(store, state, found, provider)
    logger.info("chunk %d: batch %s has %d requests", chunk_id, info.id, n_requests)
    return _record_batch(store, state, info)


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


def poll_once(ref: JobRef, provider: BatchProvider, options: RunOptions | None = None) -> Poll:
    """Check every submitted, unfinished batch of a job once (no sleeping).

    A batch older than ``options.max_wait`` is cancelled (its unrun requests are retried in the
    next round); while a user's cancel applies, running batches are cancelled. A batch that failed
    with ``token_limit_exceeded`` is reset for resubmission (its old batch kept in ``history``).
    A batch adopted provisionally is never cancelled: once it ends, its results decide whether it
    is the chunk's; if not (or once ``max_wait`` has passed), the chunk lets it go and is
    resubmitted (see :func:`_settle_provisional`).

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
        if _apply(state, info):
            poll.changed = True
            if info.status.ended:
                logger.info("chunk %d: batch %s %s", chunk_id, info.id, info.status.value)
            store.write_chunk(state)
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
                _apply(state, cancelled)
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
        poll = poll_once(ref, provider, options)
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
    expected = set(_chunk_custom_ids(store, state.chunk_id))
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


def _id_strings(matrix: npt.NDArray[np.uint8]) -> list[str]:
    return split_fixed_width(matrix.tobytes(), matrix.shape[1])


def _chunk_custom_ids(store: JobStore, chunk_id: int) -> list[str]:
    """The ``custom_id`` of every request of a chunk, in order: from the ids file prepare wrote
    beside its batch file, else (state written before there were such files) from the batch file."""
    written = store.read_chunk_ids(chunk_id)
    if written is not None:
        return written
    data = store.read_chunk_input(chunk_id)
    matrix = fixed_width_ids(data)
    if matrix is not None:
        return _id_strings(matrix)
    ids = []
    start = len(ID_HEAD)
    for line in data.splitlines():
        if not line:
            continue
        end = line.find(b'"', start) if line.startswith(ID_HEAD) else -1
        custom_id = line[start:end]
        if end > start and custom_id.isascii() and b"\\" not in custom_id:  # no escapes: the bytes are the id
            ids.append(custom_id.decode("ascii"))
        else:
            ids.append(str(orjson.loads(line)["custom_id"]))
    return ids


def _lookup(ids: pa.ChunkedArray[Any], wanted: pa.Array[Any]) -> npt.NDArray[np.int64]:
    """For every id, its position in ``wanted`` (the first, for a repeated id) or -1."""
    found = pc.index_in(ids, value_set=wanted)
    return np.asarray(pc.fill_null(found, pa.scalar(-1, found.type))).astype(np.int64)


def select_results(
    lines: pa.Table, expected: Sequence[str] | pa.Array[Any], batch_id: str, *, chunk_id: int = 0
) -> pa.Table:
    """Pick one result per expected ``custom_id`` from a batch's result lines, in ``expected`` order.

    Of several lines for one id, the first successful one wins (else the first); successful
    lines with different answers (answer text, or embedding) are never picked from: the id gets
    a ``conflicting_results`` row (no answer; identical answers are one answer). Lines for ids
    not in ``expected`` are ignored with one warning (a count and a few of them); an id without
    a line gets a ``missing`` row.
    Vectorised: one lookup of the lines' ids (``pyarrow.compute.index_in``), then integer work;
    lines that already are one per request in ``expected`` order are returned as they are.

    Args:
        lines: The batch's results, one row per line (:meth:`BatchProvider.download_results`).
        expected: The distinct ``custom_id`` of every request of the chunk (a list or a string array).
        batch_id: The batch (written into ``missing`` rows).
        chunk_id: The chunk, for log messages.

    Returns:
        A table of ``lines``' schema, one row per entry of ``expected``.

    Examples:
        >>> from prefect_llm_batch.spec import ErrorKind
        >>> lines = results_to_table([RowResult("a", error_kind=ErrorKind.SERVER_ERROR),
        ...                           RowResult("a", response="yes"), RowResult("z", response="?")])
        >>> picked = select_results(lines, ["a", "b"], "batch_1")
        >>> picked["response"].to_pylist(), picked["response_error_kind"].to_pylist()
        (['yes', None], [None, 'missing'])
        >>> two = results_to_table([RowResult("a", response="yes"), RowResult("a", response="no")])
        >>> select_results(two, ["a"], "batch_1")["response_error_kind"].to_pylist()
        ['conflicting_results']
    """
    wanted = expected if isinstance(expected, pa.Array) else pa.array(expected, pa.string())
    ids = lines.column("custom_id")
    slots = _lookup(ids, wanted)
    known = slots >= 0
    if not known.all():
        unknown = np.flatnonzero(~known)
        shown = ", ".join(str(cid) for cid in ids.take(unknown[:UNKNOWN_EXAMPLES]).to_pylist())
        logger.warning(
            "chunk %d: batch %s returned %d line(s) for unknown custom_ids (ignored), e.g. %s",
            chunk_id, batch_id, len(unknown), shown,
        )  # fmt: skip
    chosen = np.full(len(wanted), -1, np.int64)
    conflicts, answers = np.zeros(0, np.int64), list[int]()
    if known.all() and (len(slots) == 0 or np.bincount(slots).max() <= 1):
        chosen[slots] = np.arange(len(slots))  # the usual case: one line per request, O(n)
    else:
        ok = np.asarray(pc.is_null(lines.column("response_error_kind")))
        # lines in order of preference: successes, then the rest, each in line order; an id takes its first
        preferred = np.concatenate((np.flatnonzero(ok & known), np.flatnonzero(~ok & known)))
        found, first = np.unique(slots[preferred], return_index=True)
        chosen[found] = preferred[first]
        conflicts, answers = _conflicting(lines, np.flatnonzero(ok & known), slots, chosen)
    gaps = chosen < 0
    count = int(np.count_nonzero(gaps))
    if not count and len(chosen) == lines.num_rows and np.array_equal(chosen, np.arange(len(chosen))):
        picked = lines  # the lines are the answer, in order: nothing to move
    else:
        rows = pa.array(chosen, pa.int64(), mask=gaps if count else None)
        columns = [lines.column(i).take(rows) for i in range(1, lines.num_columns)]
        placeholder = pa.nulls(len(chosen), lines.schema.field(0).type)  # replaced by `wanted` below
        picked = pa.Table.from_arrays([placeholder, *columns], schema=lines.schema)
    if count:
        missing = pa.array(gaps)
        logger.warning("chunk %d: batch %s returned no line for %d request(s)", chunk_id, batch_id, count)
        fill = {
            "response_error_kind": ErrorKind.MISSING.value,
            "response_error": "the provider returned no result line",
            "response_batch_id": batch_id,
        }
        for name, value in fill.items():
            index = picked.schema.get_field_index(name)
            column = pc.if_else(missing, pa.scalar(value, pa.string()), picked.column(index))
            picked = picked.set_column(index, picked.field(index), column)
        index = picked.schema.get_field_index("response_cached")
        cached = cast("pa.ChunkedArray[Any]", pc.fill_null(picked.column(index), pa.scalar(False)))
        picked = picked.set_column(index, picked.field(index), cached)
    if len(conflicts):
        logger.warning(
            "chunk %d: batch %s returned different answers for %d request(s); they are "
            "conflicting_results (no answer used or cached) and are sent again in the next round",
            chunk_id, batch_id, len(conflicts),
        )  # fmt: skip
        picked = _mark_conflicts(picked, conflicts, answers)
    return picked.set_column(0, picked.field(0), wanted)


def _conflicting(
    lines: pa.Table,
    answered: npt.NDArray[np.int64],
    slots: npt.NDArray[np.int64],
    chosen: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], list[int]]:
    """The requests (positions in ``expected``) whose successful lines (``answered``) do not all
    give the answer of the line chosen for them (another answer text, or another embedding), and
    how many different answers each got."""
    none: tuple[npt.NDArray[np.int64], list[int]] = (np.zeros(0, np.int64), [])
    counts = np.bincount(slots[answered], minlength=len(chosen)) if len(answered) else np.zeros(0, np.int64)
    if not len(counts) or counts.max() <= 1:
        return none
    again = answered[counts[slots[answered]] > 1]  # lines of requests answered more than once
    theirs = chosen[slots[again]]
    names = [name for name in ("response", EMBEDDING_COLUMN) if name in lines.column_names]
    differs = np.zeros(len(again), bool)
    for name in names:
        mine, chosen_values = lines.column(name).take(again), lines.column(name).take(theirs)
        if name == "response":
            same = pc.fill_null(
                pc.equal(mine, chosen_values), pc.and_(pc.is_null(mine), pc.is_null(chosen_values))
            )
            differs |= ~np.asarray(same)
        else:  # lists: few lines, compared in Python
            differs |= np.array(
                [a != b for a, b in zip(mine.to_pylist(), chosen_values.to_pylist(), strict=True)], bool
            )
    conflicts = np.unique(slots[again[differs]])
    if not len(conflicts):
        return none
    involved = again[np.isin(slots[again], conflicts)]
    values = [lines.column(name).take(involved).to_pylist() for name in names]
    answers: dict[int, set[str]] = {}
    for slot, *answer in zip(slots[involved].tolist(), *values, strict=True):
        answers.setdefault(slot, set()).add(repr(answer))
    return conflicts, [len(answers[slot]) for slot in conflicts.tolist()]


def _mark_conflicts(picked: pa.Table, conflicts: npt.NDArray[np.int64], answers: list[int]) -> pa.Table:
    """``picked`` with the rows of ``conflicts`` turned into ``conflicting_results`` (no answer),
    saying how many different ``answers`` each got."""
    mask = np.zeros(picked.num_rows, bool)
    mask[conflicts] = True
    at = np.zeros(picked.num_rows, np.int64)
    at[conflicts] = np.arange(len(conflicts))
    texts = [f"the provider returned {n} different answers for this request; none is used" for n in answers]
    fill: dict[str, Any] = {
        "response_error_kind": pa.scalar(ErrorKind.CONFLICTING_RESULTS.value, pa.string()),
        "response_error": pa.array(texts, pa.string()).take(cast("pa.Int64Array", pa.array(at, mask=~mask))),
    }
    where = pa.array(mask)
    for name in picked.column_names:
        index = picked.schema.get_field_index(name)
        if name in fill:
            column = pc.if_else(where, fill[name], picked.column(index))
        elif name in ("response", EMBEDDING_COLUMN):
            column = pc.if_else(where, pa.scalar(None, picked.field(index).type), picked.column(index))
        else:
            continue
        picked = picked.set_column(index, picked.field(index), column)
    return picked


def _with_attempts(table: pa.Table, attempts: int) -> pa.Table:
    index = table.schema.get_field_index("response_attempts")
    return table.set_column(
        index, table.field(index), pa.repeat(pa.scalar(attempts, pa.int64()), table.num_rows)
    )


def collect_chunk(
    ref: JobRef,
    chunk_id: int,
    provider: BatchProvider,
    options: RunOptions | None = None,
) -> int:
    """Download, parse and store the results of one ended batch; add its answers to the cache.

    Every request of the chunk gets a result: a batch that failed validation gives each an
    ``invalid_request`` error quoting the provider, and a request with no line is ``missing``.
    Returns the number of results stored.
    """
    options = options or RunOptions()
    store = JobStore(ref.state_dir, ref.job_id)
    state = store.read_chunk(chunk_id)
    if state.collected:
        return store.read_results(chunk_id).num_rows
    record = store.read_job()
    round_ = next(c.round for c in record.chunks if c.chunk_id == chunk_id)
    expected = _chunk_custom_ids(store, chunk_id)
    embeddings = record.endpoint == EMBEDDINGS_ENDPOINT
    if state.batch_id is None and state.cancelled_by == "user" and ended(state):
        # never sent: the job was cancelled before this chunk's turn
        message = "not sent: the job was cancelled"
        table = results_to_table(
            (RowResult(cid, error_kind=ErrorKind.BATCH_CANCELLED, error=message) for cid in expected),
            embeddings=embeddings,
        )
        round_ -= 1
    elif not state.batch_id or not ended(state):
        raise StateError(f"chunk {chunk_id} of job {ref.job_id} has not ended; wait for it first")
    elif (info := provider.retrieve(state.batch_id)).status is BatchStatus.FAILED:
        message = short(f"batch {info.id} failed validation: {info.error_summary()}")
        table = results_to_table(
            (
                RowResult(cid, error_kind=ErrorKind.INVALID_REQUEST, error=message, batch_id=info.id)
                for cid in expected
            ),
            embeddings=embeddings,
        )
    else:
        read = provider.read_results(info, embeddings=embeddings)
        if read.unreadable:
            logger.warning(
                "chunk %d: %d result line(s) of batch %s could not be read (%s); their requests, "
                "left without a line, are missing and sent again in the next round",
                chunk_id, read.unreadable, info.id, ", ".join(read.examples),
            )  # fmt: skip
        state.unreadable_lines = read.unreadable
        table = select_results(read.table, expected, info.id, chunk_id=chunk_id)
        del read
    store_collected(ref, state, _with_attempts(table, round_), cache=options.cache != "off")
    if not options.keep_input_files and state.input_file_id:
        try:
            provider.delete_file(state.input_file_id)
        except Exception as exc:  # cleanup must not fail a collected chunk
            logger.warning("chunk %d: could not delete input file %s: %s", chunk_id, state.input_file_id, exc)
    return table.num_rows


def collect_chunks(
    ref: JobRef,
    chunk_ids: Iterable[int],
    provider: BatchProvider,
    options: RunOptions | None = None,
    *,
    in_flight: int = COLLECTS_IN_FLIGHT,
) -> int:
    """Collect ended batches, ``in_flight`` at a time (:func:`collect_chunk` each, in threads).

    After the first failure (or an interrupt) no further chunk starts; those running finish, the
    collected ones stay collected, and the next run collects the rest. The first failure is
    raised; any other one is logged.

    Args:
        ref: The job.
        chunk_ids: Chunks whose batches have ended.
        provider: The job's provider (its client is shared by the threads).
        options: How the job runs (the cache, the input files).
        in_flight: Most chunks collected at once.

    Returns:
        The number of results stored.

    Raises:
        ValueError: ``in_flight`` is below 1.
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, not {in_flight}")
    stop = threading.Event()

    def collect(chunk_id: int) -> int | None:
        if stop.is_set():
            return None  # not started: left for the next run
        try:
            return collect_chunk(ref, chunk_id, provider, options)
        except BaseException:
            stop.set()
            raise

    chunks = list(chunk_ids)
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="prefect-llm-batch-collect") as pool:
        try:
            futures = [pool.submit(collect, c) for c in chunks]
            wait_futures(futures)
        except BaseException:  # an interrupt: start nothing more, wait for those running
            stop.set()
            raise
    failures = [(c, f.exception()) for c, f in zip(chunks, futures, strict=True) if f.exception()]
    for chunk_id, error in failures[1:]:
        logger.warning("chunk %d: collecting it failed too: %s", chunk_id, error)
    if failures:
        raise cast("BaseException", failures[0][1])
    return sum(f.result() or 0 for f in futures)


def store_collected(
    ref: JobRef, state: ChunkState, table: pa.Table, *, cache: bool = True, tag: str | None = None
) -> None:
    """Store a chunk's results, add its answers to the response cache, and mark it collected.

    The cache's segment holds the stored file's bytes (a file of its own, see
    :meth:`~prefect_llm_batch.cache.ResponseCache.add_results`): nothing is encoded twice.

    Args:
        ref: The job.
        state: The chunk's state (saved, collected).
        table: One result per request of the chunk.
        cache: Add the answers to the response cache.
        tag: The end of the segment's name (default ``a{attempt}``).
    """
    store = JobStore(ref.state_dir, ref.job_id)
    stored = store.write_results(state.chunk_id, table)
    if cache and table.column("response_error_kind").null_count:  # some answers (rows without error)
        name = f"{ref.job_id}-chunk-{state.chunk_id:05d}-{tag or f'a{state.attempt}'}"
        ResponseCache(ref.state_dir).add_results(name, stored)
    state.collected = True
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
                _apply(state, info)  # saved by the settling
                _settle_provisional(store, state, info, provider, RunOptions(), cancelled_by_user=True)
                continue
            logger.warning(
                "chunk %d: batch %s is not proven to be this job's: left alone", plan.chunk_id, state.batch_id
            )
            _let_go(store, state, "the job was cancelled", user=True)
            continue
        if state.batch_id and not ended(state):
            info = _cancel(provider, state.batch_id)
            _apply(state, info)
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
