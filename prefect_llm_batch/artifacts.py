"""Prefect artifacts of a job: a progress bar while it waits, a summary and a sample at the end.

The progress artifact never shows 100% before the output is written: waiting on the provider
fills it up to 90% (by requests the provider reports done), collecting to 95%, and only the
written output completes it. A batch that is ``finalizing`` may report every request done; that
is still 90% at most.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import pyarrow.parquet as pq
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from .costs import describe_usd
from .jobs import JobSummary, Progress

logger = logging.getLogger("prefect_llm_batch")

#: Progress shown once every batch has ended but results are not yet joined.
WAITED = 90.0
#: Progress shown once results are downloaded, before the output is written.
COLLECTED = 95.0
#: Rows shown in the sample table artifact.
SAMPLE_ROWS = 10


def artifact_key(job_id: str) -> str:
    """Artifact key of a job (Prefect keys: lowercase letters, digits and dashes).

    Examples:
        >>> artifact_key("0123abcd")
        'llm-batch-0123abcd'
    """
    return f"llm-batch-{job_id.lower()}"


def start_progress(job_id: str) -> UUID | None:
    """Create the job's progress artifact at 0%; None when artifacts cannot be written."""
    try:
        artifact_id = create_progress_artifact(
            progress=0.0, key=artifact_key(job_id), description=f"LLM batch job {job_id}"
        )
        return artifact_id if isinstance(artifact_id, UUID) else None
    except Exception as exc:  # artifacts are a view: never fail a job over one
        logger.warning("could not create the progress artifact: %s", exc)
        return None


def set_progress(artifact_id: UUID | None, value: float) -> None:
    """Update the progress artifact (ignoring failures)."""
    if artifact_id is None:
        return
    try:
        update_progress_artifact(artifact_id=artifact_id, progress=value)
    except Exception as exc:
        logger.warning("could not update the progress artifact: %s", exc)


def waiting_progress(progress: Progress) -> float:
    """Progress while waiting: requests done scaled into [0, WAITED].

    Examples:
        >>> waiting_progress(Progress(batches=2, batches_ended=2, requests=10, requests_done=10, statuses={}))
        90.0
    """
    if progress.requests == 0:
        return WAITED
    return round(WAITED * progress.requests_done / progress.requests, 1)


def publish_summary(summary: JobSummary) -> None:
    """A markdown summary (rows, errors by kind, batches, tokens, cost) and a table of sample rows."""
    errors = "\n".join(f"| {kind} | {count} |" for kind, count in summary.errors_by_kind.items())
    estimated = describe_usd(summary.estimated_cost_usd, summary.model)
    billed = describe_usd(summary.cost_usd, summary.model)
    markdown = f"""# LLM batch job `{summary.job_id}`

| | |
|---|---|
| output | `{summary.output}` |
| provider / model | {summary.provider} / {summary.model} |
| rows | {summary.rows} |
| unique requests | {summary.unique_requests} ({summary.cached_requests} answered from the cache) |
| answered rows | {summary.ok_rows} |
| rows with errors | {summary.error_rows} |
| unreadable result lines | {summary.unreadable_lines} |
| rounds | {summary.rounds} |
| batches | {", ".join(f"`{b}`" for b in summary.batch_ids) or "none"} |
| tokens billed | {summary.input_tokens} in, {summary.output_tokens} out |
| cost (batch prices) | {estimated} estimated, {billed} for the tokens billed |
| provider budget | {summary.budget or "no limit set"} |
| stopped | {summary.stopped or "no: every planned round was sent"} |

## Errors by kind

| kind | rows |
|---|---|
{errors or "| none | 0 |"}
"""
    if summary.provider == "simulator":
        markdown += "\nThese answers come from the bundled simulator, not from a model.\n"
    try:
        create_markdown_artifact(markdown=markdown, key=f"{artifact_key(summary.job_id)}-summary")
        sample = (
            pq.ParquetFile(summary.output).read_row_group(0).slice(0, SAMPLE_ROWS) if summary.rows else None
        )
        rows: list[dict[str, Any]] = []
        if sample is not None:
            rows = [{k: _cell(v) for k, v in row.items()} for row in sample.to_pylist()]
        create_table_artifact(table=rows, key=f"{artifact_key(summary.job_id)}-sample")
    except Exception as exc:
        logger.warning("could not publish the summary artifacts: %s", exc)


def _cell(value: Any) -> Any:
    text = value if isinstance(value, (int, float, bool)) or value is None else str(value)
    return text[:200] + "…" if isinstance(text, str) and len(text) > 200 else text
