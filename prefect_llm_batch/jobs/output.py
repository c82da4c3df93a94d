"""Assembling the output: every row, in order, joined to the latest answer of its request."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import StateError
from ..files import write_parquet_batches_atomic
from ..keys import Digests, ResultIndex, canonical_json, decode_custom_ids
from ..moderations import MODERATION_SCHEMA
from ..results import (
    OUTPUT_FIELDS,
    RESULT_SCHEMA,
    cast_embeddings,
    embedding_type,
    join_at,
    parse_structured,
    result_schema,
)
from ..schemas import ResponseSchema
from ..shards import shard_fingerprint
from ..spec import EMBEDDINGS_ENDPOINT, MODERATIONS_ENDPOINT
from ..store import JobStore
from ..table import SCAN_BATCH_ROWS, TableScan, dictionary_columns, fingerprint, read_ahead, scan_table
from .estimate import estimate
from .identity import JobRef
from .spend import job_cost

logger = logging.getLogger("prefect_llm_batch")

#: The source of a shard's borrowed answers among :class:`JobAnswers`' sources.
BORROWED = "borrowed"
#: Where answers come from: the cache (None), borrowed from earlier shards, or a chunk.
Source: TypeAlias = "int | str | None"


class JobSummary(BaseModel):
    """What a finished job did.

    Token counts are those of distinct requests sent by this job (what was billed), not a sum
    over rows, and exclude answers taken from the cache. ``unreadable_lines`` counts the result
    lines the job's batches returned that could not be read (not JSON, or no ``custom_id``):
    their requests were ``missing`` and sent again.

    Costs are USD at batch prices (:mod:`prefect_llm_batch.costs`), None for a model without a
    price: ``estimated_cost_usd`` is the estimate made before anything was sent (the plan, as
    ``prefect-llm-batch estimate`` reports it), ``cost_usd`` the cost of the tokens billed: every
    batch the job sent, in every round, by the ``usage`` its provider reported for the batch when
    it gives one (OpenAI), else by its result lines (:func:`~prefect_llm_batch.jobs.spend.job_spend`).
    """

    job_id: str
    output: str
    state_dir: str
    provider: str
    model: str
    rows: int
    unique_requests: int
    cached_requests: int = 0
    ok_rows: int
    error_rows: int
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    batch_ids: list[str] = Field(default_factory=list)
    rounds: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    estimated_cost_usd: float | None = None
    mode: str = "batch"
    mode_reason: str = ""
    unreadable_lines: int = 0
    #: How ``max_enqueued_tokens`` / ``max_in_flight_batches`` were held: shared with other jobs
    #: (a Prefect server), or this job's own limits only; empty when neither was set.
    budget: str = ""
    #: Why the job stopped before every retry round was sent (``max_cost_usd``); empty when it did not.
    stopped: str = ""

    @property
    def error_rate(self) -> float:
        """Share of rows with an error (0 for an empty table)."""
        return self.error_rows / self.rows if self.rows else 0.0


def latest_results(store: JobStore, columns: list[str] | None = None) -> tuple[pa.Table, list[str]]:
    """Every request's latest result (cached answers, then each round in order), and the batch ids.

    Args:
        store: The job's state.
        columns: Read only these columns (``custom_id`` is always read). The rows come in the
            same order whatever the columns, so a table of ids and a later one of answers align.
    """
    record = store.read_job()
    schema = result_schema(embeddings=record.endpoint == EMBEDDINGS_ENDPOINT)
    if columns is not None:
        wanted = {"custom_id", *columns}
        schema = pa.schema([field for field in schema if field.name in wanted])
        columns = schema.names
    first: list[pa.Table] = []  # cached answers and round 1: each request at most once
    later: list[pa.Table] = []  # retry rounds, in order: they replace earlier results
    cached = store.read_cached_results(columns)
    if cached is not None:
        first.append(cached.select(schema.names).cast(schema))
    borrowed = store.read_borrowed_results(columns)  # (a shard: answers sent by earlier shards)
    if borrowed is not None:
        first.append(borrowed.select(schema.names).cast(schema))
    batch_ids: list[str] = []
    for plan in sorted(record.chunks, key=lambda c: (c.round, c.chunk_id)):
        state = store.read_chunk(plan.chunk_id)
        if not state.collected:
            raise StateError(f"chunk {plan.chunk_id} of job {record.job_id} is not collected yet")
        part = store.read_results(plan.chunk_id, columns).select(schema.names).cast(schema)
        (first if plan.round <= 1 else later).append(part)
        batch_ids.extend(h["batch_id"] for h in state.history if h.get("batch_id"))
        if state.batch_id:
            batch_ids.append(state.batch_id)
    results = pa.concat_tables(first) if first else schema.empty_table()
    if later:
        # A request retried in a later round has several results: keep the last one.
        retried = pa.concat_tables(later)
        order = pa.array(range(retried.num_rows), pa.int64())
        last = retried.append_column("_order", order).group_by("custom_id").aggregate([("_order", "max")])
        newest = last.column("_order_max")
        retried = retried.take(pc.take(newest, pc.sort_indices(newest)))
        retried_ids = retried.column("custom_id").combine_chunks()
        replaced = pc.is_in(results.column("custom_id"), value_set=retried_ids)
        results = pa.concat_tables([results.filter(pc.invert(replaced)), retried])
    pa.default_memory_pool().release_unused()  # the files' read buffers are freed: return them
    return results, batch_ids


class TableAnswers:
    """Answers held in one table, and the row of it each input row takes (see :func:`write_joined`).

    Args:
        results: The results: the ``OUTPUT_FIELDS`` columns, then typed answer columns
            (a ``custom_id`` column is ignored).
        positions: For every input row, the row of ``results`` holding its answer (null: none),
            from :func:`~prefect_llm_batch.results.result_positions`.
    """

    def __init__(self, results: pa.Table, positions: pa.Array[Any]) -> None:
        extra = [f for f in results.schema if f.name not in RESULT_SCHEMA.names]
        self.fields: list[pa.Field[Any]] = [*OUTPUT_FIELDS, *extra]
        self.rows = len(positions)
        self._results = results.select([f.name for f in self.fields]).cast(pa.schema(self.fields))
        self._positions = positions

    def take(self, start: int, count: int) -> tuple[pa.Table, pa.Array[Any]]:
        """The answers of rows ``start`` to ``start + count``: a table, and each row's position in it."""
        return self._results, self._positions.slice(start, count)


