"""Estimating a prepared job's tokens and cost before anything is sent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..costs import (
    DEFAULT_EXPECTED_OUTPUT_TOKENS,
    Estimate,
    estimate_cost,
    estimate_cost_by_model,
    output_tokens_per_request,
)
from ..store import JobStore
from .identity import JobRef


def estimate(
    ref: JobRef,
    params: Mapping[str, Any],
    *,
    prices: Mapping[str, tuple[float, float]] | None = None,
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
) -> Estimate:
    """Tokens and batch cost of what a prepared job still has to send (cached answers are free).

    Reads only the plan in the state directory: no HTTP. A job with a model per row prices each
    batch by its model; its cost is unknown when any of its models has no price.
    """
    record = JobStore(ref.state_dir, ref.job_id).read_job()
    first_round = [c for c in record.chunks if c.round == 1]
    to_send = sum(c.requests for c in first_round)
    input_tokens = sum(c.est_tokens for c in first_round)
    per_request = output_tokens_per_request(params, expected_output_tokens)
    output_tokens = to_send * per_request
    cost = estimate_cost(record.model, input_tokens, output_tokens, prices)
    if record.model_column is not None:  # a model per row: each batch priced by its model
        tokens: dict[str, tuple[int, int]] = {}
        for c in first_round:
            model = c.model or record.model
            before = tokens.get(model, (0, 0))
            tokens[model] = (before[0] + c.est_tokens, before[1] + c.requests * per_request)
        cost = estimate_cost_by_model(tokens, prices)
    return Estimate(
        job_id=record.job_id,
        model=record.model,
        rows=record.rows,
        unique_requests=record.unique_requests,
        cached_requests=record.cached_requests,
        requests_to_send=to_send,
        batches=len(first_round),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
    )


def combine_estimates(job_id: str, estimates: list[Estimate]) -> Estimate:
    """One estimate of a job from its parts' (the shards of a sharded job): counts and tokens
    add up; the cost is unknown when any part's is.

    Examples:
        >>> part = Estimate(job_id="j-00000", model="m", rows=2, unique_requests=2, cached_requests=0,
        ...     requests_to_send=2, batches=1, input_tokens=10, output_tokens=20, cost_usd=0.25)
        >>> combine_estimates("j", [part, part]).cost_usd, combine_estimates("j", [part]).rows
        (0.5, 2)
    """
    costs = [e.cost_usd for e in estimates]
    return Estimate(
        job_id=job_id,
        model=estimates[0].model if estimates else "",
        rows=sum(e.rows for e in estimates),
        unique_requests=sum(e.unique_requests for e in estimates),
        cached_requests=sum(e.cached_requests for e in estimates),
        requests_to_send=sum(e.requests_to_send for e in estimates),
        batches=sum(e.batches for e in estimates),
        input_tokens=sum(e.input_tokens for e in estimates),
        output_tokens=sum(e.output_tokens for e in estimates),
        cost_usd=None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 10),
    )
