"""Detached jobs: submit now, finish later, without holding a worker while the provider works.

A detached run plans a job, submits its first round
(:func:`~prefect_llm_batch.jobs.driver.submit_first_round`) and records it as *pending* in the
state directory; :func:`advance` (run on a schedule, e.g. every 10 minutes, by the
``collect-jobs`` flow) moves each pending job forward once with the driver's non-blocking
:func:`~prefect_llm_batch.jobs.driver.tick`, and once its results are all collected the output is
written and the job forgotten. Each step is short; nothing sleeps on the provider.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import LLMBatchError
from ..providers.base import BatchProvider
from ..registry import read_pending, write_pending
from ..spec import JobSpec, ProviderTarget, RunOptions
from .driver import PlainSteps, Steps, TickSteps, submit_first_round, tick
from .identity import JobRef

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


class PendingRecord(BaseModel):
    """One file of ``{state_dir}/pending/``: the job it records, or why it cannot be read."""

    path: str
    job: PendingJob | None = None
    damage: str | None = None

    def describe_damage(self) -> str:
        """The warning for a damaged record: the file, what is wrong, and the fix."""
        job_id = self.path.rsplit("/", 1)[-1].removesuffix(".json")
        return (
            f"pending job record {self.path} is damaged and was skipped ({self.damage}); "
            f"delete the file, or the job with `prefect-llm-batch jobs clean --force {job_id}`"
        )


def submit_detached(
    ref: JobRef,
    steps: Steps | TickSteps,
    *,
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    output: str,
    overwrite: bool = False,
    max_error_rate: float = 0.1,
) -> JobRef:
    """Submit a job's first round and record it as pending (the ``collect-jobs`` flow or
    ``prefect-llm-batch collect`` finishes it); returns its reference at once."""
    submit_first_round(ref, steps)
    pending = PendingJob(
        ref=ref, spec=spec, target=target, options=options, output=output, overwrite=overwrite,
        max_error_rate=max_error_rate,
    )  # fmt: skip
    write_pending(ref.state_dir, ref.job_id, pending.model_dump_json().encode())
    return ref


def read_pending_jobs(state_dir: str, storage_options: dict[str, Any] | None = None) -> list[PendingRecord]:
    """Every pending job of a state directory, each read on its own: a damaged record (not JSON,
    or not a :class:`PendingJob`) is reported in its :class:`PendingRecord`, not raised."""
    records = []
    for path, data in read_pending(state_dir, storage_options):
        try:
            records.append(PendingRecord(path=path, job=PendingJob.model_validate_json(data)))
        except ValidationError as exc:  # pydantic reports bad JSON this way too
            first = exc.errors()[0]
            where = ".".join(map(str, first.get("loc", ()))) or "the file"
            records.append(PendingRecord(path=path, damage=f"{where}: {first.get('msg', exc.title)}"))
        except LLMBatchError as exc:  # a record a check now refuses (e.g. a base URL with credentials)
            records.append(PendingRecord(path=path, damage=str(exc)))
    return records


def advance(pending: PendingJob, provider: BatchProvider) -> bool:
    """Move a detached job forward without waiting (:func:`~prefect_llm_batch.jobs.driver.tick`
    with plain steps); True once every result is collected.

    The caller writes the output once this is True, holding the job's lease around both (as the
    ``collect-jobs`` flow does).

    Raises:
        JobLocked: Another run holds the job.
    """
    return tick(pending.ref, PlainSteps(pending.ref, provider, pending.options))


def describe(pending: PendingJob) -> dict[str, Any]:
    """A short description for logs."""
    return {"job_id": pending.ref.job_id, "output": pending.output, "provider": pending.target.provider}
