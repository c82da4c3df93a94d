"""Planning a job: its id, the checks before anything is sent, the chunks of each round."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from ..arrays import value_offsets
from ..batchfile import ChunkPacker, EncodedRequests, LaidOutRequests, RequestEncoder, Texts
from ..cache import ResponseCache
from ..errors import InputError, StateError
from ..keys import DigestSet, canonical_json
from ..prompts import PromptTemplate
from ..providers.base import BatchProvider
from ..results import EMBEDDING_COLUMN, OUTPUT_COLUMNS, RESULT_SCHEMA, result_schema
from ..schemas import ResponseSchema
from ..shards import Shard
from ..spec import BatchLimits, CacheMode, ErrorKind, JobSpec, ProviderTarget, RunOptions, normalise_base_url
from ..store import ChunkPlanRecord, ChunkState, JobRecord, JobStore
from ..table import TableScan, fingerprint, read_ahead, read_table, scan_table

logger = logging.getLogger("prefect_llm_batch")

#: Rows read by :func:`preflight`.
PREFLIGHT_ROWS = 100


class JobRef(BaseModel):
    """A reference to a prepared job: what tasks pass around instead of DataFrames."""

    job_id: str
    state_dir: str
    rows: int
    unique_requests: int
    cached_requests: int = 0
    chunks: int


def effective_limits(spec: JobSpec, provider: BatchProvider) -> BatchLimits:
    """The tighter of the job's and the provider's limits."""
    return BatchLimits(
        max_requests_per_batch=min(
            spec.limits.max_requests_per_batch, provider.limits.max_requests_per_batch
        ),
        max_batch_bytes=min(spec.limits.max_batch_bytes, provider.limits.max_batch_bytes),
    )


def compute_job_id(
    spec: JobSpec,
    target: ProviderTarget,
    source_fingerprint: str,
    limit: int | None,
    limits: BatchLimits,
    cache: CacheMode = "use",
) -> str:
    """Hash everything that determines a job's requests and batches into its id (32 hex digits).

    Examples:
        >>> t = ProviderTarget(provider="openai", base_url="https://x/v1", key_base_url="https://x/v1")
        >>> a = compute_job_id(JobSpec(prompt="{{ a }}", model="m"), t, "f", None, BatchLimits())
        >>> b = compute_job_id(JobSpec(prompt="{{ a }}", model="m2"), t, "f", None, BatchLimits())
        >>> len(a), a == b
        (32, False)
    """
    payload: dict[str, Any] = {
        "source": source_fingerprint,
        "limit": limit,
        "prompt": spec.prompt,
        "system": spec.system,
        "model": spec.model,
        "params": spec.params,
        "endpoint": spec.endpoint,
        "provider": target.provider,
        "base_url": normalise_base_url(target.key_base_url),
        # Where HTTP goes too: each simulator run is its own server, so its jobs never resume
        # batches that lived in another one. (Request keys, and so cached answers, ignore it.)
        "http_base_url": normalise_base_url(target.base_url),
        "id_column": spec.id_column,
        "response_schema": spec.response_schema,
        "limits": limits.model_dump(),
    }
    if cache != "use":  # a refresh must not resume (and so reuse) the answers of a normal run
        payload["cache"] = cache
    if spec.invalid_utf8 != "error":  # other prompts (and ids unchanged for the default)
        payload["invalid_utf8"] = spec.invalid_utf8
    return hashlib.sha256(canonical_json(payload)).hexdigest()[:32]


def check_id_column(table: pa.Table, id_column: str | None) -> None:
    """The id column must exist, be non-null and unique; the message names the rows."""
    if id_column is None:
        return
    if id_column not in table.column_names:
        raise InputError(
            f"id column {id_column!r} is not in the table; available columns: {', '.join(table.column_names)}"
        )
    column = table.column(id_column)
    if column.null_count:
        row = pc.index(pc.is_null(column), pa.scalar(True)).as_py()
        raise InputError(f"id column {id_column!r} is null in row {row}")
    counts = pc.value_counts(column)
    dupes = pc.filter(counts, pc.greater(counts.field("counts"), pa.scalar(1)))
    if len(dupes):
        value = dupes[0]["values"].as_py()
        rows = pc.indices_nonzero(pc.equal(column, pa.scalar(value, column.type))).to_pylist()[:5]
        raise InputError(f"id column {id_column!r} repeats the value {value!r} (rows {rows})")


def response_schema(spec: JobSpec) -> ResponseSchema | None:
    """The job's response schema, normalised (or None)."""
    return ResponseSchema(spec.response_schema) if spec.response_schema is not None else None


