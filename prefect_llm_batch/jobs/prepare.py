"""Preparing a job: read the table, render, key and de-duplicate the requests, take what the
response cache answered, write the batch input files and the plan (no HTTP: bad input fails here)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..batchfile import EncodedRequests, LaidOutRequests, RequestEncoder, Texts
from ..cache import ResponseCache
from ..errors import StateError
from ..images import Image
from ..keys import DigestSet, canonical_json
from ..prompts import PromptTemplate
from ..providers.base import BatchProvider
from ..results import EMBEDDING_COLUMN, RESULT_SCHEMA, result_schema, with_later_columns
from ..shards import Shard
from ..spec import CacheMode, JobSpec, ProviderTarget, normalise_base_url
from ..store import ChunkPlanRecord, JobRecord, JobStore
from ..table import TableScan, read_ahead, scan_table
from .chunks import ChunkWriter
from .identity import JobIdentity, JobRef, identify, job_ref
from .images import IMAGE_SLICE_ROWS, ImageLoader, check_image_columns
from .input_checks import BlankPrompts, check_columns, check_id_column, response_schema, row_models

logger = logging.getLogger("prefect_llm_batch")


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
    writer: ChunkWriter, encoded: EncodedRequests, rows: npt.NDArray[np.int64], new: npt.NDArray[np.int64]
) -> None:
    """Add a slice's new requests (their rows in the input, their positions in the slice)."""
    writer.add(encoded.lines_array(), rows, new, encoded.custom_id_array)


#: The requests of one slice for one model: the model (None: the job's one model), the rows of the
#: slice they are (None: all, in order) and the requests laid out.
ModelGroup = tuple[str | None, npt.NDArray[np.int64] | None, LaidOutRequests]


def _take(texts: Texts, positions: npt.NDArray[np.int64]) -> Texts:
    if isinstance(texts, pa.Array):
        return texts.take(pa.array(positions, pa.int64()))
    return [texts[i] for i in positions.tolist()]


def model_groups(models: pa.Array[Any]) -> list[tuple[str, npt.NDArray[np.int64]]]:
    """Each model of a slice (in the order it first appears) and the positions of its rows.

    Examples:
        >>> [(m, p.tolist()) for m, p in model_groups(pa.array(["b", "a", "b"]))]
        [('b', [0, 2]), ('a', [1])]
    """
    encoded: Any = pc.dictionary_encode(models)
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    names = [str(name) for name in encoded.dictionary.to_pylist()]
    return [(name, np.flatnonzero(codes == code).astype(np.int64)) for code, name in enumerate(names)]


