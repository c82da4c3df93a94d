"""One Responses API or moderations request answered, the same in a batch and realtime.

Responses (``/v1/responses``, body ``{"model", "input": str | [input messages], "instructions"?,
"text"?: {"format": {"type": "json_schema", "name", "schema", "strict"}}, "max_output_tokens"?}``)
are answered as the chat completions of the same texts (so the ``[[fake:...]]`` markers and a
custom answer function work alike), wrapped as a Response object: ``{"id": "resp_...",
"object": "response", "status", "incomplete_details", "error", "output": [{"type": "message",
"role": "assistant", "content": [{"type": "output_text", "text", "annotations"}] | [{"type":
"refusal", "refusal"}]}], "usage": {"input_tokens", "output_tokens", "total_tokens", ...}}``
(shapes of openai-python's ``types/responses/response.py``). ``[[fake:length]]`` gives status
``incomplete`` with reason ``max_output_tokens``; ``[[fake:content_filter]]`` reason
``content_filter``; ``[[fake:refusal]]`` a ``refusal`` part.

Moderations (``/v1/moderations``, body ``{"model"?, "input": str | list[str]}``) answer
``{"id": "modr-...", "model", "results": [{"flagged", "categories", "category_scores",
"category_applied_input_types"}]}`` with one result per input: a category scores 0.9 when the
text holds one of its words (:data:`MODERATION_WORDS`), else a small number made from the text;
``flagged`` is any score of 0.5 or more. ``400``, ``500``, ``drop`` and ``timeout`` markers work
as in chat.

Examples:
    >>> request = {"model": "m", "input": "hi", "instructions": "Be brief"}
    >>> status, body, _ = complete_response(request, None, 0)
    >>> status, body["object"], body["status"], body["output"][0]["content"][0]["text"]
    (200, 'response', 'completed', '[simulated] hi')
    >>> status, body, _ = complete_moderation({"input": "I will kill the lights"})
    >>> body["results"][0]["flagged"], body["results"][0]["category_scores"]["violence"]
    (True, 0.9)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from prefect_llm_batch.testing.answers import embedding_inputs, find_markers, prompt_tokens
from prefect_llm_batch.testing.completions import _marker_failure, complete_chat
from prefect_llm_batch.testing.config import AnswerFunction
from prefect_llm_batch.testing.text_answers import content_text
from prefect_llm_batch.testing.wire import _error_body, _hex

#: Default model of a moderations body without one (OpenAI's default).
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
#: Words that make a category score high in the fake (lower case, whole words or substrings).
MODERATION_WORDS: Mapping[str, tuple[str, ...]] = {
    "harassment": ("idiot", "loser"),
    "harassment/threatening": ("i will hurt you",),
    "hate": ("hate",),
    "hate/threatening": ("exterminate",),
    "illicit": ("steal", "counterfeit"),
    "illicit/violent": ("build a bomb",),
    "self-harm": ("self-harm",),
    "self-harm/instructions": ("how to self-harm",),
    "self-harm/intent": ("i want to hurt myself",),
    "sexual": ("explicit",),
    "sexual/minors": ("minor explicit",),
    "violence": ("kill", "attack"),
    "violence/graphic": ("gore",),
}


def _chat_equivalent(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat completions body asking what a Responses body asks."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for item in given:
            if isinstance(item, Mapping) and isinstance(item.get("role"), str):
                messages.append({"role": item["role"], "content": content_text(item.get("content"))})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": fmt.get("name"),
                "schema": fmt.get("schema"),
                "strict": fmt.get("strict"),
            },
        }
    elif isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if isinstance(body.get("max_output_tokens"), int):
        chat["max_tokens"] = body["max_output_tokens"]
    return chat


def _responses_problem(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """What OpenAI would reject in a Responses body, as ``(message, param)``, or ``None``."""
    if not isinstance(body.get("model"), str) or not body.get("model"):
        return "Missing required parameter: 'model'.", "model"
    if not isinstance(body.get("input"), (str, list)):
        return "Missing required parameter: 'input'.", "input"
    if "messages" in body or "response_format" in body:
        extra = "messages" if "messages" in body else "response_format"
        return f"Unsupported parameter: '{extra}'.", extra
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
        return None
    if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), Mapping):
        return "Missing required parameter: 'text.format.name' or 'text.format.schema'.", "text.format"
    return None


def responses_request_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens of a Responses body, the simulator's way (as its chat equivalent counts)."""
    return prompt_tokens(_chat_equivalent(body))


