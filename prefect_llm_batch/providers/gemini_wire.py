"""The Gemini API batch mode's wire format, without HTTP: request lines, the response schema in
Gemini's dialect, batch states, per-line errors and GenerateContent answers (see
:mod:`prefect_llm_batch.providers.gemini` for the client, ``docs/providers.md`` for the sources).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from ..errors import ProviderUnavailable
from ..results import RowResult, error_kind_for_status
from ..spec import ID_HEAD, ErrorKind
from .base import BatchStatus

#: Prefix of the ``displayName`` that carries a batch's metadata.
DISPLAY_NAME_PREFIX = "prefect-llm-batch "

#: ``metadata.state`` -> status (both the REST ``BATCH_STATE_*`` and the SDK's ``JOB_STATE_*``).
STATES: dict[str, BatchStatus] = {
    "BATCH_STATE_PENDING": BatchStatus.VALIDATING,
    "BATCH_STATE_RUNNING": BatchStatus.IN_PROGRESS,
    "BATCH_STATE_SUCCEEDED": BatchStatus.COMPLETED,
    "BATCH_STATE_FAILED": BatchStatus.FAILED,
    "BATCH_STATE_CANCELLED": BatchStatus.CANCELLED,
    "BATCH_STATE_EXPIRED": BatchStatus.EXPIRED,
    "JOB_STATE_QUEUED": BatchStatus.VALIDATING,
    "JOB_STATE_PENDING": BatchStatus.VALIDATING,
    "JOB_STATE_RUNNING": BatchStatus.IN_PROGRESS,
    "JOB_STATE_SUCCEEDED": BatchStatus.COMPLETED,
    "JOB_STATE_FAILED": BatchStatus.FAILED,
    "JOB_STATE_CANCELLING": BatchStatus.CANCELLING,
    "JOB_STATE_CANCELLED": BatchStatus.CANCELLED,
    "JOB_STATE_EXPIRED": BatchStatus.EXPIRED,
}

#: gRPC status code -> (name, error kind) of a per-line error.
GRPC_CODE_KINDS: dict[int, tuple[str, ErrorKind]] = {
    1: ("CANCELLED", ErrorKind.BATCH_CANCELLED),
    2: ("UNKNOWN", ErrorKind.SERVER_ERROR),
    3: ("INVALID_ARGUMENT", ErrorKind.INVALID_REQUEST),
    4: ("DEADLINE_EXCEEDED", ErrorKind.REQUEST_TIMEOUT),
    5: ("NOT_FOUND", ErrorKind.INVALID_REQUEST),
    6: ("ALREADY_EXISTS", ErrorKind.INVALID_REQUEST),
    7: ("PERMISSION_DENIED", ErrorKind.AUTH),
    8: ("RESOURCE_EXHAUSTED", ErrorKind.RATE_LIMITED),
    9: ("FAILED_PRECONDITION", ErrorKind.INVALID_REQUEST),
    10: ("ABORTED", ErrorKind.SERVER_ERROR),
    11: ("OUT_OF_RANGE", ErrorKind.INVALID_REQUEST),
    12: ("UNIMPLEMENTED", ErrorKind.INVALID_REQUEST),
    13: ("INTERNAL", ErrorKind.SERVER_ERROR),
    14: ("UNAVAILABLE", ErrorKind.SERVER_ERROR),
    15: ("DATA_LOSS", ErrorKind.SERVER_ERROR),
    16: ("UNAUTHENTICATED", ErrorKind.AUTH),
}
_NAME_KINDS = {name: kind for name, kind in GRPC_CODE_KINDS.values()}

#: ``finishReason`` values that mean a filter stopped the answer.
FILTER_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)

_SCHEMA_KEYS = ("description", "format", "enum", "minItems", "maxItems", "minimum", "maximum")


def gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema (references resolved, as :class:`~prefect_llm_batch.schemas.ResponseSchema`
    holds it) as a Gemini ``responseSchema`` (the OpenAPI subset: upper-case ``type``,
    ``nullable``, ``propertyOrdering``; ``additionalProperties`` and ``title`` dropped).

    Examples:
        >>> out = gemini_schema({"type": "object", "properties": {"n": {"type": ["integer", "null"]}},
        ...                      "required": ["n"], "additionalProperties": False})
        >>> out["type"], out["properties"], out["required"], out["propertyOrdering"]
        ('OBJECT', {'n': {'type': 'INTEGER', 'nullable': True}}, ['n'], ['n'])
    """
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        if len(rest) != len(kind):
            out["nullable"] = True
        kind = rest[0] if len(rest) == 1 else None
    any_of = schema.get("anyOf")
    if kind is None and isinstance(any_of, list):
        options = [o for o in any_of if isinstance(o, dict) and o.get("type") != "null"]
        if len(options) < len(any_of):
            out["nullable"] = True
        if len(options) == 1:
            inner = gemini_schema(options[0])
            return {**inner, **({"nullable": True} if out.get("nullable") else {})}
        out["anyOf"] = [gemini_schema(o) for o in options]
    if isinstance(kind, str):
        out = {"type": kind.upper(), **out}
    for key in _SCHEMA_KEYS:
        if key in schema:
            out[key] = schema[key]
    properties = schema.get("properties")
    if isinstance(properties, dict):
        out["properties"] = {name: gemini_schema(node) for name, node in properties.items()}
        if schema.get("required"):
            out["required"] = list(schema["required"])
        out["propertyOrdering"] = list(properties)
    if isinstance(schema.get("items"), dict):
        out["items"] = gemini_schema(schema["items"])
    return out


