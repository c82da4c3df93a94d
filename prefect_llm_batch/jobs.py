"""The job lifecycle, provider-agnostic and Prefect-free.

::

    prepare   read the table, render every prompt, key and de-duplicate the requests, plan
              chunks, write the plan to the state directory (no HTTP: bad input fails here)
    submit    per chunk: upload, record the intent, create the batch (or adopt the one an
              earlier, interrupted run made), record the batch id
    wait      poll every unfinished batch until it ends; log state changes only
    collect   per chunk: download output and error files, parse, store the results
    assemble  join results back to the rows through their request keys, write Parquet

Each step reads and writes the job's state directory (:mod:`prefect_llm_batch.store`), so any
step can run in another process, and running the same job again resumes it: chunks that already
have a batch are polled, never submitted again.

A **job id** is a hash of what determines the answers: the source's content fingerprint, the
row limit, the templates, model, params, endpoint, provider, key base URL, id column and batch
limits. Change any of them and it is another job.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from . import __version__
from .errors import AmbiguousCreate, BatchFailed, InputError, StateError
from .prompts import PromptTemplate
from .providers.base import BatchInfo, BatchProvider, BatchStatus
from .requests import build_request_set, canonical_json, encode_line, normalise_base_url, plan_chunks
from .results import (
    OUTPUT_COLUMNS,
    RowResult,
    empty_results,
    join_results,
    parse_structured,
    results_to_table,
    short,
)
from .schemas import ResponseSchema
from .spec import BatchLimits, ErrorKind, JobSpec, ProviderTarget
from .store import ChunkPlanRecord, ChunkState, JobRecord, JobStore
from .table import fingerprint, read_table, write_parquet_atomic

logger = logging.getLogger("prefect_llm_batch")

#: Batch failure codes that a later resubmission can fix.
RETRYABLE_BATCH_CODES = frozenset({"token_limit_exceeded"})
#: How many times one chunk is resubmitted after a retryable batch failure.
MAX_CHUNK_ATTEMPTS = 3
#: How far back (seconds) to look when adopting a batch whose create was ambiguous.
ADOPT_LOOKBACK_S = 3600.0


class JobRef(BaseModel):
    """A reference to a prepared job: what tasks pass around instead of DataFrames."""

    job_id: str
    state_dir: str
    rows: int
    unique_requests: int
    chunks: int


class JobSummary(BaseModel):
    """What a finished job did."""

    job_id: str
    output: str
    state_dir: str
    provider: str
    model: str
    rows: int
    unique_requests: int
    ok_rows: int
    error_rows: int
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    batch_ids: list[str] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def error_rate(self) -> float:
        """Share of rows with an error (0 for an empty table)."""
        return self.error_rows / self.rows if self.rows else 0.0


def effective_limits(spec: JobSpec, provider: BatchProvider) -> BatchLimits:
    """The tighter of the job's and the provider's limits."""
    return BatchLimits(
        max_requests_per_batch=min(
            spec.limits.max_requests_per_batch, provider.limits.max_requests_per_batch
        ),
        max_batch_bytes=min(spec.limits.max_batch_bytes, provider.limits.max_batch_bytes),
    )


def compute_job_id(
    spec: JobSpec, target: ProviderTarget, source_fingerprint: str, limit: int | None, limits: BatchLimits
) -> str:
    """Hash everything that determines a job's requests and batches into its id (32 hex digits).

    Examples:
        >>> t = ProviderTarget(provider="openai", base_url="https://x/v1", key_base_url="https://x/v1")
        >>> a = compute_job_id(JobSpec(prompt="{{ a }}", model="m"), t, "f", None, BatchLimits())
        >>> b = compute_job_id(JobSpec(prompt="{{ a }}", model="m2"), t, "f", None, BatchLimits())
        >>> len(a), a == b
        (32, False)
    """
    payload = {
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
    return hashlib.sha256(canonical_json(payload)).hexdigest()[:32]


def _check_id_column(table: pa.Table, id_column: str | None) -> None:
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


def _check_templates(spec: JobSpec, table: pa.Table) -> tuple[list[str], list[str | None] | None]:
    """Check output column names, then compile, check and render both templates over ``table``."""
    clash = [c for c in OUTPUT_COLUMNS if c in table.column_names]
    if clash:
        raise InputError(
            f"the input already has column(s) {', '.join(clash)}, which the output adds; rename them first"
        )
    schema = response_schema(spec)
    if schema is not None:
        for prop in schema.properties:
            name = spec.column_prefix + prop
            if name in table.column_names or name in OUTPUT_COLUMNS:
                raise InputError(
                    f"response schema property {prop!r} would become column {name!r}, which "
                    f"{'the input already has' if name in table.column_names else 'the output uses'}; "
                    "rename it or set column_prefix"
                )
    template = PromptTemplate(spec.prompt, name="prompt")
    template.check_columns(table.column_names)
    system_template = PromptTemplate(spec.system, name="system prompt") if spec.system else None
    if system_template is not None:
        system_template.check_columns(table.column_names)
    prompts = template.render_table(table, id_column=spec.id_column)
    systems: list[str | None] | None = None
    if system_template is not None:
        systems = list(system_template.render_table(table, id_column=spec.id_column))
    return prompts, systems


#: Rows read by :func:`preflight`.
PREFLIGHT_ROWS = 100


def preflight(source: str, spec: JobSpec, *, storage_options: dict[str, Any] | None = None) -> None:
    """Cheap checks on the first rows, before anything heavier starts (a Prefect server, HTTP).

    Catches the usual mistakes in well under a second: an unreadable table, a template that does
    not compile, a column that does not exist, an id column that is missing, an output column clash.
    :func:`prepare` checks every row again.

    Raises:
        InputError: As :func:`prepare` would.
    """
    table = read_table(source, limit=PREFLIGHT_ROWS, storage_options=storage_options)
    _check_id_column(table, spec.id_column)
    _check_templates(spec, table)


def prepare(
    source: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    *,
    state_dir: str,
    limit: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> JobRef:
    """Read, render, key, de-duplicate and plan a job, and write the plan (no HTTP).

    Running it again for the same inputs finds the same job id and keeps the existing state.

    Raises:
        InputError: The table, a template, or the id column is wrong (the message names the row,
            column or field); nothing has been sent.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, not {limit}")
    source_fp = fingerprint(source, storage_options=storage_options)
    limits = effective_limits(spec, provider)
    job_id = compute_job_id(spec, target, source_fp, limit, limits)
    store = JobStore(state_dir, job_id)
    if store.is_prepared():
        record = store.read_job()
        logger.info("job %s is already prepared in %s: resuming it", job_id, state_dir)
        return _ref(record, state_dir)

    table = read_table(source, limit=limit, storage_options=storage_options)
    _check_id_column(table, spec.id_column)
    prompts, systems = _check_templates(spec, table)
    schema = response_schema(spec)

    request_set = build_request_set(
        provider=target.provider,
        base_url=target.key_base_url,
        endpoint=spec.endpoint,
        prompts=prompts,
        systems=systems,
        build_body=lambda prompt, system: provider.build_body(
            spec.model, prompt, system, spec.params, schema
        ),
    )
    lines = [
        encode_line(provider.build_line(cid, body))
        for cid, body in zip(request_set.unique_ids, request_set.bodies, strict=True)
    ]
    chunks = plan_chunks([len(line) for line in lines], limits, request_set.first_row)
    for index, chunk in enumerate(chunks):
        store.write_chunk_input(index, b"".join(lines[chunk.start : chunk.stop]))
        if not store.has_chunk(index):
            store.write_chunk(ChunkState(chunk_id=index))
    store.write_row_ids(request_set.row_ids)
    template_hash = hashlib.sha256(canonical_json({"prompt": spec.prompt, "system": spec.system})).hexdigest()
    record = JobRecord(
        job_id=job_id,
        created_at=time.time(),
        source=source,
        source_fingerprint=source_fp,
        limit=limit,
        provider=target.provider,
        base_url=normalise_base_url(target.key_base_url),
        endpoint=spec.endpoint,
        model=spec.model,
        template_sha256=template_hash,
        response_schema=spec.response_schema,
        column_prefix=spec.column_prefix,
        rows=table.num_rows,
        unique_requests=len(request_set.unique_ids),
        chunks=[
            ChunkPlanRecord(chunk_id=i, start=c.start, stop=c.stop, requests=c.size, bytes=c.n_bytes)
            for i, c in enumerate(chunks)
        ],
    )
    store.write_job(record)  # last: its presence means the plan is complete
    logger.info(
        "prepared job %s: %d rows, %d unique requests in %d batch(es)",
        job_id,
        record.rows,
        record.unique_requests,
        len(chunks),
    )
    return _ref(record, state_dir)


