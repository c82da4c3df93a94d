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