def display_name(metadata: dict[str, str]) -> str:
    """The ``displayName`` that carries a batch's metadata (sorted keys, compact JSON).

    Examples:
        >>> display_name({"job_id": "j", "chunk_id": "3"})
        'prefect-llm-batch {"chunk_id":"3","job_id":"j"}'
    """
    return DISPLAY_NAME_PREFIX + orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode()


def count_value(value: Any) -> int | None:
    """An integer count of a JSON value (None when absent or not a number)."""
    # int64 fields come as JSON strings in proto3 JSON.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def line_error_kind(error: dict[str, Any]) -> tuple[ErrorKind, str]:
    """The error kind and status name of a per-line ``error`` (a ``google.rpc.Status``).

    ``code`` is a gRPC code (0..16); a code of 100 or more is read as an HTTP status, and a
    ``status`` name (``INVALID_ARGUMENT``) wins when given.

    Examples:
        >>> line_error_kind({"code": 3, "message": "bad"})
        (<ErrorKind.INVALID_REQUEST: 'invalid_request'>, 'INVALID_ARGUMENT')
        >>> line_error_kind({"code": 429, "status": "RESOURCE_EXHAUSTED"})[0].value
        'rate_limited'
        >>> line_error_kind({"code": 503})[0].value
        'server_error'
    """
    status = error.get("status")
    if isinstance(status, str) and status in _NAME_KINDS:
        return _NAME_KINDS[status], status
    code = count_value(error.get("code"))
    if code is not None and code in GRPC_CODE_KINDS:
        return GRPC_CODE_KINDS[code][1], GRPC_CODE_KINDS[code][0]
    if code is not None and code >= 100:
        return error_kind_for_status(code), f"HTTP {code}"
    return ErrorKind.SERVER_ERROR, str(status or code or "UNKNOWN")


