"""One job as shards: every shard a job of its own, request keys and answers shared job-wide.

A sharded job is planned from a :class:`~prefect_llm_batch.shards.ShardPlan`::

    plan        the shards (file and row-group ranges), from the Parquet footers only
    identify    each shard's content fingerprint (its row groups' bytes, and its image files'
                sizes and times when the job has image columns), then the job's id from
                them; the run takes the job's lease (one runner per sharded job)
    prepare     per shard, anywhere: render, key and plan the shard as a job of its own
                (``{job_id}-{index:05d}``) in the same state directory and response cache
    claim       once, in order: a request key that an earlier shard sends is *borrowed* by the
                later ones (taken out of their batch files), so it is sent once per job
    rounds      one poller advances every shard's batches; ended rounds are collected per shard,
                anywhere
    write       per shard, anywhere: borrowed answers are copied from the shards that sent them,
                then the shard's rows are written as one part of the output dataset
    manifest    written last (rows, shards, job id, schema): its presence means the output is whole

Every step but ``claim`` and the poller is a function of one shard that reads and writes the
state directory only, so it can run on any worker of a distributed engine, and run again after a
worker is lost (each is idempotent, and each shard's lease keeps two workers off one shard).
How the steps run (a loop, Prefect tasks on a Dask cluster) is the caller's:
:func:`run_sharded_job` runs them in this process; ``prefect_llm_batch.flows`` maps them on the
flow's task runner.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from ..costs import Estimate
from ..errors import StateError
from ..files import exists, read_bytes, write_bytes_atomic
from ..providers.base import BatchProvider
from ..shards import DEFAULT_SHARD_ROWS, Shard, ShardPlan, plan_shards, shard_fingerprint
from ..spec import CacheMode, JobSpec, ProviderTarget, RunOptions
from ..store import JobStore, orjson_dumps, secure_state_dir
from .claims import claim_shared_requests
from .collect import collect_chunks
from .dataset import (
    check_output_dataset,
    combine,
    concatenate_parts,
    part_name,
    write_manifest,
    write_shard,
)
from .driver import PlainSteps, TickSteps, advance, finish_round, submit_first_round
from .estimate import combine_estimates, estimate
from .guards import check_cost
from .identity import JobIdentity, JobRef, compute_job_id, effective_limits
from .images import images_fingerprint
from .output import JobSummary
from .prepare import prepare

logger = logging.getLogger("prefect_llm_batch")


class ShardedJob(BaseModel):
    """What ``shards.json`` holds, in the job's folder: the plan and each shard's job id."""

    job_id: str
    source: str
    source_fingerprint: str
    plan: ShardPlan
    shard_job_ids: list[str]
    created_at: float


def shard_job_id(job_id: str, index: int) -> str:
    """The job id of shard ``index`` of a sharded job.

    Examples:
        >>> shard_job_id("0123abcd", 7)
        '0123abcd-00007'
    """
    return f"{job_id}-{index:05d}"


def shard_content_fingerprint(
    shard: Shard, spec: JobSpec | None = None, storage_options: dict[str, Any] | None = None
) -> str:
    """A shard's fingerprint: its rows' (:func:`~prefect_llm_batch.shards.shard_fingerprint`) and,
    when the job has image columns, ``+`` and the digest of the image files its rows name (their
    paths, sizes and times: :func:`~prefect_llm_batch.jobs.images.images_fingerprint`), so a job
    whose images changed in place is a new job, as a single job is. The job's id hashes the
    whole; the shard's job records the rows' part (:func:`rows_fingerprint`), which writing the
    shard checks again.

    Args:
        shard: The shard.
        spec: The job (None, or no ``image_columns``: the rows' fingerprint alone).
        storage_options: fsspec options of the source and the image files.
    """
    rows = shard_fingerprint(shard, storage_options)
    if spec is None or not spec.image_columns:
        return rows
    images = images_fingerprint(
        shard.source, spec.image_columns, storage_options=storage_options,
        invalid_utf8=spec.invalid_utf8, shard=shard,
    )  # fmt: skip
    return f"{rows}+{hashlib.sha256(f'images {images}'.encode()).hexdigest()}"


def rows_fingerprint(fingerprint: str) -> str:
    """The rows' part of a :func:`shard_content_fingerprint` (without its images' digest).

    Examples:
        >>> rows_fingerprint("ab12+cd34"), rows_fingerprint("ab12")
        ('ab12', 'ab12')
    """
    return fingerprint.partition("+")[0]


def identify_sharded(
    plan: ShardPlan,
    fingerprints: list[str],
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    *,
    cache: CacheMode = "use",
) -> JobIdentity:
    """The sharded job's id: its shards' fingerprints (content and ranges) and the job's options.

    Args:
        plan: The shards.
        fingerprints: Each shard's :func:`shard_content_fingerprint`, in order.
    """
    if len(fingerprints) != len(plan.shards):
        raise ValueError("one fingerprint per shard")
    digest = hashlib.sha256(b"prefect-llm-batch shards\n")
    digest.update(plan.digest().encode())
    for value in fingerprints:
        digest.update(f"\n{value}".encode())
    source_fp = digest.hexdigest()
    limits = effective_limits(spec, provider)
    job_id = compute_job_id(spec, target, source_fp, None, limits, cache)
    return JobIdentity(job_id=job_id, source_fingerprint=source_fp, limits=limits)


def _shards_path(state_dir: str, job_id: str) -> str:
    return f"{state_dir.rstrip('/')}/jobs/{job_id}/shards.json"


def read_sharded_job(
    state_dir: str, job_id: str, *, storage_options: dict[str, Any] | None = None
) -> ShardedJob | None:
    """The sharded job's ``shards.json`` (its plan and shards' job ids), or None when there is none."""
    path = _shards_path(state_dir, job_id)
    if not exists(path, storage_options=storage_options):
        return None
    return ShardedJob.model_validate_json(read_bytes(path, storage_options=storage_options))


def check_sharded_cost(
    job_id: str, refs: list[JobRef], params: dict[str, Any], options: RunOptions
) -> Estimate:
    """Refuse a sharded job whose shards' estimates add up to more than ``options.max_cost_usd``
    (or have no price): the cap is the job's, not each shard's. Reads the plans only (no HTTP).

    Returns:
        The job's estimate (the sum of its shards').

    Raises:
        CostLimitExceeded: Over the cap; nothing was sent.
    """
    planned = combine_estimates(job_id, [estimate(ref, params, prices=options.prices) for ref in refs])
    check_cost(planned, options.max_cost_usd)
    return planned


def record_sharded_job(
    state_dir: str,
    identity: JobIdentity,
    plan: ShardPlan,
    *,
    storage_options: dict[str, Any] | None = None,
) -> ShardedJob:
    """Write (or read back) the sharded job's ``shards.json``; the caller holds the job's lease.

    Raises:
        StateError: The state holds another plan under this job id (it cannot: the id hashes the plan).
    """
    path = _shards_path(state_dir, identity.job_id)
    if exists(path, storage_options=storage_options):
        found = ShardedJob.model_validate_json(read_bytes(path, storage_options=storage_options))
        if found.plan.digest() != plan.digest():
            raise StateError(f"job {identity.job_id} in {state_dir} holds another shard plan")
        return found
    job = ShardedJob(
        job_id=identity.job_id,
        source=plan.source,
        source_fingerprint=identity.source_fingerprint,
        plan=plan,
        shard_job_ids=[shard_job_id(identity.job_id, s.index) for s in plan.shards],
        created_at=time.time(),
    )
    secure_state_dir(state_dir, storage_options)
    write_bytes_atomic(
        path, orjson_dumps(job.model_dump(mode="json")), storage_options=storage_options, private=True
    )
    return job


def prepare_shard(
    shard: Shard,
    job: JobIdentity,
    fingerprint: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    *,
    state_dir: str,
    cache: CacheMode = "use",
    storage_options: dict[str, Any] | None = None,
) -> JobRef:
    """Plan one shard as a job of its own (idempotent: a planned shard is resumed as planned)."""
    identity = JobIdentity(
        job_id=shard_job_id(job.job_id, shard.index),
        source_fingerprint=rows_fingerprint(fingerprint),
        limits=job.limits,
    )
    return prepare(
        shard.source,
        spec,
        provider,
        target,
        state_dir=state_dir,
        cache=cache,
        storage_options=storage_options,
        identity=identity,
        shard=shard,
    )


def run_shard_rounds(
    refs: list[JobRef],
    steps_for: Callable[[JobRef], TickSteps],
    collect: Callable[[list[tuple[JobRef, list[int]]]], None],
    options: RunOptions,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[list[JobRef]], None] | None = None,
) -> None:
    """Run every round of every shard: one poller here, the collects handed to ``collect``.

    Each pass polls every unfinished shard once (submitting what is due); the shards whose round
    ended are collected together (``collect`` runs them anywhere, in parallel, and returns once
    all are stored), then their next round is planned and submitted. The poller never waits on a
    worker, and a worker never waits on a batch.

    Args:
        refs: The prepared (and claimed) shards.
        steps_for: The tick steps of a shard (submit, poll, plan the retry; their ``collect`` is unused).
        collect: Collects ``(shard, chunks)`` pairs, each under its shard's lease.
        options: How the job runs (``poll_interval``).
        sleep: How to wait between passes (tests pass a fake).
        on_poll: Called after each pass with the shards still running (progress displays).
    """
    for ref in refs:
        submit_first_round(ref, steps_for(ref))
    pending = list(refs)
    while pending:
        ready: list[tuple[JobRef, list[int]]] = []
        for ref in pending:
            with JobStore(ref.state_dir, ref.job_id).lease():
                chunks = advance(ref, steps_for(ref))
            if chunks is not None:
                ready.append((ref, chunks))
        if ready:
            collect(ready)
            for ref, _ in ready:
                with JobStore(ref.state_dir, ref.job_id).lease():
                    if finish_round(ref, steps_for(ref)):
                        pending.remove(ref)
        if on_poll is not None:
            on_poll(pending)
        if pending and not ready:
            sleep(options.poll_interval)


class ShardSteps(Protocol):
    """The steps of a sharded job that run per shard, as :func:`run_sharded` calls them.

    Each takes every shard at once, so an engine can run them in parallel.
    """

    def fingerprint(self, shards: list[Shard]) -> list[str]:
        """Each shard's :func:`shard_content_fingerprint`."""

    def prepare(self, shards: list[Shard], job: JobIdentity, fingerprints: list[str]) -> list[JobRef]:
        """:func:`prepare_shard` of each shard."""

    def collect(self, pairs: list[tuple[JobRef, list[int]]]) -> None:
        """Collect the chunks of each shard, under its lease."""

    def write(self, refs: list[JobRef], parts: str) -> list[JobSummary]:
        """:func:`write_shard` of each shard into the folder ``parts``."""

    def tick_steps(self, ref: JobRef) -> TickSteps:
        """The poller's steps of a shard (submit, poll, plan the retry)."""


