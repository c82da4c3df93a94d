"""What a job has spent so far, and the guard that keeps its retry rounds within ``max_cost_usd``.

A shard of a sharded job counts the whole job: every shard's spend, read from their state in the
job's state directory (:func:`job_wide_spend_by_model`), so the cap is the job's wherever a shard runs.

A job's spend counts every batch it sent, in every round: a batch the provider reports ``usage``
for (OpenAI's Batch object: ``input_tokens``, ``output_tokens``) is counted by that usage; any
other batch by the token columns of its result lines; a batch still in flight, whose usage is not
final, by its plan's estimate. Answers from the cache cost nothing. Prompt-cache tokens (reads and
writes, from the ``response_cache_read_tokens`` / ``response_cache_write_tokens`` columns, or a
batch usage's ``input_tokens_details.cached_tokens``) are priced by their factors
(:func:`~prefect_llm_batch.costs.estimate_cost_with_cache`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from ..costs import estimate_cost, estimate_cost_by_model, estimate_cost_with_cache, output_tokens_per_request
from ..results import cached_tokens
from ..store import ChunkPlanRecord, ChunkState, JobStore

logger = logging.getLogger("prefect_llm_batch")


@dataclass(frozen=True)
class Spend:
    """Tokens a job has been billed for, and how they were counted.

    Examples:
        >>> Spend(1_000_000, 0, batches=1, from_usage=1).cost("gpt-4o-mini")
        0.075
    """

    input_tokens: int = 0
    output_tokens: int = 0
    batches: int = 0
    #: Batches counted by the usage their provider reported (the rest: by their result lines).
    from_usage: int = 0
    #: Batches still in flight, counted by their estimate.
    in_flight: int = 0
    #: Of ``input_tokens``, those read from the provider's prompt cache.
    cache_read_tokens: int = 0
    #: Of ``input_tokens``, those written to the provider's prompt cache.
    cache_write_tokens: int = 0

    def cost(self, model: str, prices: Mapping[str, tuple[float, float]] | None = None) -> float | None:
        """USD at batch prices, prompt-cache tokens at their factors; None for a model without a price."""
        return estimate_cost_with_cache(
            model,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            prices,
        )

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.batches + other.batches,
            self.from_usage + other.from_usage,
            self.in_flight + other.in_flight,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )


def _usage_tokens(state: ChunkState) -> tuple[int, int] | None:
    input_tokens, output_tokens = state.usage.get("input_tokens"), state.usage.get("output_tokens")
    if isinstance(input_tokens, int) and isinstance(output_tokens, int):
        return input_tokens, output_tokens
    return None


def chunk_spend(store: JobStore, plan: ChunkPlanRecord, params: Mapping[str, Any]) -> Spend:
    """What one chunk has cost (nothing when it was never sent)."""
    state = store.read_chunk(plan.chunk_id)
    if not state.collected:
        if not state.batch_id:
            return Spend()
        output = plan.requests * output_tokens_per_request(params)
        return Spend(plan.est_tokens, output, batches=1, in_flight=1)
    usage = _usage_tokens(state) if state.batch_id else None
    if usage is not None:
        cached = cached_tokens(state.usage, "input_tokens_details") or 0
        return Spend(usage[0], usage[1], batches=1, from_usage=1, cache_read_tokens=cached)
    names = [
        "response_input_tokens",
        "response_output_tokens",
        "response_cache_read_tokens",
        "response_cache_write_tokens",
    ]
    results = store.read_results(plan.chunk_id, names)
    tokens = [int(pc.sum(results.column(name)).as_py() or 0) for name in names]
    return Spend(
        tokens[0],
        tokens[1],
        batches=1 if state.batch_id else 0,
        cache_read_tokens=tokens[2],
        cache_write_tokens=tokens[3],
    )


def job_spend(store: JobStore) -> Spend:
    """What a job has spent so far: every chunk of every round (see the module docstring)."""
    record = store.read_job()
    total = Spend()
    for plan in record.chunks:
        total = total + chunk_spend(store, plan, record.params)
    return total


def spend_by_model(store: JobStore) -> dict[str, Spend]:
    """What a job has spent so far, by model (a job with a model per row has one model per batch)."""
    record = store.read_job()
    spent: dict[str, Spend] = {}
    for plan in record.chunks:
        model = plan.model or record.model
        spent[model] = spent.get(model, Spend()) + chunk_spend(store, plan, record.params)
    return spent


def job_wide_spend_by_model(store: JobStore) -> dict[str, Spend]:
    """What the whole job has spent, by model: :func:`spend_by_model` of the job, or, for a shard of
    a sharded job, the sum over every prepared shard of that job (the shards listed in its
    ``shards.json``).

    Only the state directory is read (chunk states and result token columns), so a shard on any
    machine sees the same total; shards still in flight count by their estimates.
    """
    record = store.read_job()
    if record.shard is None:
        return spend_by_model(store)
    from .sharded import read_sharded_job  # (sharded runs the rounds that call this guard)

    parent = record.job_id.rsplit("-", 1)[0]
    sharded = read_sharded_job(store.state_dir, parent, storage_options=store.options)
    if sharded is None:  # (a shard planned without its job's record: count itself)
        return spend_by_model(store)
    total: dict[str, Spend] = {}
    for shard_id in sharded.shard_job_ids:
        sibling = store if shard_id == record.job_id else JobStore(store.state_dir, shard_id, store.options)
        if sibling.is_prepared():
            for model, spend in spend_by_model(sibling).items():
                total[model] = total.get(model, Spend()) + spend
    return total


def priced(
    spent: Mapping[str, Spend], prices: Mapping[str, tuple[float, float]] | None = None
) -> float | None:
    """USD of spend by model, each model's tokens at its price and prompt-cache factors; None when
    a model has no price.

    Examples:
        >>> priced({"gpt-4o-mini": Spend(1_000_000, 0), "gpt-4o": Spend(1_000_000, 0)})
        1.325
    """
    costs = [spend.cost(model, prices) for model, spend in spent.items()]
    if any(cost is None for cost in costs):
        return None
    return round(sum(cost for cost in costs if cost is not None), 10)


def job_cost(store: JobStore, prices: Mapping[str, tuple[float, float]] | None = None) -> float | None:
    """USD this job (or this shard) has spent so far (see :func:`spend_by_model`)."""
    return priced(spend_by_model(store), prices)


def retry_round_within_budget(
    store: JobStore,
    next_round: int,
    requests: int,
    input_tokens: int,
    max_cost_usd: float | None,
    prices: Mapping[str, tuple[float, float]] | None = None,
    by_model: Mapping[str, tuple[int, int]] | None = None,
) -> str | None:
    """None when round ``next_round`` may be sent; else why not (the job's spend so far plus the
    round's estimate is over ``max_cost_usd``, or has no price).

    Args:
        store: The job's state.
        next_round: The round about to be planned.
        requests: Its requests.
        input_tokens: Their estimated input tokens.
        max_cost_usd: The job's cap (None: none).
        prices: Extra prices over the built-in table.
        by_model: For a job with a model per row: ``{model: (requests, input_tokens)}`` of the
            round, each priced by its model.

    Returns:
        None, or the reason the round is not sent (for logs and the job's summary).
    """
    if max_cost_usd is None:
        return None
    record = store.read_job()
    by_model_spent = job_wide_spend_by_model(store)
    spent = sum(by_model_spent.values(), Spend())
    spent_usd = priced(by_model_spent, prices)
    per_request = output_tokens_per_request(record.params)
    more_usd = (
        estimate_cost(record.model, input_tokens, requests * per_request, prices)
        if by_model is None
        else estimate_cost_by_model({m: (t, n * per_request) for m, (n, t) in by_model.items()}, prices)
    )
    if spent_usd is not None and more_usd is not None and spent_usd + more_usd <= max_cost_usd:
        return None
    counted = f"{spent.from_usage} of {spent.batches} batch(es) by their reported usage"
    return (
        f"round {next_round} ({requests} request(s), ~{_usd(more_usd)}) was not sent: the job has spent "
        f"{_usd(spent_usd)} ({counted}) and the round would take it over max_cost_usd=${max_cost_usd:.4f}; "
        "its rows keep their retryable errors (raise the limit and run again to send them)"
    )


def _usd(value: float | None) -> str:
    return "an unknown amount (no price for the model)" if value is None else f"${value:.4f}"
