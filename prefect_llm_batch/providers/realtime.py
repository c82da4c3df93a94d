"""A realtime (non-batch) path: the batch input lines sent one by one, rate limited, in parallel.

:class:`RealtimeClient` takes the lines a provider's ``build_line`` made, POSTs each request to
the provider's realtime endpoint with async httpx and bounded concurrency, wraps each answer in
the provider's **batch result-line shape** and parses it with the provider's own ``parse_line``:
realtime and batch rows parse identically (same :class:`~prefect_llm_batch.results.RowResult`
contract, ``batch_id`` ``None``). Results come back in input order.

Pacing and retries:

* Optional requests-per-minute and tokens-per-minute limiters (:class:`aiolimiter.AsyncLimiter`,
  leaky buckets refilled continuously, so sending is smooth rather than one burst per minute).
  A request's tokens are estimated as ``len(json body) / 4 + max_tokens``.
* The rate-limit headers are read on every answer: when ``x-ratelimit-remaining-requests`` (or
  ``-tokens``) or Anthropic's ``anthropic-ratelimit-requests-remaining`` (or ``-tokens-``) reach
  0, every worker pauses until the matching reset (``x-ratelimit-reset-*`` durations such as
  ``2s81ms``, see :func:`parse_duration`; Anthropic's RFC 3339 times).
* 408, 409, 429, 5xx and network errors are retried up to ``max_retries`` times, waiting
  ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date; at most 60 s) when given, else
  exponential backoff with jitter (0.5 s doubling to 8 s); ``x-should-retry`` overrides the
  status. A 429 with a ``retry-after`` pauses every worker, not just the one that got it.
  After the last retry the row keeps its error; one row never loses the others.
* ``insufficient_quota`` is terminal: nothing more is sent, waiting workers stop at once, and
  every row not answered yet is marked ``insufficient_quota`` with the provider's message.

:func:`has_batch_api` detects whether an OpenAI-compatible server has a batch API.

Examples:
    >>> parse_duration("2s81ms"), parse_duration("6m0s"), parse_duration("20ms")
    (2.081, 360.0, 0.02)
    >>> estimate_tokens({"messages": [], "max_tokens": 10})
    17
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from aiolimiter import AsyncLimiter

from ..errors import ConfigError, ProviderRejected, ProviderUnavailable
from ..results import RowResult, short
from ..spec import ErrorKind
from .anthropic import ANTHROPIC_VERSION
from .anthropic_wire import parse_rfc3339
from .base import BatchProvider
from .compatible_servers import openai_error_body, schema_limitation
from .http import MAX_RETRY_AFTER_S, parse_retry_after, redact, redact_chain, redacted_response, secrets_of

__all__ = [
    "RealtimeClient",
    "RealtimeStats",
    "estimate_tokens",
    "has_batch_api",
    "parse_duration",
]

Wire = Literal["openai", "anthropic"]

#: Statuses worth sending again (as the official SDKs do).
RETRY_STATUSES = frozenset({408, 409, 429})
#: First backoff, and the longest, in seconds (when the server gives no ``retry-after``).
BACKOFF_S, MAX_BACKOFF_S = 0.5, 8.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def parse_duration(value: str | None) -> float | None:
    """Read a rate-limit reset duration (``20ms``, ``2s81ms``, ``6m0s``, ``1h2m``, or bare seconds).

    Args:
        value: The header value.

    Returns:
        Seconds, or ``None`` when the value is missing or not a duration.

    Examples:
        >>> parse_duration("1m30.5s"), parse_duration("1.5"), parse_duration("soon")
        (90.5, 1.5, None)
    """
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, end = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != end:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        end = match.end()
    return round(total, 9) if end == len(text) and end > 0 else None


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """Tokens a request counts against a tokens-per-minute limit: ``len(json body) / 4`` plus
    ``max_tokens`` (or ``max_completion_tokens``) when set.

    Examples:
        >>> estimate_tokens({"input": "x" * 100})
        28
    """
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    extra = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 0
    return len(orjson.dumps(body)) // 4 + extra


@dataclass
class RealtimeStats:
    """What the last :meth:`RealtimeClient.run` did.

    Attributes:
        requests_sent: HTTP requests sent, retries included.
        responses_429: Answers with HTTP 429.
        retries: Requests sent again after a retryable answer or a network error.
        elapsed_s: Wall time of the run in seconds.
    """

    requests_sent: int = 0
    responses_429: int = 0
    retries: int = 0
    elapsed_s: float = 0.0


#: Longest burst the limiters allow, in seconds of the limit (at least one request fits).
BURST_S = 0.1


def _limiter(per_minute: float | None, largest: float = 1.0) -> AsyncLimiter | None:
    """A leaky bucket draining ``per_minute`` evenly, holding :data:`BURST_S` seconds' worth,
    and never less than ``largest`` (the biggest single acquisition)."""
    if per_minute is None:
        return None
    period = max(BURST_S, 60.0 * largest / per_minute)
    return AsyncLimiter(per_minute * period / 60.0, period)


class _Run:
    """The state of one run: shared pause, stop flag and the terminal quota message."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.pause_until = 0.0  # loop time
        self.quota_message: str | None = None
        self.unsupported_message: str | None = None  # the server cannot take the requests' shape

    async def wait(self, awaitable: Awaitable[Any]) -> bool:
        """Await ``awaitable`` unless the run stops first (it is then cancelled); True if it finished."""
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def sleep(self, seconds: float) -> bool:
        """Sleep, unless the run stops first; True if the whole time passed."""
        if seconds <= 0:
            return not self.stop.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
            return False
        return True

    def pause(self, seconds: float) -> None:
        """Hold every worker for ``seconds`` from now (a longer pause already set is kept)."""
        loop = asyncio.get_running_loop()
        self.pause_until = max(self.pause_until, loop.time() + min(seconds, MAX_RETRY_AFTER_S))


