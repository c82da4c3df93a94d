"""Prefect flows: one public flow per use case.

``enrich_table`` runs a whole job in one flow run: prepare, one ``submit-batch`` task per batch,
wait, one ``collect-batch`` task per batch, write the output. Running it again with the same
inputs resumes the same job from its state directory instead of paying again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

from prefect import flow
from prefect.logging import get_run_logger
from pydantic import BaseModel

from .blocks import OpenAIBatchCredentials
from .errors import BatchFailed, ErrorRateExceeded
from .jobs import MAX_CHUNK_ATTEMPTS, JobSummary, failed_batches
from .providers import openai_target
from .schemas import ResponseSchema
from .spec import (
    DEFAULT_MAX_ERROR_RATE,
    OPENAI_MAX_BATCH_BYTES,
    OPENAI_MAX_REQUESTS_PER_BATCH,
    SIMULATOR_KEY_BASE_URL,
    BatchLimits,
    JobSpec,
    ProviderTarget,
)
from .store import default_state_dir
from .tasks import collect_batch, prepare_job, submit_batch, wait_for_batches, write_output

#: Poll interval (seconds) against real providers, which recommend 30-60 s.
DEFAULT_POLL_INTERVAL = 30.0
#: Poll interval against the simulator, whose batches end within seconds.
SIMULATOR_POLL_INTERVAL = 0.5
#: Resubmission rounds for chunks whose batch failed in a retryable way.
MAX_ROUNDS = MAX_CHUNK_ATTEMPTS


@contextlib.contextmanager
def resolve_target(
    provider: str, base_url: str | None, credentials: OpenAIBatchCredentials | None
) -> Iterator[ProviderTarget]:
    """Yield where the job's HTTP goes; for ``simulator``, start the bundled fake server for the run."""
    if provider == "simulator":
        from .testing import FakeProviderServer, FakeServerConfig

        config = FakeServerConfig(validating_seconds=0.5, in_progress_seconds=1.5, finalizing_seconds=0.5)
        with FakeProviderServer(config) as server:
            yield ProviderTarget(
                provider="simulator", base_url=server.base_url, key_base_url=SIMULATOR_KEY_BASE_URL
            )
        return
    yield openai_target(base_url or (credentials.base_url if credentials else None))