def check_columns(spec: JobSpec, names: list[str]) -> tuple[PromptTemplate, PromptTemplate | None]:
    """Check output column names, then compile both templates and check the columns they use."""
    clash = [c for c in OUTPUT_COLUMNS if c in names]
    if clash:
        raise InputError(
            f"the input already has column(s) {', '.join(clash)}, which the output adds; rename them first"
        )
    schema = response_schema(spec)
    if schema is not None:
        for prop in schema.properties:
            name = spec.column_prefix + prop
            if name in names or name in OUTPUT_COLUMNS:
                raise InputError(
                    f"response schema property {prop!r} would become column {name!r}, which "
                    f"{'the input already has' if name in names else 'the output uses'}; "
                    "rename it or set column_prefix"
                )
    template = PromptTemplate(spec.prompt, name="prompt")
    template.check_columns(names)
    system_template = PromptTemplate(spec.system, name="system prompt") if spec.system else None
    if system_template is not None:
        system_template.check_columns(names)
    if spec.id_column is not None and spec.id_column not in names:
        raise InputError(
            f"id column {spec.id_column!r} is not in the table; available columns: {', '.join(names)}"
        )
    return template, system_template


def check_and_render(spec: JobSpec, table: pa.Table) -> tuple[list[str], list[str | None] | None]:
    """Check output column names, then compile, check and render both templates over ``table``."""
    template, system_template = check_columns(spec, table.column_names)
    prompts = template.render_table(table, id_column=spec.id_column)
    blank = BlankPrompts(spec.id_column)
    blank.add(table, template.check_rendered(table, prompts, spec.id_column), 0)
    systems: list[str | None] | None = None
    if system_template is not None:
        rendered = system_template.render_table(table, id_column=spec.id_column)
        system_template.check_rendered(table, rendered, spec.id_column)
        systems = list(rendered)
    if not spec.allow_empty:
        blank.check()
    return prompts, systems


#: Rows quoted in the error about blank prompts.
BLANK_ROWS_SHOWN = 5


class BlankPrompts:
    """The rows whose prompt rendered empty or only whitespace, counted over a job's slices."""

    def __init__(self, id_column: str | None) -> None:
        self.id_column = id_column
        self.count = 0
        self.shown: list[str] = []

    def add(self, table: pa.Table, positions: list[int], first_row: int) -> None:
        """Count the blank prompts of a slice (at ``positions`` of ``table``, row ``first_row`` on)."""
        self.count += len(positions)
        for position in positions[: BLANK_ROWS_SHOWN - len(self.shown)]:
            name = str(first_row + position)
            if self.id_column is not None:
                name += f" (id {table.column(self.id_column)[position].as_py()!r})"
            self.shown.append(name)

    def check(self) -> None:
        """Raise when any prompt was blank.

        Raises:
            InputError: Naming the first rows and how many there are.
        """
        if not self.count:
            return
        more = f" and {self.count - len(self.shown)} more" if self.count > len(self.shown) else ""
        raise InputError(
            f"the prompt renders empty (or only whitespace) for {self.count} row(s): row "
            f"{', '.join(self.shown)}{more}; fix the template or the data, or pass allow_empty=True "
            "(--allow-empty) to send them as they are"
        )


def preflight(source: str, spec: JobSpec, *, storage_options: dict[str, Any] | None = None) -> None:
    """Cheap checks on the first rows, before anything heavier starts (a Prefect server, HTTP).

    Catches the usual mistakes in well under a second: an unreadable table, a template that does
    not compile, a column that does not exist, a bad id column, an output column clash.
    :func:`prepare` checks every row again.

    Raises:
        InputError: As :func:`prepare` would.
    """
    table = read_table(
        source, limit=PREFLIGHT_ROWS, storage_options=storage_options, invalid_utf8=spec.invalid_utf8
    )
    check_id_column(table, spec.id_column)
    check_and_render(spec, table)


