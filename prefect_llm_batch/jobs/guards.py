"""The job's guards: the checks that stop a job, or fail its run, whoever runs it.

``check_cost`` runs before anything is sent; ``check_outcome`` runs once the output is written
(a user's cancel, a batch that failed validation, too many failed rows); ``check_error_rates``
does the last for the jobs one ``collect-jobs`` run finished. The flows, the CLI and plain
Python raise the same errors with the same messages.
"""

from __future__ import annotations

from ..costs import Estimate
from ..errors import BatchCancelled, BatchFailed, CostLimitExceeded, ErrorRateExceeded
from .identity import JobRef
from .output import JobSummary
from .poll import failed_batches


def check_cost(planned: Estimate, max_cost_usd: float | None) -> None:
    """Refuse a job whose estimated cost is over ``max_cost_usd`` or unknown (nothing is sent).

    Args:
        planned: The job's estimate.
        max_cost_usd: The most it may cost; None: no limit.

    Raises:
        CostLimitExceeded: The estimate is higher than the limit, or has no price.

    Examples:
        >>> e = Estimate(job_id="j", model="m", rows=1, unique_requests=1, cached_requests=0,
        ...     requests_to_send=1, batches=1, input_tokens=1, output_tokens=1, cost_usd=0.5)
        >>> check_cost(e, 1.0)
        >>> check_cost(e, None)
        >>> check_cost(e, 0.1)
        Traceback (most recent call last):
        ...
        prefect_llm_batch.errors.CostLimitExceeded: the estimated cost of job j is $0.5000, ...
    """
    if max_cost_usd is None or (planned.cost_usd is not None and planned.cost_usd <= max_cost_usd):
        return
    known = f"${planned.cost_usd:.4f}" if planned.cost_usd is not None else "unknown (no price for it)"
    raise CostLimitExceeded(
        f"the estimated cost of job {planned.job_id} is {known}, over max_cost_usd=${max_cost_usd:.4f}: "
        f"{planned.describe()}. Nothing was sent; raise the limit, or pass prices= for the model."
    )


def over_error_rate(summary: JobSummary, max_error_rate: float) -> bool:
    """True when more than ``max_error_rate`` of the job's rows failed."""
    return summary.error_rate > max_error_rate


def check_outcome(
    ref: JobRef, summary: JobSummary, output: str, max_error_rate: float, *, cancelled: bool
) -> None:
    """Fail a run whose output was written but whose job did not end well.

    Args:
        ref: The job.
        summary: Its summary (the output is written).
        output: Where the output is, for the messages.
        max_error_rate: The share of rows that may fail.
        cancelled: The user cancelled the job (read while the run still held it).

    Raises:
        BatchCancelled: The user cancelled the job.
        BatchFailed: A batch failed validation (its rows are marked in the output).
        ErrorRateExceeded: More than ``max_error_rate`` of the rows failed.
    """
    if cancelled:
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
    if over_error_rate(summary, max_error_rate):
        raise ErrorRateExceeded(
            f"{summary.error_rows} of {summary.rows} rows failed ({summary.error_rate:.1%} > max_error_rate "
            f"{max_error_rate:.1%}): {summary.errors_by_kind}. The output was written to {output}.",
            failed=summary.error_rows,
            total=summary.rows,
            output=output,
        )


def check_error_rates(finished: list[tuple[JobSummary, float]]) -> None:
    """Fail a run that finished jobs with too many failed rows (after every job was handled).

    Args:
        finished: Each finished job's summary and its ``max_error_rate``.

    Raises:
        ErrorRateExceeded: Naming every job over its rate (their outputs are written).
    """
    over = [
        f"{s.job_id}: {s.error_rows} of {s.rows} rows failed"
        for s, rate in finished
        if over_error_rate(s, rate)
    ]
    if over:
        raise ErrorRateExceeded("jobs over their max_error_rate (outputs written): " + "; ".join(over))
