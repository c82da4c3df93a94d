"""Thin Prefect tasks: one step of :mod:`prefect_llm_batch.jobs` each, plus retries and logs.

Tasks pass references (a :class:`~prefect_llm_batch.jobs.JobRef`, chunk numbers, paths), never
DataFrames, and use ``cache_policy=NONE``: the job's state lives in its state directory, not in
Prefect's task cache, and Prefect never hashes or persists a big input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import task
from prefect.assets import add_asset_metadata, materialize
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import AssetContext
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.tasks import Task
from prefect.types.names import validate_valid_asset_key

from . import artifacts, jobs
from .blocks import ProviderCredentials
from .budgets import job_budget
from .costs import DEFAULT_EXPECTED_OUTPUT_TOKENS, Estimate
from .errors import is_transient
from .jobs.checks import check_output
from .jobs.detached import PendingJob, advance
from .jobs.realtime import realtime_client, run_chunk_realtime
from .providers import api_key_for, make_provider
from .providers.base import BatchProvider
from .spec import JobSpec, ProviderTarget, RunOptions, without_credentials


def retry_if_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only :class:`~prefect_llm_batch.errors.Transient` errors."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


def provider_for(
    target: ProviderTarget, spec: JobSpec, credentials: ProviderCredentials | None
) -> BatchProvider:
    """A new provider client for one task run.

    With a credentials block, the client is the block's :meth:`get_client` (as Prefect's
    integrations get theirs); without one, the key is the provider's environment variable
    (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``...).

    Raises:
        ConfigError: No key for a real provider, or the block is another provider's.
    """
    if credentials is not None:
        return credentials.get_client(spec.limits, target=target, endpoint=spec.endpoint)
    return make_provider(target, limits=spec.limits, endpoint=spec.endpoint)


def _log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    return get_run_logger()


_RETRIED: dict[str, Any] = {
    "cache_policy": NONE,
    "retries": 3,
    "retry_delay_seconds": [10, 60, 300],
    "retry_condition_fn": retry_if_transient,
}


@task(name="identify-job", cache_policy=NONE)
def identify_job(
    source: str,
    spec: JobSpec,
    target: ProviderTarget,
    limit: int | None = None,
    options: RunOptions | None = None,
    credentials: ProviderCredentials | None = None,
) -> jobs.JobIdentity:
    """The job's id, from the source's fingerprint and the options (no HTTP): the flow takes the
    job's lease with it before ``prepare-job``."""
    cache = (options or RunOptions()).cache
    with provider_for(target, spec, credentials) as provider:
        return jobs.identify(source, spec, provider, target, limit=limit, cache=cache)


@task(name="prepare-job", cache_policy=NONE)
def prepare_job(
    source: str,
    output: str,
    spec: JobSpec,
    target: ProviderTarget,
    state_dir: str,
    limit: int | None = None,
    overwrite: bool = False,
    options: RunOptions | None = None,
    credentials: ProviderCredentials | None = None,
    identity: jobs.JobIdentity | None = None,
) -> jobs.JobRef:
    """Check the output's path, read and render the table, take cached answers, plan the batches,
    write the plan (no HTTP); the caller holds the job's lease (see ``identify-job``)."""
    check_output(source, output, state_dir, overwrite=overwrite)
    cache = (options or RunOptions()).cache
    with provider_for(target, spec, credentials) as provider:
        ref = jobs.prepare(
            source, spec, provider, target, state_dir=state_dir, limit=limit, cache=cache, identity=identity
        )
    _log().info(
        "job %s: %d rows, %d unique requests, %d answered from the cache, %d batch(es); state in %s",
        ref.job_id, ref.rows, ref.unique_requests, ref.cached_requests, ref.chunks, state_dir,
    )  # fmt: skip
    return ref


@task(name="submit-batch", task_run_name="submit-batch-{chunk_id}", **_RETRIED)
def submit_batch(
    ref: jobs.JobRef,
    chunk_id: int,
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    credentials: ProviderCredentials | None = None,
) -> str | None:
    """Create the provider batch of one chunk, at most once (see :func:`jobs.submit_chunk`).

    Returns the batch id, or None when the job was cancelled before this chunk was sent.
    """
    budget = job_budget(target.provider, spec.model, options)
    with provider_for(target, spec, credentials) as provider:
        state = jobs.submit_chunk(ref, chunk_id, provider, options, budget=budget)
    return state.batch_id