@dataclass
class PlainShardSteps:
    """The shard steps as calls in this process, one shard after the other.

    Args:
        spec: The job.
        provider: Its provider client.
        target: Where its HTTP goes.
        options: How it runs.
        state_dir: The state directory.
        parser: Parses answers for a response schema.
        storage_options: fsspec options of the source, state and output.
        sleep: How to wait (tests pass a fake).
    """

    spec: JobSpec
    provider: BatchProvider
    target: ProviderTarget
    options: RunOptions
    state_dir: str
    parser: Callable[[str], Any] | None = None
    storage_options: dict[str, Any] | None = None
    sleep: Callable[[float], None] = time.sleep

    def fingerprint(self, shards: list[Shard]) -> list[str]:
        """:func:`shard_content_fingerprint` of each shard."""
        return [shard_content_fingerprint(s, self.spec, self.storage_options) for s in shards]

    def prepare(self, shards: list[Shard], job: JobIdentity, fingerprints: list[str]) -> list[JobRef]:
        """:func:`prepare_shard` of each shard."""
        return [
            prepare_shard(
                shard,
                job,
                fp,
                self.spec,
                self.provider,
                self.target,
                state_dir=self.state_dir,
                cache=self.options.cache,
                storage_options=self.storage_options,
            )
            for shard, fp in zip(shards, fingerprints, strict=True)
        ]

    def collect(self, pairs: list[tuple[JobRef, list[int]]]) -> None:
        """Collect each shard's chunks."""
        for ref, chunks in pairs:
            with JobStore(ref.state_dir, ref.job_id).lease():
                collect_chunks(ref, chunks, self.provider, self.options)

    def write(self, refs: list[JobRef], parts: str) -> list[JobSummary]:
        """:func:`write_shard` of each shard."""
        return [
            write_shard(
                ref,
                i,
                refs[:i],
                parts,
                overwrite=True,
                parser=self.parser,
                storage_options=self.storage_options,
            )
            for i, ref in enumerate(refs)
        ]

    def tick_steps(self, ref: JobRef) -> TickSteps:
        """:class:`~prefect_llm_batch.jobs.driver.PlainSteps` of the shard."""
        return PlainSteps(ref, self.provider, self.options, sleep=self.sleep)