def parse_generate_content(custom_id: str, response: Any, batch_id: str | None = None) -> RowResult:
    """Turn a GenerateContentResponse into a :class:`RowResult`.

    The answer is the first candidate's text parts joined (thought parts left out); the token
    columns are ``usageMetadata.promptTokenCount`` and ``candidatesTokenCount`` (plus
    ``thoughtsTokenCount``, billed as output); ``cachedContentTokenCount`` (the prompt's tokens
    read from a context cache, counted in ``promptTokenCount`` too) is the cache-read count.
    ``MAX_TOKENS`` is ``length`` (text kept); a
    filter's reason (``SAFETY``...) or a blocked prompt is ``content_filter``; no text otherwise
    is a ``parse_error``.

    Examples:
        >>> r = parse_generate_content("k", {"candidates": [{"content": {"role": "model",
        ...     "parts": [{"text": "Hel"}, {"text": "lo"}]}, "finishReason": "STOP"}],
        ...     "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2},
        ...     "modelVersion": "gemini-2.5-flash"})
        >>> r.response, r.finish_reason, r.error_kind, r.input_tokens, r.output_tokens, r.model
        ('Hello', 'STOP', None, 4, 2, 'gemini-2.5-flash')
        >>> parse_generate_content("k", {"promptFeedback": {"blockReason": "SAFETY"}}).error_kind.value
        'content_filter'
    """
    if not isinstance(response, dict):
        return RowResult(
            custom_id, error_kind=ErrorKind.PARSE_ERROR, error="the line has no response", batch_id=batch_id
        )
    usage = as_dict(response.get("usageMetadata"))
    output = count_value(usage.get("candidatesTokenCount"))
    thoughts = count_value(usage.get("thoughtsTokenCount"))
    if thoughts is not None:
        output = (output or 0) + thoughts
    model = response.get("modelVersion")
    result = RowResult(
        custom_id=custom_id,
        input_tokens=count_value(usage.get("promptTokenCount")),
        output_tokens=output,
        # of promptTokenCount (which includes them), those read from a cache; Gemini reports no
        # cache writes (response_cache_write_tokens stays null)
        cache_read_tokens=count_value(usage.get("cachedContentTokenCount")),
        model=model if isinstance(model, str) else None,
        batch_id=batch_id,
    )
    candidates = [c for c in response.get("candidates") or [] if isinstance(c, dict)]
    if not candidates:
        block = as_dict(response.get("promptFeedback")).get("blockReason")
        result.error_kind = ErrorKind.CONTENT_FILTER if block else ErrorKind.PARSE_ERROR
        result.error = f"the prompt was blocked ({block})" if block else "the response has no candidates"
        return result
    first = candidates[0]
    reason = first.get("finishReason")
    result.finish_reason = reason if isinstance(reason, str) else None
    parts = [p for p in as_dict(first.get("content")).get("parts") or [] if isinstance(p, dict)]
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    if texts:
        result.response = "".join(texts)
    if reason in FILTER_REASONS:
        result.error_kind = ErrorKind.CONTENT_FILTER
        result.error = f"the answer was stopped by a filter (finishReason {reason})"
    elif reason == "MAX_TOKENS":
        result.error_kind = ErrorKind.LENGTH
        result.error = "the answer was cut at the token limit (MAX_TOKENS); the partial text is kept"
    elif result.response is None:
        result.error_kind = ErrorKind.PARSE_ERROR
        result.error = f"the answer has no text (finishReason {reason})"
    return result


def wire_lines(data: bytes) -> bytes:
    """Stored request lines (``{"custom_id", "request"}``, ``custom_id`` first) as Gemini's
    ``{"key", "request"}`` lines. A line that does not start with ``{"custom_id":"`` is decoded
    and written again.

    Examples:
        >>> wire_lines(b'{"request":{},"custom_id":"a"}\\n{"custom_id":"b","request":{}}')
        b'{"key":"a","request":{}}\\n{"key":"b","request":{}}\\n'
    """
    out: list[bytes] = []
    for raw in data.splitlines():
        if not raw.strip():
            continue
        if raw.startswith(ID_HEAD):
            out.append(b'{"key":"' + raw[len(ID_HEAD) :] + b"\n")
            continue
        line = orjson.loads(raw)
        out.append(orjson.dumps({"key": line.pop("custom_id"), **line}) + b"\n")
    return b"".join(out)


def decode_keyed_lines(
    lines: Iterable[bytes | str], where: str, *, unreadable: list[int] | None = None, first_line: int = 1
) -> Iterator[dict[str, Any]]:
    """Decode Gemini result lines one by one, skipping blank ones; each must carry a ``key``.

    Raises:
        ProviderUnavailable: A line is not JSON or has no ``key``, unless ``unreadable`` is given
            (its number is then appended there).

    Examples:
        >>> list(decode_keyed_lines([b'{"key": "a"}', b""], "a test file"))
        [{'key': 'a'}]
    """
    for number, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if unreadable is None:
                raise ProviderUnavailable(f"line {number} of {where} is not JSON") from exc
            unreadable.append(number)
            continue
        if not isinstance(line, dict) or not isinstance(line.get("key"), str):
            if unreadable is None:
                raise ProviderUnavailable(f"line {number} of {where} has no key")
            unreadable.append(number)
            continue
        yield line