class JobAnswers:
    """A job's latest answers, read from its state as the rows that need them arrive.

    The results of each source (the answers taken from the cache, then every chunk in round
    order) are numbered one after the other, and the rows' ids are matched to them by key
    (:class:`~prefect_llm_batch.keys.ResultIndex`: about 48 bytes per result), giving each
    row its result's number (4 bytes per row) and each result the last row that needs it (4
    more per result). A source is read when a row first needs one of its answers; after each
    slice of rows, only the answers that later rows still need are kept (those of requests
    that rows further down repeat). Memory holds the sources the slice uses and those answers,
    not the job.

    Raises:
        StateError: A chunk is not collected, or the job's ids are damaged.
    """

    def __init__(
        self,
        store: JobStore,
        transform: Callable[[pa.Table], pa.Table],
        batch_rows: int | None = None,
    ) -> None:
        record = store.read_job()
        batch_rows = batch_rows or SCAN_BATCH_ROWS
        self._store = store
        self._transform = transform
        self._schema = result_schema(embeddings=record.endpoint == EMBEDDINGS_ENDPOINT)
        sources: list[Source] = []
        self.batch_ids: list[str] = []
        self.unreadable_lines = 0
        cached_ids = store.read_cached_results(["custom_id"])
        if cached_ids is not None:
            sources.append(None)
        if store.read_borrowed_results(["custom_id"]) is not None:
            sources.append(BORROWED)
        for plan in sorted(record.chunks, key=lambda c: (c.round, c.chunk_id)):
            state = store.read_chunk(plan.chunk_id)
            if not state.collected:
                raise StateError(f"chunk {plan.chunk_id} of job {record.job_id} is not collected yet")
            sources.append(plan.chunk_id)
            self.unreadable_lines += state.unreadable_lines
            self.batch_ids.extend(h["batch_id"] for h in state.history if h.get("batch_id"))
            if state.batch_id:
                self.batch_ids.append(state.batch_id)
        self._sources = sources
        # Two at a time: reading a file's ids (Parquet, outside the GIL) overlaps decoding another's.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="prefect-llm-batch-keys") as pool:
            keys = list(pool.map(self._keys, sources, itertools.repeat(cached_ids)))
        del cached_ids
        self._offsets = np.cumsum([0, *map(len, keys)]).astype(np.int64)
        index = ResultIndex(keys)
        del keys
        self._latest = index.latest
        empty = transform(self._schema.empty_table()).drop_columns(["custom_id"])
        extra = [f for f in empty.schema if f.name not in RESULT_SCHEMA.names]
        self.fields: list[pa.Field[Any]] = [*OUTPUT_FIELDS, *extra]
        small = index.size < 2**31 - 1
        number_type = np.int32 if small else np.int64
        # Every row's result number (-1: none), and the last row that needs each result.
        self._last_row: npt.NDArray[np.signedinteger[Any]] = np.full(index.size, -1, number_type)
        parts: list[npt.NDArray[Any]] = []
        rows = 0

        def row_keys() -> Iterator[Digests]:
            first = 0
            for ids in store.iter_row_ids(batch_rows):
                try:
                    yield decode_custom_ids(ids, what="row", first=first)
                except ValueError as exc:
                    raise StateError(f"the row ids of job {record.job_id} are damaged: {exc}") from exc
                first += len(ids)

        # The next slice of row ids is read and decoded while this one is looked up.
        with contextlib.closing(read_ahead(row_keys())) as slices:
            for keys_of_rows in slices:
                found = index.lookup(keys_of_rows)
                valid = np.flatnonzero(found >= 0)
                np.maximum.at(self._last_row, found[valid], (valid + rows).astype(number_type))
                parts.append(found.astype(number_type))
                rows += len(found)
        del index
        self.rows = rows
        self._positions = np.concatenate(parts) if parts else np.zeros(0, number_type)
        del parts
        # The answers in memory: their result numbers, and where each result is among them.
        self._kept = pa.schema(self.fields).empty_table()
        self._kept_numbers = np.zeros(0, np.int64)
        self._slot = np.full(len(self._last_row), -1, np.int64)
        self._taken: set[int] = set()
        self.input_tokens = 0
        self.output_tokens = 0
        pa.default_memory_pool().release_unused()

    def _read(self, source: Source, columns: list[str] | None) -> pa.Table:
        if source is None or source == BORROWED:
            read = self._store.read_cached_results if source is None else self._store.read_borrowed_results
            table = read(columns)
            assert table is not None
            return table
        assert isinstance(source, int)
        return self._store.read_results(source, columns)

    def _keys(self, source: Source, cached_ids: pa.Table | None) -> Digests:
        table = cached_ids if source is None and cached_ids is not None else self._read(source, ["custom_id"])
        ids = table.column("custom_id")
        try:
            return decode_custom_ids(ids)
        except ValueError as exc:
            where = "the cached answers" if source is None else f"chunk {source}"
            job = self._store.job_id
            raise StateError(f"the results of {where} of job {job} are damaged: {exc}") from exc

    def _source_of(self, numbers: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
        return np.searchsorted(self._offsets, numbers, side="right") - 1

    def _count_tokens(self, source: int, table: pa.Table) -> None:
        if source in self._taken:
            return
        if self._sources[source] == BORROWED:  # sent, and counted, by the shard that owns them
            self._taken.add(source)
            return
        latest = self._latest[self._offsets[source] : self._offsets[source + 1]]
        sent = pc.and_(pa.array(latest), pc.invert(table.column("response_cached").combine_chunks()))
        for name in ("response_input_tokens", "response_output_tokens"):
            total = int(pc.sum(pc.filter(table.column(name), sent)).as_py() or 0)
            if name == "response_input_tokens":
                self.input_tokens += total
            else:
                self.output_tokens += total
        self._taken.add(source)

    def _read_answers(self, source: int) -> pa.Table:
        # All but the ids (a file's biggest column, matched already): no row of the output has them.
        names = [name for name in self._schema.names if name != "custom_id"]
        raw = self._read(self._sources[source], names)
        raw = raw.add_column(0, "custom_id", pa.nulls(raw.num_rows, pa.string()))
        raw = raw.select(self._schema.names).cast(self._schema)
        self._count_tokens(source, raw)
        return self._transform(raw).select([f.name for f in self.fields]).cast(pa.schema(self.fields))

    def _keep_from(self, row: int) -> None:
        """Drop the answers no row from ``row`` on needs."""
        needed = self._last_row[self._kept_numbers] >= row
        if needed.all():
            return
        self._slot[self._kept_numbers] = -1
        self._kept = self._kept.filter(pa.array(needed))
        self._kept_numbers = self._kept_numbers[needed]
        self._slot[self._kept_numbers] = np.arange(len(self._kept_numbers))
        if self._kept.column(0).num_chunks > 8:
            self._kept = self._kept.combine_chunks()  # the filtered pieces of many sources: one piece
        pa.default_memory_pool().release_unused()

    def take(self, start: int, count: int) -> tuple[pa.Table, pa.Array[Any]]:
        """The answers of rows ``start`` to ``start + count``: a table, and each row's position in it.

        Call it for consecutive slices of rows, in order.
        """
        self._keep_from(start)
        numbers = self._positions[start : start + count].astype(np.int64)
        valid = numbers >= 0
        absent = numbers[valid & (self._slot[np.maximum(numbers, 0)] < 0)]
        if len(absent):
            new = np.unique(self._source_of(absent)).tolist()  # sources not read yet
            tables = [self._kept, *(self._read_answers(source) for source in new)]
            added = [np.arange(self._offsets[s], self._offsets[s + 1]) for s in new]
            self._kept = pa.concat_tables(tables)
            first = len(self._kept_numbers)
            self._kept_numbers = np.concatenate([self._kept_numbers, *added])
            self._slot[self._kept_numbers[first:]] = np.arange(first, len(self._kept_numbers))
        local = np.zeros(len(numbers), np.int64)
        local[valid] = self._slot[numbers[valid]]
        return self._kept, pa.array(local, pa.int64(), mask=~valid)

    def finish(self) -> None:
        """Count the tokens of sources no row needed (their answers were all replaced)."""
        self._kept = pa.schema(self.fields).empty_table()
        for source in range(len(self._sources)):
            if source not in self._taken:
                columns = ["response_input_tokens", "response_output_tokens", "response_cached"]
                self._count_tokens(source, self._read(self._sources[source], columns))


Answers: TypeAlias = TableAnswers | JobAnswers


def write_joined(
    scan: TableScan,
    answers: Answers,
    output: str,
    *,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
    what: str = "the input has a different number of rows than row ids",
) -> tuple[int, Counter[str]]:
    """Join every input row to its request's result and write the output Parquet, streaming.

    The input goes through in slices: a second thread reads each slice and joins it while this
    one writes the previous slice (both mostly outside the GIL). Memory: two slices, and what
    ``answers`` holds.

    Args:
        scan: The input table, being read.
        answers: Each row's answer (:class:`TableAnswers` or :class:`JobAnswers`).
        output: Where to write (local path or fsspec URL).
        overwrite: Replace an existing output.
        metadata: Parquet key-value metadata.
        storage_options: fsspec options for ``output``.
        what: The message when the input and ``answers`` disagree on the number of rows.

    Returns:
        The number of rows written, and the number of rows per error kind.

    Raises:
        StateError: The input does not have one row per answer (nothing is written).
    """
    fields = answers.fields
    out_schema = pa.schema([*scan.schema, *fields]).with_metadata(scan.schema.metadata or {})
    counts: Counter[str] = Counter()
    rows = 0

    def joined_batches() -> Iterator[pa.Table]:
        nonlocal rows
        for batch in scan.batches:
            if rows + batch.num_rows > answers.rows:
                break
            results, slice_positions = answers.take(rows, batch.num_rows)
            joined = join_at(pa.Table.from_batches([batch], schema=scan.schema), results, slice_positions)
            tally = pc.value_counts(joined.column("response_error_kind").drop_null())
            for kind, count in zip(
                tally.field("values").to_pylist(), tally.field("counts").to_pylist(), strict=True
            ):
                counts[str(kind)] += int(count or 0)
            rows += batch.num_rows
            yield joined
        if rows != answers.rows:
            raise StateError(f"{what} ({answers.rows}); run the job again")

    with contextlib.closing(read_ahead(joined_batches())) as batches:  # its thread stops on errors
        first = next(batches, None)
        write_parquet_batches_atomic(
            itertools.chain([first] if first is not None else [], batches),
            output,
            schema=out_schema,
            overwrite=overwrite,
            metadata=metadata,
            storage_options=storage_options,
            writer_options={"use_dictionary": dictionary_columns(out_schema, first)},
        )
    return rows, counts


def assemble(
    ref: JobRef,
    *,
    output: str,
    overwrite: bool = False,
    parser: Callable[[str], Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> JobSummary:
    """Join every request's latest result back to the input rows and write the output Parquet.

    With a response schema, answers are parsed (by ``parser``, default JSON) into typed columns.

    Raises:
        StateError: The source changed since the job was prepared, or a chunk is not collected.
    """
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()

    def transform(results: pa.Table) -> pa.Table:
        if record.endpoint == EMBEDDINGS_ENDPOINT:
            # (a model per row: models of different widths, so only a ``dimensions`` fixes it)
            model = record.model if record.model_column is None else ""
            results = cast_embeddings(results, embedding_type(model, record.params))
        if record.response_schema is not None:
            schema = ResponseSchema(record.response_schema)
            results = parse_structured(results, schema, parser=parser, column_prefix=record.column_prefix)
        elif record.endpoint == MODERATIONS_ENDPOINT:
            results = parse_structured(results, MODERATION_SCHEMA, column_prefix=record.column_prefix)
        return results

    with ThreadPoolExecutor(max_workers=1) as pool:  # hashing the source overlaps matching the ids
        source_fp = (
            pool.submit(shard_fingerprint, record.shard, storage_options)
            if record.shard is not None
            else pool.submit(fingerprint, record.source, storage_options=storage_options)
        )
        answers = JobAnswers(store, transform)
        if source_fp.result() != record.source_fingerprint:
            raise StateError(f"{record.source} changed since job {ref.job_id} was prepared; run again")
    batch_ids = answers.batch_ids
    scan = scan_table(
        record.source, limit=record.limit, storage_options=storage_options, invalid_utf8=record.invalid_utf8,
        shard=record.shard,
    )  # fmt: skip
    metadata = {
        "prefect_llm_batch": canonical_json(
            {
                "package_version": __version__,
                "job_id": record.job_id,
                "provider": record.provider,
                "base_url": record.base_url,
                "endpoint": record.endpoint,
                "model": record.model,
                "template_sha256": record.template_sha256,
                "source_fingerprint": record.source_fingerprint,
                "batch_ids": batch_ids,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ).decode()
    }
    store.ensure_held()  # a run that lost its lease to another writes no output
    rows, counts = write_joined(
        scan,
        answers,
        output,
        overwrite=overwrite,
        metadata=metadata,
        storage_options=storage_options,
        what=f"{record.source} now has a different number of rows than job {ref.job_id} was prepared with",
    )

    answers.finish()
    error_rows = sum(counts.values())
    summary = JobSummary(
        job_id=record.job_id,
        output=output,
        state_dir=ref.state_dir,
        provider=record.provider,
        model=record.model,
        rows=rows,
        unique_requests=record.unique_requests,
        cached_requests=record.cached_requests,
        ok_rows=rows - error_rows,
        error_rows=error_rows,
        errors_by_kind=dict(sorted(counts.items())),
        batch_ids=batch_ids,
        rounds=record.rounds,
        input_tokens=answers.input_tokens,
        output_tokens=answers.output_tokens,
        unreadable_lines=answers.unreadable_lines,
    )
    # what the provider billed: each batch by its reported usage where it gives one, else by its lines
    summary.cost_usd = job_cost(store)
    summary.stopped = record.stopped or ""
    summary.estimated_cost_usd = estimate(ref, record.params).cost_usd
    store.write_summary(summary.model_dump_json(indent=1).encode())
    logger.info(
        "wrote %s: %d rows, %d ok, %d with errors %s",
        output, summary.rows, summary.ok_rows, summary.error_rows, summary.errors_by_kind or "",
    )  # fmt: skip
    return summary