def complete_response(
    body: dict[str, Any], answer: AnswerFunction | None, created: int
) -> tuple[int, dict[str, Any], str | None]:
    """Answer one Responses API body, honouring the ``[[fake:...]]`` markers.

    Returns:
        ``(status_code, response_body, never_ran)`` as
        :func:`~prefect_llm_batch.testing.completions.complete_chat` returns them.
    """
    problem = _responses_problem(body)
    if problem is not None and not (find_markers(_chat_equivalent(body)) & {"drop", "timeout", "400", "500"}):
        message, param = problem
        return 400, _error_body(message, "invalid_request_error", None, param), None
    status, chat, never_ran = complete_chat(_chat_equivalent(body), answer, created)
    if status != 200:
        return status, chat, never_ran
    choice = chat["choices"][0]
    message, finish = choice["message"], choice["finish_reason"]
    content: list[dict[str, Any]] = []
    if message.get("refusal"):
        content.append({"type": "refusal", "refusal": message["refusal"]})
    elif message.get("content") is not None:
        content.append({"type": "output_text", "text": message["content"], "annotations": [], "logprobs": []})
    state, details = "completed", None
    if finish == "length":
        state, details = "incomplete", {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        state, details = "incomplete", {"reason": "content_filter"}
    usage = chat["usage"]
    response = {
        "id": f"resp_{_hex(48)}",
        "object": "response",
        "created_at": created,
        "status": state,
        "background": False,
        "error": None,
        "incomplete_details": details,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": [
            {
                "id": f"msg_{_hex(48)}",
                "type": "message",
                "status": "completed" if state == "completed" else "incomplete",
                "role": "assistant",
                "content": content,
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        },
        "user": None,
        "metadata": {},
    }
    return 200, response, None


def _score(category: str, text: str) -> float:
    lowered = text.lower()
    if any(word in lowered for word in MODERATION_WORDS[category]):
        return 0.9
    digest = hashlib.sha256(f"{category}\x00{text}".encode()).digest()
    return round(int.from_bytes(digest[:4], "big") / 2**32 * 0.01, 6)


def moderation_result(text: str) -> dict[str, Any]:
    """The fake's moderation object for one text (deterministic).

    Examples:
        >>> result = moderation_result("a calm sentence")
        >>> result["flagged"], max(result["category_scores"].values()) < 0.01
        (False, True)
    """
    scores = {category: _score(category, text) for category in MODERATION_WORDS}
    categories = {category: score >= 0.5 for category, score in scores.items()}
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {category: ["text"] for category in scores},
    }


def complete_moderation(body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
    """Answer one moderations body (``input`` a string or a list of strings).

    Returns:
        ``(status_code, response_body, never_ran)`` as
        :func:`~prefect_llm_batch.testing.completions.complete_chat` returns them.
    """
    failure = _marker_failure(find_markers(body))
    if failure is not None:
        return failure
    texts = embedding_inputs(body)
    if not texts:
        return (
            400,
            _error_body("Missing required parameter: 'input'.", "invalid_request_error", None, "input"),
            None,
        )
    model = body.get("model") or DEFAULT_MODERATION_MODEL
    if not isinstance(model, str):
        return 400, _error_body("Invalid type for 'model'.", "invalid_request_error", None, "model"), None
    return (
        200,
        {"id": f"modr-{_hex(29)}", "model": model, "results": [moderation_result(t) for t in texts]},
        None,
    )
