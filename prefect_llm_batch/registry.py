"""The jobs of a state directory: listing and deleting them, and the records of runs::

    {state_dir}/pending/{job_id}.json   a job submitted in detached mode, until its output is written
    {state_dir}/runs/{run_id}.json      which job a flow run works on (for its cancellation hook)

Delete jobs with ``prefect-llm-batch jobs clean`` (:func:`clean_jobs`; a job a runner holds is
kept, and so is a job with work in flight unless forced).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel, Field

from .errors import JobLocked, StateError
from .files import bytes_freed_by_removing, exists, modified_time, read_bytes, write_bytes_atomic
from .object_stores import filesystem
from .store import JobRecord, JobStore, orjson_dumps, secure_state_dir

logger = logging.getLogger("prefect_llm_batch")


def list_jobs(state_dir: str, storage_options: dict[str, Any] | None = None) -> list[JobRecord]:
    """Every prepared job of a state directory, newest first (a job whose ``job.json`` is damaged
    is left out, with a warning that names the file and how to delete the job)."""
    fs, root = filesystem(f"{state_dir.rstrip('/')}/jobs", storage_options)
    if not fs.exists(root):
        return []
    records = []
    for path in fs.ls(root, detail=False):
        job_id = str(path).rstrip("/").rsplit("/", 1)[-1]
        store = JobStore(state_dir, job_id, storage_options)
        if store.is_prepared():
            try:
                records.append(store.read_job())
            except StateError as exc:
                logger.warning("%s", exc)
    return sorted(records, key=lambda r: r.created_at, reverse=True)


class CleanedJobs(BaseModel):
    """What :func:`clean_jobs` did: the jobs deleted, the bytes that freed, the jobs it kept and why."""

    removed: list[str] = Field(default_factory=list)
    bytes: int = 0
    kept: dict[str, str] = Field(default_factory=dict)


def job_finished(store: JobStore) -> bool:
    """True when a job is planned, every batch of it is collected and it is not pending (detached).

    A damaged or unplanned job is not finished (delete it by its id).
    """
    pending = f"{store.state_dir}/pending/{store.job_id}.json"
    if not store.is_prepared() or exists(pending, storage_options=store._options):
        return False
    try:
        record = store.read_job()
        return all(store.read_chunk(c.chunk_id).collected for c in record.chunks)
    except StateError:
        return False


def in_flight(store: JobStore) -> str | None:
    """Why deleting a job now would throw paid work away, or None: it is pending (submitted in
    detached mode, not yet written), or has batches submitted and not collected (running at the
    provider, or ended with results nobody downloaded). A damaged chunk file counts no batch.
    """
    fix = (
        "collect them (`prefect-llm-batch collect`, or run the job again) or cancel them "
        f"(`prefect-llm-batch cancel {store.job_id}`) first, or delete it anyway with --force "
        "(`force=True`)"
    )
    if exists(f"{store.state_dir}/pending/{store.job_id}.json", storage_options=store._options):
        return f"it is pending (submitted detached, its output not written yet): {fix}"
    fs, root = filesystem(store._path("chunks"), store._options)
    if not fs.exists(root):
        return None
    batches = []
    for path in sorted(str(p) for p in fs.ls(root, detail=False)):
        name = path.rsplit("/", 1)[-1]
        if not (name.startswith("chunk-") and name.endswith(".json")):
            continue
        try:
            state = store.read_chunk(int(name[len("chunk-") : -len(".json")]))
        except (StateError, ValueError):
            continue
        if state.batch_id and not state.collected:
            batches.append(state.batch_id)
    if not batches:
        return None
    shown = ", ".join(batches[:3]) + (", ..." if len(batches) > 3 else "")
    return f"{len(batches)} batch(es) submitted and not collected ({shown}): {fix}"


def clean_jobs(
    state_dir: str,
    *,
    job_ids: Sequence[str] | None = None,
    older_than_s: float | None = None,
    finished: bool = False,
    force: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> CleanedJobs:
    """Delete jobs from a state directory (their plans, batch files, results); the response cache
    keeps their answers, so running one again pays only for what the cache does not answer.

    Every job matching all the conditions given is deleted (with none, every job), except a
    job whose lease a runner holds, and (unless ``force``) a job with work in flight: pending
    (submitted detached) or with batches submitted and not collected (see :func:`in_flight`).
    Those are kept, and :attr:`CleanedJobs.kept` says why. With ``force``, batches of a deleted
    job still running at the provider are not cancelled and their results are not collected
    (``prefect-llm-batch cancel JOB_ID`` first).

    Args:
        state_dir: The state directory.
        job_ids: Only these jobs (an id that is not there is reported in ``kept``).
        older_than_s: Only jobs none of whose files changed for this many seconds.
        finished: Only jobs whose batches are all collected (see :func:`job_finished`).
        force: Delete jobs with work in flight too.
        storage_options: fsspec options for the state directory.

    Returns:
        The jobs deleted, the bytes freed and the jobs kept (with the reason).

    Examples:
        >>> from prefect_llm_batch.store import ChunkState, JobStore
        >>> store = JobStore("memory://doc-clean", "job1")
        >>> store.write_chunk(ChunkState(chunk_id=0))
        >>> clean_jobs("memory://doc-clean").removed
        ['job1']
    """
    report = CleanedJobs()
    fs, root = filesystem(f"{state_dir.rstrip('/')}/jobs", storage_options)
    present = (
        sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        if fs.exists(root)
        else []
    )
    for job_id in job_ids or []:
        if job_id not in present:
            report.kept[job_id] = "no such job"
    now = time.time()
    for job_id in present:
        if job_ids is not None and job_id not in job_ids:
            continue
        store = JobStore(state_dir, job_id, storage_options)
        folder = f"{root}/{job_id}"
        files = [str(p) for p in fs.find(folder)]
        if older_than_s is not None and any(now - modified_time(fs, p, now) < older_than_s for p in files):
            continue
        if finished and not job_finished(store):
            continue
        lease = store.lease()
        try:
            lease.acquire()  # held until the folder is gone (it holds the lease file too)
        except JobLocked as exc:
            report.kept[job_id] = str(exc)
            continue
        busy = None if force else in_flight(store)
        if busy is not None:
            lease.release()
            report.kept[job_id] = busy
            continue
        freed = 0
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                freed += bytes_freed_by_removing(fs, path)
        fs.rm(folder, recursive=True)
        remove_pending(state_dir, job_id, storage_options)
        report.removed.append(job_id)
        report.bytes += freed
        logger.info("deleted job %s from %s (%d bytes)", job_id, state_dir, freed)
    return report


def write_pending(
    state_dir: str, job_id: str, data: bytes, storage_options: dict[str, Any] | None = None
) -> None:
    """Record a job submitted in detached mode (``pending/{job_id}.json``)."""
    secure_state_dir(state_dir, storage_options)
    write_bytes_atomic(
        f"{state_dir.rstrip('/')}/pending/{job_id}.json", data, storage_options=storage_options, private=True
    )


def read_pending(state_dir: str, storage_options: dict[str, Any] | None = None) -> list[tuple[str, bytes]]:
    """The records of every job still pending in a state directory: ``(path, bytes)``, by path."""
    fs, root = filesystem(f"{state_dir.rstrip('/')}/pending", storage_options)
    if not fs.exists(root):
        return []
    paths = sorted(str(p) for p in fs.ls(root, detail=False) if str(p).endswith(".json"))
    return [(p, bytes(fs.cat_file(p))) for p in paths]


def remove_pending(state_dir: str, job_id: str, storage_options: dict[str, Any] | None = None) -> None:
    """Forget a detached job once its output is written."""
    fs, path = filesystem(f"{state_dir.rstrip('/')}/pending/{job_id}.json", storage_options)
    if fs.exists(path):
        fs.rm(path)


def record_run(
    state_dir: str, run_id: str, job_id: str, storage_options: dict[str, Any] | None = None
) -> None:
    """Remember which job a flow run works on (for its cancellation hook)."""
    secure_state_dir(state_dir, storage_options)
    write_bytes_atomic(
        f"{state_dir.rstrip('/')}/runs/{run_id}.json",
        orjson_dumps({"job_id": job_id, "at": time.time()}),
        storage_options=storage_options,
        private=True,
    )


def job_for_run(state_dir: str, run_id: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The job a flow run worked on, if it got that far."""
    path = f"{state_dir.rstrip('/')}/runs/{run_id}.json"
    if not exists(path, storage_options=storage_options):
        return None
    return str(orjson.loads(read_bytes(path, storage_options=storage_options))["job_id"])
