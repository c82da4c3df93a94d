"""A fake batch provider speaking the OpenAI and Anthropic wire formats, served over real HTTP.

:class:`FakeProviderServer` runs a Starlette app under uvicorn on ``127.0.0.1`` in a background
thread. It speaks the OpenAI Files and Batch API wire format literally (see
``provider-batch-apis.md``), moves batches through their states as time passes, validates input
files the way OpenAI does, and writes output and error files with the documented line shapes.
On the same port it speaks the Anthropic Message Batches API. Answers are deterministic
(:mod:`prefect_llm_batch.testing.answers`).

This module assembles the app (:func:`create_app`: per route, the call count, the
``batch_api=False`` 404, the key check, a pending fault, the create echo, the realtime limit, then
the handler) and serves it. The parts, one concern each:

=====================  ===========================================================================
module                 holds
=====================  ===========================================================================
``config``             :class:`FakeServerConfig`, :class:`ServerStats`, :data:`ROUTES`, constants
``state``              the batch state machine: files, batches, message batches, clocks, stalls,
                       validation, result files
``completions``        one request answered (chat, embeddings, messages) and the ``[[fake:...]]``
                       markers
``openai_routes``      ``/v1/files`` and ``/v1/batches``, Bearer auth
``anthropic_routes``   ``/v1/messages/batches``, ``x-api-key`` auth
``realtime``           realtime routes, their shared rate limit and headers
``faults``             :meth:`FakeProviderServer.fail_next` and spoilt result lines
``wire``               JSON answers, error envelopes of both providers, ids, times
=====================  ===========================================================================

Examples:
    >>> import json, urllib.request
    >>> with FakeProviderServer() as server:
    ...     req = urllib.request.Request(server.base_url + "/batches", headers={"Authorization": "Bearer x"})
    ...     json.load(urllib.request.urlopen(req))["object"]
    'list'
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from prefect_llm_batch.testing.anthropic_routes import anthropic_batch_handlers, check_anthropic_auth
from prefect_llm_batch.testing.completions import (
    complete_chat as complete_chat,
)
from prefect_llm_batch.testing.completions import (
    complete_embeddings as complete_embeddings,
)
from prefect_llm_batch.testing.completions import (
    complete_message as complete_message,
)
from prefect_llm_batch.testing.config import (
    ANTHROPIC_CUSTOM_ID as ANTHROPIC_CUSTOM_ID,
)
from prefect_llm_batch.testing.config import (
    ANTHROPIC_ROUTES as ANTHROPIC_ROUTES,
)
from prefect_llm_batch.testing.config import (
    BATCH_API_ROUTES as BATCH_API_ROUTES,
)
from prefect_llm_batch.testing.config import (
    CREATE_ROUTES as CREATE_ROUTES,
)
from prefect_llm_batch.testing.config import (
    EMBEDDINGS_ENDPOINT as EMBEDDINGS_ENDPOINT,
)
from prefect_llm_batch.testing.config import (
    GEMINI_ROUTES as GEMINI_ROUTES,
)
from prefect_llm_batch.testing.config import (
    MAX_EMBEDDING_INPUTS as MAX_EMBEDDING_INPUTS,
)
from prefect_llm_batch.testing.config import (
    OPENAI_BATCH_ENDPOINTS as OPENAI_BATCH_ENDPOINTS,
)
from prefect_llm_batch.testing.config import (
    REALTIME_ROUTES as REALTIME_ROUTES,
)
from prefect_llm_batch.testing.config import (
    REFUSAL_TEXT as REFUSAL_TEXT,
)
from prefect_llm_batch.testing.config import (
    ROUTES as ROUTES,
)
from prefect_llm_batch.testing.config import (
    SUPPORTED_ENDPOINTS as SUPPORTED_ENDPOINTS,
)
from prefect_llm_batch.testing.config import (
    TERMINAL_STATUSES as TERMINAL_STATUSES,
)
from prefect_llm_batch.testing.config import (
    AnswerFunction as AnswerFunction,
)
from prefect_llm_batch.testing.config import (
    BatchStatus as BatchStatus,
)
from prefect_llm_batch.testing.config import (
    FakeServerConfig as FakeServerConfig,
)
from prefect_llm_batch.testing.config import (
    LineFault as LineFault,
)
from prefect_llm_batch.testing.config import (
    MessageBatchStatus as MessageBatchStatus,
)
from prefect_llm_batch.testing.config import (
    ServerStats as ServerStats,
)
from prefect_llm_batch.testing.config import (
    StallStatus as StallStatus,
)
from prefect_llm_batch.testing.faults import _Fault, _LineFault, take_fault
from prefect_llm_batch.testing.gemini_routes import (
    check_gemini_auth,
    gemini_batch_handlers,
    gemini_error_response,
)
from prefect_llm_batch.testing.openai_routes import check_auth, openai_batch_handlers
from prefect_llm_batch.testing.realtime import (
    openai_duration as openai_duration,
)
from prefect_llm_batch.testing.realtime import (
    rate_limited,
    realtime_handlers,
)
from prefect_llm_batch.testing.realtime import (
    realtime_tokens as realtime_tokens,
)
from prefect_llm_batch.testing.state import (
    FakeBatch as FakeBatch,
)
from prefect_llm_batch.testing.state import (
    FakeFile as FakeFile,
)
from prefect_llm_batch.testing.state import (
    FakeMessageBatch as FakeMessageBatch,
)
from prefect_llm_batch.testing.state import (
    _State,
)
from prefect_llm_batch.testing.wire import (
    ANTHROPIC_ERROR_TYPES as ANTHROPIC_ERROR_TYPES,
)
from prefect_llm_batch.testing.wire import (
    Handler as Handler,
)
from prefect_llm_batch.testing.wire import (
    _ApiError,
    _error_type,
)

__all__ = [
    "FakeBatch",
    "FakeFile",
    "FakeMessageBatch",
    "FakeProviderServer",
    "FakeServerConfig",
    "LineFault",
    "ServerStats",
    "StallStatus",
    "create_app",
    "serve",
]


def create_app(state: _State) -> Starlette:
    """Build the ASGI app serving one fake provider's state.

    Most users want :class:`FakeProviderServer` instead; use this to serve the fake through
    another ASGI server or ``httpx.ASGITransport``.
    """

    found = {
        **openai_batch_handlers(state),
        **realtime_handlers(state),
        **anthropic_batch_handlers(state),
        **gemini_batch_handlers(state),
    }
    assert set(found) == set(ROUTES)
    handlers: dict[str, Handler] = {key: found[key] for key in ROUTES}

    def make_route(key: str, handler: Handler) -> Route:
        method, path = key.split(" ", 1)

        anthropic = key in ANTHROPIC_ROUTES
        gemini = key in GEMINI_ROUTES
        realtime = key in REALTIME_ROUTES
        batch_api = key in BATCH_API_ROUTES

        async def endpoint(request: Request) -> Response:
            with state.lock:
                state.stats.calls[key] += 1
            config = state.config
            if batch_api and not config.batch_api:  # a server without a batch API
                return _ApiError(404, f"Invalid URL ({request.method} {request.url.path})").response()
            try:
                if anthropic:
                    check_anthropic_auth(state, request)
                elif gemini:
                    check_gemini_auth(state, request)
                else:
                    check_auth(state, request)
                take_fault(state, key)
                if config.echo_request_on_create and method == "POST" and path in CREATE_ROUTES:
                    headers = orjson.dumps(dict(request.headers)).decode()
                    raise _ApiError(
                        400, f"The gateway refused {request.method} {request.url}; headers: {headers}"
                    )
                if realtime and (config.realtime_rpm or config.realtime_tpm):
                    return await rate_limited(state, request, handler, anthropic)
                if realtime and config.realtime_latency_s:
                    await asyncio.sleep(config.realtime_latency_s)
                return await handler(request)
            except _ApiError as exc:
                if gemini:
                    return gemini_error_response(exc)
                return exc.anthropic_response() if anthropic else exc.response()

        return Route(path, endpoint, methods=[method])

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = exc.detail if isinstance(exc, HTTPException) else "Internal error."
        error = _ApiError(status, message, type=_error_type(status))
        if request.url.path.startswith(("/v1beta/", "/upload/v1beta/")):
            return gemini_error_response(error)
        return error.anthropic_response() if request.url.path.startswith("/v1/messages") else error.response()

    return Starlette(
        routes=[make_route(key, handler) for key, handler in handlers.items()],
        exception_handlers={HTTPException: http_error},
    )


class FakeProviderServer:
    """A fake OpenAI and Anthropic batch provider on ``127.0.0.1``, served by uvicorn in a background thread.

    Args:
        config: Behaviour of the fake; defaults to :class:`FakeServerConfig()` (instant batches).
        port: Port to listen on; ``0`` (the default) picks a free one. A stopped server started
            again listens on the same port and keeps its files and batches.
        host: Interface to listen on.

    Attributes:
        config: The configuration.
        stats: Counters of what the fake was asked (:class:`ServerStats`).

    Examples:
        >>> import json, urllib.request
        >>> with FakeProviderServer(FakeServerConfig(api_key="sk-test")) as server:
        ...     req = urllib.request.Request(server.base_url + "/files",
        ...                                  headers={"Authorization": "Bearer sk-test"})
        ...     listing = json.load(urllib.request.urlopen(req))
        ...     calls = server.stats.calls["GET /v1/files"]
        >>> listing["data"], calls, server.base_url.startswith("http://127.0.0.1:")
        ([], 1, True)
    """

    def __init__(
        self, config: FakeServerConfig | None = None, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        self.config = config or FakeServerConfig()
        self.host = host
        self._port = port
        self._state = _State(self.config)
        self.app = create_app(self._state)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # ----- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (known once started)."""
        if not self._port:
            raise RuntimeError("the fake provider has not been started: no port yet")
        return self._port

    @property
    def base_url(self) -> str:
        """API base URL including ``/v1``, as ``OPENAI_BASE_URL`` expects."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """API base URL **without** ``/v1``, as ``ANTHROPIC_BASE_URL`` expects."""
        return f"http://{self.host}:{self.port}"

    @property
    def gemini_base_url(self) -> str:
        """API base URL **without** a version, as ``GOOGLE_GEMINI_BASE_URL`` expects."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> FakeProviderServer:
        """Start serving in a background thread; returns once connections are accepted.

        Raises:
            RuntimeError: If the server is already running or does not come up within ``timeout``.
        """
        if self.running:
            raise RuntimeError("the fake provider is already running")
        self._state.stopping.clear()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it each small answer waits ~40 ms (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-provider-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the fake provider did not start on {self.host}:{self._port}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (idempotent). Stalled creates are cut short; state is kept."""
        self._state.stopping.set()
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----- inspection and control ----------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """Counters of what the fake was asked (live object)."""
        return self._state.stats

    @property
    def batches(self) -> dict[str, FakeBatch]:
        """A snapshot of the batches by id, oldest first, each advanced to the present."""
        with self._state.lock:
            for batch in self._state.batches.values():
                self._state.advance(batch)
            return dict(self._state.batches)

    @property
    def message_batches(self) -> dict[str, FakeMessageBatch]:
        """A snapshot of the Anthropic message batches by id, oldest first, each advanced to the present."""
        with self._state.lock:
            for batch in self._state.message_batches.values():
                self._state.advance_message_batch(batch)
            return dict(self._state.message_batches)

    @property
    def gemini_batches(self) -> dict[str, Any]:
        """A snapshot of the Gemini batches by name, oldest first (their ``requests`` as received)."""
        with self._state.lock:
            return dict(self._state.gemini_batches)

    def message_batch(self, batch_id: str) -> dict[str, Any]:
        """Return the wire object of one Anthropic message batch, advanced to the present.

        Raises:
            KeyError: If there is no such batch.
        """
        with self._state.lock:
            batch = self._state.message_batches[batch_id]
            self._state.advance_message_batch(batch)
            return batch.to_dict(self.anthropic_base_url)

    def cancel_message_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel an Anthropic message batch from the provider's side (as in the provider's console).

        Returns:
            The batch object, now ``canceling``.

        Raises:
            KeyError: If there is no such batch.
            ValueError: If the batch already ended (cancelling one being canceled is a no-op).
        """
        with self._state.lock:
            batch = self._state.message_batches[batch_id]
            try:
                self._state.cancel_message_batch(batch)
            except _ApiError as exc:
                raise ValueError(exc.message) from None
            return batch.to_dict(self.anthropic_base_url)

    @property
    def files(self) -> dict[str, FakeFile]:
        """A snapshot of the stored files by id (inputs and results)."""
        with self._state.lock:
            return dict(self._state.files)

    def batch(self, batch_id: str) -> dict[str, Any]:
        """Return the wire object of one batch, advanced to the present.

        Raises:
            KeyError: If there is no such batch.
        """
        with self._state.lock:
            batch = self._state.batches[batch_id]
            self._state.advance(batch)
            return batch.to_dict()

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch from the provider's side (as someone in the provider's console would).

        Returns:
            The batch object, now ``cancelling``.

        Raises:
            KeyError: If there is no such batch.
            ValueError: If the batch already ended (cancelling one being cancelled is a no-op).
        """
        with self._state.lock:
            batch = self._state.batches[batch_id]
            try:
                self._state.cancel(batch)
            except _ApiError as exc:
                raise ValueError(exc.message) from None
            return batch.to_dict()

    def fail_next(
        self,
        method: str,
        route: str,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        *,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next ``times`` calls to a route fail without doing any work.

        Args:
            method: HTTP method, e.g. ``"POST"``.
            route: Route template as listed in :data:`ROUTES`, e.g. ``"/v1/batches/{id}"``.
            status: HTTP status to answer, with an OpenAI error envelope (Anthropic routes: an
                Anthropic one, ``error.type`` from the status, e.g. 429 ``rate_limit_error``,
                529 ``overloaded_error``, 413 ``request_too_large``).
            times: How many calls fail.
            retry_after: If given, sent as ``retry-after`` (seconds) and, except on Anthropic
                routes, ``retry-after-ms``.
            code: ``error.code`` (429 defaults to ``rate_limit_exceeded``; ``insufficient_quota``
                also sets ``error.type`` to ``insufficient_quota``). On Anthropic routes, which
                have no codes: ``error.type``.
            message: ``error.message`` (a default per status otherwise).

        Raises:
            ValueError: For an unknown route or a bad status or count.

        Examples:
            >>> server = FakeProviderServer()
            >>> server.fail_next("POST", "/v1/batches", status=429, retry_after=0.05)
            >>> server.fail_next("GET", "/v1/batch/{id}")
            Traceback (most recent call last):
            ...
            ValueError: unknown route 'GET /v1/batch/{id}'; known: ...
        """
        key = f"{method.upper()} {route}"
        if key not in ROUTES:
            raise ValueError(f"unknown route {key!r}; known: {', '.join(ROUTES)}")
        if not 400 <= status <= 599 or times < 1:
            raise ValueError("status must be 4xx/5xx and times at least 1")
        with self._state.lock:
            self._state.faults.setdefault(key, []).append(_Fault(status, times, retry_after, code, message))

    def stall_next_create(self, seconds: float = 3.0, route: str = "/v1/batches") -> None:
        """Make the next create create its batch, then wait ``seconds`` before answering.

        A client whose read timeout is shorter sees a timeout although the batch exists (and
        counts in :attr:`ServerStats.creates`): the ambiguous create a client must resolve by listing.

        Args:
            seconds: How long the answer waits.
            route: The create route: ``"/v1/batches"`` (OpenAI, the default) or
                ``"/v1/messages/batches"`` (Anthropic).

        Raises:
            ValueError: For another route.

        Examples:
            >>> FakeProviderServer().stall_next_create(1.0, route="/v1/messages/batches")
        """
        if route not in CREATE_ROUTES:
            raise ValueError(f"unknown create route {route!r}; known: {', '.join(CREATE_ROUTES)}")
        with self._state.lock:
            self._state.stalls.setdefault(route, []).append(seconds)

    def stall_batches(self, status: StallStatus = "in_progress") -> None:
        """Stall batches in ``status`` until :meth:`unstall_batches` (or a cancel).

        Batches already in ``status`` freeze as they are (their request counts too); batches
        before it stop when they reach it; batches past it are not affected. Anthropic message
        batches stall only for ``"in_progress"``. Replaces any earlier stall (releasing it first).
        :attr:`FakeServerConfig.stall_in` sets the same from the start.

        Args:
            status: ``"validating"``, ``"in_progress"`` (the default) or ``"finalizing"``.

        Raises:
            ValueError: For another status.

        Examples:
            >>> server = FakeProviderServer()
            >>> server.stall_batches("finalizing")
            >>> server.stalled_in
            'finalizing'
            >>> server.unstall_batches()
            >>> server.stalled_in is None
            True
        """
        self._state.stall(status)

    def unstall_batches(self) -> None:
        """Release stalled batches; each carries on from where it stopped, as if no time had passed.

        A batch stalled in ``in_progress`` then still needs its remaining share of
        ``in_progress_seconds``, then ``finalizing_seconds``. Does nothing when nothing is stalled.
        """
        self._state.unstall()

    @property
    def stalled_in(self) -> StallStatus | None:
        """The status batches are stalled in now, or ``None``."""
        return self._state.stall_in

    def creates_for(self, job_id: str) -> int:
        """Count the OpenAI batches created with ``metadata["job_id"] == job_id`` (since the last reset).

        Examples:
            >>> FakeProviderServer().creates_for("job-1")
            0
        """
        with self._state.lock:
            return self._state.stats.creates_by_job[job_id]

    def spoil_next_result_line(self, kind: LineFault = "garble", line: int = 0) -> None:
        """Spoil one line of the next result file the server writes; the fault is then spent.

        The file is the next OpenAI output file (not an error file) or the results of the next
        Anthropic message batch to end. Calls queue up: each spoils one file.

        Args:
            kind: ``"garble"``: the line's middle third replaced by ``\\x00#garbled#\\x00`` (not JSON);
                ``"cut"``: the line cut halfway; ``"conflict"``: a second line for the same
                ``custom_id`` follows, its answer text changed (the first succeeded line from
                ``line`` on); ``"duplicate"``: an identical copy follows.
            line: The line (0 for the first, in file order; past the end: the last).

        Raises:
            ValueError: For another kind or a negative line.

        Examples:
            >>> FakeProviderServer().spoil_next_result_line("cut", line=3)
        """
        if kind not in ("garble", "cut", "conflict", "duplicate") or line < 0:
            raise ValueError(f"cannot spoil line {line} with {kind!r}")
        with self._state.lock:
            self._state.line_faults.append(_LineFault(kind, line))

    def reset(self) -> None:
        """Forget all files, batches (message batches too), pending faults and stalls; zero the stats.

        The batch stall goes back to :attr:`FakeServerConfig.stall_in`.
        """
        self._state.reset()


def serve(
    port: int = 8000,
    config: FakeServerConfig | None = None,
    *,
    host: str = "127.0.0.1",
    log_level: str = "info",
) -> None:
    """Serve a fake provider in the foreground until interrupted (Ctrl-C).

    Args:
        port: Port to listen on.
        config: Behaviour of the fake.
        host: Interface to listen on.
        log_level: uvicorn log level (``"info"`` shows each request).
    """
    state = _State(config or FakeServerConfig())
    uvicorn_config = uvicorn.Config(
        create_app(state), host=host, port=port, log_level=log_level, lifespan="off", ws="none"
    )
    try:
        uvicorn.Server(uvicorn_config).run()
    finally:
        state.stopping.set()
