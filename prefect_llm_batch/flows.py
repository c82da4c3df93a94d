"""Prefect flows: one public flow per use case.

``enrich_table`` runs a whole job in one flow run: ``identify-job`` and take the job's lease,
prepare, then per round one ``submit-batch`` task per batch, ``wait-for-batches``, one
``collect-batch`` task per batch and ``plan-retry``, and finally ``write-output``. Running it
again with the same inputs resumes the same job from its state directory instead of paying
again; one run at a time holds a job (a lease), from planning to the output.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal
from uuid import UUID

from prefect import flow
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext
from prefect.flows import Flow
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_logger, get_run_logger
from pydantic import BaseModel

from . import artifacts
from .blocks import AnthropicBatchCredentials, OpenAIBatchCredentials, ProviderCredentials
from .costs import DEFAULT_EXPECTED_OUTPUT_TOKENS, Estimate
from .errors import BatchCancelled, BatchFailed, ConfigError, CostLimitExceeded, ErrorRateExceeded, JobLocked
from .jobs import COLLECTS_IN_FLIGHT, JobIdentity, JobRef, JobSummary, cancel_job, failed_batches, job_ref
from .jobs.detached import PendingJob
from .jobs.realtime import Mode, choose_mode
from .memory import SMALL_PAGES_ENV, prefer_small_pages
from .providers import api_key_for, make_provider, target_for
from .schemas import ResponseSchema
from .simulator import open_target
from .spec import (
    DEFAULT_MAX_ERROR_RATE,
    OPENAI_MAX_BATCH_BYTES,
    OPENAI_MAX_REQUESTS_PER_BATCH,
    BatchLimits,
    CacheMode,
    JobSpec,
    ProviderName,
    ProviderTarget,
    RunOptions,
)
from .store import (
    JobStore,
    default_state_dir,
    job_for_run,
    read_pending,
    record_run,
    remove_pending,
    write_pending,
)
from .tasks import (
    advance_job,
    collect_batch,
    estimate_job,
    identify_job,
    plan_retry,
    prepare_job,
    realtime_chunk,
    submit_batch,
    wait_for_batches,
    write_output,
)


def _prefer_small_pages(log: Any) -> None:
    """:func:`~prefect_llm_batch.memory.prefer_small_pages`, logged when it changed something."""
    changed = prefer_small_pages()
    if changed:
        log.debug("allocating with small pages (%s=0 keeps the defaults): %s", SMALL_PAGES_ENV, changed)


@contextlib.contextmanager
def resolve_target(
    provider: str, base_url: str | None, credentials: ProviderCredentials | None
) -> Iterator[ProviderTarget]:
    """Yield where the job's HTTP goes; for ``simulator``, start the bundled fake server for the run."""
    with open_target(provider, base_url or (credentials.base_url if credentials else None)) as target:
        yield target


@contextlib.contextmanager
def hold_job(
    source: str,
    spec: JobSpec,
    target: ProviderTarget,
    state_dir: str,
    limit: int | None,
    options: RunOptions,
    credentials: ProviderCredentials | None,
) -> Iterator[JobIdentity]:
    """Identify the job (``identify-job``) and hold its lease for the ``with`` block: planning,
    every round and the output (the steps inside that take the lease again just keep it).

    Raises:
        JobLocked: Another run holds the job; nothing was planned or sent by this one.
    """
    identity = identify_job(source, spec, target, limit, options, credentials)
    with JobStore(state_dir, identity.job_id).lease():
        yield identity