def estimate_tokens(line: bytes) -> int:
    """Heuristic prompt tokens of one request line: UTF-8 bytes / 4 (documented in RunOptions).

    Examples:
        >>> estimate_tokens(b"x" * 400)
        100
    """
    return max(1, len(line) // 4)


#: Batch files being written at once while a job is prepared (each one's sync overlaps with the
#: next one's write).
WRITES_IN_FLIGHT = 2


class _ChunkWriter:
    """Packs request lines into batch input files as they come and writes each one when full."""

    def __init__(self, store: JobStore, limits: BatchLimits, first_id: int, round_: int) -> None:
        self.store = store
        self.round = round_
        self.records: list[ChunkPlanRecord] = []
        self._packer = ChunkPacker(limits)
        self._next_id = first_id
        self._parts: list[memoryview] = []  # the open batch's lines, as views into Arrow buffers
        self._ids: list[pa.Array[Any]] | None = []  # their custom_ids (None: not all known)
        self._count = 0
        self._bytes = 0
        self._tokens = 0
        self._executor = ThreadPoolExecutor(
            max_workers=WRITES_IN_FLIGHT, thread_name_prefix="prefect-llm-batch-write"
        )
        self._pending: collections.deque[Future[None]] = collections.deque()

    def add(
        self,
        lines: pa.Array[Any] | list[bytes],
        rows: npt.NDArray[np.int64] | None,
        keep: npt.NDArray[np.int64] | None = None,
        ids: pa.Array[Any] | None = None,
    ) -> None:
        """Add lines in order.

        Args:
            lines: The lines (an Arrow binary array, or bytes).
            rows: The input row of each line added (named when a line is too big).
            keep: Add only the lines at these increasing positions of ``lines`` (None: all).
                Runs of consecutive lines are added as views of ``lines``' buffer: no copy
                until the batch file is assembled.
            ids: The ``custom_id`` of each of ``lines``: written beside each batch file, for
                collecting it (None: the batch files have none beside them).
        """
        if isinstance(lines, list):
            lines = pa.array(lines, pa.large_binary())
        lines = lines.cast(pa.large_binary())
        if keep is not None and len(keep) < len(lines) // 2:
            # Few new lines (repeated requests, cache hits): copy them out, so that the files
            # in flight hold views of these lines, not of every slice they came from.
            taken = pa.array(keep, pa.int64())
            lines, ids, keep = lines.take(taken), ids.take(taken) if ids is not None else None, None
        picked = np.arange(len(lines)) if keep is None else keep
        if not len(picked):
            return
        buffers: list[Any] = lines.buffers()
        offsets = value_offsets(lines)
        data = memoryview(buffers[2])
        starts, ends = offsets[picked], offsets[picked + 1]
        sizes = ends - starts
        what = "row" if rows is not None else "request"
        cuts = [0, *self._packer.add_many(sizes.tolist(), rows, what), len(picked)]
        for number, (start, stop) in enumerate(itertools.pairwise(cuts)):
            if number:
                self._flush()  # ``start`` opens a new batch
            if start == stop:  # the first line added opens a new batch: nothing for the open one
                continue
            segment = picked[start:stop]
            if ids is None:
                self._ids = None
            elif self._ids is not None:
                self._ids.append(ids.take(segment))
            # Runs of consecutive lines: one view of the buffer each.
            breaks = np.flatnonzero(np.diff(segment) != 1) + 1
            for first, last in zip(
                np.concatenate(([0], breaks)), np.concatenate((breaks, [len(segment)])), strict=True
            ):
                self._parts.append(data[offsets[segment[first]] : offsets[segment[last - 1] + 1]])
            self._bytes += int(sizes[start:stop].sum())
            # estimate_tokens per line (every line is far longer than 4 bytes, so never 0)
            self._tokens += int((sizes[start:stop] // 4).sum())
            self._count += stop - start

    def _write(self, chunk_id: int, data: list[memoryview], ids: pa.Array[Any] | None) -> None:
        self.store.write_chunk_input(chunk_id, data)
        if ids is not None:  # what collecting the batch reads, instead of the whole batch file
            self.store.write_chunk_ids(chunk_id, ids)
        if not self.store.has_chunk(chunk_id):
            self.store.write_chunk(ChunkState(chunk_id=chunk_id))

    def _flush(self) -> None:
        chunk_id = self._next_id
        # Written by other threads (I/O, outside the GIL) while the next lines are built, as
        # views of the lines (never joined in memory): one file's sync overlaps with the next
        # file's write. At most WRITES_IN_FLIGHT writes at once, so at most one more batch
        # file's lines than that are in memory.
        self._wait(WRITES_IN_FLIGHT - 1)
        ids = pa.concat_arrays(self._ids) if self._ids else None
        self._pending.append(self._executor.submit(self._write, chunk_id, self._parts, ids))
        self.records.append(
            ChunkPlanRecord(
                chunk_id=chunk_id,
                requests=self._count,
                bytes=self._bytes,
                round=self.round,
                est_tokens=self._tokens,
            )
        )
        self._next_id += 1
        self._parts, self._ids, self._count, self._bytes, self._tokens = [], [], 0, 0, 0

    def _wait(self, left: int = 0) -> None:
        """Wait until at most ``left`` writes are in flight, the oldest first; re-raise the
        failure of the oldest failed write (those already done are checked first, so that a
        failure is raised at the next batch, not one later)."""
        while self._pending and (len(self._pending) > left or self._pending[0].done()):
            self._pending.popleft().result()

    def close(self) -> list[ChunkPlanRecord]:
        """Write the last, partly filled chunk; return every chunk written."""
        try:
            if self._count:
                self._flush()
            self._wait()
        finally:
            self._executor.shutdown(wait=True)
        return self.records

    def abandon(self) -> None:
        """Stop after a failure: wait for the writes in flight, report nothing."""
        self._executor.shutdown(wait=True)
        self._pending.clear()


class _InOrder:
    """Runs one call at a time in a second thread, in the order submitted; a failure is raised
    by the next :meth:`submit` or :meth:`wait`, so errors come in the order of their calls."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: Future[None] | None = None

    def submit(self, call: Callable[..., None], *args: Any) -> None:
        """Wait for the call in flight (raising its error), then start ``call(*args)``."""
        self.wait()
        self._pending = self._executor.submit(call, *args)

    def wait(self) -> None:
        """Wait for the call in flight; re-raise its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Wait for the call in flight (its error was, or will never be, raised) and stop."""
        self._pending = None
        self._executor.shutdown(wait=True)


def _add_lines(
    writer: _ChunkWriter, encoded: EncodedRequests, rows: npt.NDArray[np.int64], new: npt.NDArray[np.int64]
) -> None:
    """Add a slice's new requests (their rows in the input, their positions in the slice)."""
    writer.add(encoded.lines_array(), rows, new, encoded.custom_id_array)


def _render(
    template: PromptTemplate, table: pa.Table, id_column: str | None, first_row: int
) -> tuple[Texts, list[int]]:
    """A slice's prompts: straight to JSON in Arrow for plain templates, else through Jinja; and
    the positions of the blank ones (a prompt too long is an error naming its row)."""
    contents = template.render_json(table)
    prompts: Texts = (
        contents
        if contents is not None
        else template.render_table(table, id_column=id_column, first_row=first_row)
    )
    blank = template.check_rendered(table, None if contents is not None else prompts, id_column, first_row)
    return prompts, blank


def _columns_read(schema: pa.Schema, id_column: str | None, *templates: PromptTemplate | None) -> list[str]:
    """The columns preparing a job reads, in the table's order: those the templates render from,
    and the id column (named in error messages); at least one, which counts the rows (a
    fixed-width one where there is one, not a long text)."""
    names = schema.names
    wanted = {id_column} if id_column is not None else set()
    for template in templates:
        if template is not None:
            wanted.update(template.columns_read(names))
    read = [name for name in names if name in wanted]
    if read or not names:
        return read
    return [next((f.name for f in schema if pa.types.is_primitive(f.type)), names[0])]


def _check_id_column_scan(
    source: str,
    scan: TableScan,
    spec: JobSpec,
    limit: int | None,
    storage_options: dict[str, Any] | None,
    shard: Shard | None = None,
) -> None:
    """Check the id column over the whole input, reading only that column."""
    if spec.id_column is None:
        return
    if scan.whole is not None:
        check_id_column(scan.whole.select([spec.id_column]), spec.id_column)
        return
    ids = scan_table(
        source,
        limit=limit,
        columns=[spec.id_column],
        storage_options=storage_options,
        invalid_utf8=spec.invalid_utf8,
        shard=shard,
    )
    check_id_column(pa.Table.from_batches(list(ids.batches), schema=ids.schema), spec.id_column)


class JobIdentity(BaseModel):
    """A job known by its id before it is planned (what :func:`identify` found)."""

    job_id: str
    source_fingerprint: str
    limits: BatchLimits


def identify(
    source: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    *,
    limit: int | None = None,
    cache: CacheMode = "use",
    storage_options: dict[str, Any] | None = None,
) -> JobIdentity:
    """The job's id, from the source's fingerprint and the job's options (no HTTP, no planning).

    The cheap first step of a run: with the id known, the run takes the job's lease
    (:meth:`~prefect_llm_batch.store.JobStore.lease`) and then plans (:func:`prepare`), runs
    and writes the job under it.

    Raises:
        InputError: ``limit`` is below 1.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, not {limit}")
    source_fp = fingerprint(source, storage_options=storage_options)
    limits = effective_limits(spec, provider)
    job_id = compute_job_id(spec, target, source_fp, limit, limits, cache)
    return JobIdentity(job_id=job_id, source_fingerprint=source_fp, limits=limits)


def prepare(
    source: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    *,
    state_dir: str,
    limit: int | None = None,
    cache: CacheMode = "use",
    storage_options: dict[str, Any] | None = None,
    identity: JobIdentity | None = None,
    shard: Shard | None = None,
) -> JobRef:
    """Read, render, key, de-duplicate, look up the cache and plan a job; write the plan (no HTTP).

    The input is streamed in slices of :data:`~prefect_llm_batch.table.SCAN_BATCH_ROWS` rows
    (Parquet files and directories; CSV and JSON Lines are read whole first): each slice is
    rendered, keyed and de-duplicated against the requests seen so far, and its new requests go
    into the open batch input file, written as soon as it is full (two files at a time). Memory
    holds a few slices (read ahead, keyed, packed: one thread each), the lines of three batch
    files (the open one and two being written) and the keys seen (48 bytes per distinct
    request), not the job.

    Running it again for the same inputs finds the same job id and keeps the existing state: a
    planned job (its ``job.json`` written) is resumed as planned, never planned again. Planning
    holds the job's lease, so two runs never plan one job at once; a caller that holds it
    already (the flow, :func:`~prefect_llm_batch.jobs.driver.run_job`: from planning to the
    output) keeps it (the lease is re-entrant within a run).

    Args:
        identity: The job's :func:`identify` result, when the caller computed it (to take the
            lease first); else it is computed here.
        shard: Plan only this shard of ``source`` (a job of a sharded job: see
            :mod:`prefect_llm_batch.jobs.sharded`; ``identity`` is then required).

    Raises:
        InputError: The table, a template, or the id column is wrong (the message names the row,
            column or field); nothing has been sent.
        JobLocked: Another run holds the job's lease while it is not planned yet.
    """
    if identity is None:
        if shard is not None:
            raise ValueError("a shard is prepared with its identity (see jobs.sharded.prepare_shard)")
        identity = identify(
            source, spec, provider, target, limit=limit, cache=cache, storage_options=storage_options
        )
    store = JobStore(state_dir, identity.job_id)
    if not store.is_prepared():
        with store.lease():
            if not store.is_prepared():  # (else the run that held the lease planned it meanwhile)
                return _plan(
                    source, spec, provider, target, identity, state_dir, limit, cache, storage_options, shard
                )
    logger.info("job %s is already prepared in %s: resuming it", identity.job_id, state_dir)
    return job_ref(store.read_job(), state_dir)


def _plan(
    source: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    identity: JobIdentity,
    state_dir: str,
    limit: int | None,
    cache: CacheMode,
    storage_options: dict[str, Any] | None,
    shard: Shard | None = None,
) -> JobRef:
    """Plan a job that has none yet and write its plan, ``job.json`` last (see :func:`prepare`)."""
    job_id, source_fp, limits = identity.job_id, identity.source_fingerprint, identity.limits
    store = JobStore(state_dir, job_id)
    scan = scan_table(
        source, limit=limit, storage_options=storage_options, invalid_utf8=spec.invalid_utf8, shard=shard
    )
    template, system_template = check_columns(spec, scan.schema.names)
    _check_id_column_scan(source, scan, spec, limit, storage_options, shard)
    read = _columns_read(scan.schema, spec.id_column, template, system_template)
    names = scan.schema.names
    if scan.whole is None and len(read) < len(names) == len(set(names)):  # Parquet: read by column
        scan = scan_table(
            source,
            limit=limit,
            columns=read,
            storage_options=storage_options,
            invalid_utf8=spec.invalid_utf8,
            shard=shard,
        )
    schema = response_schema(spec)

    def build_body(prompt: str, system: str | None) -> dict[str, Any]:
        return provider.build_body(spec.model, prompt, system, spec.params, schema)

    encoder = RequestEncoder(
        provider=target.provider,
        base_url=target.key_base_url,
        endpoint=provider.endpoint,
        build_body=build_body,
        build_line=provider.build_line,
    )
    cached: set[str] = set()
    if cache == "use":
        cached = {str(cid) for cid in ResponseCache(state_dir, storage_options).ids().to_pylist()}
    writer = _ChunkWriter(store, limits, 0, 1)
    seen = DigestSet()
    hit_ids: list[str] = []
    rows = unique = 0

    blank = BlankPrompts(spec.id_column)

    def laid_out() -> Iterator[tuple[int, LaidOutRequests]]:
        first = 0
        for batch in scan.batches:
            table = pa.Table.from_batches([batch], schema=scan.schema)
            prompts, blank_rows = _render(template, table, spec.id_column, first)
            blank.add(table, blank_rows, first)
            systems = _render(system_template, table, spec.id_column, first)[0] if system_template else None
            yield table.num_rows, encoder.lay_out(prompts, systems)
            first += table.num_rows
        if not spec.allow_empty:
            blank.check()  # every row counted: before the plan is written, and so before anything is sent

    def row_ids() -> Iterator[pa.Array[Any]]:
        # Reading, rendering and laying out the next slice (Arrow work, mostly outside the GIL)
        # overlaps with keying this one (hashing, which holds the GIL).
        with contextlib.closing(read_ahead(laid_out())) as slices:  # closed: its thread stops on errors
            try:
                yield from _key_slices(slices)
            except Exception:
                lines.wait()  # a failure of an earlier slice's lines comes first, as it did
                raise

    def _key_slices(slices: Iterator[tuple[int, LaidOutRequests]]) -> Iterator[pa.Array[Any]]:
        nonlocal rows
        for count, laid in slices:
            encoded = encoder.key(laid)
            del laid  # its key bytes: not kept while the next slice is keyed
            # De-duplicated, looked up in the cache, packed and handed to the file writers in
            # another thread (mostly numpy and Arrow work, outside the GIL) while the next slice
            # is keyed.
            lines.submit(add_slice, encoded, rows)
            rows += count
            yield encoded.custom_id_array
        lines.wait()

    def add_slice(encoded: EncodedRequests, first_row: int) -> None:
        # In the lines thread, one slice at a time in order: each request's first row in the
        # slice, for those not seen in earlier slices (nor in the cache), in row order.
        nonlocal unique
        new = seen.add(encoded.digests)
        unique += len(new)
        if cached and len(new):
            ids = [str(cid) for cid in encoded.custom_id_array.take(new).to_pylist()]
            hit = np.fromiter((cid in cached for cid in ids), bool, len(ids))
            hit_ids.extend(cid for cid, is_hit in zip(ids, hit.tolist(), strict=True) if is_hit)
            new = new[~hit]
        _add_lines(writer, encoded, first_row + new, new)

    lines = _InOrder("prefect-llm-batch-lines")
    try:
        store.write_row_ids(row_ids())
    except BaseException:
        lines.close()
        writer.abandon()
        raise
    lines.close()
    chunks = writer.close()
    seen.clear()
    if hit_ids:
        hits = ResponseCache(state_dir, storage_options).lookup(hit_ids)
        if hits is None or hits.num_rows != len(hit_ids):
            raise StateError(
                f"the response cache in {state_dir} changed while job {job_id} was prepared; run again"
            )
        store.write_cached_results(_as_cached(hits))
    record = JobRecord(
        job_id=job_id,
        created_at=time.time(),
        source=source,
        source_fingerprint=source_fp,
        limit=limit,
        provider=target.provider,
        base_url=normalise_base_url(target.key_base_url),
        endpoint=provider.endpoint,
        model=spec.model,
        template_sha256=hashlib.sha256(
            canonical_json({"prompt": spec.prompt, "system": spec.system})
        ).hexdigest(),
        response_schema=spec.response_schema,
        column_prefix=spec.column_prefix,
        params=spec.params,
        rows=rows,
        unique_requests=unique,
        cached_requests=len(hit_ids),
        chunks=chunks,
        limits=limits,
        invalid_utf8=spec.invalid_utf8,
        shard=shard,
    )
    store.write_job(record)  # last: its presence means the plan is complete
    logger.info(
        "prepared job %s: %d rows, %d unique requests (%d from the cache), %d to send in %d batch(es)",
        job_id, record.rows, record.unique_requests, len(hit_ids),
        sum(c.requests for c in chunks), len(chunks),
    )  # fmt: skip
    return job_ref(record, state_dir)


def _as_cached(hits: pa.Table) -> pa.Table:
    schema = result_schema(embeddings=EMBEDDING_COLUMN in hits.column_names)
    hits = hits.select(schema.names).cast(schema)
    n = hits.num_rows
    hits = hits.set_column(
        RESULT_SCHEMA.get_field_index("response_cached"), "response_cached", pa.array([True] * n, pa.bool_())
    )
    return hits.set_column(
        RESULT_SCHEMA.get_field_index("response_attempts"), "response_attempts", pa.array([0] * n, pa.int64())
    )


def job_ref(record: JobRecord, state_dir: str) -> JobRef:
    """The reference of a job record."""
    return JobRef(
        job_id=record.job_id,
        state_dir=state_dir,
        rows=record.rows,
        unique_requests=record.unique_requests,
        cached_requests=record.cached_requests,
        chunks=len(record.chunks),
    )


def plan_retry_round(ref: JobRef, round_: int, options: RunOptions) -> list[int]:
    """Plan round ``round_ + 1``: resend the requests of round ``round_`` whose error is retryable.

    Idempotent: when the next round is already planned (a resumed run), its chunks are returned.
    Nothing is planned after ``options.max_attempts`` rounds or while a user's cancel applies.

    Returns:
        The chunk ids of the next round (empty when there is nothing to retry).
    """
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()
    planned = record.round_chunks(round_ + 1)
    if planned:
        return planned
    if round_ >= options.max_attempts or store.is_cancelled():
        return []
    retryable = pa.array([k.value for k in ErrorKind if k.retryable], pa.string())
    retry_ids: set[str] = set()
    for chunk_id in record.round_chunks(round_):
        results = store.read_results(chunk_id)
        failed = results.filter(pc.is_in(results.column("response_error_kind"), value_set=retryable))
        retry_ids.update(str(cid) for cid in failed.column("custom_id").to_pylist())
    if not retry_ids:
        return []
    lines = [
        line
        for chunk_id in record.round_chunks(round_)
        for line in store.read_chunk_input(chunk_id).splitlines(keepends=True)
        if line.strip() and str(orjson.loads(line)["custom_id"]) in retry_ids
    ]
    first_id = max((c.chunk_id for c in record.chunks), default=-1) + 1
    writer = _ChunkWriter(store, record.limits or BatchLimits(), first_id, round_ + 1)
    try:
        writer.add(lines, None)
    except BaseException:
        writer.abandon()
        raise
    chunks = writer.close()
    record.chunks.extend(chunks)
    store.write_job(record)
    logger.info(
        "job %s: %d request(s) failed in a retryable way in round %d; round %d sends them in %d batch(es)",
        ref.job_id, len(lines), round_, round_ + 1, len(chunks),
    )  # fmt: skip
    return [c.chunk_id for c in chunks]