@task(
    name="wait-for-batches",
    cache_policy=NONE,
    retries=5,
    retry_delay_seconds=60,
    retry_condition_fn=retry_if_transient,
)
def wait_for_batches(
    ref: jobs.JobRef,
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    credentials: ProviderCredentials | None = None,
    progress_id: UUID | None = None,
) -> list[int]:
    """Poll the job's batches until all have ended; log and update the progress artifact only
    when something changed."""
    log = _log()

    def report(p: jobs.Progress) -> None:
        log.info("job %s: %s", ref.job_id, p.describe())
        artifacts.set_progress(progress_id, artifacts.waiting_progress(p))

    budget = job_budget(target.provider, spec.model, options)
    with provider_for(target, spec, credentials) as provider:
        return jobs.wait(ref, provider, options, on_change=report, budget=budget)


@task(name="collect-batch", task_run_name="collect-batch-{chunk_id}", **_RETRIED)
def collect_batch(
    ref: jobs.JobRef,
    chunk_id: int,
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    credentials: ProviderCredentials | None = None,
) -> int:
    """Download and store the results of one ended batch."""
    with provider_for(target, spec, credentials) as provider:
        return jobs.collect_chunk(ref, chunk_id, provider, options)


@task(name="plan-retry", cache_policy=NONE)
def plan_retry(ref: jobs.JobRef, round_: int, options: RunOptions) -> list[int]:
    """Plan the next round from the requests that failed in a retryable way."""
    return jobs.plan_retry_round(ref, round_, options)


@task(name="write-output", cache_policy=NONE)
def write_output(
    ref: jobs.JobRef, output: str, overwrite: bool = False, parser: Callable[[str], Any] | None = None
) -> jobs.JobSummary:
    """Join the results back to the rows (typed columns with a schema) and write the output Parquet;
    run as :func:`write_output_asset`, the job id and row counts become the asset's metadata."""
    summary = jobs.assemble(ref, output=output, overwrite=overwrite, parser=parser)
    key = asset_key(output)
    context = AssetContext.get()
    if key is not None and context is not None and key in {a.key for a in context.downstream_assets}:
        add_asset_metadata(key, output_asset_metadata(summary))
    return summary


def asset_key(path: str) -> str | None:
    """The Prefect asset key of a table: its URL without userinfo, or ``file://`` and the absolute
    path of a local one; None when Prefect refuses it as a key (spaces, ``#``, ``?``, ``%``...).

    Examples:
        >>> asset_key("s3://me:pw@bucket/out/reviews.parquet")
        's3://bucket/out/reviews.parquet'
        >>> asset_key("/data/out.parquet")
        'file:///data/out.parquet'
        >>> asset_key("/data/my reviews.parquet") is None
        True
    """
    scheme, sep, _ = path.partition("://")
    if sep and scheme.isalnum():
        key = without_credentials(scheme.lower() + path[len(scheme) :])
    else:
        key = "file://" + Path(path).expanduser().absolute().as_posix()
    try:
        return validate_valid_asset_key(key)
    except ValueError:
        return None


def output_asset_metadata(summary: jobs.JobSummary) -> dict[str, Any]:
    """What the UI shows with a materialization of the output: the job and its row counts."""
    return {
        "job_id": summary.job_id,
        "rows": summary.rows,
        "ok_rows": summary.ok_rows,
        "error_rows": summary.error_rows,
        "provider": summary.provider,
        "model": summary.model,
    }


def write_output_asset(
    ref: jobs.JobRef,
    output: str,
    overwrite: bool = False,
    parser: Callable[[str], Any] | None = None,
    source: str | None = None,
) -> jobs.JobSummary:
    """``write-output`` as the task that materializes the output Parquet as a Prefect asset (the
    source table, when it can be a key, as its upstream asset), so the output shows in the UI's
    lineage with the job id and row counts; a path Prefect cannot take as a key is written by the
    plain task.

    Args:
        ref: The job.
        output: Parquet file to write.
        overwrite: Replace an existing output.
        parser: Optional function from answer text to a dict.
        source: The job's source table.

    Returns:
        The job summary.
    """
    key = asset_key(output)
    if key is None:
        get_run_logger().info("%s cannot be a Prefect asset key: written without an asset", output)
        return write_output(ref, output, overwrite, parser)
    upstream = asset_key(source) if source is not None else None
    materializing = materialize(
        key, name="write-output", cache_policy=NONE, asset_deps=[upstream] if upstream else None
    )(write_output.fn)
    return materializing(ref, output, overwrite, parser)


