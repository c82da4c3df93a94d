"""A job's identity: its id from the source's fingerprint and the options, and the reference
(:class:`JobRef`) that steps pass around."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel

from ..errors import InputError
from ..keys import canonical_json
from ..providers.base import BatchProvider
from ..spec import BatchLimits, CacheMode, JobSpec, ProviderTarget, normalise_base_url
from ..store import JobRecord
from ..table import fingerprint
from .images import images_fingerprint


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
    images: str | None = None,
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
        # The local provider's server holds no batches (realtime only) and gets a new port each run:
        # its jobs are the same job across runs, so a killed run resumes from its stored answers.
        "http_base_url": normalise_base_url(
            target.key_base_url if target.provider == "local" else target.base_url
        ),
        "id_column": spec.id_column,
        "response_schema": spec.response_schema,
        "limits": limits.model_dump(),
    }
    if cache != "use":  # a refresh must not resume (and so reuse) the answers of a normal run
        payload["cache"] = cache
    if spec.cache_system_prompt:  # other request bodies
        payload["cache_system_prompt"] = True
    if spec.model_column is not None:  # each row's model comes from this column
        payload["model_column"] = spec.model_column
    if spec.image_columns:  # other request bodies (the images' bytes are in the request keys)
        payload["image_columns"] = spec.image_columns
        payload["allow_missing_images"] = spec.allow_missing_images
        payload["images"] = images  # the image files' sizes and times (jobs.images.images_fingerprint)
    if spec.invalid_utf8 != "error":  # other prompts (and ids unchanged for the default)
        payload["invalid_utf8"] = spec.invalid_utf8
    return hashlib.sha256(canonical_json(payload)).hexdigest()[:32]


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
    (:meth:`~prefect_llm_batch.store.JobStore.lease`) and then plans
    (:func:`~prefect_llm_batch.jobs.prepare.prepare`), runs and writes the job under it.

    Raises:
        InputError: ``limit`` is below 1.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, not {limit}")
    source_fp = fingerprint(source, storage_options=storage_options)
    limits = effective_limits(spec, provider)
    images = None
    if spec.image_columns:
        images = images_fingerprint(
            source, spec.image_columns, limit=limit, storage_options=storage_options,
            invalid_utf8=spec.invalid_utf8,
        )  # fmt: skip
    job_id = compute_job_id(spec, target, source_fp, limit, limits, cache, images=images)
    return JobIdentity(job_id=job_id, source_fingerprint=source_fp, limits=limits)


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
