"""HTTP plumbing shared by the providers: retries with backoff, error translation, redaction.

Shared helpers (public, for every provider): :func:`parse_retry_after`, :func:`error_fields`,
:func:`error_for_response` (OpenAI-style error envelopes), and the redaction functions below.

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

Redaction: provider text may quote the request (proxies and gateways echo headers, bodies or
URLs in their errors). :func:`redact` removes every secret the client knows (the values of its
``Authorization`` / ``x-api-key`` / ``api-key`` headers, the token after ``Bearer``, the password
of its base URL) and anything that looks like one (those headers' values, ``Bearer <token>``,
``sk-...`` tokens, URL userinfo ``https://user:pass@host``). ``_send`` redacts error answers
before they become exceptions, and the text of the httpx exceptions it chains; providers pass
every other piece of provider text they keep (per-line errors of result files, ``errors.data``)
through :meth:`RetryingHTTP._redact` or :func:`redact_json`.

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

import email.utils
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from ..errors import (
    AmbiguousCreate,
    LLMBatchError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    Transient,
)
from ..results import error_kind_for_status, short
from ..spec import ErrorKind

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: Longest wait between two attempts, even when the server asks for more.
MAX_RETRY_AFTER_S = 60.0

#: What replaces a secret in provider text.
REDACTED = "[redacted]"
#: Request headers whose values are secrets (lower case).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"})
#: Known secrets shorter than this are not searched for (they would match ordinary words).
MIN_SECRET_CHARS = 8

_NOT_YET = r"(?!\[redacted\])"
_HEADER_VALUE = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]key)"  # the name
    r"((?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?)"  # the separator, quotes maybe escaped
    r"((?:bearer|basic|token)\s+)?" + _NOT_YET + r"([^\s\"'\\,;&}\]]+)"  # an auth scheme  # the value
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)" + _NOT_YET + r"[A-Za-z0-9._~+/=-]+")
_SK_TOKEN = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)" + _NOT_YET + r"[^\s/?#@\"'<>]+@")


def secrets_of(headers: Mapping[str, str], url: httpx.URL | str | None = None) -> tuple[str, ...]:
    """The secrets a client sends: values of :data:`SECRET_HEADERS`, the token after an auth
    scheme (``Bearer <token>``), and the password of ``url``.

    Examples:
        >>> secrets_of({"Authorization": "Bearer sk-live", "Accept": "json"})
        ('Bearer sk-live', 'sk-live')
    """
    found: list[str] = []
    for name, value in headers.items():
        if name.lower() in SECRET_HEADERS and value:
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token.strip() and scheme.isalpha():
                found.append(token.strip())
    password = httpx.URL(url).password if url is not None else None
    if password:
        found.append(password)
    return tuple(dict.fromkeys(found))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without secrets: each of ``secrets`` (as is and URL-encoded; those shorter than
    :data:`MIN_SECRET_CHARS` are skipped), the values of ``Authorization`` / ``x-api-key`` /
    ``api-key`` headers quoted in any common form, ``Bearer <token>``, ``sk-...`` tokens and URL
    userinfo, each replaced by :data:`REDACTED`.

    Redact before shortening a message: a cut secret is no longer recognised.

    Examples:
        >>> redact('echo: {"authorization": "Bearer abc.def", "x-api-key": "k-123"}')
        'echo: {"authorization": "Bearer [redacted]", "x-api-key": "[redacted]"}'
        >>> redact("POST https://me:pw@gw.example/v1 with key my-own-secret", ["my-own-secret"])
        'POST https://[redacted]@gw.example/v1 with key [redacted]'
        >>> redact("token sk-FAKE0123456789ab expired")
        'token [redacted] expired'
    """
    known = {
        s for secret in secrets if len(secret) >= MIN_SECRET_CHARS for s in (secret, quote(secret, safe=""))
    }
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _HEADER_VALUE.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m[1]}{REDACTED}", text)
    text = _SK_TOKEN.sub(REDACTED, text)
    return _USERINFO.sub(lambda m: f"{m[1]}{REDACTED}@", text)


