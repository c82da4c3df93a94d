"""Batch prices per model and cost estimates (pure).

Prices are USD per million tokens **at batch rates** (half the realtime price), as the providers
published them when this table was written; they change, so check your provider's pricing page
and pass your own with ``prices={"model-prefix": (input, output)}``. A model matches the longest
table prefix (``gpt-4o-mini-2024-07-18`` uses ``gpt-4o-mini``); an unknown model has no estimate.

Token estimates are heuristics (tokenizer files cannot be downloaded offline): input tokens are
the UTF-8 bytes of each request line / 4, which over-counts a little (the line's JSON envelope is
included), and output tokens are ``max_tokens`` (or ``max_completion_tokens``) when the job sets
it, else ``expected_output_tokens`` per request.

Examples:
    >>> estimate_cost("gpt-4o-mini-2024-07-18", input_tokens=1_000_000, output_tokens=200_000)
    0.135
    >>> estimate_cost("no-such-model", 10, 10) is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

#: USD per 1M tokens (input, output) at batch rates.
BATCH_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.075, 0.30),
    "gpt-4o": (1.25, 5.00),
    "gpt-4.1-nano": (0.05, 0.20),
    "gpt-4.1-mini": (0.20, 0.80),
    "gpt-4.1": (1.00, 4.00),
    "o4-mini": (0.55, 2.20),
    "o3-mini": (0.55, 2.20),
    "gpt-3.5-turbo": (0.25, 0.75),
    "text-embedding-3-small": (0.01, 0.0),
    "text-embedding-3-large": (0.065, 0.0),
    "claude-3-haiku": (0.125, 0.625),
    "claude-3-5-haiku": (0.40, 2.00),
    "claude-3-5-sonnet": (1.50, 7.50),
    "claude-3-7-sonnet": (1.50, 7.50),
    "claude-sonnet-4": (1.50, 7.50),
    "claude-opus-4": (7.50, 37.50),
}

#: Output tokens assumed per request when the job sets no max_tokens.
DEFAULT_EXPECTED_OUTPUT_TOKENS = 100


def price_for(
    model: str, prices: Mapping[str, tuple[float, float]] | None = None
) -> tuple[float, float] | None:
    """(input, output) USD per 1M batch tokens of a model, by longest prefix; None if unknown.

    Examples:
        >>> price_for("gpt-4o-2024-08-06"), price_for("gpt-4o-mini")
        ((1.25, 5.0), (0.075, 0.3))
    """
    table = {**BATCH_PRICES, **(prices or {})}
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


def estimate_cost(
    model: str, input_tokens: int, output_tokens: int, prices: Mapping[str, tuple[float, float]] | None = None
) -> float | None:
    """USD for the given tokens at batch prices; None for an unknown model."""
    price = price_for(model, prices)
    if price is None:
        return None
    return round((input_tokens * price[0] + output_tokens * price[1]) / 1_000_000, 10)


def output_tokens_per_request(
    params: Mapping[str, Any], expected: int = DEFAULT_EXPECTED_OUTPUT_TOKENS
) -> int:
    """The output tokens to assume per request (see the module docstring).

    Examples:
        >>> output_tokens_per_request({"max_tokens": 20}), output_tokens_per_request({})
        (20, 100)
    """
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = params.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return expected


def describe_usd(value: float | None, model: str) -> str:
    """A cost for people, or why there is none.

    Examples:
        >>> describe_usd(0.00123, "gpt-4o-mini"), describe_usd(None, "my-model")
        ('$0.0012', 'unknown (no price for model my-model)')
    """
    return f"${value:.4f}" if value is not None else f"unknown (no price for model {model})"


class Estimate(BaseModel):
    """What a job would send and cost, computed before anything is sent."""

    job_id: str
    model: str
    rows: int
    unique_requests: int
    cached_requests: int
    requests_to_send: int
    batches: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None

    def describe(self) -> str:
        """One paragraph for logs and the CLI.

        Examples:
            >>> e = Estimate(job_id="j", model="m", rows=10, unique_requests=8, cached_requests=2,
            ...     requests_to_send=6, batches=1, input_tokens=600, output_tokens=600, cost_usd=None)
            >>> e.describe()[:60]
            '10 rows, 8 unique requests (2 cached), 6 to send in 1 batch('
        """
        cost = (
            f"~${self.cost_usd:.4f}" if self.cost_usd is not None else f"cost unknown for model {self.model}"
        )
        return (
            f"{self.rows} rows, {self.unique_requests} unique requests ({self.cached_requests} cached), "
            f"{self.requests_to_send} to send in {self.batches} batch(es): ~{self.input_tokens} input and "
            f"~{self.output_tokens} output tokens, {cost}"
        )


#: Prompt-cache price factors by model prefix: (cache read, cache write) as multiples of the
#: model's (batch) input price. Anthropic: cache reads (hits) 0.1x, 5-minute cache writes 1.25x,
#: and the batch discount applies to both (see docs/providers.md). A model without an entry pays
#: its input price for cached tokens (OpenAI's cached-token discount in batches is not verified).
CACHE_PRICE_FACTORS: dict[str, tuple[float, float]] = {"claude": (0.1, 1.25)}


def cache_factors_for(
    model: str, factors: Mapping[str, tuple[float, float]] | None = None
) -> tuple[float, float]:
    """(cache read, cache write) price factors of a model, by longest prefix; (1.0, 1.0) if none.

    Examples:
        >>> cache_factors_for("claude-3-5-haiku-latest"), cache_factors_for("gpt-4o-mini")
        ((0.1, 1.25), (1.0, 1.0))
    """
    table = {**CACHE_PRICE_FACTORS, **(factors or {})}
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else (1.0, 1.0)


def estimate_cost_with_cache(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    prices: Mapping[str, tuple[float, float]] | None = None,
) -> float | None:
    """USD at batch prices with prompt-cache tokens priced by :func:`cache_factors_for`.

    Args:
        model: The model (its price and cache factors are found by prefix).
        input_tokens: Every input token, the cached ones included (as ``response_input_tokens``).
        output_tokens: Output tokens.
        cache_read_tokens: Of ``input_tokens``, those read from the prompt cache.
        cache_write_tokens: Of ``input_tokens``, those written to the prompt cache.
        prices: Extra prices over the built-in table.

    Returns:
        USD, or None for a model without a price.

    Examples:
        >>> estimate_cost_with_cache("claude-3-5-haiku", 1_000_000, 0, cache_read_tokens=1_000_000)
        0.04
        >>> estimate_cost_with_cache("claude-3-5-haiku", 1_000_000, 0, cache_write_tokens=1_000_000)
        0.5
    """
    price = price_for(model, prices)
    if price is None:
        return None
    read_factor, write_factor = cache_factors_for(model)
    plain = max(input_tokens - cache_read_tokens - cache_write_tokens, 0)
    input_usd = (plain + cache_read_tokens * read_factor + cache_write_tokens * write_factor) * price[0]
    return round((input_usd + output_tokens * price[1]) / 1_000_000, 10)


def estimate_cost_by_model(
    tokens: Mapping[str, tuple[int, int]], prices: Mapping[str, tuple[float, float]] | None = None
) -> float | None:
    """USD for several models' tokens, each at its own batch price (a job with a model per row);
    None when any of them has no price, as :func:`estimate_cost` for one unknown model.

    Args:
        tokens: ``{model: (input_tokens, output_tokens)}``.
        prices: Extra prices over the built-in table.

    Examples:
        >>> estimate_cost_by_model({"gpt-4o-mini": (1_000_000, 0), "gpt-4o": (1_000_000, 0)})
        1.325
        >>> estimate_cost_by_model({"gpt-4o-mini": (10, 10), "no-such-model": (10, 10)}) is None
        True
    """
    costs = [estimate_cost(model, i, o, prices) for model, (i, o) in tokens.items()]
    if any(cost is None for cost in costs):
        return None
    return round(sum(cost for cost in costs if cost is not None), 10)