@flow(
    name="enrich-table",
    description=(
        "Render one prompt per row of a table, send the requests through a provider batch API, "
        "and write the table with the answers as new columns to Parquet."
    ),
)
def enrich_table(
    source: str,
    output: str,
    prompt: str,
    model: str,
    system: str | None = None,
    params: dict[str, Any] | None = None,
    response_format: dict[str, Any] | str | type[BaseModel] | None = None,
    column_prefix: str = "",
    parser: Callable[[str], Any] | None = None,
    provider: Literal["simulator", "openai"] = "simulator",
    base_url: str | None = None,
    credentials: OpenAIBatchCredentials | None = None,
    id_column: str | None = None,
    state_dir: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    max_requests_per_batch: int = OPENAI_MAX_REQUESTS_PER_BATCH,
    max_batch_bytes: int = OPENAI_MAX_BATCH_BYTES,
    poll_interval: float | None = None,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
) -> JobSummary:
    """Enrich a table with one LLM answer per row, through a provider batch API.

    Args:
        source: Table to read: CSV, Parquet or JSONL, a local path or an fsspec URL.
        output: Parquet file to write (local path or fsspec URL).
        prompt: Jinja2 template over the row's columns, e.g. ``"Summarise: {{ review }}"``.
        model: Model name.
        system: Optional system prompt (also a template).
        params: Extra request parameters (``temperature``, ``max_tokens``...).
        response_format: A pydantic model class, a JSON Schema as JSON text, or a JSON Schema dict
            the answers must follow; each top-level property becomes a typed column (see
            :mod:`prefect_llm_batch.schemas`). Prefect reads any dict parameter holding a ``"$ref"``
            key as a block reference, so pass schemas that use ``$ref`` as JSON text or a model.
        column_prefix: Prefix for those typed columns.
        parser: Optional function from answer text to a dict, for answers that need their own
            parsing (Python API only); its result is still checked against ``response_format``.
        provider: ``simulator`` (default: the bundled offline fake, free, made-up answers) or
            ``openai`` (real: needs ``OPENAI_API_KEY`` or ``credentials``, and costs money).
        base_url: OpenAI-compatible base URL including ``/v1`` (default ``OPENAI_BASE_URL`` or OpenAI).
        credentials: An ``LLM Batch OpenAI Credentials`` block; else ``OPENAI_API_KEY`` is read.
        id_column: Column that identifies rows (unique, non-null); named in error messages.
        state_dir: Where job state lives (any fsspec URL); default ``$PREFECT_LLM_BATCH_STATE_DIR``
            or ``~/.local/state/prefect-llm-batch``.
        limit: Only the first N rows (a trial run).
        overwrite: Replace an existing output.
        max_requests_per_batch: Most requests per batch (OpenAI allows 50,000).
        max_batch_bytes: Largest batch input file in bytes (OpenAI allows 200 MB).
        poll_interval: Seconds between status checks (default 30; 0.5 for the simulator).
        max_error_rate: Share of rows that may fail before the run is marked failed (default 0.1);
            the output is written either way.

    Returns:
        The job summary.

    Raises:
        ErrorRateExceeded: More than ``max_error_rate`` of rows failed (after writing the output).
        BatchFailed: A batch failed validation (after writing the output, its rows marked).

    Examples:
        >>> from prefect_llm_batch.flows import enrich_table
        >>> summary = enrich_table(source="examples/reviews.csv", output="out/reviews.parquet",
        ...     prompt="Summarise in one line: {{ review }}", model="gpt-4o-mini",
        ...     overwrite=True)  # doctest: +SKIP
    """
    log = get_run_logger()
    schema = ResponseSchema.from_user(response_format) if response_format is not None else None
    spec = JobSpec(
        prompt=prompt,
        system=system,
        model=model,
        params=params or {},
        response_schema=schema.schema if schema is not None else None,
        column_prefix=column_prefix,
        provider=provider,
        base_url=base_url,
        id_column=id_column,
        limits=BatchLimits(max_requests_per_batch=max_requests_per_batch, max_batch_bytes=max_batch_bytes),
    )
    if provider == "simulator":
        log.warning("provider 'simulator': answers come from the bundled simulator, not from a model")
    state = state_dir or default_state_dir()
    with resolve_target(provider, base_url, credentials) as target:
        interval = (
            poll_interval
            if poll_interval is not None
            else (SIMULATOR_POLL_INTERVAL if provider == "simulator" else DEFAULT_POLL_INTERVAL)
        )
        ref = prepare_job(source, output, spec, target, state, limit, overwrite, credentials)
        chunks = list(range(ref.chunks))
        for _round in range(MAX_ROUNDS):
            submitted = [submit_batch.submit(ref, i, spec, target, credentials) for i in chunks]
            for submitted_future in submitted:
                submitted_future.result()
            chunks = wait_for_batches(ref, spec, target, interval, credentials)
            if not chunks:
                break
        collecting = [collect_batch.submit(ref, i, spec, target, credentials) for i in range(ref.chunks)]
        for collecting_future in collecting:
            collecting_future.result()
        summary = write_output(ref, output, overwrite, parser)

    failed = failed_batches(ref)
    if failed:
        first = failed[0]
        raise BatchFailed(
            f"{len(failed)} batch(es) failed validation; their rows are marked invalid_request in {output}. "
            f"Batch {first.batch_id}: {first.error}",
            batch_id=first.batch_id,
            code=first.error_code,
        )
    if summary.error_rate > max_error_rate:
        raise ErrorRateExceeded(
            f"{summary.error_rows} of {summary.rows} rows failed ({summary.error_rate:.1%} > max_error_rate "
            f"{max_error_rate:.1%}): {summary.errors_by_kind}. The output was written to {output}.",
            failed=summary.error_rows,
            total=summary.rows,
            output=output,
        )
    return summary