def redact_json(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A JSON value with every string (keys included) passed through :func:`redact`.

    Examples:
        >>> redact_json([{"message": "bad header x-api-key: abc123", "line": 2}])
        [{'message': 'bad header x-api-key: [redacted]', 'line': 2}]
    """
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact_json(k, secrets): redact_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v, secrets) for v in value]
    return value


def redact_error(error: E, secrets: Iterable[str] = ()) -> E:
    """Redact an exception's string arguments (and ``message``) in place, and return it.

    Python renders an exception (``str``, ``repr``, tracebacks) from its ``args``; this package's
    errors keep every constructor argument there, so they still pickle.

    Examples:
        >>> from prefect_llm_batch.errors import ProviderRejected
        >>> err = redact_error(ProviderRejected("echo Bearer abc123", 400), [])
        >>> str(err), err.args
        ('echo Bearer [redacted]', ('echo Bearer [redacted]', 400, None))
    """
    secrets = tuple(secrets)
    error.args = tuple(redact(a, secrets) if isinstance(a, str) else a for a in error.args)
    if isinstance(getattr(error, "message", None), str):
        error.message = redact(error.message, secrets)  # type: ignore[attr-defined]
    return error


def redact_chain(error: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """:func:`redact_error` on ``error`` and every exception it was chained from (cause, context)."""
    secrets = tuple(secrets)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        redact_error(current, secrets)
        current = current.__cause__ or current.__context__
    return error


def redacted_response(response: httpx.Response, secrets: Iterable[str] = ()) -> httpx.Response:
    """A copy of a read error response whose body went through :func:`redact` (status, headers
    and request kept; the body decoded, so without ``content-encoding``)."""
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=redact(response.text, secrets).encode("utf-8"),
        request=response.request,
        extensions=response.extensions,
    )


def http_timeout(read: float) -> httpx.Timeout:
    """Timeouts of a provider client: room for big uploads and downloads, short connects.

    Examples:
        >>> http_timeout(120.0).read, http_timeout(120.0).write
        (120.0, 600.0)
    """
    return httpx.Timeout(connect=15.0, read=read, write=600.0, pool=30.0)


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Read ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date) in seconds.

    Examples:
        >>> parse_retry_after(httpx.Headers({"retry-after-ms": "250"}))
        0.25
        >>> parse_retry_after(httpx.Headers({"retry-after": "3"}))
        3.0
    """
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def error_fields(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """Message, code and type of an OpenAI-style error envelope (or the raw text).

    Anthropic's envelope has the same ``error.message`` / ``error.type`` fields.

    Examples:
        >>> envelope = {"error": {"message": "bad", "type": "invalid_request_error"}}
        >>> error_fields(httpx.Response(400, json=envelope))
        ('bad', None, 'invalid_request_error')
    """
    try:
        payload = response.json()
    except ValueError:
        return short(response.text or response.reason_phrase), None, None
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        etype = err.get("type")
        return (
            short(str(err.get("message") or response.reason_phrase)),
            code if isinstance(code, str) else None,
            etype if isinstance(etype, str) else None,
        )
    return short(response.text), None, None


def error_for_response(response: httpx.Response, what: str) -> LLMBatchError:
    """Translate an HTTP error response into the project's error tree (quoting the provider).

    Examples:
        >>> error = error_for_response(httpx.Response(429, headers={"retry-after": "2"}), "create batch")
        >>> type(error).__name__, error.retry_after
        ('RateLimited', 2.0)
    """
    status = response.status_code
    message, code, etype = error_fields(response)
    text = f"{what} failed with HTTP {status}: {message}"
    kind = error_kind_for_status(status, code, etype)
    if kind is ErrorKind.RATE_LIMITED:
        return RateLimited(text, retry_after=parse_retry_after(response.headers))
    if kind is ErrorKind.SERVER_ERROR:
        return ProviderUnavailable(text, status_code=status, retry_after=parse_retry_after(response.headers))
    return ProviderRejected(text, status_code=status, code=code)


def url_origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    """The origin of a URL: scheme, host (lower case) and port (the scheme's default when absent).

    Examples:
        >>> url_origin("HTTPS://API.example.com/v1/files")
        ('https', 'api.example.com', 443)
    """
    parts = urlsplit(str(url))
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default


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
    _origin: tuple[str, str, int | None]
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
        home_only_header: str | None = None,
    ) -> None:
        """Set the retry attributes and build the provider's (new, unshared) httpx client.

        ``home_only_header`` names the header holding the key when it is not ``Authorization``
        (which httpx already drops on cross-origin redirects): it is taken off every request that
        leaves the base URL's origin (an absolute upload URL, a redirect).
        """
        self._origin = url_origin(base_url)
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
            event_hooks={"request": [self._home_only(home_only_header)]} if home_only_header else None,
        )

    def _home_only(self, header: str) -> Callable[[httpx.Request], None]:
        def keep_at_home(request: httpx.Request) -> None:
            if url_origin(request.url) != self._origin:
                request.headers.pop(header, None)

        return keep_at_home

    def _error_for_response(self, response: httpx.Response, what: str) -> LLMBatchError:
        """Translate an HTTP error response (status >= 400) of this provider's wire format."""
        raise NotImplementedError

    def _secrets(self) -> tuple[str, ...]:
        """The secrets this client sends (read from its headers and base URL at each call)."""
        return secrets_of(self._client.headers, self._client.base_url)

    def _redact(self, text: str) -> str:
        """:func:`redact` with this client's secrets: apply to provider text before keeping it."""
        return redact(text, self._secrets())

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
            ) from redact_chain(exc, self._secrets())
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            message = f"{what}: no answer from {self._key_base_url} ({type(exc).__name__})"
            if not idempotent:
                raise AmbiguousCreate(message) from redact_chain(exc, self._secrets())
            raise ProviderUnavailable(message) from redact_chain(exc, self._secrets())
        if response.status_code >= 400:
            secrets = self._secrets()
            error = redact_error(
                self._error_for_response(redacted_response(response, secrets), what), secrets
            )
            if not idempotent and isinstance(error, ProviderUnavailable):
                raise AmbiguousCreate(str(error)) from None
            raise error
        return response

    def _save(self, path: str, what: str, file: IO[bytes]) -> None:
        """GET ``path`` and write the answer's body to ``file`` piece by piece, as it arrives
        (never the whole body in memory). A body that breaks off halfway is downloaded again
        from the start, as retried calls are; ``file`` then holds only the last attempt.

        Any httpx error while the body streams (a timeout, a dropped connection, a protocol or
        proxy error, a body that does not decode) is :class:`ProviderUnavailable`, chained
        through :func:`redact_chain` as :meth:`_send` does."""

        def attempt() -> None:
            file.seek(0)
            file.truncate()
            response = self._send("GET", path, what, stream=True)
            try:
                for piece in response.iter_bytes():
                    file.write(piece)
            except httpx.HTTPError as exc:
                raise ProviderUnavailable(
                    f"{what}: the download broke off ({type(exc).__name__})"
                ) from redact_chain(exc, self._secrets())
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
