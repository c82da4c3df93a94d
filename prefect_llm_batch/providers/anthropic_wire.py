"""The Anthropic Message Batches API's wire format, without HTTP: RFC 3339 times, the tool a
response schema becomes, image blocks, and a result's message or error read into a
:class:`~prefect_llm_batch.results.RowResult` (see :mod:`prefect_llm_batch.providers.anthropic`
for the client, ``docs/providers.md`` for the sources).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import orjson

from ..images import Image
from ..results import RowResult, short
from ..spec import ErrorKind

#: ``error.error.type`` of an ``errored`` result -> error kind; other types are ``server_error``.
ERROR_TYPE_KINDS: dict[str, ErrorKind] = {
    "invalid_request_error": ErrorKind.INVALID_REQUEST,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "overloaded_error": ErrorKind.SERVER_ERROR,
    "api_error": ErrorKind.SERVER_ERROR,
}

_FRACTION_RE = re.compile(r"\.(\d+)")


def parse_rfc3339(value: Any) -> float | None:
    """Read an RFC 3339 timestamp (``2024-08-20T18:37:24.100435Z``) as a unix epoch in seconds.

    Returns ``None`` for ``None`` or anything unreadable; a timestamp without an offset is UTC.

    Examples:
        >>> parse_rfc3339("1970-01-01T00:01:40.5Z")
        100.5
        >>> parse_rfc3339("1970-01-01T01:00:00+01:00"), parse_rfc3339(None)
        (0.0, None)
    """
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.10 reads 3 or 6 fraction digits only: pad or cut to 6.
    text = _FRACTION_RE.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def tool_for_schema(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    """Body parameters that make Claude answer with one forced tool call shaped by ``schema``.

    Anthropic has no ``response_format``: structured answers come from a tool whose
    ``input_schema`` is the schema, forced with ``tool_choice``. The tool call's ``input`` is then
    the answer (:func:`parse_message` turns it into canonical JSON text).

    Args:
        schema: A JSON Schema whose top level is an object.
        name: The tool's name (letters, digits, ``_`` and ``-``, at most 64 characters).

    Returns:
        ``{"tools": [{"name", "description", "input_schema"}], "tool_choice": {"type": "tool", "name"}}``,
        to merge into a Messages body.

    Examples:
        >>> params = tool_for_schema({"type": "object", "properties": {"label": {"type": "string"}}})
        >>> params["tools"][0]["name"], params["tools"][0]["input_schema"]["type"], params["tool_choice"]
        ('answer', 'object', {'type': 'tool', 'name': 'answer'})
    """
    tool = {
        "name": name,
        "description": "Record the answer. Its input must follow the JSON Schema given as input_schema.",
        "input_schema": schema,
    }
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": name}}


#: Anthropic's largest image: 5 MB per image through the API (vision guide). Counted here on the
#: base64 text the body carries, so the bytes may be 3/4 of it.
ANTHROPIC_MAX_IMAGE_BYTES = 5 * 1024 * 1024 * 3 // 4


def image_block(image: Image) -> dict[str, Any]:
    """A Messages API image content block: a ``url`` source, or a ``base64`` one with its media type.

    Examples:
        >>> image_block(Image(url="https://x/cat.png"))
        {'type': 'image', 'source': {'type': 'url', 'url': 'https://x/cat.png'}}
        >>> image_block(Image(data=b"GIF89a", media_type="image/gif"))["source"]
        {'type': 'base64', 'media_type': 'image/gif', 'data': 'R0lGODlh'}
    """
    if image.url is not None:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": image.media_type, "data": image.base64()},
    }


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _input_tokens(usage: dict[str, Any]) -> int | None:
    """All the prompt tokens of a message: ``input_tokens`` (after the last cache breakpoint) plus
    ``cache_creation_input_tokens`` and ``cache_read_input_tokens`` (prompt caching).

    Examples:
        >>> _input_tokens({"input_tokens": 5, "cache_read_input_tokens": 100}), _input_tokens({})
        (105, None)
    """
    base = _int_or_none(usage.get("input_tokens"))
    cached = [_int_or_none(usage.get(k)) for k in ("cache_creation_input_tokens", "cache_read_input_tokens")]
    return None if base is None else base + sum(c for c in cached if c is not None)


def parse_message(custom_id: str, message: Any, batch_id: str | None = None) -> RowResult:
    """Turn a Messages API response (a ``succeeded`` result's ``message``) into a :class:`RowResult`.

    The answer is the ``text`` blocks of ``content`` joined; a ``tool_use`` block (a forced tool
    call, see :func:`tool_for_schema`) wins, its ``input`` written as canonical JSON (sorted keys).
    ``stop_reason`` is kept as the finish reason; ``max_tokens`` is marked ``length`` (the cut
    text is kept), ``refusal`` is marked ``refusal``; no text and no tool call is a ``parse_error``.

    Examples:
        >>> msg = {"model": "claude", "stop_reason": "end_turn",
        ...        "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
        ...        "usage": {"input_tokens": 5, "output_tokens": 2}}
        >>> r = parse_message("k", msg)
        >>> r.response, r.finish_reason, r.error_kind, r.input_tokens, r.output_tokens, r.model
        ('Hello', 'end_turn', None, 5, 2, 'claude')
        >>> parse_message("k", {"content": [{"type": "tool_use", "input": {"b": 1, "a": [2]}}],
        ...                     "stop_reason": "tool_use"}).response
        '{"a":[2],"b":1}'
    """
    if not isinstance(message, dict):
        return RowResult(
            custom_id=custom_id,
            error_kind=ErrorKind.PARSE_ERROR,
            error="the succeeded result has no message",
            batch_id=batch_id,
        )
    usage = as_dict(message.get("usage"))
    stop = message.get("stop_reason")
    model = message.get("model")
    result = RowResult(
        custom_id=custom_id,
        input_tokens=_input_tokens(usage),
        output_tokens=_int_or_none(usage.get("output_tokens")),
        cache_read_tokens=_int_or_none(usage.get("cache_read_input_tokens")),
        cache_write_tokens=_int_or_none(usage.get("cache_creation_input_tokens")),
        finish_reason=stop if isinstance(stop, str) else None,
        model=model if isinstance(model, str) else None,
        batch_id=batch_id,
    )
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
    tool_use = next((b for b in blocks if b.get("type") == "tool_use"), None)
    texts = [b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)]
    if tool_use is not None:
        result.response = orjson.dumps(tool_use.get("input"), option=orjson.OPT_SORT_KEYS).decode()
    elif texts:
        result.response = "".join(texts)
    if stop == "refusal":
        result.error_kind = ErrorKind.REFUSAL
        result.error = "the model refused to answer (stop_reason refusal)"
    elif stop == "max_tokens":
        result.error_kind = ErrorKind.LENGTH
        result.error = "the answer was cut at the token limit (max_tokens); the partial text is kept"
    elif result.response is None:
        result.error_kind, result.error = ErrorKind.PARSE_ERROR, "the message has no text content"
    return result


def errored_result(custom_id: str, error: Any, batch_id: str | None) -> RowResult:
    # The reference shape is {"type": "error", "error": {"type", "message"}, "request_id"};
    # read a flat {"type", "message"} too.
    inner = error.get("error") if isinstance(error, dict) else None
    if not isinstance(inner, dict):
        inner = error if isinstance(error, dict) else {}
    etype = str(inner.get("type") or "api_error")
    message = inner.get("message") or "the request failed"
    return RowResult(
        custom_id=custom_id,
        error_kind=ERROR_TYPE_KINDS.get(etype, ErrorKind.SERVER_ERROR),
        error=short(f"{etype}: {message}"),
        batch_id=batch_id,
    )
