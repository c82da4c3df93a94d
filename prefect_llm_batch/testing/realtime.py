"""Realtime routes and their limits: ``POST /v1/chat/completions``, ``/v1/embeddings`` and
``/v1/messages``, one sliding-window budget for all three, and the rate-limit headers.

Realtime rate limits: with :attr:`FakeServerConfig.realtime_rpm` / ``realtime_tpm`` the realtime
routes (``POST /v1/chat/completions``, ``/v1/embeddings``, ``/v1/messages``) share a sliding-window
budget (``realtime_window_s``, 60 s by default): over it, 429 with ``retry-after`` (and, on
OpenAI routes, ``retry-after-ms``), counted in :attr:`ServerStats.realtime_429`; every realtime
answer carries ``x-ratelimit-*`` headers (and ``anthropic-ratelimit-*`` on ``/v1/messages``).
``realtime_latency_s`` delays accepted realtime answers. ``batch_api=False`` makes every
``/v1/files`` and ``/v1/batches`` route answer 404, like a server without a batch API.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from prefect_llm_batch.testing.completions import complete_chat, complete_embeddings, complete_message
from prefect_llm_batch.testing.responses_moderations import complete_moderation, complete_response
from prefect_llm_batch.testing.state import _State
from prefect_llm_batch.testing.wire import (
    _ANTHROPIC_ERROR_MESSAGES,
    Handler,
    _ApiError,
    _hex,
    _json,
    _json_body,
    _rfc3339,
)


def openai_duration(seconds: float) -> str:
    """Format a duration as OpenAI's rate-limit headers do (``20ms``, ``2s81ms``, ``6m0s``).

    Examples:
        >>> openai_duration(0.02), openai_duration(2.081), openai_duration(360), openai_duration(0)
        ('20ms', '2s81ms', '6m0s', '0s')
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs, millis = divmod(rest, 1000)
    if minutes:
        return f"{minutes}m{secs}s" if not millis else f"{minutes}m{secs}.{millis:03d}s"
    return f"{secs}s{millis}ms" if millis else f"{secs}s"


def realtime_tokens(raw: bytes, body: Mapping[str, Any]) -> int:
    """Tokens a realtime request counts against ``realtime_tpm``: ``len(raw) // 4`` plus its
    ``max_tokens`` (or ``max_completion_tokens``).

    Examples:
        >>> realtime_tokens(b"x" * 40, {"max_tokens": 5})
        15
    """
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    extra = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 0
    return len(raw) // 4 + extra


@dataclass
class _Budget:
    """The outcome of one realtime admission: wait (0 when accepted) and what the headers say."""

    retry_after: float
    requests: tuple[float, int, float] | None  # limit per minute, remaining, reset seconds
    tokens: tuple[float, int, float] | None


def admit_realtime(state: _State, tokens: int) -> _Budget:
    """Count a realtime request against the sliding window, or tell how long it must wait."""
    config = state.config
    window = config.realtime_window_s
    now = time.monotonic()
    with state.lock:
        queue = state.window
        while queue and queue[0][0] <= now - window:
            queue.popleft()
        wait = 0.0
        max_requests = (
            max(1, math.floor(config.realtime_rpm * window / 60 + 1e-9)) if config.realtime_rpm else None
        )
        max_tokens = config.realtime_tpm * window / 60 if config.realtime_tpm else None
        if max_requests is not None and len(queue) + 1 > max_requests:
            wait = queue[len(queue) - max_requests][0] + window - now
        used = sum(t for _, t in queue)
        if max_tokens is not None and queue and used + tokens > max_tokens:
            freed = used
            for i, (at, spent) in enumerate(queue):  # oldest first, until enough tokens leave
                freed -= spent
                if freed + tokens <= max_tokens or i == len(queue) - 1:
                    wait = max(wait, at + window - now)
                    break
        if wait > 0:
            state.stats.realtime_429 += 1
        else:
            wait = 0.0
            queue.append((now, tokens))
            used += tokens
        reset = queue[0][0] + window - now if queue else 0.0
        requests = (
            (float(config.realtime_rpm), max(0, max_requests - len(queue)), reset)
            if config.realtime_rpm and max_requests is not None
            else None
        )
        token_state = (
            (float(config.realtime_tpm), max(0, math.floor(max_tokens - used)), reset)
            if config.realtime_tpm and max_tokens is not None
            else None
        )
        return _Budget(wait, requests, token_state)


def rate_headers(budget: _Budget, anthropic: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, numbers in (("requests", budget.requests), ("tokens", budget.tokens)):
        if numbers is None:
            continue
        limit, remaining, reset = numbers
        headers[f"x-ratelimit-limit-{kind}"] = f"{limit:g}"
        headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        headers[f"x-ratelimit-reset-{kind}"] = openai_duration(reset)
        if anthropic:
            headers[f"anthropic-ratelimit-{kind}-limit"] = f"{limit:g}"
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{kind}-reset"] = _rfc3339(time.time() + reset) or ""
    return headers


async def rate_limited(state: _State, request: Request, handler: Handler, anthropic: bool) -> Response:
    raw = await request.body()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    budget = admit_realtime(state, realtime_tokens(raw, parsed if isinstance(parsed, dict) else {}))
    headers = rate_headers(budget, anthropic)
    if budget.retry_after > 0:
        wait = budget.retry_after
        headers["retry-after"] = f"{wait:.3f}"
        if anthropic:
            raise _ApiError(429, _ANTHROPIC_ERROR_MESSAGES[429], type="rate_limit_error", headers=headers)
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        raise _ApiError(
            429,
            f"Rate limit reached for requests in organization org-fake. Please try again in {wait:.3f}s.",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if state.config.realtime_latency_s:
        await asyncio.sleep(state.config.realtime_latency_s)
    response = await handler(request)
    response.headers.update(headers)
    return response


def realtime_handlers(state: _State) -> dict[str, Handler]:
    """The realtime routes' handlers (before auth, faults and limits), by route template."""

    async def chat_completions(request: Request) -> Response:
        body = await _json_body(request)
        if body.get("stream") is True:
            raise _ApiError(400, "The fake provider does not stream.", param="stream")
        status, response_body, _ = complete_chat(body, state.config.answer, int(time.time()))
        return _json(response_body, status, {"x-request-id": f"req_{_hex(32)}"})

    async def embeddings(request: Request) -> Response:
        body = await _json_body(request)
        status, response_body, _ = complete_embeddings(body)
        return _json(response_body, status, {"x-request-id": f"req_{_hex(32)}"})

    async def responses(request: Request) -> Response:
        body = await _json_body(request)
        if body.get("stream") is True:
            raise _ApiError(400, "The fake provider does not stream.", param="stream")
        status, response_body, _ = complete_response(body, state.config.answer, int(time.time()))
        return _json(response_body, status, {"x-request-id": f"req_{_hex(32)}"})

    async def moderations(request: Request) -> Response:
        body = await _json_body(request)
        status, response_body, _ = complete_moderation(body)
        return _json(response_body, status, {"x-request-id": f"req_{_hex(32)}"})

    async def messages(request: Request) -> Response:
        body = await _json_body(request)
        status, response_body, _ = complete_message(body, state.config.answer)
        request_id = response_body.get("request_id") or f"req_{_hex()}"
        return _json(response_body, status, {"request-id": request_id})

    return {
        "POST /v1/chat/completions": chat_completions,
        "POST /v1/embeddings": embeddings,
        "POST /v1/responses": responses,
        "POST /v1/moderations": moderations,
        "POST /v1/messages": messages,
    }
