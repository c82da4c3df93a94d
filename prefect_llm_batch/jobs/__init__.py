"""The job lifecycle, provider-agnostic and Prefect-free.

::

    identify   the job id, from the source's fingerprint and the options; the run then takes the
               job's lease and holds it through every step below (one runner per job)
    prepare    read the table, render every prompt, key and de-duplicate the requests, take what
               the response cache already answered, plan chunks, write the plan (no HTTP: bad
               input fails here)
    submit     per chunk: wait for capacity, upload, record the intent, create the batch (or adopt
               the one an interrupted run made), record the batch id
    wait       poll every unfinished batch until it ends; log state changes only; cancel batches
               older than ``max_wait`` or when the user cancelled
    collect    per chunk, two at a time: download output and error files, parse, store the
               results, cache answers
    retry      plan the next round from the requests that failed in a retryable way
    assemble   join every row to its request's latest result, write Parquet

The round loop (submit, wait, collect, retry, back off) is written once, in
:mod:`~prefect_llm_batch.jobs.driver`, with its steps injected (plain calls, Prefect tasks, or a
non-blocking tick for detached jobs); the guards (cost, error rate, failed or cancelled batches)
are in :mod:`~prefect_llm_batch.jobs.guards`.

Each step has its module, named after it: ``identity`` (and ``input_checks``, the checks
``prepare`` and :func:`preflight` make before anything is sent), ``prepare`` (writing batch input
files with ``chunks``), ``submit``, ``poll`` (wait and cancel), ``collect``, ``retry`` and
``output`` (assemble).

Each step reads and writes the job's state directory (:mod:`prefect_llm_batch.store`), so any
step can run in another process, and running the same job again resumes it: chunks that already
have a batch are polled, never submitted again.

A **job id** is a hash of what determines the requests: the source's content fingerprint, the
row limit, the templates, response schema, model, params, endpoint, provider, base URL, id column
and batch limits. Change any of them and it is another job (whose unchanged requests the
response cache still answers).
"""

from .collect import COLLECTS_IN_FLIGHT, collect_chunk, collect_chunks
from .driver import PlainSteps, Steps, TickSteps, run_batches, run_job, run_rounds, tick
from .estimate import estimate
from .guards import check_cost, check_error_rates, check_outcome
from .identity import JobIdentity, JobRef, compute_job_id, effective_limits, identify, job_ref
from .input_checks import preflight, response_schema
from .output import JobSummary, assemble, latest_results
from .poll import (
    MAX_CHUNK_ATTEMPTS,
    Poll,
    Progress,
    cancel_job,
    ended,
    failed_batches,
    poll_once,
    progress,
    wait,
)
from .prepare import prepare
from .retry import plan_retry_round
from .submit import submit_chunk, wait_for_capacity

__all__ = [
    "COLLECTS_IN_FLIGHT",
    "MAX_CHUNK_ATTEMPTS",
    "JobIdentity",
    "JobRef",
    "JobSummary",
    "PlainSteps",
    "Poll",
    "Progress",
    "Steps",
    "TickSteps",
    "assemble",
    "cancel_job",
    "check_cost",
    "check_error_rates",
    "check_outcome",
    "collect_chunk",
    "collect_chunks",
    "compute_job_id",
    "effective_limits",
    "ended",
    "estimate",
    "failed_batches",
    "identify",
    "job_ref",
    "latest_results",
    "plan_retry_round",
    "poll_once",
    "preflight",
    "prepare",
    "progress",
    "response_schema",
    "run_batches",
    "run_job",
    "run_rounds",
    "submit_chunk",
    "tick",
    "wait",
    "wait_for_capacity",
]
