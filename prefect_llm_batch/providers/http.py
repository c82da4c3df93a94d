"""HTTP plumbing shared by the batch providers: retries with backoff, and error translation.

:class:`RetryingHTTP` is a mixin. A provider sets the attributes it declares in its
``__init__`` and implements :meth:`RetryingHTTP._error_for_response` (its wire format's error
envelope); it then gets:

* ``_send``: one call, translating httpx errors and HTTP errors into the project's error tree.
  Nothing reached the server (connect error or connect/pool timeout): ``ProviderUnavailable``.
  A timeout or dropped connection after sending: ``ProviderUnavailable`` on idempotent calls,
  :class:`~prefect_llm_batch.errors.AmbiguousCreate` on a create (``idempotent=False``), as is
  a 5xx answer to a create. ``stream=True`` returns an open response to read line by line.
* ``_retrying``: runs a call again on :class:`~prefect_llm_batch.errors.Transient` errors
  (never on ``AmbiguousCreate``), waiting ``retry_after`` when the server gave one (at most 60 s),
  else exponential backoff with jitter (``backoff`` doubling up to ``max_backoff``).
* ``_json``: a retried call whose answer must be a JSON object.

Examples:
    >>> import httpx
    >>> from prefect_llm_batch.errors import ProviderUnavailable
    >>> class Tiny(RetryingHTTP):
    ...     def __init__(self, transport: httpx.BaseTransport) -> None:
    ...         self._client = httpx.Client(base_url="https://x.example", transport=transport)
    ...         self._key_base_url, self._max_retries, self._backoff = "https://x.example", 3, 0.0
    ...         self._max_backoff, self._sleep = 0.0, lambda s: None
    ...     def _error_for_response(self, response, what):
    ...         return ProviderUnavailable(f"{what}: HTTP {response.status_code}")
    >>> answers = iter([httpx.Response(503), httpx.Response(200, json={"ok": True})])
    >>> Tiny(httpx.MockTransport(lambda request: next(answers)))._json("GET", "/", "ping")
    {'ok': True}
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import IO, Any, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from ..errors import AmbiguousCreate, LLMBatchError, ProviderUnavailable, Transient

T = TypeVar("T")

#: Longest wait between two attempts, even when the server asks for more.
MAX_RETRY_AFTER_S = 60.0


def http_timeout(read: float) -> httpx.Timeout:
    """Timeouts of a provider client: room for big uploads and downloads, short connects.

    Examples:
        >>> http_timeout(120.0).read, http_timeout(120.0).write
        (120.0, 600.0)
    """
    return httpx.Timeout(connect=15.0, read=read, write=600.0, pool=30.0)


class RetryingHTTP:
    """Retried, translated HTTP calls for a provider (a mixin; see the module docstring).

    Attributes:
        _client: The httpx client (base URL and auth headers set).
        _key_base_url: The base URL quoted in messages (normalised, without credentials).
        _max_retries: Attempts for retryable calls, first one included.
        _backoff: Initial backoff in seconds.
        _max_backoff: Longest backoff when the server gives no ``retry-after``.
        _sleep: Sleep function used between attempts.
    """

    _client: httpx.Client
    _key_base_url: str
    _max_retries: int
    _backoff: float
    _max_backoff: float
    _sleep: Callable[[float], None]

    def _open_client(
        self,
        *,
        base_url: str,
        key_base_url: str,
        headers: dict[str, str],
        max_retries: int,
        backoff: float,
        max_backoff: float,
        read_timeout: float,
        transport: httpx.BaseTransport | None,
        sleep: Callable[[float], None],
        event_hooks: dict[str, list[Callable[..., Any]]] | None = None,
    ) -> None:
        """Set the retry attributes and build the provider's (new, unshared) httpx client."""
        self._key_base_url = key_base_url
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._client = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=http_timeout(read_timeout),
            transport=transport,
            follow_redirects=True,
            event_hooks=event_hooks,
        )

    def _error_for_response(self, response: httpx.Response, what: str) -> LLMBatchError:
        """Translate an HTTP error response (status >= 400) of this provider's wire format."""
        raise NotImplementedError

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, (int, float)):
            return min(float(retry_after), MAX_RETRY_AFTER_S)
        ceiling = min(self._max_backoff, self._backoff * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _retrying(self, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(
                lambda e: isinstance(e, Transient) and not isinstance(e, AmbiguousCreate)
            ),
            stop=stop_after_attempt(self._max_retries),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(fn)

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        idempotent: bool = True,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        try:
            request = self._client.build_request(method, path, **kwargs)
            response = self._client.send(request, stream=stream)
            if stream and response.status_code >= 400:
                try:
                    response.read()
                finally:
                    response.close()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:  # nothing was sent
            raise ProviderUnavailable(
                f"{what}: cannot connect to {self._key_base_url} ({type(exc).__name__})"
            ) from exc
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            message = f"{what}: no answer from {self._key_base_url} ({type(exc).__name__})"
            if not idempotent:
                raise AmbiguousCreate(message) from exc
            raise ProviderUnavailable(message) from exc
        if response.status_code >= 400:
            error = self._error_for_response(response, what)
            if not idempotent and isinstance(error, ProviderUnavailable):
                raise AmbiguousCreate(str(error)) from None
            raise error
        return response

    def _save(self, path: str, what: str, file: IO[bytes]) -> None:
        """GET ``path`` and write the answer's body to ``file`` piece by piece, as it arrives
        (never the whole body in memory). A body that breaks off halfway is downloaded again
        from the start, as retried calls are; ``file`` then holds only the last attempt."""

        def attempt() -> None:
            file.seek(0)
            file.truncate()
            response = self._send("GET", path, what, stream=True)
            try:
                for piece in response.iter_bytes():
                    file.write(piece)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise ProviderUnavailable(f"{what}: the download broke off ({type(exc).__name__})") from exc
            finally:
                response.close()

        self._retrying(attempt)

    def _json(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = self._retrying(lambda: self._send(method, path, what, **kwargs))
        try:
            payload = response.json()
        except ValueError as exc:
            raise ProviderUnavailable(f"{what}: the answer is not JSON") from exc
        if not isinstance(payload, dict):
            raise ProviderUnavailable(f"{what}: the answer is not a JSON object")
        return payload