def render_slice(
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


def columns_read(schema: pa.Schema, id_column: str | None, *templates: PromptTemplate | None) -> list[str]:
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
        identity: The job's :func:`~prefect_llm_batch.jobs.identity.identify` result, when the
            caller computed it (to take the lease first); else it is computed here.
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
    read = columns_read(scan.schema, spec.id_column, template, system_template)
    if spec.image_columns:
        check_image_columns(spec.image_columns, scan.schema.names)
        read = [name for name in scan.schema.names if name in {*read, *spec.image_columns}]
    names = scan.schema.names
    if spec.model_column is not None and spec.model_column not in read:
        read = [name for name in names if name in {*read, spec.model_column}]
    if scan.whole is None and len(read) < len(names) == len(set(names)):  # Parquet: read by column
        scan = scan_table(
            source, limit=limit, columns=read, storage_options=storage_options,
            invalid_utf8=spec.invalid_utf8, shard=shard,
        )  # fmt: skip
    schema = response_schema(spec)

    def body_builder(model: str) -> Callable[[str, str | None], dict[str, Any]]:
        def build_body(prompt: str, system: str | None) -> dict[str, Any]:
            body = provider.build_body(model, prompt, system, spec.params, schema)
            return provider.cache_system_prompt(body) if spec.cache_system_prompt else body

        return build_body

    encoders: dict[str | None, RequestEncoder] = {}

    def encoder_for(model: str | None) -> RequestEncoder:
        # One per model: a model per row (spec.model_column) puts each row's model in its body,
        # and so in its request key.
        if model not in encoders:
            encoders[model] = RequestEncoder(
                provider=target.provider,
                base_url=target.key_base_url,
                endpoint=provider.endpoint,
                build_body=body_builder(spec.model if model is None else model),
                build_line=provider.build_line,
            )
        return encoders[model]

    cached: set[str] = set()
    if cache == "use":
        cached = {str(cid) for cid in ResponseCache(state_dir, storage_options).ids().to_pylist()}
    chunk_ids = itertools.count(0)  # shared by the writers of a job's models
    writers: dict[str | None, ChunkWriter] = {}

    def writer_for(model: str | None) -> ChunkWriter:
        # A batch holds one model (OpenAI's and Gemini's rule): one writer, and so its own
        # batches, per model.
        if model not in writers:
            writers[model] = ChunkWriter(
                store, limits, 0, 1, model=model, chunk_ids=chunk_ids, images=bool(spec.image_columns)
            )
        return writers[model]

    seen = DigestSet()
    hit_ids: list[str] = []
    rows = unique = 0

    blank = BlankPrompts(spec.id_column)
    images = (
        ImageLoader(
            spec.image_columns, source, allow_missing=spec.allow_missing_images,
            max_image_bytes=provider.max_image_bytes, accepts_urls=provider.accepts_image_urls,
            provider=provider.name, id_column=spec.id_column, storage_options=storage_options,
        )
        if spec.image_columns
        else None
    )  # fmt: skip

    def slices() -> Iterator[pa.Table]:
        for batch in scan.batches:
            table = pa.Table.from_batches([batch], schema=scan.schema)
            if images is None:
                yield table
            else:  # a slice's images are in memory at once: fewer rows per slice
                for start in range(0, table.num_rows, IMAGE_SLICE_ROWS):
                    yield table.slice(start, IMAGE_SLICE_ROWS)

    def laid_out() -> Iterator[tuple[int, list[ModelGroup]]]:
        first = 0
        for table in slices():
            prompts, blank_rows = render_slice(template, table, spec.id_column, first)
            blank.add(table, blank_rows, first)
            systems = (
                render_slice(system_template, table, spec.id_column, first)[0] if system_template else None
            )
            row_images = images.load(table, first) if images is not None else None
            if spec.model_column is None:
                laid = encoder_for(None).lay_out(
                    prompts, systems, extend=_image_parts(provider, row_images, None)
                )
                yield table.num_rows, [(None, None, laid)]
            else:
                groups: list[ModelGroup] = []
                for model, positions in model_groups(
                    row_models(table, spec.model_column, first, spec.id_column)
                ):
                    laid = encoder_for(model).lay_out(
                        _take(prompts, positions),
                        _take(systems, positions) if systems is not None else None,
                        extend=_image_parts(provider, row_images, positions),
                    )
                    groups.append((model, positions, laid))
                yield table.num_rows, groups
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

    def _key_slices(slices: Iterator[tuple[int, list[ModelGroup]]]) -> Iterator[pa.Array[Any]]:
        nonlocal rows
        for count, groups in slices:
            ids: list[pa.Array[Any]] = []
            places: list[npt.NDArray[np.int64] | None] = []
            while groups:
                model, positions, laid = groups.pop(0)  # its key bytes: not kept once keyed
                encoded = encoder_for(model).key(laid)
                del laid
                # De-duplicated, looked up in the cache, packed and handed to the file writers
                # in another thread (mostly numpy and Arrow work, outside the GIL) while the next
                # slice is keyed.
                lines.submit(add_slice, encoded, rows, model, positions)
                ids.append(encoded.custom_id_array)
                places.append(positions)
            rows += count
            yield _in_row_order(ids, places)
        lines.wait()

    def add_slice(
        encoded: EncodedRequests,
        first_row: int,
        model: str | None = None,
        positions: npt.NDArray[np.int64] | None = None,
    ) -> None:
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
        if model is not None:
            models.add(model)
        in_slice = new if positions is None else positions[new]
        _add_lines(writer_for(model), encoded, first_row + in_slice, new)

    models: set[str] = set()
    lines = _InOrder("prefect-llm-batch-lines")
    try:
        store.write_row_ids(row_ids())
    except BaseException:
        lines.close()
        for writer in writers.values():
            writer.abandon()
        raise
    lines.close()
    chunks: list[ChunkPlanRecord] = []
    try:
        for writer in writers.values():
            chunks += writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abandon()
        raise
    chunks.sort(key=lambda chunk: chunk.chunk_id)
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
        model=spec.model or ", ".join(sorted(models)),
        model_column=spec.model_column,
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


def _in_row_order(ids: list[pa.Array[Any]], places: list[npt.NDArray[np.int64] | None]) -> pa.Array[Any]:
    """A slice's ``custom_id`` s in row order, from those of its model groups (at ``places``)."""
    if len(ids) == 1 and places[0] is None:
        return ids[0]
    if not ids:
        return pa.array([], pa.string())
    where = np.concatenate([p for p in places if p is not None])
    return pa.concat_arrays(ids).take(pa.array(np.argsort(where, kind="stable"), pa.int64()))


def _image_parts(
    provider: BatchProvider, row_images: list[list[Image]] | None, positions: npt.NDArray[np.int64] | None
) -> Callable[[int, dict[str, Any]], dict[str, Any]] | None:
    """What adds each laid-out row's images to its body (None: no images): the slice's rows, or
    those of one model's group (at ``positions``)."""
    if row_images is None:
        return None
    chosen = row_images if positions is None else [row_images[i] for i in positions.tolist()]
    return functools.partial(_with_images, provider, chosen)


def _with_images(
    provider: BatchProvider, images: list[list[Image]], row: int, body: dict[str, Any]
) -> dict[str, Any]:
    return provider.add_images(body, images[row])


def _as_cached(hits: pa.Table) -> pa.Table:
    schema = result_schema(embeddings=EMBEDDING_COLUMN in hits.column_names)
    hits = with_later_columns(hits).select(schema.names).cast(schema)
    n = hits.num_rows
    hits = hits.set_column(
        RESULT_SCHEMA.get_field_index("response_cached"), "response_cached", pa.array([True] * n, pa.bool_())
    )
    return hits.set_column(
        RESULT_SCHEMA.get_field_index("response_attempts"), "response_attempts", pa.array([0] * n, pa.int64())
    )