class RealtimeClient:
    """Send batch input lines to a provider's realtime endpoint; see the module docstring.

    Args:
        provider: The batch provider whose ``build_line`` made the lines; its ``parse_line``
            parses the answers.
        api_key: The API key (``Authorization: Bearer`` for ``openai``, ``x-api-key`` for
            ``anthropic``). Never logged.
        base_url: OpenAI: the base URL including ``/v1`` (a line's ``url`` ``/v1/chat/completions``
            goes to ``{base_url}/chat/completions``). Anthropic: without ``/v1``.
        wire: ``"openai"`` (lines ``{"custom_id", "method", "url", "body"}``) or ``"anthropic"``
            (lines ``{"custom_id", "params"}``, sent to ``{base_url}/v1/messages``).
        max_concurrency: Most requests in flight at once.
        requests_per_minute: Requests-per-minute limit to keep under (``None``: no limiter).
        tokens_per_minute: Tokens-per-minute limit to keep under (``None``: no limiter).
        max_retries: Retries of one request after its first attempt.
        timeout: Read timeout of one request in seconds.
        transport: Optional async httpx transport (tests).
        store_each: Ask the caller to store every answer as it comes (``on_result`` of
            :meth:`run`), not per slice: for slow servers (a local model), where a killed run
            would otherwise send minutes of answered requests again.

    Attributes:
        stats: :class:`RealtimeStats` of the last run.

    Raises:
        ConfigError: For an unknown wire, a missing key or a bad limit.

    Examples:
        >>> from prefect_llm_batch.providers.openai import OpenAIBatchProvider
        >>> provider = OpenAIBatchProvider(api_key="k")
        >>> def answer(request: httpx.Request) -> httpx.Response:
        ...     assert request.url.path == "/v1/chat/completions"
        ...     return httpx.Response(200, json={"choices": [{"message": {"content": "hi"},
        ...                                                  "finish_reason": "stop"}]})
        >>> client = RealtimeClient(provider, api_key="k", base_url="https://api.openai.com/v1",
        ...                         wire="openai", transport=httpx.MockTransport(answer))
        >>> [r.response for r in client.run([provider.build_line("a", {"model": "m"})])]
        ['hi']
        >>> provider.close()
    """

    def __init__(
        self,
        provider: BatchProvider,
        *,
        api_key: str,
        base_url: str,
        wire: Wire,
        max_concurrency: int = 16,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_retries: int = 8,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        store_each: bool = False,
    ) -> None:
        if wire not in ("openai", "anthropic"):
            raise ConfigError(f"wire must be 'openai' or 'anthropic', not {wire!r}")
        if not api_key:
            raise ConfigError("no API key for the realtime endpoint")
        if max_concurrency < 1 or max_retries < 0:
            raise ConfigError("max_concurrency must be at least 1 and max_retries not negative")
        for value in (requests_per_minute, tokens_per_minute):
            if value is not None and value <= 0:
                raise ConfigError(f"a rate limit must be positive, not {value!r}")
        self.provider = provider
        self.wire: Wire = wire
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.max_retries = max_retries
        self.timeout = timeout
        self.stats = RealtimeStats()
        self.store_each = store_each
        self._api_key = api_key
        self._secrets = (api_key, *secrets_of({}, base_url))
        self._base_url = base_url.rstrip("/")
        self._transport = transport
        self._tls: ssl.SSLContext | None = None  # made once: each run's client reuses it

    # ---- public -------------------------------------------------------------------------

    def run(
        self, lines: list[dict[str, Any]], on_result: Callable[[RowResult], None] | None = None
    ) -> list[RowResult]:
        """Send every line and return one result per line, in input order.

        Works from plain code and from code already inside an event loop (a notebook): the
        requests then run on their own loop in a separate thread.

        Args:
            lines: Batch input lines made by the provider's ``build_line``.
            on_result: Called with each final answer as it arrives (on the requests' loop), in
                the order they arrive; rows never sent because the run stopped are not passed.

        Returns:
            One :class:`RowResult` per line, in the order of ``lines``.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(lines, on_result))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm-realtime") as pool:
            return pool.submit(asyncio.run, self.arun(lines, on_result)).result()

    async def arun(
        self, lines: list[dict[str, Any]], on_result: Callable[[RowResult], None] | None = None
    ) -> list[RowResult]:
        """The coroutine behind :meth:`run`, for callers that are async themselves."""
        self.stats = RealtimeStats()
        started = time.monotonic()
        state = _Run()
        results: list[RowResult | None] = [None] * len(lines)
        requests = _limiter(self.requests_per_minute)
        largest = max((estimate_tokens(self._target(line)[1]) for line in lines), default=1)
        tokens = _limiter(self.tokens_per_minute, largest)
        pending = iter(range(len(lines)))
        headers = (
            {"Authorization": f"Bearer {self._api_key}"}
            if self.wire == "openai"
            else {"x-api-key": self._api_key, "anthropic-version": ANTHROPIC_VERSION}
        )
        async with httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=15.0),
            limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=None),
            transport=self._transport,
            verify=self._tls_context(),
        ) as client:

            async def worker() -> None:
                for index in pending:
                    if state.stop.is_set():
                        return
                    result = results[index] = await self._one(client, state, lines[index], requests, tokens)
                    if result is not None and on_result is not None:
                        on_result(result)

            await asyncio.gather(*(worker() for _ in range(min(self.max_concurrency, len(lines)))))
        self.stats.elapsed_s = time.monotonic() - started
        message = short(f"insufficient_quota: not sent: {state.quota_message or 'the quota is exhausted'}")
        kind = ErrorKind.INSUFFICIENT_QUOTA
        if state.unsupported_message is not None and state.quota_message is None:
            message, kind = short(f"not sent: {state.unsupported_message}"), ErrorKind.INVALID_REQUEST
        return [
            result
            if result is not None
            else RowResult(custom_id=str(line.get("custom_id")), error_kind=kind, error=message)
            for line, result in zip(lines, results, strict=True)
        ]

    def _tls_context(self) -> ssl.SSLContext:
        """httpx's default TLS context, made on the first run and kept: making one loads the CA
        bundle, which a realtime chunk would otherwise pay once per slice."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    # ---- one request --------------------------------------------------------------------

    def _target(self, line: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if self.wire == "anthropic":
            params = line.get("params")
            if not isinstance(params, dict):
                raise ConfigError(
                    f"line {line.get('custom_id')!r} has no params object (not an Anthropic line)"
                )
            return f"{self._base_url}/v1/messages", params
        body, url = line.get("body"), line.get("url")
        if not isinstance(body, dict) or not isinstance(url, str):
            raise ConfigError(f"line {line.get('custom_id')!r} has no url and body (not an OpenAI line)")
        path = url[3:] if url.startswith("/v1/") else url
        return f"{self._base_url}/{path.lstrip('/')}", body

    async def _one(
        self,
        client: httpx.AsyncClient,
        state: _Run,
        line: Mapping[str, Any],
        requests: AsyncLimiter | None,
        tokens: AsyncLimiter | None,
    ) -> RowResult | None:
        """Send one line until it has a final answer; ``None`` when the run stopped first."""
        url, body = self._target(line)
        cost = estimate_tokens(body)
        loop = asyncio.get_running_loop()
        attempts = 0
        while True:
            if not await self._paused(state, loop):
                return None
            if requests is not None and not await state.wait(requests.acquire()):
                return None
            if tokens is not None and not await state.wait(tokens.acquire(min(cost, tokens.max_rate))):
                return None
            # A pause may have begun while this request waited for the limiters.
            if not await self._paused(state, loop) or state.stop.is_set():
                return None
            attempts += 1
            self.stats.requests_sent += 1
            try:
                response = await client.post(url, json=body)
            except httpx.TransportError as exc:
                if attempts > self.max_retries:
                    return self._failed(line, attempts, exc)
                self.stats.retries += 1
                if not await state.sleep(self._backoff(attempts)):
                    return None
                continue
            self._observe(response.headers, state)
            status = response.status_code
            if status == 429:
                self.stats.responses_429 += 1
            result = self._parse(line, response)
            result.attempts = attempts
            limitation = schema_limitation(
                status, body, redact(response.text, self._secrets) if status >= 400 else ""
            )
            if limitation is not None:  # the same for every row: report it, send nothing more
                result.error_kind, result.error = ErrorKind.INVALID_REQUEST, short(limitation)
                if state.unsupported_message is None:
                    state.unsupported_message = limitation
                state.stop.set()
                return result
            if result.error_kind is ErrorKind.INSUFFICIENT_QUOTA:
                if state.quota_message is None:
                    state.quota_message = result.error
                state.stop.set()
                return result
            if not self._retryable(response) or attempts > self.max_retries:
                return result
            self.stats.retries += 1
            retry_after = parse_retry_after(response.headers)
            if retry_after is not None and status == 429:
                state.pause(retry_after)  # the budget is spent for every worker
                continue
            wait = min(retry_after, MAX_RETRY_AFTER_S) if retry_after is not None else self._backoff(attempts)
            if not await state.sleep(wait):
                return None

    @staticmethod
    async def _paused(state: _Run, loop: asyncio.AbstractEventLoop) -> bool:
        """Wait out the shared pause; False when the run stopped meanwhile."""
        while (wait := state.pause_until - loop.time()) > 0:
            if not await state.sleep(wait):
                return False
        return True

    @staticmethod
    def _backoff(attempt: int) -> float:
        ceiling = min(MAX_BACKOFF_S, BACKOFF_S * 2.0 ** (attempt - 1))
        return ceiling * (1 - 0.25 * random.random())

    @staticmethod
    def _retryable(response: httpx.Response) -> bool:
        should = str(response.headers.get("x-should-retry", ""))
        if should in ("true", "false"):
            return should == "true"
        status = response.status_code
        return status in RETRY_STATUSES or status >= 500

    def _observe(self, headers: httpx.Headers, state: _Run) -> None:
        """Pause every worker when the rate-limit headers say the budget is spent."""
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is not None and _number(remaining) == 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    state.pause(reset)
            remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
            if remaining is not None and _number(remaining) == 0:
                at = parse_rfc3339(headers.get(f"anthropic-ratelimit-{kind}-reset"))
                if at is not None and at > time.time():
                    state.pause(at - time.time())

    def _parse(self, line: Mapping[str, Any], response: httpx.Response) -> RowResult:
        """Wrap an HTTP answer as the provider's batch result line and parse it with ``parse_line``."""
        cid = str(line.get("custom_id"))
        status = response.status_code
        if not 200 <= status < 300:  # error text may quote the request: redact it before it is kept
            response = redacted_response(response, self._secrets)
        try:
            payload: Any = response.json()
        except ValueError:
            payload = None
        if 200 <= status < 300 and not isinstance(payload, dict):
            return RowResult(
                custom_id=cid,
                error_kind=ErrorKind.PARSE_ERROR,
                error=short(
                    redact(
                        f"HTTP {status}: the answer is not a JSON object: {response.text[:200]}",
                        self._secrets,
                    )
                ),
            )
        text = short(response.text or response.reason_phrase or f"HTTP {status}")
        if self.wire == "openai":
            if not isinstance(payload, dict):
                payload = {"error": {"message": text}}
            elif not 200 <= status < 300:
                payload = openai_error_body(payload, text)
            wrapped: dict[str, Any] = {
                "custom_id": cid,
                "response": {"status_code": status, "body": payload},
                "error": None,
            }
        elif 200 <= status < 300:
            wrapped = {"custom_id": cid, "result": {"type": "succeeded", "message": payload}}
        else:
            if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
                etype = _ANTHROPIC_ERROR_TYPES.get(
                    status, "api_error" if status >= 500 else "invalid_request_error"
                )
                payload = {"type": "error", "error": {"type": etype, "message": text}}
            wrapped = {"custom_id": cid, "result": {"type": "errored", "error": payload}}
        return self.provider.parse_line(wrapped, batch_id=None)

    def _failed(self, line: Mapping[str, Any], attempts: int, exc: httpx.TransportError) -> RowResult:
        kind = (
            ErrorKind.REQUEST_TIMEOUT if isinstance(exc, httpx.TimeoutException) else ErrorKind.SERVER_ERROR
        )
        return RowResult(
            custom_id=str(line.get("custom_id")),
            error_kind=kind,
            error=short(
                redact(f"no answer after {attempts} attempts ({type(exc).__name__}: {exc})", self._secrets)
            ),
            attempts=attempts,
        )


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def has_batch_api(base_url: str, api_key: str, transport: httpx.BaseTransport | None = None) -> bool:
    """Detect whether an OpenAI-compatible server has a batch API, by asking it.

    Sends ``GET {base_url}/batches?limit=1``: a 200 with a JSON list (``{"data": [...]}``)
    means yes; 404 or 405, or a 200 that is not such a list (a catch-all page), means no.

    Args:
        base_url: Base URL including ``/v1``.
        api_key: Sent as ``Authorization: Bearer``.
        transport: Optional httpx transport (tests).

    Returns:
        True when the server lists batches.

    Raises:
        ProviderRejected: 401/403 (the key is refused), or another 4xx.
        ProviderUnavailable: The server cannot be reached, or answers 408/429/5xx.

    Examples:
        >>> def server(request: httpx.Request) -> httpx.Response:
        ...     return httpx.Response(404, json={"detail": "Not Found"})
        >>> has_batch_api("http://localhost:8000/v1", "k", httpx.MockTransport(server))
        False
    """
    url = f"{base_url.rstrip('/')}/batches"
    secrets = (api_key, *secrets_of({}, base_url))
    shown = redact(base_url, secrets)  # a base URL may carry userinfo
    try:
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=15.0), transport=transport) as client:
            response = client.get(url, params={"limit": 1}, headers={"Authorization": f"Bearer {api_key}"})
    except httpx.TransportError as exc:
        raise ProviderUnavailable(
            f"cannot reach {shown} to look for a batch API ({type(exc).__name__})"
        ) from redact_chain(exc, secrets)
    status = response.status_code
    if status in (404, 405):
        return False
    text = short(redact(response.text, secrets))
    if status in (401, 403):
        raise ProviderRejected(
            f"{shown} refused the key while looking for a batch API (HTTP {status}): {text}",
            status_code=status,
        )
    if status in RETRY_STATUSES or status >= 500:
        raise ProviderUnavailable(
            f"{shown} answered HTTP {status} while looking for a batch API", status_code=status
        )
    if status >= 400:
        raise ProviderRejected(f"{shown} answered HTTP {status} to GET /batches: {text}", status_code=status)
    try:
        payload = response.json()
    except ValueError:
        return False
    return isinstance(payload, dict) and isinstance(payload.get("data"), list)
