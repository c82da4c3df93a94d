"""The ``enrich_table`` job in this process, without Prefect (the command line's default when no
Prefect server is configured).

Same steps, same guards, same errors and the same output as the flow: the checks of
:func:`~prefect_llm_batch.jobs.checks.check_before_start`, then identify the job and hold its
lease, check the output, prepare, estimate, :func:`~prefect_llm_batch.jobs.check_cost`, the rounds
of :func:`~prefect_llm_batch.jobs.run_rounds` with
:class:`~prefect_llm_batch.jobs.PlainSteps`, write the output, and
:func:`~prefect_llm_batch.jobs.check_outcome`. What it lacks is what Prefect adds: the flow run in
the UI, task retries, artifacts and the cancel hook.

Examples:
    >>> from prefect_llm_batch.local import run_table
    >>> from prefect_llm_batch.spec import JobSpec, RunOptions
    >>> summary = run_table("examples/reviews.csv", "out/reviews.parquet",
    ...     JobSpec(prompt="Sentiment: {{ review }}", model="gpt-4o-mini"),
    ...     RunOptions.for_provider("simulator"), state_dir="state")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .costs import DEFAULT_EXPECTED_OUTPUT_TOKENS
from .jobs import (
    JobRef,
    JobSummary,
    PlainSteps,
    Progress,
    assemble,
    check_cost,
    check_outcome,
    estimate,
    identify,
    prepare,
    run_rounds,
)
from .jobs.budget import own_limits
from .jobs.checks import Where, check_before_start, check_output
from .jobs.detached import submit_detached
from .jobs.realtime import Mode, pick_mode, realtime_client
from .providers import api_key_for, make_provider
from .simulator import open_target
from .spec import JobSpec, RunOptions
from .store import JobStore

logger = logging.getLogger("prefect_llm_batch")


def run_table(
    source: str,
    output: str,
    spec: JobSpec,
    options: RunOptions,
    *,
    state_dir: str,
    api_key: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    max_error_rate: float = 0.1,
    max_cost_usd: float | None = None,
    prices: dict[str, tuple[float, float]] | None = None,
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
    detached: bool = False,
    mode: Mode = "batch",
    realtime_limits: dict[str, Any] | None = None,
    on_change: Callable[[Progress], None] | None = None,
    log: logging.Logger = logger,
    where: Where = "python",
    local_model: str | None = None,
    schema_style: str | None = None,
) -> JobSummary | JobRef:
    """Run a whole job as the ``enrich_table`` flow does, in this process and without Prefect.

    Args:
        source: The table.
        output: The Parquet file to write.
        spec: The job (its ``provider`` and ``base_url`` say where it goes).
        options: How it runs.
        state_dir: The state directory.
        api_key: The provider's key (default: its environment variable).
        limit: Only the first rows.
        overwrite: Replace ``output`` if it exists.
        max_error_rate: The share of rows that may fail before the run fails (output written).
        max_cost_usd: Refuse a job whose estimate is higher (nothing is sent), and a retry round that
            would take the job's spend over it (see ``RunOptions.max_cost_usd``).
        prices: Extra prices (USD per 1M tokens) over the built-in table.
        expected_output_tokens: Output tokens assumed per request without ``max_tokens``.
        detached: Submit the first round, record the job as pending and return its reference.
        mode: ``batch``, ``realtime`` or ``auto``.
        realtime_limits: ``concurrency``, ``requests_per_minute``, ``tokens_per_minute``.
        on_change: Called with the progress while waiting for batches.
        log: Where the run's steps are logged.
        where: Who started the run, for the wording of the early checks' messages.
        local_model: The GGUF file the ``local`` provider serves (default: the bundled SmolLM2).
        schema_style: How a response schema is sent (``spec.SchemaStyle``; default: the target's).

    Returns:
        The job summary (with ``detached``, the job reference).

    Raises:
        LLMBatchError: As the flow raises them (the same guard functions).
    """
    check_before_start(
        source, output, state_dir, where=where, provider=spec.provider, model=spec.model,
        api_key=api_key, overwrite=overwrite, detached=detached, mode=mode, max_cost_usd=max_cost_usd,
        prices=prices,
    )  # fmt: skip
    limits = dict(realtime_limits or {})
    if max_cost_usd is not None and options.max_cost_usd is None:  # the cap bounds retry rounds too
        options = options.model_copy(
            update={"max_cost_usd": max_cost_usd, "prices": options.prices or prices}
        )
    with (
        open_target(
            spec.provider,
            spec.base_url,
            simulator_seconds=0.6,
            local_model=local_model,
            schema_style=schema_style,
        ) as target,  # as enrich()
        make_provider(target, api_key=api_key, limits=spec.limits, endpoint=spec.endpoint) as client,
    ):
        identity = identify(source, spec, client, target, limit=limit, cache=options.cache)
        store = JobStore(state_dir, identity.job_id)
        with store.lease():
            check_output(source, output, state_dir, overwrite=overwrite)
            ref = prepare(
                source, spec, client, target, state_dir=state_dir, limit=limit, cache=options.cache,
                identity=identity,
            )  # fmt: skip
            planned = estimate(ref, spec.params, prices=prices, expected_output_tokens=expected_output_tokens)
            log.info("job %s: %s", ref.job_id, planned.describe())
            check_cost(planned, max_cost_usd)
            key = api_key_for(target, api_key)
            chosen, reason = pick_mode(mode, target, planned.requests_to_send, key, detached=detached)
            realtime = (
                realtime_client(
                    client,
                    target,
                    key,
                    max_concurrency=limits.get("concurrency"),
                    requests_per_minute=limits.get("requests_per_minute"),
                    tokens_per_minute=limits.get("tokens_per_minute"),
                )
                if chosen == "realtime"
                else None
            )
            steps = PlainSteps(ref, client, options, on_change=on_change, realtime_client=realtime)
            if detached:
                return submit_detached(
                    ref, steps, spec=spec, target=target, options=options, output=output,
                    overwrite=overwrite, max_error_rate=max_error_rate,
                )  # fmt: skip
            run_rounds(ref, steps, options, realtime=chosen == "realtime", log=log)
            summary = assemble(ref, output=output, overwrite=overwrite)
            summary = summary.model_copy(
                update={"mode": chosen, "mode_reason": reason, "budget": own_limits(options)}
            )
            cancelled = store.is_cancelled()
    check_outcome(ref, summary, output, max_error_rate, cancelled=cancelled)
    return summary
