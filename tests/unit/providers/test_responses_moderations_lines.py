"""Responses and moderations lines: bodies built, Response and moderation objects read, the fake's
objects carrying every field openai-python's types require."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from prefect_llm_batch.errors import InputError
from prefect_llm_batch.moderations import MODERATION_CATEGORIES, MODERATION_SCHEMA
from prefect_llm_batch.providers import OpenAIBatchProvider
from prefect_llm_batch.schemas import ResponseSchema
from prefect_llm_batch.spec import MODERATIONS_ENDPOINT, RESPONSES_ENDPOINT
from prefect_llm_batch.testing.responses_moderations import complete_moderation, complete_response

KEY = "fake-key-lines"
SCHEMA = ResponseSchema({"type": "object", "properties": {"n": {"type": "integer"}}}, name="count")


def provider(endpoint: str) -> OpenAIBatchProvider:
    return OpenAIBatchProvider(api_key=KEY, base_url="https://fake.example/v1", endpoint=endpoint)


def line(body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {"custom_id": "k1", "response": {"status_code": status, "body": body}, "error": None}


def response_object(**changes: Any) -> dict[str, Any]:
    """A Response object as the API reference shows one (a reasoning item before the message)."""
    body: dict[str, Any] = {
        "id": "resp_1", "object": "response", "created_at": 1741476542, "status": "completed",
        "error": None, "incomplete_details": None, "instructions": "Be brief", "model": "gpt-4.1-2025-04-14",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "In a peaceful grove, ", "annotations": []},
                         {"type": "output_text", "text": "a unicorn slept.", "annotations": []}]},
        ],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 87,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 123},
    }  # fmt: skip
    body.update(changes)
    return body


def test_responses_bodies_carry_input_instructions_and_text_format() -> None:
    p = provider(RESPONSES_ENDPOINT)
    body = p.build_body("m", "Count: a b", "Be exact", {"text": {"verbosity": "low"}}, SCHEMA)
    assert body["input"] == "Count: a b" and body["instructions"] == "Be exact"
    assert body["text"] == {
        "verbosity": "low",
        "format": {"type": "json_schema", "name": "count", "schema": SCHEMA.strict(), "strict": True},
    }
    assert "messages" not in body and "response_format" not in body
    assert set(p.build_body("m", "hi", None, {}, None)) == {"model", "input"}
    assert p.build_line("k", body)["url"] == "/v1/responses"


@pytest.mark.parametrize("param", ["input", "instructions"])
def test_responses_params_may_not_replace_the_templates(param: str) -> None:
    with pytest.raises(InputError, match=param):
        provider(RESPONSES_ENDPOINT).build_body("m", "hi", None, {param: "x"}, None)


def test_moderations_bodies_are_model_and_input_and_refuse_a_system_prompt_or_schema() -> None:
    p = provider(MODERATIONS_ENDPOINT)
    assert p.build_body("omni-moderation-latest", "text", None, {}, None) == {
        "model": "omni-moderation-latest",
        "input": "text",
    }
    with pytest.raises(InputError, match="system prompt"):
        p.build_body("m", "text", "be strict", {}, None)
    with pytest.raises(InputError, match="schema"):
        p.build_body("m", "text", None, {}, SCHEMA)


def test_the_answer_is_every_output_text_of_the_message_items_with_usage() -> None:
    result = provider(RESPONSES_ENDPOINT).parse_line(line(response_object()), "batch_1")
    assert (result.response, result.error_kind, result.finish_reason) == (
        "In a peaceful grove, a unicorn slept.",
        None,
        "stop",
    )
    assert (result.input_tokens, result.output_tokens, result.model) == (36, 87, "gpt-4.1-2025-04-14")


REFUSED = [{"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}]


@pytest.mark.parametrize(
    ("changes", "kind", "finish"),
    [
        ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, "length", "length"),
        (
            {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
            "content_filter",
            "content_filter",
        ),
        (
            {"status": "incomplete", "incomplete_details": {"reason": "max_messages"}},
            "length",
            "max_messages",
        ),
        (
            {"status": "failed", "error": {"code": "server_error", "message": "boom"}},
            "server_error",
            "failed",
        ),
        (
            {"status": "failed", "error": {"code": "rate_limit_exceeded", "message": "slow"}},
            "rate_limited",
            "failed",
        ),
        (
            {"status": "failed", "error": {"code": "invalid_prompt", "message": "no"}},
            "invalid_request",
            "failed",
        ),
        ({"status": "cancelled"}, "batch_cancelled", "cancelled"),
        ({"status": "in_progress"}, "parse_error", None),
        ({"output": REFUSED}, "refusal", "stop"),
        ({"output": []}, "parse_error", "stop"),
    ],
)
def test_status_and_incomplete_details_map_to_finish_reasons_and_error_kinds(
    changes: dict[str, Any], kind: str, finish: str | None
) -> None:
    result = provider(RESPONSES_ENDPOINT).parse_line(line(response_object(**changes)), "batch_1")
    assert (result.error_kind.value if result.error_kind else None, result.finish_reason) == (kind, finish)
    if kind == "length":
        assert result.response == "In a peaceful grove, a unicorn slept."  # the partial text is kept


def test_a_moderation_answer_holds_flagged_and_the_documented_scores() -> None:
    scores = {name: 0.001 for name in MODERATION_CATEGORIES} | {"violence": 0.97, "a-new-category": 0.5}
    body = {"id": "modr-1", "model": "omni-moderation-2024-09-26", "results": [
        {"flagged": True, "categories": {"violence": True}, "category_scores": scores,
         "category_applied_input_types": {"violence": ["text"]}}]}  # fmt: skip
    result = provider(MODERATIONS_ENDPOINT).parse_line(line(body), "batch_1")
    assert result.error_kind is None and result.model == "omni-moderation-2024-09-26"
    values = MODERATION_SCHEMA.convert(orjson.loads(result.response or ""))
    assert values["flagged"] is True and values["violence"] == 0.97
    assert set(values) == {"flagged", *MODERATION_CATEGORIES}  # never the undocumented key


#: Required fields of openai-python 3.51's types (fields without a default), by object.
RESPONSE_REQUIRED = {
    "id",
    "created_at",
    "model",
    "object",
    "output",
    "parallel_tool_calls",
    "tool_choice",
    "tools",
}
MESSAGE_REQUIRED = {"id", "content", "role", "status", "type"}
OUTPUT_TEXT_REQUIRED = {"annotations", "text", "type"}
USAGE_REQUIRED = {
    "input_tokens",
    "input_tokens_details",
    "output_tokens",
    "output_tokens_details",
    "total_tokens",
}
MODERATION_REQUIRED = {"categories", "category_applied_input_types", "category_scores", "flagged"}


def test_the_fakes_objects_have_every_field_the_sdk_requires() -> None:
    status, body, _ = complete_response({"model": "m", "input": "hi"}, None, 0)
    assert status == 200 and set(body) >= RESPONSE_REQUIRED and body["object"] == "response"
    message = body["output"][0]
    assert set(message) >= MESSAGE_REQUIRED and set(message["content"][0]) >= OUTPUT_TEXT_REQUIRED
    assert set(body["usage"]) >= USAGE_REQUIRED
    assert {"cached_tokens", "cache_write_tokens"} <= set(body["usage"]["input_tokens_details"])
    status, body, _ = complete_moderation({"model": "omni-moderation-latest", "input": ["a", "b"]})
    assert status == 200 and {"id", "model", "results"} <= set(body) and len(body["results"]) == 2
    for result in body["results"]:
        assert set(result) >= MODERATION_REQUIRED
        for part in ("categories", "category_scores", "category_applied_input_types"):
            assert set(result[part]) == set(MODERATION_CATEGORIES)