@task(name="estimate-job", cache_policy=NONE)
def estimate_job(
    ref: jobs.JobRef,
    params: dict[str, Any],
    prices: dict[str, tuple[float, float]] | None = None,
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
) -> Estimate:
    """Tokens and cost of what the job still has to send (no HTTP)."""
    return jobs.estimate(ref, params, prices=prices, expected_output_tokens=expected_output_tokens)


@task(name="advance-job", cache_policy=NONE, **{k: v for k, v in _RETRIED.items() if k != "cache_policy"})
def advance_job(pending: PendingJob, credentials: ProviderCredentials | None = None) -> bool:
    """Move a detached job forward once (no waiting); True when its results are all collected."""
    with provider_for(pending.target, pending.spec, credentials) as provider:
        return advance(pending, provider)


@task(name="realtime-chunk", task_run_name="realtime-chunk-{chunk_id}", **_RETRIED)
def realtime_chunk(
    ref: jobs.JobRef,
    chunk_id: int,
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    credentials: ProviderCredentials | None = None,
    concurrency: int | None = None,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
) -> int:
    """Send one chunk's requests through the realtime endpoint (bounded, rate-limited)."""
    key = api_key_for(target, credentials.api_key.get_secret_value() if credentials is not None else None)
    with provider_for(target, spec, credentials) as provider:
        client = realtime_client(
            provider, target, key, max_concurrency=concurrency,
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
        )  # fmt: skip
        return run_chunk_realtime(ref, chunk_id, client, options)


@dataclass
class TaskSteps:
    """The driver's steps (:class:`~prefect_llm_batch.jobs.Steps`) as Prefect tasks, one task run
    per step, so that the UI shows ``submit-batch-N``, ``wait-for-batches``, ``collect-batch-N``
    (:data:`~prefect_llm_batch.jobs.COLLECTS_IN_FLIGHT` running at a time), ``realtime-chunk-N``
    and ``plan-retry``.

    Args:
        ref: The prepared job.
        spec: The job.
        target: Where its HTTP goes.
        options: How it runs.
        credentials: The provider's credentials block; else the environment variables.
        progress_id: The progress artifact ``wait-for-batches`` updates.
        realtime_limits: ``concurrency``, ``requests_per_minute``, ``tokens_per_minute`` of
            ``realtime-chunk``.
    """

    ref: jobs.JobRef
    spec: JobSpec
    target: ProviderTarget
    options: RunOptions
    credentials: ProviderCredentials | None = None
    progress_id: UUID | None = None
    realtime_limits: dict[str, Any] = field(default_factory=dict)

    def submit(self, chunk_id: int) -> None:
        """``submit-batch-N``."""
        submit_batch(self.ref, chunk_id, self.spec, self.target, self.options, self.credentials)

    def wait(self) -> list[int]:
        """``wait-for-batches``."""
        return wait_for_batches(
            self.ref, self.spec, self.target, self.options, self.credentials, self.progress_id
        )

    def collect(self, chunk_ids: list[int]) -> None:
        """``collect-batch-N``, :data:`~prefect_llm_batch.jobs.COLLECTS_IN_FLIGHT` at a time, the
        next one as soon as one ends: memory holds that many batches' results, however many there
        are. A failure is raised once it ends (no collect starts after it) and after those running
        have ended too."""
        running: set[PrefectFuture[int]] = set()
        try:
            for chunk_id in chunk_ids:
                if len(running) == jobs.COLLECTS_IN_FLIGHT:
                    _end_one(running)
                running.add(
                    collect_batch.submit(
                        self.ref, chunk_id, self.spec, self.target, self.options, self.credentials
                    )
                )
            while running:
                _end_one(running)
        finally:
            for future in running:
                future.wait()

    def realtime(self, chunk_id: int) -> None:
        """``realtime-chunk-N``."""
        realtime_chunk(
            self.ref, chunk_id, self.spec, self.target, self.options, self.credentials, **self.realtime_limits
        )

    def plan_retry(self, round_: int) -> list[int]:
        """``plan-retry``."""
        return plan_retry(self.ref, round_, self.options)


def _end_one(running: set[PrefectFuture[int]]) -> None:
    """Wait for the first of ``running`` to end, take it out, raise its failure."""
    ended = next(as_completed(list(running)))
    running.discard(ended)
    ended.result()
