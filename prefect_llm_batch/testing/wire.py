"""The wire around every route: JSON answers, OpenAI and Anthropic error envelopes, ids, RFC 3339
times, request bodies and ``limit`` parameters.

Examples:
    >>> _ApiError(404, "No such File object: file-1").response().status_code
    404
    >>> _anthropic_error_type(529), _anthropic_error_type(502)
    ('overloaded_error', 'api_error')
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

#: Anthropic error ``type`` per HTTP status (others: ``api_error`` for 5xx, else ``invalid_request_error``).
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_ERROR_MESSAGES = {
    401: "invalid x-api-key",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of requests has exceeded your per-minute rate limit.",
    500: "Internal server error",
    504: "Request timed out.",
    529: "Overloaded",
}


_DEFAULT_ERROR_MESSAGES = {
    400: "Invalid request.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to perform this request.",
    404: "Not found.",
    408: "Request timed out.",
    409: "Conflict.",
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}


def _rfc3339(epoch: float | None) -> str | None:
    """Format a unix time as an RFC 3339 string in UTC with microseconds (``...Z``)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


class _ApiError(Exception):
    """Raised inside handlers; becomes an OpenAI error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def response(self) -> Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return _json(body, self.status, self.headers)

    def anthropic_response(self) -> Response:
        """The same error in Anthropic's envelope; ``type`` is kept when it is an Anthropic type
        other than the default ``invalid_request_error``, else derived from the status."""
        etype = self.type
        if etype == "invalid_request_error" or etype not in ANTHROPIC_ERROR_TYPES.values():
            etype = _anthropic_error_type(self.status)
        body = _anthropic_error_body(etype, self.message)
        return _json(body, self.status, {**self.headers, "request-id": body["request_id"]})


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _error_type(status: int) -> str:
    if status == 401:
        return "invalid_request_error"
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _hex(n: int = 24) -> str:
    return uuid.uuid4().hex[:n]


def _error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _anthropic_error_type(status: int) -> str:
    if status in ANTHROPIC_ERROR_TYPES:
        return ANTHROPIC_ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def _anthropic_error_body(type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type, "message": message}, "request_id": f"req_{_hex()}"}


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "The request body must be a JSON object.")
    return body


def _query_limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise _ApiError(400, f"Invalid 'limit': {raw!r} is not an integer.", param="limit") from None
    if not 1 <= limit <= maximum:
        raise _ApiError(400, f"Invalid 'limit': must be between 1 and {maximum}.", param="limit")
    return limit


Handler = Callable[[Request], Awaitable[Response]]
