"""One request answered: chat completions, embeddings and Anthropic messages, the same in a batch
and realtime, with the ``[[fake:...]]`` markers applied (see :mod:`prefect_llm_batch.testing.answers`).

Embeddings (``/v1/embeddings``, body ``{"model", "input": str | list[str], "dimensions"?,
"encoding_format"?: "float" | "base64"}``) answer OpenAI's ``{"object": "list", "data":
[{"object": "embedding", "index", "embedding"}], "model", "usage": {"prompt_tokens",
"total_tokens"}}`` with :func:`~prefect_llm_batch.testing.answers.default_embedding` vectors
(length ``dimensions``, else :data:`~prefect_llm_batch.testing.answers.EMBEDDING_DIMENSIONS`).
A missing ``model``, an ``input`` that is not a non-empty string or list of 1..2048 non-empty
strings, a ``dimensions`` below 1 or above the model's size (or any ``dimensions`` for
``text-embedding-ada-002``) and another ``encoding_format`` are 400 ``invalid_request_error``.

Rows misbehave on purpose through markers in any message content:

===========================  ===============================================================
marker                       effect in a batch (and on ``POST /v1/chat/completions``)
===========================  ===============================================================
``[[fake:400]]``             error-file line, ``status_code`` 400, ``invalid_request_error``
``[[fake:500]]``             error-file line, ``status_code`` 500, ``server_error``
``[[fake:refusal]]``         output line, ``content`` null, ``refusal`` set
``[[fake:length]]``          output line, ``finish_reason`` ``length``, content cut short
``[[fake:content_filter]]``  output line, ``finish_reason`` ``content_filter``, content null
``[[fake:drop]]``            no line in either file (realtime: HTTP 500)
``[[fake:timeout]]``         error-file line, ``response`` null, ``error.code`` ``request_timeout``
                             (realtime: HTTP 408)
``[[fake:invalid_json]]``    with a ``response_format`` (``json_schema`` / ``json_object``): output
                             line whose ``content`` is the JSON answer cut in half (invalid
                             JSON), ``finish_reason`` ``stop``; without one: no effect
===========================  ===============================================================

In embeddings requests (markers in ``input``), ``400``, ``500``, ``drop`` and ``timeout`` work as
above; the others have no effect.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any

import orjson

from prefect_llm_batch.testing.answers import (
    EMBEDDING_DIMENSIONS,
    broken_json,
    default_answer,
    default_embedding,
    embedding_inputs,
    estimate_tokens,
    find_markers,
    forced_tool,
    prompt_tokens,
    tool_input,
)
from prefect_llm_batch.testing.config import MAX_EMBEDDING_INPUTS, REFUSAL_TEXT, AnswerFunction
from prefect_llm_batch.testing.wire import (
    _ANTHROPIC_ERROR_MESSAGES,
    _DEFAULT_ERROR_MESSAGES,
    _anthropic_error_body,
    _error_body,
    _hex,
)


def _marker_failure(markers: frozenset[str]) -> tuple[int, dict[str, Any], str | None] | None:
    """The OpenAI failure the ``drop``/``timeout``/``400``/``500`` markers ask for, or ``None``."""
    if "drop" in markers:
        return 500, _error_body(_DEFAULT_ERROR_MESSAGES[500], "server_error"), "drop"
    if "timeout" in markers:
        return (
            408,
            _error_body("The request timed out.", "server_error", "request_timeout"),
            "request_timeout",
        )
    if "400" in markers:
        return 400, _error_body("Invalid request (simulated by [[fake:400]]).", "invalid_request_error"), None
    if "500" in markers:
        return 500, _error_body(_DEFAULT_ERROR_MESSAGES[500], "server_error"), None
    return None


def _wants_json(body: Mapping[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in (
        "json_schema",
        "json_object",
    )


def complete_chat(
    body: dict[str, Any], answer: AnswerFunction | None, created: int
) -> tuple[int, dict[str, Any], str | None]:
    """Answer one chat completions body, honouring the ``[[fake:...]]`` markers.

    Args:
        body: The request body.
        answer: Custom answer function, or ``None`` for the default.
        created: The ``created`` timestamp of the completion.

    Returns:
        ``(status_code, response_body, never_ran)``: ``never_ran`` is ``"drop"`` or
        ``"request_timeout"`` when the request produced no response, else ``None``.

    Examples:
        >>> status, body, _ = complete_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        ...                                 None, 0)
        >>> status, body["object"], body["choices"][0]["message"]["content"]
        (200, 'chat.completion', '[simulated] hi')
        >>> complete_chat({"messages": [{"role": "user", "content": "[[fake:500]]"}]}, None, 0)[0]
        500
        >>> _, body, _ = complete_chat({"model": "m", "response_format": {"type": "json_object"},
        ...     "messages": [{"role": "user", "content": "hi [[fake:invalid_json]]"}]}, None, 0)
        >>> body["choices"][0]["message"]["content"]
        '{"answer": "[s'
    """
    markers = find_markers(body)
    failure = _marker_failure(markers)
    if failure is not None:
        return failure
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return (
            400,
            _error_body("you must provide a model parameter", "invalid_request_error", param="model"),
            None,
        )
    try:
        text: str | None = (answer or default_answer)(body)
    except Exception as exc:
        message = f"The answer function raised {type(exc).__name__}: {exc}"
        return 500, _error_body(message, "server_error"), None
    refusal: str | None = None
    finish_reason = "stop"
    if "refusal" in markers:
        text, refusal = None, REFUSAL_TEXT
    elif "content_filter" in markers:
        text, finish_reason = None, "content_filter"
    if "invalid_json" in markers and text is not None and _wants_json(body):
        text = broken_json(text)
    if "length" in markers and text is not None:
        finish_reason = "length"
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        keep = max_tokens * 4 if isinstance(max_tokens, int) and max_tokens > 0 else max(1, len(text) // 2)
        text = text[: min(keep, max(1, len(text) - 1))]
    p_tokens = prompt_tokens(body)
    c_tokens = estimate_tokens(text or refusal or "")
    completion = {
        "id": f"chatcmpl-{_hex(29)}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": refusal},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": p_tokens,
            "completion_tokens": c_tokens,
            "total_tokens": p_tokens + c_tokens,
        },
        "system_fingerprint": None,
    }
    return 200, completion, None


def _embeddings_problem(body: Mapping[str, Any]) -> tuple[str, str | None, str | None] | None:
    """What OpenAI would reject in an embeddings body, as ``(message, param, code)``, or ``None``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "you must provide a model parameter", "model", None
    texts = embedding_inputs(body)
    if texts is None or not texts or "" in texts:
        return (
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            None,
            None,
        )
    if len(texts) > MAX_EMBEDDING_INPUTS:
        return (
            f"Invalid 'input': array too long. Expected an array with maximum length "
            f"{MAX_EMBEDDING_INPUTS}, but got an array with length {len(texts)} instead.",
            "input",
            "array_above_max_length",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            return "Invalid 'dimensions': expected an integer of at least 1.", "dimensions", "invalid_value"
        if model == "text-embedding-ada-002":
            return "This model does not support specifying dimensions.", "dimensions", None
        native = EMBEDDING_DIMENSIONS.get(model)
        if native is not None and dimensions > native:
            return (
                f"Invalid 'dimensions': {model} supports at most {native} dimensions, got {dimensions}.",
                "dimensions",
                "invalid_value",
            )
    if body.get("encoding_format") not in (None, "float", "base64"):
        return (
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    return None


def complete_embeddings(body: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
    """Answer one embeddings body, honouring the ``[[fake:...]]`` markers found in ``input``.

    Vectors are :func:`~prefect_llm_batch.testing.answers.default_embedding` of each input text;
    with ``encoding_format: "base64"`` each is the base64 of little-endian float32s, as OpenAI sends.

    Args:
        body: The request body: ``model``, ``input`` (a string or a list of strings), optional
            ``dimensions`` and ``encoding_format``.

    Returns:
        ``(status_code, response_body, never_ran)`` as :func:`complete_chat` returns them.

    Examples:
        >>> status, body, _ = complete_embeddings({"model": "text-embedding-3-small",
        ...                                        "input": ["a", "bb"], "dimensions": 3})
        >>> status, body["object"], [(d["index"], len(d["embedding"])) for d in body["data"]]
        (200, 'list', [(0, 3), (1, 3)])
        >>> body["usage"]
        {'prompt_tokens': 2, 'total_tokens': 2}
        >>> complete_embeddings({"model": "m", "input": "x [[fake:timeout]]"})[::2]
        (408, 'request_timeout')
        >>> complete_embeddings({"model": "m", "input": ""})[0]
        400
    """
    failure = _marker_failure(find_markers(body))
    if failure is not None:
        return failure
    problem = _embeddings_problem(body)
    if problem is not None:
        message, param, code = problem
        return 400, _error_body(message, "invalid_request_error", code, param), None
    model: str = body["model"]
    texts = embedding_inputs(body) or []
    dimensions: int | None = body.get("dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data: list[dict[str, Any]] = []
    for index, text in enumerate(texts):
        vector = default_embedding(model, text, dimensions)
        embedding: list[float] | str = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(estimate_tokens(text) for text in texts)
    response = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return 200, response, None


def _message_params_problem(body: Mapping[str, Any], batch: bool) -> str | None:
    """What Anthropic would reject in a Messages body, or ``None``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model: Field required"
    if "max_tokens" not in body:
        return "max_tokens: Field required"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be an integer greater than or equal to 1"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if body.get("stream"):
        return (
            "stream: Batch requests cannot stream." if batch else "stream: the fake provider does not stream."
        )
    return None


def cached_prefix(body: Mapping[str, Any]) -> str:
    """The text of the system blocks up to the last one marked ``cache_control`` (empty: none).

    Examples:
        >>> cached_prefix({"system": [{"type": "text", "text": "Be brief.",
        ...     "cache_control": {"type": "ephemeral"}}]}), cached_prefix({"system": "Be brief."})
        ('Be brief.', '')
    """
    system = body.get("system")
    if not isinstance(system, list):
        return ""
    blocks = [b for b in system if isinstance(b, dict)]
    marked = [i for i, b in enumerate(blocks) if isinstance(b.get("cache_control"), dict)]
    if not marked:
        return ""
    return "".join(str(b.get("text", "")) for b in blocks[: marked[-1] + 1])


def complete_message(
    body: dict[str, Any],
    answer: AnswerFunction | None,
    *,
    batch: bool = False,
    cache: set[str] | None = None,
) -> tuple[int, dict[str, Any], str | None]:
    """Answer one Anthropic Messages body, honouring the ``[[fake:...]]`` markers.

    Args:
        body: The Messages API params.
        answer: Custom answer function, or ``None`` for the default.
        batch: True inside a message batch (only changes a message).
        cache: The prompt prefixes cached so far (a system prompt marked ``cache_control``): a
            prefix seen before is reported as ``cache_read_input_tokens``, a new one as
            ``cache_creation_input_tokens`` and remembered (None: every one is new).

    Returns:
        ``(status_code, body, never_ran)``: ``body`` is a ``message`` or an Anthropic error
        envelope; ``never_ran`` is ``"drop"`` or ``"timeout"`` when the request produced nothing.

    Examples:
        >>> status, message, _ = complete_message({"model": "claude", "max_tokens": 20,
        ...     "messages": [{"role": "user", "content": "hi"}]}, None)
        >>> status, message["type"], message["content"], message["stop_reason"]
        (200, 'message', [{'type': 'text', 'text': '[simulated] hi'}], 'end_turn')
        >>> status, error, _ = complete_message({"model": "claude", "messages": []}, None)
        >>> status, error["error"]
        (400, {'type': 'invalid_request_error', 'message': 'max_tokens: Field required'})
    """
    markers = find_markers(body)
    if "drop" in markers:
        return 500, _anthropic_error_body("api_error", _ANTHROPIC_ERROR_MESSAGES[500]), "drop"
    if "timeout" in markers:
        return 504, _anthropic_error_body("timeout_error", _ANTHROPIC_ERROR_MESSAGES[504]), "timeout"
    if "400" in markers:
        return (
            400,
            _anthropic_error_body("invalid_request_error", "Invalid request (simulated by [[fake:400]])."),
            None,
        )
    if "500" in markers:
        return 500, _anthropic_error_body("api_error", _ANTHROPIC_ERROR_MESSAGES[500]), None
    problem = _message_params_problem(body, batch)
    if problem is not None:
        return 400, _anthropic_error_body("invalid_request_error", problem), None
    tool = forced_tool(body)
    content: list[dict[str, Any]]
    try:
        if tool is not None:
            if answer is None:
                value: Any = tool_input(body, tool.get("input_schema"))
            else:
                value = orjson.loads(answer(body))
                if not isinstance(value, dict):
                    raise ValueError("a forced tool needs a JSON object as answer")
            content = [
                {"type": "tool_use", "id": f"toolu_{_hex()}", "name": tool.get("name"), "input": value}
            ]
            out_text = orjson.dumps(value).decode()
        else:
            out_text = (answer or default_answer)(body)
            content = [{"type": "text", "text": out_text}]
    except Exception as exc:
        failure = f"The answer function raised {type(exc).__name__}: {exc}"
        return 500, _anthropic_error_body("api_error", failure), None
    stop_reason = "tool_use" if tool is not None else "end_turn"
    if "refusal" in markers or "content_filter" in markers:
        content, out_text, stop_reason = [], "", "refusal"
    elif "length" in markers:
        stop_reason = "max_tokens"
        if tool is None:
            keep = body["max_tokens"] * 4
            out_text = out_text[: min(keep, max(1, len(out_text) - 1))]
            content = [{"type": "text", "text": out_text}]
    input_tokens = prompt_tokens(body)
    cacheable = cached_prefix(body)
    created = read = 0
    if cacheable:  # prompt caching: the prefix is written once, then read
        prefix_tokens = min(estimate_tokens(cacheable), input_tokens)
        if cache is not None and cacheable in cache:
            read = prefix_tokens
        else:
            created = prefix_tokens
            if cache is not None:
                cache.add(cacheable)
        input_tokens -= prefix_tokens
    reply = {
        "id": f"msg_{_hex()}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": estimate_tokens(out_text),
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
        },
    }
    return 200, reply, None
