"""Running a whole job in this process without Prefect (notebooks, scripts).

The ``enrich_table`` flow runs the same steps as Prefect tasks; this driver calls them directly,
so a notebook needs no Prefect server. Resume, cache, retry rounds and the lease work the same:
:func:`run_job` holds the job's lease from planning to the output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..providers.base import BatchProvider
from ..spec import JobSpec, ProviderTarget, RunOptions
from ..store import JobStore
from .batches import Progress, collect_chunks, submit_chunk, wait
from .output import JobSummary, assemble
from .plan import JobRef, identify, plan_retry_round, prepare

logger = logging.getLogger("prefect_llm_batch")


def run_job(
    source: str,
    spec: JobSpec,
    provider: BatchProvider,
    target: ProviderTarget,
    options: RunOptions,
    *,
    state_dir: str,
    output: str,
    overwrite: bool = False,
    limit: int | None = None,
    parser: Callable[[str], Any] | None = None,
    on_change: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> JobSummary:
    """Plan (or resume), run every round of and write the output of a job, holding its lease
    throughout: a second run of the same job meanwhile fails with
    :class:`~prefect_llm_batch.errors.JobLocked` and changes nothing.

    Args:
        source: The table.
        spec: The job.
        provider: Its provider client.
        target: Where its HTTP goes.
        options: How it runs.
        state_dir: The state directory.
        output: The Parquet file to write.
        overwrite: Replace ``output`` if it exists.
        limit: Only the first rows.
        parser: Parses answers for a response schema (see :func:`~prefect_llm_batch.jobs.assemble`).
        on_change: Called with the progress when it changes.
        sleep: How to wait (tests pass a fake).

    Returns:
        The job's summary.
    """
    identity = identify(source, spec, provider, target, limit=limit, cache=options.cache)
    with JobStore(state_dir, identity.job_id).lease():
        ref = prepare(
            source, spec, provider, target, state_dir=state_dir, limit=limit, cache=options.cache,
            identity=identity,
        )  # fmt: skip
        run_batches(ref, provider, options, on_change=on_change, sleep=sleep)
        return assemble(ref, output=output, overwrite=overwrite, parser=parser)


def run_batches(
    ref: JobRef,
    provider: BatchProvider,
    options: RunOptions,
    *,
    on_change: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Submit, wait for and collect every round of a prepared job, holding its lease (or within
    the lease its caller holds, see :func:`run_job`)."""
    store = JobStore(ref.state_dir, ref.job_id)
    with store.lease():
        store.clear_cancel()
        round_, chunks = 1, store.read_job().round_chunks(1)
        while chunks:
            pending = list(chunks)
            while pending:
                for chunk_id in pending:
                    submit_chunk(ref, chunk_id, provider, options, sleep)
                pending = wait(ref, provider, options, on_change=on_change, sleep=sleep)
            collect_chunks(ref, chunks, provider, options)
            chunks = plan_retry_round(ref, round_, options)
            if chunks:
                sleep(options.retry_backoff * 2 ** (round_ - 1))
                round_ += 1