def run_sharded(
    source: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    options: RunOptions,
    steps: ShardSteps,
    *,
    state_dir: str,
    output: str,
    rows_per_shard: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
    single_file: bool = False,
    storage_options: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[list[JobRef]], None] | None = None,
    on_written: Callable[[list[JobSummary]], None] | None = None,
) -> JobSummary:
    """Run a job as shards, from the plan to the output's manifest (see the module's docstring).

    Args:
        source: One Parquet file or a directory of Parquet parts.
        spec: The job.
        provider: Its provider client (the poller's: submits and polls run here).
        target: Where its HTTP goes.
        options: How it runs.
        steps: How the per-shard steps run (:class:`PlainShardSteps`, Prefect tasks...).
        state_dir: The state directory (any fsspec URL).
        output: The output dataset's directory (or, with ``single_file``, the Parquet file).
        rows_per_shard: Rows a shard aims for.
        overwrite: Replace ``output`` if it exists.
        single_file: Concatenate the parts into one Parquet file at ``output`` (the job must fit
            in one machine's memory... only a part at a time is held: the file is streamed).
        storage_options: fsspec options of the source, state and output.
        sleep: How to wait between polls.
        on_poll: Called after each poll with the shards still running.
        on_written: Called with every shard's summary once the parts are written.

    Returns:
        The summary of the whole job.

    Raises:
        JobLocked: Another run holds the job.
    """
    check_output_dataset(
        output, overwrite=overwrite, single_file=single_file, storage_options=storage_options
    )
    plan = plan_shards(source, rows_per_shard=rows_per_shard, storage_options=storage_options)
    fps = steps.fingerprint(list(plan.shards))
    identity = identify_sharded(plan, fps, spec, provider, target, cache=options.cache)
    with JobStore(state_dir, identity.job_id, storage_options).lease():
        job = record_sharded_job(state_dir, identity, plan, storage_options=storage_options)
        logger.info("job %s: %d rows in %d shard(s) of %s", job.job_id, plan.rows, len(plan.shards), source)
        refs = steps.prepare(list(plan.shards), identity, fps)
        claim_shared_requests(refs, storage_options=storage_options)
        if options.max_cost_usd is not None:  # the job's cap, over all its shards, before any submit
            planned = check_sharded_cost(job.job_id, refs, spec.params, options)
            logger.info("job %s: %s", job.job_id, planned.describe())
        run_shard_rounds(refs, steps.tick_steps, steps.collect, options, sleep=sleep, on_poll=on_poll)
        parts = f"{state_dir.rstrip('/')}/jobs/{job.job_id}/parts" if single_file else output
        summaries = steps.write(refs, parts)
        if on_written is not None:
            on_written(summaries)
        if single_file:
            concatenate_parts(parts, [part_name(s.index) for s in plan.shards], output, overwrite=overwrite,
                              storage_options=storage_options)  # fmt: skip
        else:
            write_manifest(output, job, summaries, storage_options=storage_options)
        return combine(job, output, summaries)


def run_sharded_job(
    source: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    options: RunOptions,
    *,
    state_dir: str,
    output: str,
    rows_per_shard: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
    single_file: bool = False,
    parser: Callable[[str], Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JobSummary:
    """:func:`run_sharded` in this process (no Prefect, no cluster): shards one after the other."""
    steps = PlainShardSteps(
        spec,
        provider,
        target,
        options,
        state_dir,
        parser=parser,
        storage_options=storage_options,
        sleep=sleep,
    )
    return run_sharded(
        source, spec, provider, target, options, steps, state_dir=state_dir, output=output,
        rows_per_shard=rows_per_shard, overwrite=overwrite, single_file=single_file,
        storage_options=storage_options, sleep=sleep,
    )  # fmt: skip
