"""Detached jobs: submit now, finish later, without holding a worker while the provider works.

``submit`` plans a job, sends its first batches and records it as *pending* in the state
directory; ``advance`` (run on a schedule, e.g. every 10 minutes, by the ``collect-jobs`` flow)
polls each pending job once, and when its batches have ended collects them, sends a retry round
if needed, or writes the output and forgets the job. Each step is short; nothing sleeps on the
provider.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from ..providers.base import BatchProvider
from ..spec import JobSpec, ProviderTarget, RunOptions
from ..store import JobStore
from .batches import collect_chunks, ended, poll_once, submit_chunk
from .plan import JobRef, plan_retry_round

logger = logging.getLogger("prefect_llm_batch")


class PendingJob(BaseModel):
    """What ``collect`` needs to finish a job submitted in detached mode (no secrets)."""

    ref: JobRef
    spec: JobSpec
    target: ProviderTarget
    options: RunOptions
    output: str
    overwrite: bool = False
    max_error_rate: float = 0.1


def submit_round(ref: JobRef, provider: BatchProvider, options: RunOptions, chunks: list[int]) -> None:
    """Submit the given chunks (each at most once)."""
    for chunk_id in chunks:
        submit_chunk(ref, chunk_id, provider, options)


def advance(pending: PendingJob, provider: BatchProvider) -> bool:
    """Move a detached job forward without waiting; True once every result is collected.

    Polls the job's running batches once; resubmits batches that failed with a token limit and
    submits chunks of the current round that were not sent yet; when the round has ended, collects
    it and plans (and submits) the next round. The caller writes the output once this is True,
    holding the job's lease around both (as the ``collect-jobs`` flow does); this step holds it
    too (re-entrant), so that it never runs beside another runner of the job.

    Raises:
        JobLocked: Another run holds the job.
    """
    with JobStore(pending.ref.state_dir, pending.ref.job_id).lease():
        return _advance(pending, provider)


def _advance(pending: PendingJob, provider: BatchProvider) -> bool:
    ref, options = pending.ref, pending.options
    store = JobStore(ref.state_dir, ref.job_id)
    poll = poll_once(ref, provider, options)
    submit_round(ref, provider, options, poll.resubmit)
    record = store.read_job()
    round_ = max(record.rounds, 1)
    chunks = record.round_chunks(round_)
    states = {c: store.read_chunk(c) for c in chunks}
    unsent = [c for c, s in states.items() if not s.batch_id and not ended(s)]
    if unsent:
        submit_round(ref, provider, options, unsent)
        return False
    if poll.pending or poll.resubmit:
        return False
    collect_chunks(ref, chunks, provider, options)
    following = plan_retry_round(ref, round_, options)
    if following:
        logger.info("job %s: round %d sends %d batch(es)", ref.job_id, round_ + 1, len(following))
        submit_round(ref, provider, options, following)
        return False
    return True


def describe(pending: PendingJob) -> dict[str, Any]:
    """A short description for logs."""
    return {"job_id": pending.ref.job_id, "output": pending.output, "provider": pending.target.provider}
