"""Collecting ended batches: download and parse their results, pick one result per request, store
them and add the answers to the response cache."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..cache import ResponseCache
from ..errors import StateError
from ..providers.base import BatchProvider, BatchStatus
from ..results import EMBEDDING_COLUMN, RowResult, results_to_table, short
from ..spec import EMBEDDINGS_ENDPOINT, ErrorKind, RunOptions
from ..store import ChunkState, JobStore
from .chunks import chunk_custom_ids
from .identity import JobRef
from .poll import ended

logger = logging.getLogger("prefect_llm_batch")


#: Unknown ``custom_id`` s quoted in the one warning about them (the rest are counted).
UNKNOWN_EXAMPLES = 3
#: Batches whose results are collected at once (downloaded, parsed and stored): one batch's
#: download or parse overlaps the other's store, and memory holds two batches' results at most,
#: however many batches the job has.
COLLECTS_IN_FLIGHT = 2


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


def with_attempts(table: pa.Table, attempts: int) -> pa.Table:
    """``table`` with every row's ``response_attempts`` set to ``attempts``."""
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
    expected = chunk_custom_ids(store, chunk_id)
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
        if info.usage:  # the batch's own count of what it billed (final once it ended)
            state.usage = dict(info.usage)
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
    store_collected(ref, state, with_attempts(table, round_), cache=options.cache != "off")
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
