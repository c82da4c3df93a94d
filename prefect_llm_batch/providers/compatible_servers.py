"""What the OpenAI-compatible servers users run (llama.cpp, Ollama, vLLM, LM Studio) answer
differently from OpenAI, read into the shapes the realtime path parses: their error bodies
(:func:`openai_error_body`) and their refusal of a ``json_schema`` response format
(:func:`schema_limitation`). Pure functions: no HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["openai_error_body", "schema_limitation"]


def openai_error_body(payload: dict[str, Any], text: str) -> dict[str, Any]:
    """An error answer of an OpenAI-compatible server in OpenAI's shape ``{"error": {"message"...}}``.

    Servers differ: OpenAI and llama.cpp nest an object under ``error``; Ollama puts a string there
    (``{"error": "model not found"}``); vLLM answers ``{"object": "error", "message": ...}``;
    FastAPI-based servers ``{"detail": ...}``. Without any of these the body's text is the message.

    Examples:
        >>> openai_error_body({"error": "model 'x' not found"}, "")
        {'error': {'message': "model 'x' not found"}}
        >>> openai_error_body({"object": "error", "message": "bad", "type": "BadRequestError"}, "")
        {'error': {'message': 'bad', 'type': 'BadRequestError'}}
        >>> openai_error_body({"detail": "Not Found"}, "")["error"]["message"]
        'Not Found'
        >>> openai_error_body({"error": {"message": "m", "code": "c"}}, "")["error"]["code"]
        'c'
    """
    error = payload.get("error")
    if isinstance(error, dict):
        return payload
    if isinstance(error, str) and error:
        return {"error": {"message": error}}
    for field in ("message", "detail"):
        value = payload.get(field)
        if isinstance(value, str) and value:
            found: dict[str, Any] = {"message": value}
            if isinstance(payload.get("type"), str):
                found["type"] = payload["type"]
            return {"error": found}
    return {"error": {"message": text}}


#: Words in an error answer that say the server refused the response schema's shape.
_SCHEMA_WORDS = ("response_format", "json_schema")


def schema_limitation(status: int, body: Mapping[str, Any], error_text: str) -> str | None:
    """The message for a server that cannot take ``response_format.type = "json_schema"``, else None.

    llama.cpp's servers answer such a request with HTTP 500 (others with a 400 or 422) whose text
    names ``response_format`` or ``json_schema``. Sending it again cannot help, so it is not a
    ``server_error`` to retry: the row gets ``invalid_request`` with this message, which names the
    option that sends the shape those servers take.

    Args:
        status: The HTTP status of the answer.
        body: The request body that was sent.
        error_text: The answer's text (redacted).

    Examples:
        >>> body = {"response_format": {"type": "json_schema", "json_schema": {}}}
        >>> schema_limitation(500, body, '{"error": {"message": "Unsupported response_format"}}')[:54]
        'the server does not take response_format type json_sch'
        >>> schema_limitation(500, body, "out of memory") is None, schema_limitation(200, body, "") is None
        (True, True)
    """
    if status < 400 or status in (401, 403, 408, 429):
        return None
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    lowered = error_text.lower()
    if not any(word in lowered for word in _SCHEMA_WORDS):
        return None
    try:
        payload = orjson.loads(error_text)
    except orjson.JSONDecodeError:
        payload = None
    said = (
        openai_error_body(payload, error_text)["error"].get("message") if isinstance(payload, dict) else None
    )
    said = " ".join(str(said or error_text).split())
    return (
        f"the server does not take response_format type json_schema (HTTP {status}: "
        f"{said[:300]}); for llama.cpp servers use schema_style='json_object_schema' "
        '(--schema-style json_object_schema), which sends {"type": "json_object", "schema": ...}'
    )