def cancel_provider_batches(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
    """``on_cancellation`` hook: cancelling the flow run in the UI cancels the job's provider batches.

    Finished rows stay in the state directory; running the job again resumes the rest.
    """
    log = get_logger("prefect_llm_batch")
    state_dir = flow_run.parameters.get("state_dir") or default_state_dir()
    found = job_for_run(state_dir, str(flow_run.id))
    if found is None:
        log.info("flow run %s had not planned a job yet: nothing to cancel", flow_run.id)
        return
    store = JobStore(state_dir, found)
    record = store.read_job()
    if record.provider == "simulator":
        return  # the simulator's batches ended with the run's process
    credentials = flow_run.parameters.get("credentials")
    key = (
        credentials.api_key.get_secret_value()
        if isinstance(credentials, (OpenAIBatchCredentials, AnthropicBatchCredentials))
        else None
    )
    target = target_for(record.provider, record.base_url)
    with make_provider(target, api_key=key) as provider:
        cancelled = cancel_job(job_ref(record, state_dir), provider, "the flow run was cancelled")
    log.info("cancelled %d provider batch(es) of job %s", len(cancelled), found)


@flow(
    name="enrich-table",
    description=(
        "Render one prompt per row of a table, send the requests through a provider batch API, "
        "and write the table with the answers as new columns to Parquet."
    ),
    on_cancellation=[cancel_provider_batches],
)
def enrich_table(
    source: str,
    output: str,
    prompt: str,
    model: str,
    system: str | None = None,
    params: dict[str, Any] | None = None,
    endpoint: Literal["chat/completions", "embeddings"] = "chat/completions",
    response_format: dict[str, Any] | str | type[BaseModel] | None = None,
    column_prefix: str = "",
    parser: Callable[[str], Any] | None = None,
    provider: ProviderName = "simulator",
    base_url: str | None = None,
    credentials: ProviderCredentials | None = None,
    id_column: str | None = None,
    state_dir: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    max_requests_per_batch: int = OPENAI_MAX_REQUESTS_PER_BATCH,
    max_batch_bytes: int = OPENAI_MAX_BATCH_BYTES,
    poll_interval: float | None = None,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    max_attempts: int = 3,
    retry_backoff: float | None = None,
    cache: CacheMode = "use",
    max_in_flight_batches: int | None = None,
    max_enqueued_tokens: int | None = None,
    max_wait: float | None = None,
    keep_input_files: bool = False,
    dry_run: bool = False,
    detached: bool = False,
    mode: Mode = "batch",
    realtime_concurrency: int = 16,
    realtime_rpm: float | None = None,
    realtime_tpm: float | None = None,
    max_cost_usd: float | None = None,
    prices: dict[str, tuple[float, float]] | None = None,
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
    allow_empty: bool = False,
    invalid_utf8: Literal["error", "replace"] = "error",
) -> JobSummary | Estimate | JobRef:
    """Enrich a table with one LLM answer per row, through a provider batch API.

    Args:
        source: Table to read: CSV, Parquet or JSONL, or a directory of Parquet parts; a local path or
            an fsspec URL.
        output: Parquet file to write (local path or fsspec URL).
        prompt: Jinja2 template over the row's columns, e.g. ``"Summarise: {{ review }}"``.
        model: Model name.
        system: Optional system prompt (also a template).
        params: Extra request parameters (``temperature``, ``max_tokens``; ``dimensions`` for embeddings).
        endpoint: ``chat/completions`` (default) or ``embeddings``: then ``prompt`` renders each
            row's input text and the answer is the ``response_embedding`` column (float32 vectors,
            fixed-size when the width is known).
        response_format: A pydantic model class, a JSON Schema as JSON text, or a JSON Schema dict
            the answers must follow; each top-level property becomes a typed column (see
            :mod:`prefect_llm_batch.schemas`). Prefect reads any dict parameter holding a ``"$ref"``
            key as a block reference, so pass schemas that use ``$ref`` as JSON text or a model.
        column_prefix: Prefix for those typed columns.
        parser: Optional function from answer text to a dict, for answers that need their own
            parsing (Python API only); its result is still checked against ``response_format``.
        provider: ``simulator`` (default: the bundled offline fake, free, made-up answers) or
            ``openai`` (real: needs ``OPENAI_API_KEY`` or ``credentials``, and costs money), or
            ``anthropic`` (real: Message Batches; needs ``ANTHROPIC_API_KEY`` or ``credentials``).
        base_url: OpenAI-compatible base URL including ``/v1`` (default ``OPENAI_BASE_URL`` or OpenAI).
        credentials: An ``LLM Batch OpenAI Credentials`` block; else ``OPENAI_API_KEY`` is read.
        id_column: Column that identifies rows (unique, non-null); named in error messages.
        state_dir: Where job state and the response cache live (any fsspec URL); default
            ``$PREFECT_LLM_BATCH_STATE_DIR`` or ``~/.local/state/prefect-llm-batch``.
        limit: Only the first N rows (a trial run).
        overwrite: Replace an existing output.
        max_requests_per_batch: Most requests per batch (OpenAI allows 50,000).
        max_batch_bytes: Largest batch input file in bytes (OpenAI allows 200 MB).
        poll_interval: Seconds between status checks (default 30; 0.5 for the simulator).
        max_error_rate: Share of rows that may fail before the run is marked failed (default 0.1);
            the output is written either way.
        max_attempts: Rounds a request is sent in at most; rows with a retryable error go into
            follow-up batches (default 3).
        retry_backoff: Seconds before the second round, doubling per round (default 60; 0 for the
            simulator).
        cache: ``use`` the response cache (default), ``refresh`` it, or leave it ``off``.
        max_in_flight_batches: Most batches of this job running at once.
        max_enqueued_tokens: Most estimated prompt tokens of this job enqueued at once.
        max_wait: Seconds a batch may run before it is cancelled and its unrun rows retried.
        keep_input_files: Keep uploaded batch input files once their batch has ended.
        dry_run: Plan the job and return its :class:`~prefect_llm_batch.costs.Estimate` (rows,
            unique requests, cache hits, tokens, cost) without sending anything.
        detached: Submit the batches, record the job as pending and return its reference at once;
            the scheduled ``collect-jobs`` flow finishes it. No worker waits on the provider.
        mode: ``batch`` (default), ``realtime`` (request by request: for servers without a batch
            API, or small urgent jobs; same rows, keys, cache and resume) or ``auto`` (realtime for
            at most 100 requests to send, or when the server answers 404 to ``GET /batches``).
        realtime_concurrency: Most realtime requests in flight.
        realtime_rpm: Requests per minute to keep under in realtime mode.
        realtime_tpm: Tokens per minute to keep under in realtime mode.
        max_cost_usd: Refuse to send a job whose estimated cost is higher (or unknown).
        prices: USD per 1M batch tokens ``{"model-prefix": (input, output)}``, over the built-in table.
        expected_output_tokens: Output tokens assumed per request when ``params`` sets no max_tokens.
        allow_empty: Send rows whose prompt renders empty or only whitespace (by default an error
            naming the rows, before anything is sent).
        invalid_utf8: Text of a CSV or JSON Lines source that is not valid UTF-8 is an ``error``
            naming the column and the first bad row (default), or ``replace``: bad bytes become U+FFFD.

    Returns:
        The job summary (with ``dry_run``, the estimate; with ``detached``, the job reference).

    Raises:
        ErrorRateExceeded: More than ``max_error_rate`` of rows failed (after writing the output).
        BatchFailed: A batch failed validation (after writing the output, its rows marked).
        BatchCancelled: The user cancelled the job (after writing the finished rows).
        JobLocked: Another run of the same job is in progress.

    Examples:
        >>> from prefect_llm_batch.flows import enrich_table
        >>> summary = enrich_table(source="examples/reviews.csv", output="out/reviews.parquet",
        ...     prompt="Summarise in one line: {{ review }}", model="gpt-4o-mini",
        ...     overwrite=True)  # doctest: +SKIP
    """
    log = get_run_logger()
    _prefer_small_pages(log)
    schema = ResponseSchema.from_user(response_format) if response_format is not None else None
    spec = JobSpec(
        prompt=prompt,
        system=system,
        model=model,
        params=params or {},
        endpoint="/v1/embeddings" if endpoint == "embeddings" else "/v1/chat/completions",
        response_schema=schema.schema if schema is not None else None,
        column_prefix=column_prefix,
        provider=provider,
        base_url=base_url,
        id_column=id_column,
        limits=BatchLimits(max_requests_per_batch=max_requests_per_batch, max_batch_bytes=max_batch_bytes),
        allow_empty=allow_empty,
        invalid_utf8=invalid_utf8,
    )
    simulated = provider == "simulator"
    options = RunOptions.for_provider(
        provider,
        poll_interval=poll_interval,
        retry_backoff=retry_backoff,
        max_attempts=max_attempts,
        cache=cache,
        max_in_flight_batches=max_in_flight_batches,
        max_enqueued_tokens=max_enqueued_tokens,
        max_wait=max_wait,
        keep_input_files=keep_input_files,
    )  # fmt: skip
    if simulated:
        log.warning("provider 'simulator': answers come from the bundled simulator, not from a model")
    state = state_dir or default_state_dir()
    with (
        resolve_target(provider, base_url, credentials) as target,
        hold_job(source, spec, target, state, limit, options, credentials) as identity,
    ):
        ref = prepare_job(
            source, output, spec, target, state, limit, overwrite, options, credentials, identity
        )
        planned = estimate_job(ref, spec.params, prices, expected_output_tokens)
        log.info("job %s: %s", ref.job_id, planned.describe())
        if dry_run:
            return planned
        if max_cost_usd is not None and (planned.cost_usd is None or planned.cost_usd > max_cost_usd):
            known = (
                f"${planned.cost_usd:.4f}" if planned.cost_usd is not None else "unknown (no price for it)"
            )
            raise CostLimitExceeded(
                f"the estimated cost of job {ref.job_id} is {known}, over max_cost_usd=${max_cost_usd:.4f}: "
                f"{planned.describe()}. Nothing was sent; raise the limit, or pass prices= for the model."
            )
        progress_id = artifacts.start_progress(ref.job_id)
        store = JobStore(state, ref.job_id)
        run_context = FlowRunContext.get()
        if run_context is not None and run_context.flow_run is not None:
            record_run(state, str(run_context.flow_run.id), ref.job_id)
        key = credentials.api_key.get_secret_value() if credentials is not None else None
        chosen, reason = choose_mode(mode, target, planned.requests_to_send, api_key_for(target, key))
        log.info("job %s runs in %s mode (%s)", ref.job_id, chosen, reason)
        if chosen == "realtime" and (detached or target.provider == "azure"):
            raise ConfigError(
                f"realtime mode does not support {'detached runs' if detached else 'azure'} yet"
            )
        realtime = {
            "concurrency": realtime_concurrency,
            "requests_per_minute": realtime_rpm,
            "tokens_per_minute": realtime_tpm,
        }
        if detached:
            if simulated:
                raise ConfigError(
                    "detached mode needs a provider that outlives the run; the simulator stops with it"
                )
            with store.lease():
                store.clear_cancel()
                for chunk_id in store.read_job().round_chunks(1):
                    submit_batch(ref, chunk_id, spec, target, options, credentials)
            pending = PendingJob(
                ref=ref, spec=spec, target=target, options=options, output=output, overwrite=overwrite,
                max_error_rate=max_error_rate,
            )  # fmt: skip
            write_pending(state, ref.job_id, pending.model_dump_json().encode())
            log.info(
                "job %s submitted; the collect-jobs flow writes %s once its batches end", ref.job_id, output
            )
            return ref
        with store.lease():
            store.clear_cancel()  # a new run resumes a job a user cancelled earlier
            round_, chunks = 1, store.read_job().round_chunks(1)
            while chunks:
                if chosen == "realtime":
                    _run_round_realtime(ref, chunks, spec, target, options, credentials, realtime)
                else:
                    _run_round(ref, chunks, spec, target, options, credentials, progress_id)
                chunks = plan_retry(ref, round_, options)
                if chunks:
                    pause = options.retry_backoff * 2 ** (round_ - 1)
                    log.info("round %d: retrying %d batch(es) in %.0f s", round_ + 1, len(chunks), pause)
                    time.sleep(pause)
                    round_ += 1
            artifacts.set_progress(progress_id, artifacts.COLLECTED)
            summary = write_output(ref, output, overwrite, parser)
            summary = summary.model_copy(update={"mode": chosen, "mode_reason": reason})
            artifacts.set_progress(progress_id, 100.0)
            artifacts.publish_summary(summary)
            user_cancelled = store.is_cancelled()

    if user_cancelled:
        raise BatchCancelled(
            f"job {ref.job_id} was cancelled: {summary.ok_rows} of {summary.rows} rows are answered in "
            f"{output}; run the same command again to finish the rest"
        )
    failed = failed_batches(ref)
    if failed:
        first = failed[0]
        raise BatchFailed(
            f"{len(failed)} batch(es) failed validation; their rows are marked invalid_request in {output}. "
            f"Batch {first.batch_id}: {first.error}",
            batch_id=first.batch_id,
            code=first.error_code,
        )
    if summary.error_rate > max_error_rate:
        raise ErrorRateExceeded(
            f"{summary.error_rows} of {summary.rows} rows failed ({summary.error_rate:.1%} > max_error_rate "
            f"{max_error_rate:.1%}): {summary.errors_by_kind}. The output was written to {output}.",
            failed=summary.error_rows,
            total=summary.rows,
            output=output,
        )
    return summary


def _run_round_realtime(
    ref: JobRef,
    chunks: list[int],
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    credentials: ProviderCredentials | None,
    realtime: dict[str, Any],
) -> None:
    """Send one round in realtime; chunks an earlier batch-mode run already submitted finish as batches."""
    store = JobStore(ref.state_dir, ref.job_id)
    as_batches = [c for c in chunks if store.read_chunk(c).batch_id]
    for chunk_id in chunks:
        if chunk_id not in as_batches:
            realtime_chunk(ref, chunk_id, spec, target, options, credentials, **realtime)
    if as_batches:
        _run_round(ref, as_batches, spec, target, options, credentials)


def _run_round(
    ref: JobRef,
    chunks: list[int],
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    credentials: ProviderCredentials | None,
    progress_id: UUID | None = None,
) -> None:
    """Submit, wait for and collect the batches of one round (resubmitting token-limit failures)."""
    pending = list(chunks)
    while pending:
        for chunk_id in pending:  # one after the other: each may wait for capacity
            submit_batch(ref, chunk_id, spec, target, options, credentials)
        pending = wait_for_batches(ref, spec, target, options, credentials, progress_id)
    # COLLECTS_IN_FLIGHT at a time, the next one as soon as one ends: memory holds that many
    # batches' results, however many there are. A failure is raised once it ends (no collect
    # starts after it) and after those running have ended too.
    running: set[PrefectFuture[int]] = set()
    try:
        for chunk_id in chunks:
            if len(running) == COLLECTS_IN_FLIGHT:
                _end_one(running)
            running.add(collect_batch.submit(ref, chunk_id, spec, target, options, credentials))
        while running:
            _end_one(running)
    finally:
        for future in running:
            future.wait()


def _end_one(running: set[PrefectFuture[int]]) -> None:
    """Wait for the first of ``running`` to end, take it out, raise its failure."""
    ended = next(as_completed(list(running)))
    running.discard(ended)
    ended.result()


@flow(
    name="collect-jobs",
    description=(
        "Finish the jobs submitted in detached mode whose batches have ended: collect the results, "
        "send retry rounds, write each output. Run it on a schedule (e.g. every 10 minutes)."
    ),
)
def collect_jobs(
    state_dir: str | None = None, credentials: ProviderCredentials | None = None
) -> list[JobSummary]:
    """Move every pending detached job of a state directory forward once, without waiting.

    Args:
        state_dir: The state directory the jobs were submitted with (default as ``enrich_table``'s).
        credentials: Credentials block for the jobs' provider; else the environment variables.

    Returns:
        Summaries of the jobs finished by this run (others stay pending for the next run).

    Raises:
        ErrorRateExceeded: A finished job had more failed rows than its ``max_error_rate`` (every
            other job was still handled first).
    """
    log = get_run_logger()
    _prefer_small_pages(log)
    state = state_dir or default_state_dir()
    finished: list[JobSummary] = []
    too_many_errors: list[str] = []
    for raw in read_pending(state):
        pending = PendingJob.model_validate_json(raw)
        job_id = pending.ref.job_id
        store = JobStore(state, job_id)
        try:
            with store.lease():
                if not advance_job(pending, credentials):
                    log.info("job %s: batches still running", job_id)
                    continue
                summary = write_output(pending.ref, pending.output, pending.overwrite)
                artifacts.publish_summary(summary)
                remove_pending(state, job_id)
        except JobLocked as exc:
            log.info("job %s is held by another run, skipped: %s", job_id, exc)
            continue
        finished.append(summary)
        if summary.error_rate > pending.max_error_rate:
            too_many_errors.append(f"{job_id}: {summary.error_rows} of {summary.rows} rows failed")
    if too_many_errors:
        raise ErrorRateExceeded(
            "jobs over their max_error_rate (outputs written): " + "; ".join(too_many_errors)
        )
    return finished
