"""Prompt-cache token columns: read from each provider's usage, the same on the vectorised and the
per-line path, read as nulls from results written before the columns existed, and priced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.costs import estimate_cost, estimate_cost_with_cache
from prefect_llm_batch.providers.anthropic_wire import parse_message
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.providers.openai_results import parse_chat_results
from prefect_llm_batch.results import LATER_FIELDS, RowResult, parse_response, results_to_table
from prefect_llm_batch.store import JobStore


def chat_line(cid: str, usage: dict[str, Any]) -> dict[str, Any]:
    body = {
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": usage,
    }
    return {"custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None}


def test_openai_cached_tokens_fill_the_cache_read_column_on_the_fast_and_the_per_line_path() -> None:
    lines = [
        chat_line("a", {"prompt_tokens": 2000, "completion_tokens": 3,
                        "prompt_tokens_details": {"cached_tokens": 1536}}),
        chat_line("b", {"prompt_tokens": 20, "completion_tokens": 3}),
    ]  # fmt: skip
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    with OpenAIBatchProvider(api_key="fake-key-cache-tokens") as provider:
        fast = parse_chat_results(data, "batch_1", provider.parse_line)
        slow = results_to_table(provider.parse_line(line, "batch_1") for line in lines)
    assert fast is not None and fast.equals(slow)
    assert fast["response_cache_read_tokens"].to_pylist() == [1536, None]
    assert fast["response_cache_write_tokens"].to_pylist() == [None, None]


def test_responses_and_anthropic_usage_give_cache_reads_and_writes() -> None:
    usage = {"input_tokens": 50, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 40}}
    text = {"type": "output_text", "text": "hi"}
    response = {"status": "completed", "output": [{"type": "message", "content": [text]}], "usage": usage}
    assert parse_response("k", response).cache_read_tokens == 40
    message = {"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "usage": {
        "input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 7}}  # fmt: skip
    result = parse_message("k", message)
    assert (result.input_tokens, result.cache_read_tokens, result.cache_write_tokens) == (112, 100, 7)


def test_results_stored_before_the_cache_columns_read_them_as_nulls(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "state"), "job-old")
    new = results_to_table([RowResult("k", response="yes", input_tokens=3)])
    old = new.drop_columns([f.name for f in LATER_FIELDS])
    path = Path(store.results_path(0))
    path.parent.mkdir(parents=True)
    pq.write_table(old, path)
    whole = store.read_results(0)
    assert whole.schema == new.schema and whole["response_cache_read_tokens"].to_pylist() == [None]
    some = store.read_results(0, ["response_input_tokens", "response_cache_write_tokens"])
    assert some.column_names == ["response_input_tokens", "response_cache_write_tokens"]
    assert some["response_cache_write_tokens"].to_pylist() == [None]


def test_cache_reads_cost_a_tenth_and_writes_a_quarter_more_for_claude_only() -> None:
    base = estimate_cost("claude-sonnet-4", 1_000_000, 1_000)
    assert base is not None
    read = estimate_cost_with_cache("claude-sonnet-4", 1_000_000, 1_000, cache_read_tokens=600_000)
    write = estimate_cost_with_cache("claude-sonnet-4", 1_000_000, 1_000, cache_write_tokens=600_000)
    assert read == pytest.approx(base - 0.6 * 1.50 * 0.9)
    assert write == pytest.approx(base + 0.6 * 1.50 * 0.25)
    assert estimate_cost_with_cache("gpt-4o-mini", 1_000, 10, cache_read_tokens=500) == estimate_cost(
        "gpt-4o-mini", 1_000, 10
    )