def _ref(record: JobRecord, state_dir: str) -> JobRef:
    return JobRef(
        job_id=record.job_id,
        state_dir=state_dir,
        rows=record.rows,
        unique_requests=record.unique_requests,
        chunks=len(record.chunks),
    )


def _metadata(ref: JobRef, state: ChunkState) -> dict[str, str]:
    return {"job_id": ref.job_id, "chunk_id": str(state.chunk_id), "attempt": str(state.attempt)}


def _record_batch(store: JobStore, state: ChunkState, info: BatchInfo) -> ChunkState:
    state.batch_id = info.id
    _apply(state, info)
    store.write_chunk(state)
    return state


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


def submit_chunk(ref: JobRef, chunk_id: int, provider: BatchProvider) -> ChunkState:
    """Make sure chunk ``chunk_id`` has a provider batch, creating one at most once.

    Order of events, so that no crash can make us pay twice: if the chunk already has a batch,
    nothing is sent; if an earlier run recorded the intent to create but no batch id, the
    provider's batches are listed and one carrying this chunk's ``{job_id, chunk_id, attempt}``
    metadata is adopted; otherwise the input file is uploaded, the intent recorded, and the batch
    created. A create that fails ambiguously is resolved by listing, and only created again when
    no batch carries the metadata.
    """
    store = JobStore(ref.state_dir, ref.job_id)
    state = store.read_chunk(chunk_id)
    if state.batch_id:
        return state
    metadata = _metadata(ref, state)
    n_requests = store.read_job().chunks[chunk_id].requests
    if state.intent_at is not None:
        found = provider.find_batch(
            metadata, created_after=state.intent_at - ADOPT_LOOKBACK_S, requests=n_requests
        )
        if found is not None:
            logger.info("chunk %d: adopted batch %s created by an earlier run", chunk_id, found.id)
            return _record_batch(store, state, found)
    data = store.read_chunk_input(chunk_id)
    if state.input_file_id is None:
        state.input_file_id = provider.upload(data, f"{ref.job_id}-chunk-{chunk_id:05d}.jsonl")
        store.write_chunk(state)
    state.intent_at = time.time()
    store.write_chunk(state)
    try:
        info = provider.create(data, state.input_file_id, metadata, requests=n_requests)
    except AmbiguousCreate as exc:
        logger.warning("chunk %d: create had no clear answer (%s); looking for the batch", chunk_id, exc)
        found = provider.find_batch(
            metadata, created_after=state.intent_at - ADOPT_LOOKBACK_S, requests=n_requests
        )
        if found is None:
            logger.warning("chunk %d: no batch carries its metadata; creating it", chunk_id)
            info = provider.create(data, state.input_file_id, metadata, requests=n_requests)
        else:
            logger.info("chunk %d: adopted batch %s", chunk_id, found.id)
            info = found
    logger.info("chunk %d: batch %s has %d requests", chunk_id, info.id, n_requests)
    return _record_batch(store, state, info)


class Progress(BaseModel):
    """Where a job's batches stand, for progress displays."""

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
            f"requests {self.requests_done}/{self.requests} done"
            f" ({statuses})"
        )


def progress(ref: JobRef) -> Progress:
    """Read a job's progress from its state directory (no HTTP)."""
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()
    statuses: Counter[str] = Counter()
    done = ended = 0
    for plan in record.chunks:
        state = store.read_chunk(plan.chunk_id)
        statuses[state.status or "not submitted"] += 1
        if state.status and BatchStatus(state.status).ended:
            ended += 1
        done += (state.completed or 0) + (state.failed or 0)
    return Progress(
        batches=len(record.chunks),
        batches_ended=ended,
        requests=record.unique_requests,
        requests_done=min(done, record.unique_requests),
        statuses=dict(statuses),
    )


def wait(
    ref: JobRef,
    provider: BatchProvider,
    *,
    poll_interval: float = 30.0,
    on_change: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Poll every submitted, unfinished batch of a job until all have ended.

    Returns:
        The chunks whose batch failed in a retryable way (``token_limit_exceeded``); they have
        been reset for resubmission (their old batch is kept in ``history``).

    Raises:
        BatchFailed: A chunk has been resubmitted :data:`MAX_CHUNK_ATTEMPTS` times and still fails.
    """
    store = JobStore(ref.state_dir, ref.job_id)
    pending = [i for i in range(ref.chunks) if not _ended(store.read_chunk(i))]
    resubmit: list[int] = []
    if on_change is not None:
        on_change(progress(ref))
    while pending:
        changed = False
        for chunk_id in list(pending):
            state = store.read_chunk(chunk_id)
            if not state.batch_id:
                raise StateError(
                    f"chunk {chunk_id} of job {ref.job_id} has no batch: submit it before waiting"
                )
            info = provider.retrieve(state.batch_id)
            if _apply(state, info):
                changed = True
                if info.status.ended:
                    logger.info("chunk %d: batch %s %s", chunk_id, info.id, info.status.value)
                store.write_chunk(state)
            if not info.status.ended:
                continue
            pending.remove(chunk_id)
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
                resubmit.append(chunk_id)
        if changed and on_change is not None:
            on_change(progress(ref))
        if pending:
            sleep(poll_interval)
    return resubmit


def _ended(state: ChunkState) -> bool:
    return state.status is not None and BatchStatus(state.status).ended


def _reset_for_resubmission(store: JobStore, state: ChunkState) -> None:
    state.history.append(
        {"batch_id": state.batch_id, "status": state.status, "error": state.error, "attempt": state.attempt}
    )
    state.attempt += 1
    state.batch_id = state.intent_at = None
    state.status = state.raw_status = state.error = state.error_code = None
    state.total = state.completed = state.failed = None
    store.write_chunk(state)


def collect_chunk(
    ref: JobRef, chunk_id: int, provider: BatchProvider, *, delete_input_file: bool = True
) -> int:
    """Download, parse and store the results of one ended batch.

    A batch that failed validation gives every one of its requests an ``invalid_request`` error
    quoting the provider, so no row is lost. Returns the number of results stored.
    """
    store = JobStore(ref.state_dir, ref.job_id)
    state = store.read_chunk(chunk_id)
    if state.collected:
        return store.read_results(chunk_id).num_rows
    if not state.batch_id or not _ended(state):
        raise StateError(f"chunk {chunk_id} of job {ref.job_id} has not ended; wait for it first")
    info = provider.retrieve(state.batch_id)
    results: dict[str, RowResult] = {}
    if info.status is BatchStatus.FAILED:
        message = short(f"batch {info.id} failed validation: {info.error_summary()}")
        for cid in _chunk_custom_ids(store, chunk_id):
            results[cid] = RowResult(
                custom_id=cid, error_kind=ErrorKind.INVALID_REQUEST, error=message, batch_id=info.id
            )
    else:
        expected = set(_chunk_custom_ids(store, chunk_id))
        for result in provider.iter_results(info):
            if result.custom_id not in expected:
                logger.warning(
                    "chunk %d: ignoring a result for unknown custom_id %s", chunk_id, result.custom_id
                )
                continue
            previous = results.get(result.custom_id)
            if previous is None or (not previous.ok and result.ok):
                results[result.custom_id] = result
    store.write_results(chunk_id, results_to_table(results.values()))
    state.collected = True
    store.write_chunk(state)
    if delete_input_file and state.input_file_id:
        try:
            provider.delete_file(state.input_file_id)
        except Exception as exc:  # cleanup must not fail a collected chunk
            logger.warning("chunk %d: could not delete input file %s: %s", chunk_id, state.input_file_id, exc)
    return len(results)


def _chunk_custom_ids(store: JobStore, chunk_id: int) -> list[str]:
    return [
        str(orjson.loads(line)["custom_id"]) for line in store.read_chunk_input(chunk_id).splitlines() if line
    ]


def assemble(
    ref: JobRef,
    *,
    output: str,
    overwrite: bool = False,
    parser: Callable[[str], Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> JobSummary:
    """Join every chunk's results back to the input rows and write the output Parquet.

    With a response schema, answers are parsed (by ``parser``, default JSON) into typed columns.

    Raises:
        StateError: The source changed since the job was prepared, or a chunk is not collected.
    """
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()
    if fingerprint(record.source, storage_options=storage_options) != record.source_fingerprint:
        raise StateError(f"{record.source} changed since job {ref.job_id} was prepared; run the job again")
    table = read_table(record.source, limit=record.limit, storage_options=storage_options)
    parts = []
    batch_ids = []
    for plan in record.chunks:
        state = store.read_chunk(plan.chunk_id)
        if not state.collected:
            raise StateError(f"chunk {plan.chunk_id} of job {ref.job_id} is not collected yet")
        parts.append(store.read_results(plan.chunk_id))
        if state.batch_id:
            batch_ids.append(state.batch_id)
    results = pa.concat_tables(parts) if parts else empty_results()
    if record.response_schema is not None:
        schema = ResponseSchema(record.response_schema)
        results = parse_structured(results, schema, parser=parser, column_prefix=record.column_prefix)
    joined = join_results(table, store.read_row_ids(), results)
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
    write_parquet_atomic(
        joined, output, overwrite=overwrite, metadata=metadata, storage_options=storage_options
    )

    kinds = joined.column("response_error_kind")
    counts = {str(k): int(v) for k, v in Counter(kinds.drop_null().to_pylist()).items()}
    error_rows = sum(counts.values())
    input_tokens = output_tokens = 0
    if results.num_rows:
        input_tokens = int(pc.sum(results.column("response_input_tokens")).as_py() or 0)
        output_tokens = int(pc.sum(results.column("response_output_tokens")).as_py() or 0)
    summary = JobSummary(
        job_id=record.job_id,
        output=output,
        state_dir=ref.state_dir,
        provider=record.provider,
        model=record.model,
        rows=joined.num_rows,
        unique_requests=record.unique_requests,
        ok_rows=joined.num_rows - error_rows,
        error_rows=error_rows,
        errors_by_kind=dict(sorted(counts.items())),
        batch_ids=batch_ids,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
    logger.info(
        "wrote %s: %d rows, %d ok, %d with errors %s",
        output,
        summary.rows,
        summary.ok_rows,
        summary.error_rows,
        summary.errors_by_kind or "",
    )
    return summary


def failed_batches(ref: JobRef) -> list[ChunkState]:
    """Chunks whose batch failed for good (validation), for the caller to report."""
    store = JobStore(ref.state_dir, ref.job_id)
    return [
        s for s in (store.read_chunk(i) for i in range(ref.chunks)) if s.status == BatchStatus.FAILED.value
    ]


__all__ = [
    "JobRef",
    "JobSummary",
    "Progress",
    "assemble",
    "collect_chunk",
    "compute_job_id",
    "prepare",
    "progress",
    "submit_chunk",
    "wait",
]
