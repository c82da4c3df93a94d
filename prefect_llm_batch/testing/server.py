"""A fake batch provider speaking the OpenAI and Anthropic wire formats, served over real HTTP.

:class:`FakeProviderServer` runs a Starlette app under uvicorn on ``127.0.0.1`` in a background
thread. It speaks the OpenAI Files and Batch API wire format literally (see
``provider-batch-apis.md``), moves batches through their states as time passes, validates input
files the way OpenAI does, and writes output and error files with the documented line shapes.
On the same port it speaks the Anthropic Message Batches API (see *Anthropic* below).
Answers are deterministic (:mod:`prefect_llm_batch.testing.answers`).

Batches run ``/v1/chat/completions`` or ``/v1/embeddings`` requests (one endpoint per batch; a
line whose ``url`` differs from the batch ``endpoint`` fails validation with ``url_mismatch``).
Both are also served realtime: ``POST /v1/chat/completions`` and ``POST /v1/embeddings``.

Statuses advance lazily, on each request that reads a batch (no background work):
``validating`` for ``validating_seconds``, then ``in_progress`` for ``in_progress_seconds``
(requests finish in input order, evenly over that time), then ``finalizing`` for
``finalizing_seconds`` (counts show 100%), then ``completed``. With
``expire_after_requests=N`` (fewer than the batch's requests) the batch ends ``expired`` after
``in_progress``, with the first N requests answered. A cancel answers ``cancelling`` and the
batch is ``cancelled`` ``cancelling_seconds`` later (0: on the next read).
``request_counts.completed``/``failed`` count finished requests only: on ``expired`` and
``cancelled`` batches they add up to less than ``total``.

Stalls: with ``FakeServerConfig(stall_in=...)`` or :meth:`FakeProviderServer.stall_batches`,
batches that reach ``validating``, ``in_progress`` or ``finalizing`` stay there (``in_progress``
with the counts they had when the stall caught them: none finished if they entered it stalled)
until cancelled, which works as usual, or until :meth:`FakeProviderServer.unstall_batches`, after
which they carry on as if the stalled time had not passed.

Spoilt result lines: :meth:`FakeProviderServer.spoil_next_result_line` makes the next result
file written (an OpenAI output file, or an Anthropic batch's results) carry one bad line, once:
``garble`` (not JSON any more), ``cut`` (cut halfway, as a broken download leaves it),
``conflict`` (followed by a second line for the same ``custom_id`` with a different answer) or
``duplicate`` (followed by an identical copy).

Realtime rate limits: with :attr:`FakeServerConfig.realtime_rpm` / ``realtime_tpm`` the realtime
routes (``POST /v1/chat/completions``, ``/v1/embeddings``, ``/v1/messages``) share a sliding-window
budget (``realtime_window_s``, 60 s by default): over it, 429 with ``retry-after`` (and, on
OpenAI routes, ``retry-after-ms``), counted in :attr:`ServerStats.realtime_429`; every realtime
answer carries ``x-ratelimit-*`` headers (and ``anthropic-ratelimit-*`` on ``/v1/messages``).
``realtime_latency_s`` delays accepted realtime answers. ``batch_api=False`` makes every
``/v1/files`` and ``/v1/batches`` route answer 404, like a server without a batch API.

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

Batch validation failures (``status: failed``, ``errors.data[].code``): ``empty_file``,
``invalid_json_line`` (also for lines missing ``custom_id``/``method``/``url``/``body``),
``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``, ``invalid_request`` (a body with
``stream: true``) and, with ``enqueued_token_limit`` set, ``token_limit_exceeded``.

Anthropic
---------
Base URL :attr:`FakeProviderServer.anthropic_base_url` (no ``/v1``, as ``ANTHROPIC_BASE_URL``).
Routes: ``POST /v1/messages/batches``, ``GET /v1/messages/batches`` (``limit`` 1..1000,
``after_id`` / ``before_id``, newest first), ``GET /v1/messages/batches/{id}``,
``POST /v1/messages/batches/{id}/cancel``, ``DELETE /v1/messages/batches/{id}`` (once ended,
else 400), ``GET /v1/messages/batches/{id}/results`` (JSONL, shuffled like OpenAI's files; 400
before the batch ends) and realtime ``POST /v1/messages``. They need ``x-api-key`` (checked
against ``api_key`` like the Bearer token; 401 ``authentication_error`` otherwise) and an
``anthropic-version`` header (400 without), and answer errors with Anthropic's envelope
``{"type": "error", "error": {"type", "message"}, "request_id"}``.

A create checks ``custom_id`` (``^[a-zA-Z0-9_-]{1,64}$``, unique: 400 ``invalid_request_error``)
and size (over ``anthropic_max_requests`` requests or ``anthropic_max_bytes`` bytes: 413
``request_too_large``), but not ``params``: a request without ``model``, ``messages`` or a
``max_tokens`` >= 1, or with ``stream``, comes back as an ``errored`` result with
``invalid_request_error``. Batches are ``in_progress`` for ``validating_seconds +
in_progress_seconds + finalizing_seconds`` (Anthropic has no validating nor finalizing; requests
finish evenly over ``in_progress_seconds``), then ``ended``. ``request_counts`` show every request
as ``processing`` until then. ``expire_after_requests`` answers the first N and gives the rest
``expired`` results; a cancel answers ``canceling`` (``cancel_initiated_at`` set), and the batch
ends ``cancelling_seconds`` later (0: on the next read) with unfinished requests ``canceled``.

Markers in a batch: ``[[fake:400]]`` -> ``errored`` ``invalid_request_error``; ``[[fake:500]]``
-> ``errored`` ``api_error``; ``[[fake:refusal]]`` (and ``[[fake:content_filter]]``, Anthropic's
nearest equivalent) -> ``stop_reason`` ``refusal`` with empty content; ``[[fake:length]]`` ->
``stop_reason`` ``max_tokens``, text cut short; ``[[fake:drop]]`` -> no line (counted as
succeeded); ``[[fake:timeout]]`` -> an ``expired`` result. Realtime ``POST /v1/messages`` answers
400 / 500 / 500 / 504 ``timeout_error`` for ``400`` / ``500`` / ``drop`` / ``timeout``. When
``tool_choice`` forces a tool (``{"type": "tool", "name": N}``, ``N`` among ``tools``), the
answer is one ``tool_use`` block whose ``input`` fits the tool's ``input_schema`` (a custom
``answer`` function must then return a JSON object as text). ``[[fake:invalid_json]]`` has no
effect on Anthropic routes. Of the stalls, only ``in_progress`` applies to message batches.

Examples:
    >>> import json, urllib.request
    >>> with FakeProviderServer() as server:
    ...     req = urllib.request.Request(server.base_url + "/batches", headers={"Authorization": "Bearer x"})
    ...     json.load(urllib.request.urlopen(req))["object"]
    'list'
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Literal

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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

#: Endpoints a batch may target in this fake.
SUPPORTED_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/embeddings"})
#: The embeddings endpoint (batch ``endpoint`` and line ``url``).
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
#: Most texts in one embeddings ``input`` list (OpenAI: 2048).
MAX_EMBEDDING_INPUTS = 2048
#: Endpoints OpenAI accepts for batches; the others are refused with a clear message.
OPENAI_BATCH_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions", "/v1/moderations"}
)
#: Route templates, as used in :attr:`ServerStats.calls` and :meth:`FakeProviderServer.fail_next`.
ROUTES: tuple[str, ...] = (
    "POST /v1/files",
    "GET /v1/files",
    "GET /v1/files/{id}",
    "GET /v1/files/{id}/content",
    "DELETE /v1/files/{id}",
    "POST /v1/batches",
    "GET /v1/batches",
    "GET /v1/batches/{id}",
    "POST /v1/batches/{id}/cancel",
    "POST /v1/chat/completions",
    "POST /v1/embeddings",
    "POST /v1/messages/batches",
    "GET /v1/messages/batches",
    "GET /v1/messages/batches/{id}",
    "POST /v1/messages/batches/{id}/cancel",
    "DELETE /v1/messages/batches/{id}",
    "GET /v1/messages/batches/{id}/results",
    "POST /v1/messages",
)
#: Realtime routes: rate limited by :attr:`FakeServerConfig.realtime_rpm` / ``realtime_tpm``.
REALTIME_ROUTES: frozenset[str] = frozenset(
    {"POST /v1/chat/completions", "POST /v1/embeddings", "POST /v1/messages"}
)
#: Routes that do not exist on a server without a batch API (:attr:`FakeServerConfig.batch_api`).
BATCH_API_ROUTES: frozenset[str] = frozenset(
    r for r in ROUTES if r.split(" ", 1)[1].startswith(("/v1/files", "/v1/batches"))
)
#: Routes that speak the Anthropic wire format (``x-api-key`` auth, Anthropic error envelope).
ANTHROPIC_ROUTES: frozenset[str] = frozenset(r for r in ROUTES if " /v1/messages" in r)
#: Create routes whose answer :meth:`FakeProviderServer.stall_next_create` can delay.
CREATE_ROUTES: tuple[str, ...] = ("/v1/batches", "/v1/messages/batches")
#: The ``custom_id`` pattern of Anthropic message batches.
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
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

REFUSAL_TEXT = "I can't help with that."
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
_FILE_TTL_SECONDS = 30 * 24 * 3600
_BATCH_WINDOW_SECONDS = 24 * 3600
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

_LINE_CODES = frozenset({"invalid_json_line", "duplicate_custom_id", "url_mismatch", "model_mismatch"})
_FORCED_VALIDATION_MESSAGES = {
    "invalid_json_line": "This line is not parseable as valid JSON.",
    "duplicate_custom_id": "The custom_id for this request is a duplicate of another request.",
    "url_mismatch": "The url provided for this request does not match the batch endpoint {endpoint}.",
    "model_mismatch": "The provided model does not match the model of other requests in the batch ({model}).",
    "empty_file": "The input file is empty. Please provide at least one request.",
    "token_limit_exceeded": "Enqueued token limit reached for {model} in organization org-fake. "
    "Please try submitting an earlier batch once it has completed.",
}

AnswerFunction = Callable[[dict[str, Any]], str]
MessageBatchStatus = Literal["in_progress", "canceling", "ended"]
BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
#: A status batches can be stalled in (:attr:`FakeServerConfig.stall_in`).
StallStatus = Literal["validating", "in_progress", "finalizing"]
LineFault = Literal["garble", "cut", "conflict", "duplicate"]
_STALL_ORDER: dict[str, int] = {"validating": 0, "in_progress": 1, "finalizing": 2}


@dataclass(frozen=True)
class FakeServerConfig:
    """How the fake provider behaves.

    The timing fields apply to Anthropic message batches too, which stay ``in_progress`` through
    the validating, in-progress and finalizing times before they end.

    Attributes:
        validating_seconds: Time a new batch spends in ``validating``.
        in_progress_seconds: Time it spends in ``in_progress``; requests finish evenly over it.
        finalizing_seconds: Time it spends in ``finalizing`` before ``completed``.
        cancelling_seconds: Time a cancelled batch spends in ``cancelling`` (0: until the next read).
        shuffle: Shuffle the lines of output and error files (as OpenAI does not keep order).
        seed: Seed of the shuffle; the same seed and input give the same order.
        api_key: If set, only ``Authorization: Bearer <api_key>`` (Anthropic routes:
            ``x-api-key: <api_key>``) is accepted; if ``None``, any key is. A missing key is always 401.
        expire_after_requests: If set, a batch with more requests than this ends ``expired``
            once this many have finished; the rest get ``batch_expired`` error lines.
        answer: Replaces :func:`~prefect_llm_batch.testing.answers.default_answer`: a callable
            from the request body to the answer text. If it raises, the request fails with 500.
        enqueued_token_limit: If set, a batch whose prompt tokens, added to those of batches
            still running for the same model, exceed it ends ``failed`` with
            ``token_limit_exceeded``.
        max_file_bytes: Largest upload accepted (OpenAI: 200 MB); larger is 400 ``File is too large.``
        validation_error: If set, every batch with a well-formed input ends ``failed`` with this
            ``errors.data[0].code`` (e.g. ``"model_mismatch"``, ``"token_limit_exceeded"``).
        anthropic_max_requests: Most requests in one Anthropic message batch (Anthropic: 100,000);
            more is 413 ``request_too_large``.
        anthropic_max_bytes: Largest Anthropic create body (Anthropic: 256 MB); larger is 413.
        stall_in: If set, every batch that reaches this status stays in it until cancelled (or
            until :meth:`FakeProviderServer.unstall_batches`). Anthropic message batches only
            stall for ``"in_progress"``.
        realtime_rpm: If set, the realtime routes (``POST /v1/chat/completions``,
            ``/v1/embeddings``, ``/v1/messages``, one shared budget) accept at most
            ``realtime_rpm * realtime_window_s / 60`` requests in any sliding window of
            ``realtime_window_s`` seconds; more is 429 (OpenAI ``rate_limit_exceeded`` or
            Anthropic ``rate_limit_error``) with ``retry-after`` (seconds, fractional) and, on
            OpenAI routes, ``retry-after-ms``. Rejected requests do not count.
        realtime_tpm: The same for tokens, estimated per request as ``len(raw body) // 4 +
            max_tokens`` (or ``max_completion_tokens``), the estimate a client can make too.
        realtime_window_s: Length of the sliding window (OpenAI: a minute; tests use less).
        realtime_latency_s: Accepted realtime requests wait this long before they are answered
            (429s answer at once).
        batch_api: If ``False``, every ``/v1/files`` and ``/v1/batches`` route answers 404, as
            servers without a batch API do (vLLM, llama.cpp, Ollama).
        echo_request_on_create: If ``True``, every create (``POST /v1/batches``,
            ``POST /v1/messages/batches``) that passes the key check answers 400 with an error
            message quoting the request's method, URL and headers (the key included), as some
            proxies and gateways do.

    With a realtime limit set, every realtime answer carries ``x-ratelimit-limit-requests``
    (per minute), ``x-ratelimit-remaining-requests`` (left in the current window) and
    ``x-ratelimit-reset-requests`` (until the oldest counted request leaves the window, in
    OpenAI's duration format such as ``2s81ms``), the ``-tokens`` variants for a token limit,
    and on ``/v1/messages`` Anthropic's ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``
    (``reset`` in RFC 3339).

    Raises:
        ValueError: For a ``stall_in`` other than the three statuses.

    Examples:
        >>> FakeServerConfig(in_progress_seconds=0.5).shuffle
        True
        >>> FakeServerConfig(stall_in="finalizing").stall_in
        'finalizing'
    """

    validating_seconds: float = 0.0
    in_progress_seconds: float = 0.0
    finalizing_seconds: float = 0.0
    cancelling_seconds: float = 0.0
    shuffle: bool = True
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)
    expire_after_requests: int | None = None
    answer: AnswerFunction | None = None
    enqueued_token_limit: int | None = None
    max_file_bytes: int = 200 * 1024 * 1024
    validation_error: str | None = None
    anthropic_max_requests: int = 100_000
    anthropic_max_bytes: int = 256 * 1024 * 1024
    stall_in: StallStatus | None = None
    realtime_rpm: float | None = None
    realtime_tpm: float | None = None
    realtime_window_s: float = 60.0
    realtime_latency_s: float = 0.0
    batch_api: bool = True
    echo_request_on_create: bool = False

    def __post_init__(self) -> None:
        if self.stall_in is not None and self.stall_in not in _STALL_ORDER:
            raise ValueError(
                f"stall_in must be one of {', '.join(_STALL_ORDER)} or None, not {self.stall_in!r}"
            )
        for name in ("realtime_rpm", "realtime_tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, not {value!r}")
        if self.realtime_window_s <= 0 or self.realtime_latency_s < 0:
            raise ValueError("realtime_window_s must be positive and realtime_latency_s not negative")


@dataclass
class ServerStats:
    """What the fake provider has been asked so far.

    Attributes:
        creates: Successful ``POST /v1/batches`` and ``POST /v1/messages/batches`` calls (each
            made a batch).
        uploads: Files uploaded.
        requests_received: Requests in created batches (lines of input files, or inline requests).
        calls: Calls per route template, e.g. ``calls["GET /v1/batches/{id}"]``; includes calls
            answered with an error.
        creates_by_job: OpenAI batches created per ``metadata["job_id"]`` (see
            :meth:`FakeProviderServer.creates_for`).
        realtime_429: Realtime requests refused by the realtime rate limit.

    Examples:
        >>> ServerStats().calls["POST /v1/batches"], ServerStats().creates_by_job["job-1"]
        (0, 0)
    """

    creates: int = 0
    uploads: int = 0
    requests_received: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    creates_by_job: Counter[str] = field(default_factory=Counter)
    realtime_429: int = 0


@dataclass
class FakeFile:
    """A stored file (an uploaded input or a result file).

    Examples:
        >>> FakeFile("file-1", b"{}\\n", "in.jsonl", "batch", 1, 2).to_dict()["bytes"]
        3
    """

    id: str
    data: bytes
    filename: str
    purpose: str
    created_at: int
    expires_at: int | None

    def to_dict(self) -> dict[str, Any]:
        """Return the OpenAI file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class _Outcome:
    """What happened to one request: its result line (``None``: dropped) and whether it succeeded."""

    custom_id: str
    line: dict[str, Any] | None
    succeeded: bool
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class FakeBatch:
    """One batch and everything the fake knows about it.

    Read :attr:`status`, :attr:`request_counts` and the rest directly, or :meth:`to_dict` for
    the wire object. ``outcomes`` holds one entry per request in input order once validated.
    ``clock_shift`` is the stalled time released by :meth:`FakeProviderServer.unstall_batches`
    (the batch's schedule runs that much later); ``frozen_clock`` is where a stall caught it.

    Examples:
        >>> b = FakeBatch(id="batch_1", endpoint="/v1/chat/completions", input_file_id="file-1",
        ...               completion_window="24h", metadata=None, created_at=0, input_data=b"")
        >>> b.to_dict()["status"], b.to_dict()["expires_at"]
        ('validating', 86400)
    """

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    input_data: bytes
    created_clock: float = 0.0
    status: BatchStatus = "validating"
    model: str | None = None
    errors: dict[str, Any] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    outcomes: list[_Outcome] = field(default_factory=list)
    run_limit: int = 0
    finished: int = 0
    enqueued_tokens: int = 0
    cancel_clock: float | None = None
    status_before_cancel: BatchStatus | None = None
    clock_shift: float = 0.0
    frozen_clock: float | None = None

    @property
    def request_counts(self) -> dict[str, int]:
        """``{total, completed, failed}`` as OpenAI reports them (finished requests only)."""
        done = self.outcomes[: self.finished]
        completed = sum(o.succeeded for o in done)
        return {"total": len(self.outcomes), "completed": completed, "failed": len(done) - completed}

    def to_dict(self) -> dict[str, Any]:
        """Return the OpenAI batch object."""
        done = self.outcomes[: self.finished]
        input_tokens = sum(o.input_tokens for o in done)
        output_tokens = sum(o.output_tokens for o in done)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": self.errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.created_at + _BATCH_WINDOW_SECONDS,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": self.request_counts,
            "metadata": self.metadata,
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        }


def _rfc3339(epoch: float | None) -> str | None:
    """Format a unix time as an RFC 3339 string in UTC with microseconds (``...Z``)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


@dataclass
class _MessageOutcome:
    """What happened to one message batch request: its ``result`` (``None``: dropped) and kind."""

    custom_id: str
    result: dict[str, Any] | None
    kind: Literal["succeeded", "errored", "expired"]


@dataclass
class FakeMessageBatch:
    """One Anthropic message batch and everything the fake knows about it.

    Times (``created_at``, ``ended_at``, ``cancel_initiated_at``) are unix seconds; :meth:`to_dict`
    writes them as RFC 3339 strings. ``outcomes`` holds one entry per request in input order.

    Examples:
        >>> b = FakeMessageBatch(id="msgbatch_1", created_at=0.0)
        >>> wire = b.to_dict("http://127.0.0.1:1")
        >>> wire["processing_status"], wire["expires_at"], wire["results_url"]
        ('in_progress', '1970-01-02T00:00:00.000000Z', None)
    """

    id: str
    created_at: float
    outcomes: list[_MessageOutcome] = field(default_factory=list)
    created_clock: float = 0.0
    digest: str = ""
    processing_status: MessageBatchStatus = "in_progress"
    run_limit: int = 0
    finished: int = 0
    ended_at: float | None = None
    cancel_initiated_at: float | None = None
    cancel_clock: float | None = None
    unfinished: Literal["canceled", "expired"] | None = None
    results: bytes = b""
    clock_shift: float = 0.0
    frozen_clock: float | None = None

    @property
    def request_counts(self) -> dict[str, int]:
        """``{processing, succeeded, errored, canceled, expired}``: all but ``processing`` 0 until ended."""
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if self.processing_status != "ended":
            counts["processing"] = len(self.outcomes)
            return counts
        for outcome in self.outcomes[: self.finished]:
            counts[outcome.kind] += 1
        if self.unfinished is not None:
            counts[self.unfinished] += len(self.outcomes) - self.finished
        return counts

    def to_dict(self, root_url: str = "") -> dict[str, Any]:
        """Return the Anthropic message batch object; ``root_url`` prefixes ``results_url``."""
        ended = self.processing_status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.processing_status,
            "request_counts": self.request_counts,
            "ended_at": _rfc3339(self.ended_at),
            "created_at": _rfc3339(self.created_at),
            "expires_at": _rfc3339(self.created_at + _BATCH_WINDOW_SECONDS),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(self.cancel_initiated_at),
            "results_url": f"{root_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }


@dataclass(frozen=True)
class _LineFault:
    kind: LineFault
    line: int


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: float | None
    code: str | None
    message: str | None


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


class _State:
    """All mutable state of one fake provider, guarded by one lock."""

    def __init__(self, config: FakeServerConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.files: dict[str, FakeFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.stats = ServerStats()
        self.message_batches: dict[str, FakeMessageBatch] = {}
        self.faults: dict[str, list[_Fault]] = {}
        self.stalls: dict[str, list[float]] = {}
        self.line_faults: list[_LineFault] = []
        self.stall_in: StallStatus | None = config.stall_in
        #: (arrival time, estimated tokens) of the realtime requests accepted in the window.
        self.window: deque[tuple[float, int]] = deque()

    def reset(self) -> None:
        with self.lock:
            self.files.clear()
            self.batches.clear()
            self.message_batches.clear()
            self.faults.clear()
            self.stalls.clear()
            self.line_faults.clear()
            self.stall_in = self.config.stall_in
            self.stats.creates = self.stats.uploads = self.stats.requests_received = 0
            self.stats.calls.clear()
            self.stats.creates_by_job.clear()
            self.stats.realtime_429 = 0
            self.window.clear()

    # ----- realtime rate limit -------------------------------------------------------------

    def admit_realtime(self, tokens: int) -> _Budget:
        """Count a realtime request against the sliding window, or tell how long it must wait."""
        config = self.config
        window = config.realtime_window_s
        now = time.monotonic()
        with self.lock:
            queue = self.window
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
                self.stats.realtime_429 += 1
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

    # ----- stalls ---------------------------------------------------------------------------

    def _hold(self, batch: FakeBatch) -> StallStatus | None:
        """The stalled status that holds ``batch`` (not yet past it), or ``None``."""
        rank = _STALL_ORDER.get(batch.status)
        if self.stall_in is None or rank is None or rank > _STALL_ORDER[self.stall_in]:
            return None
        return self.stall_in

    def _freeze_clock(self, batch: FakeBatch, hold: StallStatus) -> float:
        """The batch clock at which a stall in ``hold`` stops it: where it was caught, else the entry."""
        if batch.frozen_clock is not None:
            return batch.frozen_clock
        t_validated = batch.created_clock + self.config.validating_seconds
        if hold == "validating":
            return batch.created_clock
        if hold == "in_progress":
            return t_validated
        return t_validated + self.config.in_progress_seconds

    def _message_hold(self, batch: FakeMessageBatch) -> bool:
        return self.stall_in == "in_progress" and batch.processing_status == "in_progress"

    def _message_freeze_clock(self, batch: FakeMessageBatch) -> float:
        if batch.frozen_clock is not None:
            return batch.frozen_clock
        return batch.created_clock + self.config.validating_seconds

    def stall(self, status: StallStatus) -> None:
        """Stall batches in ``status`` from now on; batches already in it freeze where they are."""
        if status not in _STALL_ORDER:
            raise ValueError(f"cannot stall batches in {status!r}; choose one of {', '.join(_STALL_ORDER)}")
        with self.lock:
            self.unstall()
            now = time.monotonic()
            for batch in self.batches.values():
                self.advance(batch, now)
            for message_batch in self.message_batches.values():
                self.advance_message_batch(message_batch, now)
            self.stall_in = status
            for batch in self.batches.values():
                if batch.status == status:
                    batch.frozen_clock = now - batch.clock_shift
            for message_batch in self.message_batches.values():
                if self._message_hold(message_batch):
                    message_batch.frozen_clock = now - message_batch.clock_shift

    def unstall(self) -> None:
        """Release stalled batches: each resumes where it stopped, as if the stall took no time."""
        with self.lock:
            now = time.monotonic()
            for batch in self.batches.values():
                self.advance(batch, now)
                hold = self._hold(batch)
                if hold is not None:
                    freeze = self._freeze_clock(batch, hold)
                    if now - batch.clock_shift >= freeze:
                        batch.clock_shift = now - freeze
                batch.frozen_clock = None
            for message_batch in self.message_batches.values():
                self.advance_message_batch(message_batch, now)
                if self._message_hold(message_batch):
                    freeze = self._message_freeze_clock(message_batch)
                    if now - message_batch.clock_shift >= freeze:
                        message_batch.clock_shift = now - freeze
                message_batch.frozen_clock = None
            self.stall_in = None

    # ----- time -----------------------------------------------------------------------------

    def advance(self, batch: FakeBatch, now: float | None = None) -> None:
        """Move a batch to the state it has reached by ``now`` (a ``time.monotonic()`` value).

        The schedule runs on the batch's clock (``now - clock_shift``), which a stall stops.
        """
        cfg = self.config
        real = time.monotonic() if now is None else now
        now = real - batch.clock_shift
        hold = self._hold(batch)
        if hold is not None:
            now = min(now, self._freeze_clock(batch, hold))
        t_validated = batch.created_clock + cfg.validating_seconds
        t_ran = t_validated + cfg.in_progress_seconds
        t_final = t_ran + cfg.finalizing_seconds
        if batch.status == "validating" and now >= t_validated and hold != "validating":
            self._validate(batch, self._wall(batch, t_validated))
        if batch.status == "in_progress":
            if cfg.in_progress_seconds > 0:
                fraction = min(1.0, max(0.0, (now - t_validated) / cfg.in_progress_seconds))
            else:
                # Instant runs finish on entering in_progress, unless a stall holds them there.
                fraction = 0.0 if hold == "in_progress" else 1.0
            batch.finished = math.floor(batch.run_limit * fraction)
            if now >= t_ran and hold != "in_progress":
                batch.finished = batch.run_limit
                if batch.run_limit < len(batch.outcomes):
                    batch.status = "expired"
                    batch.expired_at = self._wall(batch, t_ran)
                    self._write_results(batch, "batch_expired")
                else:
                    batch.status = "finalizing"
                    batch.finalizing_at = self._wall(batch, t_ran)
        if batch.status == "finalizing" and now >= t_final and hold != "finalizing":
            batch.status = "completed"
            batch.completed_at = self._wall(batch, t_final)
            self._write_results(batch, None)
        if batch.status == "cancelling" and batch.cancel_clock is not None:
            t_cancelled = batch.cancel_clock + cfg.cancelling_seconds
            if cfg.cancelling_seconds == 0 or real >= t_cancelled:
                if batch.status_before_cancel == "validating":
                    # Cancelled before it ran: learn the requests (to answer each with
                    # batch_cancelled) but keep no trace of validation itself.
                    self._validate(batch, batch.created_at)
                    if batch.errors is not None:
                        batch.outcomes = []
                    batch.errors = batch.in_progress_at = batch.failed_at = None
                    batch.finished = 0
                batch.status = "cancelled"
                cancelled_clock = max(t_cancelled, batch.cancel_clock)
                batch.cancelled_at = self._wall(batch, cancelled_clock - batch.clock_shift)
                self._write_results(batch, "batch_cancelled")

    def _wall(self, batch: FakeBatch, clock: float) -> int:
        """Unix time of a moment on the batch's clock."""
        return int(batch.created_at + (clock + batch.clock_shift - batch.created_clock))

    def take_stall(self, route: str) -> float:
        """Seconds the next answer of a create route (``"/v1/batches"``...) must wait."""
        queue = self.stalls.get(route)
        return queue.pop(0) if queue else 0.0

    # ----- Anthropic message batches --------------------------------------------------------

    def advance_message_batch(self, batch: FakeMessageBatch, now: float | None = None) -> None:
        """Move a message batch to the state it has reached by ``now`` (a ``time.monotonic()`` value)."""
        cfg = self.config
        real = time.monotonic() if now is None else now
        now = real - batch.clock_shift
        hold = self._message_hold(batch)
        if hold:
            now = min(now, self._message_freeze_clock(batch))
        t_started = batch.created_clock + cfg.validating_seconds
        t_ran = t_started + cfg.in_progress_seconds
        t_ended = t_ran + cfg.finalizing_seconds
        if batch.processing_status == "in_progress":
            if now < t_started:
                fraction = 0.0
            elif cfg.in_progress_seconds > 0:
                fraction = min(1.0, (now - t_started) / cfg.in_progress_seconds)
            else:
                fraction = 0.0 if hold else 1.0
            batch.finished = math.floor(batch.run_limit * fraction)
            if now >= t_ended and not hold:
                batch.finished = batch.run_limit
                self._end_message_batch(batch, t_ended + batch.clock_shift, "expired")
        if batch.processing_status == "canceling" and batch.cancel_clock is not None:
            t_cancelled = batch.cancel_clock + cfg.cancelling_seconds
            if cfg.cancelling_seconds == 0 or real >= t_cancelled:
                self._end_message_batch(batch, t_cancelled, "canceled")

    def cancel_message_batch(self, batch: FakeMessageBatch) -> None:
        self.advance_message_batch(batch)
        if batch.processing_status == "canceling":
            return
        if batch.processing_status == "ended":
            raise _ApiError(400, f"Batch '{batch.id}' has already ended and cannot be canceled.")
        batch.processing_status = "canceling"
        batch.cancel_clock = time.monotonic()
        batch.cancel_initiated_at = time.time()

    def _end_message_batch(
        self, batch: FakeMessageBatch, clock: float, unfinished: Literal["canceled", "expired"]
    ) -> None:
        """End a batch at ``clock`` (``time.monotonic()``): finished requests keep their results,
        the rest get ``unfinished`` ones."""
        batch.processing_status = "ended"
        batch.ended_at = batch.created_at + (clock - batch.created_clock)
        batch.unfinished = unfinished
        lines: list[dict[str, Any]] = []
        for index, outcome in enumerate(batch.outcomes):
            if index >= batch.finished:
                lines.append({"custom_id": outcome.custom_id, "result": {"type": unfinished}})
            elif outcome.result is not None:
                lines.append({"custom_id": outcome.custom_id, "result": outcome.result})
        if self.config.shuffle:
            random.Random(f"{self.config.seed}:{batch.digest}").shuffle(lines)
        batch.results = self._result_bytes(lines)

    def run_message_request(self, custom_id: str, params: Any) -> _MessageOutcome:
        """Answer one message batch request (bad params become an ``errored`` result)."""
        if not isinstance(params, dict):
            status, body, never_ran = (
                400,
                _anthropic_error_body("invalid_request_error", "params: Input should be a valid dictionary"),
                None,
            )
        else:
            status, body, never_ran = complete_message(params, self.config.answer, batch=True)
        if never_ran == "drop":
            return _MessageOutcome(custom_id, None, "succeeded")
        if never_ran is not None:
            return _MessageOutcome(custom_id, {"type": "expired"}, "expired")
        if status >= 400:
            return _MessageOutcome(custom_id, {"type": "errored", "error": body}, "errored")
        return _MessageOutcome(custom_id, {"type": "succeeded", "message": body}, "succeeded")

    def cancel(self, batch: FakeBatch) -> None:
        self.advance(batch)
        if batch.status == "cancelling":
            return
        if batch.status in TERMINAL_STATUSES:
            raise _ApiError(400, f"Cannot cancel a batch with status '{batch.status}'.")
        batch.status_before_cancel = batch.status
        batch.status = "cancelling"
        batch.cancel_clock = time.monotonic()
        batch.cancelling_at = int(time.time())
        if batch.status_before_cancel == "finalizing":
            batch.finished = batch.run_limit

    # ----- validation and running -----------------------------------------------------------

    def _validate(self, batch: FakeBatch, at: int) -> None:
        """Check the input file as OpenAI does; on success plan every request's outcome."""
        errors: list[dict[str, Any]] = []
        parsed: list[tuple[int, dict[str, Any]]] = []

        def fail(code: str, message: str, line: int | None = None, param: str | None = None) -> None:
            errors.append({"code": code, "message": message, "param": param, "line": line})

        for number, raw in enumerate(batch.input_data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                fail(
                    "invalid_json_line", f"This line is not parseable as valid JSON (line {number}).", number
                )
                continue
            if not isinstance(obj, dict):
                fail("invalid_json_line", f"Line {number} is not a JSON object.", number)
                continue
            missing = [k for k in ("custom_id", "method", "url", "body") if k not in obj]
            if missing:
                fail(
                    "invalid_json_line",
                    f"Line {number} is missing required field(s): {', '.join(missing)}.",
                    number,
                    missing[0],
                )
                continue
            if not isinstance(obj["custom_id"], str) or not isinstance(obj["body"], dict):
                fail(
                    "invalid_json_line",
                    f"Line {number}: custom_id must be a string and body an object.",
                    number,
                )
                continue
            if obj["method"] != "POST":
                fail("invalid_json_line", f"Line {number}: method must be 'POST'.", number, "method")
                continue
            parsed.append((number, obj))

        if not errors and not parsed:
            fail("empty_file", "The input file is empty. Please provide at least one request.")
        if not errors:
            seen: set[str] = set()
            model: str | None = None
            for number, obj in parsed:
                body = obj["body"]
                if obj["custom_id"] in seen:
                    fail(
                        "duplicate_custom_id",
                        f"The custom_id for this request is a duplicate of another "
                        f"request: {obj['custom_id']!r}.",
                        number,
                        "custom_id",
                    )
                seen.add(obj["custom_id"])
                if obj["url"] != batch.endpoint:
                    fail(
                        "url_mismatch",
                        f"The url provided for this request does not match the batch "
                        f"endpoint: {obj['url']!r} != {batch.endpoint!r}.",
                        number,
                        "url",
                    )
                line_model = body.get("model")
                if isinstance(line_model, str):
                    if model is None:
                        model = line_model
                    elif line_model != model:
                        fail(
                            "model_mismatch",
                            f"The provided model {line_model!r} does not match the model "
                            f"of earlier requests in the batch ({model!r}).",
                            number,
                            "body.model",
                        )
                if body.get("stream") is True:
                    fail(
                        "invalid_request",
                        "Streaming is not supported in the Batch API.",
                        number,
                        "body.stream",
                    )
            batch.model = model
        forced = self.config.validation_error
        if not errors and forced is not None:
            message = _FORCED_VALIDATION_MESSAGES.get(forced, f"Simulated validation failure: {forced}.")
            line = 1 if forced in _LINE_CODES else None
            fail(forced, message.format(model=batch.model, endpoint=batch.endpoint), line)
        limit = self.config.enqueued_token_limit
        if not errors and limit is not None:
            enqueued = sum(
                other.enqueued_tokens
                for other in self.batches.values()
                if other is not batch
                and other.model == batch.model
                and other.status in ("in_progress", "finalizing")
            )
            if sum(_request_tokens(batch.endpoint, obj["body"]) for _, obj in parsed) + enqueued > limit:
                fail(
                    "token_limit_exceeded",
                    f"Enqueued token limit reached for {batch.model} in organization "
                    f"org-fake. Limit: {limit:,} enqueued tokens. Please try submitting an earlier batch "
                    "once it has completed.",
                )

        if errors:
            batch.status = "failed"
            batch.failed_at = at
            batch.errors = {"object": "list", "data": errors[:1000]}
            return
        batch.enqueued_tokens = sum(_request_tokens(batch.endpoint, obj["body"]) for _, obj in parsed)
        batch.outcomes = [
            self.run_request(obj["custom_id"], obj["body"], at, batch.endpoint) for _, obj in parsed
        ]
        expire = self.config.expire_after_requests
        batch.run_limit = len(batch.outcomes) if expire is None else min(max(expire, 0), len(batch.outcomes))
        batch.finished = 0
        batch.status = "in_progress"
        batch.in_progress_at = at

    def run_request(
        self, custom_id: str, body: dict[str, Any], created: int, endpoint: str = "/v1/chat/completions"
    ) -> _Outcome:
        """Answer one batch request of ``endpoint``; its result line is ``None`` for a dropped one."""
        if endpoint == EMBEDDINGS_ENDPOINT:
            status, response_body, never_ran = complete_embeddings(body)
        else:
            status, response_body, never_ran = complete_chat(body, self.config.answer, created)
        line: dict[str, Any] = {"id": f"batch_req_{_hex()}", "custom_id": custom_id}
        if never_ran == "drop":
            return _Outcome(custom_id, None, succeeded=True)
        if never_ran is not None:
            line["response"] = None
            line["error"] = {
                "code": never_ran,
                "message": "The request timed out before it could be completed.",
            }
            return _Outcome(custom_id, line, succeeded=False)
        line["response"] = {"status_code": status, "request_id": f"req_{_hex(32)}", "body": response_body}
        line["error"] = None
        usage = response_body.get("usage") or {}
        return _Outcome(
            custom_id,
            line,
            succeeded=status < 400,
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
        )

    def _write_results(self, batch: FakeBatch, unfinished_code: str | None) -> None:
        """Write output and error files: finished requests, then ``unfinished_code`` lines for the rest."""
        output: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for index, outcome in enumerate(batch.outcomes):
            if index < batch.finished:
                if outcome.line is not None:
                    (output if outcome.succeeded else failed).append(outcome.line)
            elif unfinished_code is not None:
                what = "expired" if unfinished_code == "batch_expired" else "was cancelled"
                failed.append(
                    {
                        "id": f"batch_req_{_hex()}",
                        "custom_id": outcome.custom_id,
                        "response": None,
                        "error": {
                            "code": unfinished_code,
                            "message": f"This request could not be executed before the batch {what}.",
                        },
                    }
                )
        if self.config.shuffle:
            digest = hashlib.sha256(batch.input_data).hexdigest()
            rng = random.Random(f"{self.config.seed}:{digest}")
            rng.shuffle(output)
            rng.shuffle(failed)
        now = int(time.time())
        if output:
            batch.output_file_id = self._store_result_file(
                f"batch_{batch.id}_output.jsonl", output, now, spoil=True
            ).id
        if failed:
            batch.error_file_id = self._store_result_file(f"batch_{batch.id}_error.jsonl", failed, now).id

    def _store_result_file(
        self, filename: str, lines: list[dict[str, Any]], now: int, *, spoil: bool = False
    ) -> FakeFile:
        data = self._result_bytes(lines) if spoil else b"".join(orjson.dumps(line) + b"\n" for line in lines)
        stored = FakeFile(f"file-{_hex()}", data, filename, "batch_output", now, now + _FILE_TTL_SECONDS)
        self.files[stored.id] = stored
        return stored

    def _result_bytes(self, lines: list[dict[str, Any]]) -> bytes:
        """Encode result lines as JSONL, spoiling one line if a line fault is pending (and spending it)."""
        encoded = [orjson.dumps(line) for line in lines]
        fault = self.line_faults.pop(0) if self.line_faults and lines else None
        if fault is not None:
            at = min(fault.line, len(lines) - 1)
            if fault.kind == "garble":
                third = len(encoded[at]) // 3  # raw NULs are JSON nowhere, inside strings neither
                encoded[at] = encoded[at][:third] + b"\x00#garbled#\x00" + encoded[at][2 * third :]
            elif fault.kind == "cut":
                encoded[at] = encoded[at][: len(encoded[at]) // 2]
            elif fault.kind == "duplicate":
                encoded.insert(at + 1, encoded[at])
            else:  # conflict: the first line from `at` on whose answer can be changed
                for index in [*range(at, len(lines)), *range(at)]:
                    other = _other_answer(lines[index])
                    if other is not None:
                        encoded.insert(index + 1, orjson.dumps(other))
                        break
        return b"".join(line + b"\n" for line in encoded)


def _other_answer(line: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of a successful result line (OpenAI chat or Anthropic message) with another answer text."""
    other: Any = orjson.loads(orjson.dumps(line))
    if isinstance(other.get("response"), dict):  # OpenAI
        choices = (other["response"].get("body") or {}).get("choices") or []
        message = choices[0].get("message") if choices else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return None
        message["content"] += " (a different answer)"
        other["id"] = f"batch_req_{_hex()}"
        return dict(other)
    result = other.get("result") or {}
    blocks = (result.get("message") or {}).get("content") or []
    if result.get("type") != "succeeded" or not blocks:
        return None
    if blocks[0].get("type") == "text":
        blocks[0]["text"] += " (a different answer)"
    elif blocks[0].get("type") == "tool_use":
        blocks[0]["input"] = {"different": True}
    else:
        return None
    return dict(other)


def _request_tokens(endpoint: str, body: Mapping[str, Any]) -> int:
    """Prompt tokens of one batch request body of ``endpoint``."""
    if endpoint == EMBEDDINGS_ENDPOINT:
        return sum(estimate_tokens(text) for text in embedding_inputs(body) or [])
    return prompt_tokens(body)


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


def complete_message(
    body: dict[str, Any], answer: AnswerFunction | None, *, batch: bool = False
) -> tuple[int, dict[str, Any], str | None]:
    """Answer one Anthropic Messages body, honouring the ``[[fake:...]]`` markers.

    Args:
        body: The Messages API params.
        answer: Custom answer function, or ``None`` for the default.
        batch: True inside a message batch (only changes a message).

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
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    return 200, reply, None


# ----- HTTP layer -------------------------------------------------------------------------------


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


def _page(items: list[dict[str, Any]], after: str | None, limit: int, kind: str) -> dict[str, Any]:
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise _ApiError(404, f"No {kind} found with id '{after}'.", param="after")
        start = ids.index(after) + 1
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise _ApiError(
            400, "Invalid type for 'metadata': expected an object.", param="metadata", code="invalid_type"
        )
    if len(metadata) > 16:
        raise _ApiError(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_size",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise _ApiError(
                400,
                f"Invalid 'metadata': key {key[:20]!r}... is longer than 64 characters.",
                param="metadata",
                code="string_above_max_length",
            )
        if not isinstance(value, str):
            raise _ApiError(
                400,
                f"Invalid type for 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > 512:
            raise _ApiError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length 512, but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return dict(metadata)


Handler = Callable[[Request], Awaitable[Response]]


def create_app(state: _State) -> Starlette:
    """Build the ASGI app serving one fake provider's state.

    Most users want :class:`FakeProviderServer` instead; use this to serve the fake through
    another ASGI server or ``httpx.ASGITransport``.
    """

    def lookup_file(file_id: str) -> FakeFile:
        stored = state.files.get(file_id)
        if stored is None:
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def lookup_batch(batch_id: str) -> FakeBatch:
        batch = state.batches.get(batch_id)
        if batch is None:
            raise _ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    async def upload_file(request: Request) -> Response:
        async with request.form() as form:
            upload = form.get("file")
            purpose = form.get("purpose")
            seconds = form.get("expires_after[seconds]")
            if not isinstance(upload, UploadFile):
                raise _ApiError(
                    400,
                    "Missing required parameter: 'file'.",
                    param="file",
                    code="missing_required_parameter",
                )
            if not isinstance(purpose, str):
                raise _ApiError(
                    400,
                    "Missing required parameter: 'purpose'.",
                    param="purpose",
                    code="missing_required_parameter",
                )
            if purpose != "batch":
                raise _ApiError(
                    400,
                    f"Invalid value for 'purpose': the fake provider only accepts 'batch', got {purpose!r}.",
                    param="purpose",
                    code="invalid_value",
                )
            filename = upload.filename or "upload"
            if not filename.endswith(".jsonl"):
                raise _ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
            data = await upload.read()
        if len(data) > state.config.max_file_bytes:
            raise _ApiError(400, "File is too large.", param="file")
        ttl = _FILE_TTL_SECONDS
        if isinstance(seconds, str):
            if not seconds.isdigit() or not 3600 <= int(seconds) <= 2592000:
                raise _ApiError(
                    400,
                    "Invalid 'expires_after[seconds]': must be between 3600 and 2592000.",
                    param="expires_after[seconds]",
                )
            ttl = int(seconds)
        now = int(time.time())
        stored = FakeFile(f"file-{_hex()}", data, filename, purpose, now, now + ttl)
        with state.lock:
            state.files[stored.id] = stored
            state.stats.uploads += 1
        return _json(stored.to_dict())

    async def list_files(request: Request) -> Response:
        limit = _query_limit(request, 10000, 10000)
        purpose = request.query_params.get("purpose")
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _ApiError(400, "Invalid 'order': must be 'asc' or 'desc'.", param="order")
        with state.lock:
            files = [f for f in state.files.values() if purpose is None or f.purpose == purpose]
            items = [f.to_dict() for f in (files if order == "asc" else reversed(files))]
        return _json(_page(items, request.query_params.get("after"), limit, "file"))

    async def get_file(request: Request) -> Response:
        with state.lock:
            return _json(lookup_file(request.path_params["id"]).to_dict())

    async def get_file_content(request: Request) -> Response:
        with state.lock:
            data = lookup_file(request.path_params["id"]).data
        return Response(data, media_type="application/octet-stream")

    async def delete_file(request: Request) -> Response:
        with state.lock:
            stored = lookup_file(request.path_params["id"])
            del state.files[stored.id]
        return _json({"id": stored.id, "object": "file", "deleted": True})

    async def create_batch(request: Request) -> Response:
        body = await _json_body(request)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in body:
                raise _ApiError(
                    400,
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    code="missing_required_parameter",
                )
        endpoint = body["endpoint"]
        if endpoint not in OPENAI_BATCH_ENDPOINTS:
            raise _ApiError(
                400,
                f"Invalid value for 'endpoint': {endpoint!r} is not a supported batch endpoint.",
                param="endpoint",
                code="invalid_value",
            )
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise _ApiError(
                400,
                f"The fake provider only runs {sorted(SUPPORTED_ENDPOINTS)} batches, not {endpoint!r}.",
                param="endpoint",
                code="invalid_value",
            )
        if body["completion_window"] != "24h":
            raise _ApiError(
                400,
                "Invalid value for 'completion_window': expected '24h'.",
                param="completion_window",
                code="invalid_value",
            )
        metadata = _check_metadata(body.get("metadata"))
        with state.lock:
            input_file = state.files.get(str(body["input_file_id"]))
            if input_file is None:
                raise _ApiError(400, f"No such File object: {body['input_file_id']}", param="input_file_id")
            if input_file.purpose != "batch":
                raise _ApiError(
                    400,
                    f"File {input_file.id} has purpose {input_file.purpose!r}; batches need "
                    "an input file with purpose 'batch'.",
                    param="input_file_id",
                )
            batch = FakeBatch(
                id=f"batch_{_hex()}",
                endpoint=endpoint,
                input_file_id=input_file.id,
                completion_window="24h",
                metadata=metadata,
                created_at=int(time.time()),
                created_clock=time.monotonic(),
                input_data=input_file.data,
            )
            state.batches[batch.id] = batch
            state.stats.creates += 1
            if metadata is not None and "job_id" in metadata:
                state.stats.creates_by_job[metadata["job_id"]] += 1
            state.stats.requests_received += sum(1 for line in input_file.data.split(b"\n") if line.strip())
            answer = batch.to_dict()
            stall = state.take_stall("/v1/batches")
        deadline = time.monotonic() + stall
        while not state.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return _json(answer)

    async def list_batches(request: Request) -> Response:
        limit = _query_limit(request, 20, 100)
        with state.lock:
            batches = list(reversed(state.batches.values()))
            for batch in batches:
                state.advance(batch)
            items = [batch.to_dict() for batch in batches]
        return _json(_page(items, request.query_params.get("after"), limit, "batch"))

    async def get_batch(request: Request) -> Response:
        with state.lock:
            batch = lookup_batch(request.path_params["id"])
            state.advance(batch)
            return _json(batch.to_dict())

    async def cancel_batch(request: Request) -> Response:
        with state.lock:
            batch = lookup_batch(request.path_params["id"])
            state.cancel(batch)
            return _json(batch.to_dict())

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

    # ----- Anthropic Message Batches ----------------------------------------------------------

    def root_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def lookup_message_batch(batch_id: str) -> FakeMessageBatch:
        batch = state.message_batches.get(batch_id)
        if batch is None:
            raise _ApiError(404, f"No batch found with id '{batch_id}'.", type="not_found_error")
        state.advance_message_batch(batch)
        return batch

    async def create_message_batch(request: Request) -> Response:
        raw = await request.body()
        cfg = state.config
        if len(raw) > cfg.anthropic_max_bytes:
            raise _ApiError(413, _ANTHROPIC_ERROR_MESSAGES[413], type="request_too_large")
        body = await _json_body(request)
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            raise _ApiError(400, "requests: List should have at least 1 item after validation")
        if len(items) > cfg.anthropic_max_requests:
            raise _ApiError(
                413,
                f"Batch has {len(items)} requests; at most {cfg.anthropic_max_requests} are allowed.",
                type="request_too_large",
            )
        seen: set[str] = set()
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "custom_id" not in item or "params" not in item:
                raise _ApiError(400, f"requests.{index}: custom_id and params are required")
            custom_id = item["custom_id"]
            if not isinstance(custom_id, str) or not ANTHROPIC_CUSTOM_ID.match(custom_id):
                raise _ApiError(
                    400,
                    f"requests.{index}.custom_id: String should match pattern "
                    f"'{ANTHROPIC_CUSTOM_ID.pattern}'",
                )
            if custom_id in seen:
                raise _ApiError(
                    400,
                    f"requests.{index}.custom_id: Duplicate custom_id {custom_id!r}; "
                    "custom_id must be unique within a batch",
                )
            seen.add(custom_id)
        outcomes = [state.run_message_request(item["custom_id"], item["params"]) for item in items]
        expire = cfg.expire_after_requests
        with state.lock:
            batch = FakeMessageBatch(
                id=f"msgbatch_{_hex()}",
                created_at=time.time(),
                outcomes=outcomes,
                created_clock=time.monotonic(),
                digest=hashlib.sha256(raw).hexdigest(),
                run_limit=len(outcomes) if expire is None else min(max(expire, 0), len(outcomes)),
            )
            state.message_batches[batch.id] = batch
            state.stats.creates += 1
            state.stats.requests_received += len(outcomes)
            answer = batch.to_dict(root_url(request))
            stall = state.take_stall("/v1/messages/batches")
        deadline = time.monotonic() + stall
        while not state.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return _json(answer)

    async def list_message_batches(request: Request) -> Response:
        limit = _query_limit(request, 20, 1000)
        after = request.query_params.get("after_id")
        before = request.query_params.get("before_id")
        if after is not None and before is not None:
            raise _ApiError(400, "Give at most one of after_id and before_id.")
        with state.lock:
            batches = list(reversed(state.message_batches.values()))
            for batch in batches:
                state.advance_message_batch(batch)
            items = [batch.to_dict(root_url(request)) for batch in batches]
        ids = [item["id"] for item in items]
        cursor = after if after is not None else before
        if cursor is not None and cursor not in ids:
            raise _ApiError(404, f"No batch found with id '{cursor}'.", type="not_found_error")
        if before is not None:
            stop = ids.index(before)
            start = max(0, stop - limit)
            has_more = start > 0
        else:
            start = ids.index(after) + 1 if after is not None else 0
            stop = start + limit
            has_more = stop < len(items)
        data = items[start:stop]
        return _json(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def get_message_batch(request: Request) -> Response:
        with state.lock:
            return _json(lookup_message_batch(request.path_params["id"]).to_dict(root_url(request)))

    async def cancel_message_batch(request: Request) -> Response:
        with state.lock:
            batch = lookup_message_batch(request.path_params["id"])
            state.cancel_message_batch(batch)
            return _json(batch.to_dict(root_url(request)))

    async def delete_message_batch(request: Request) -> Response:
        with state.lock:
            batch = lookup_message_batch(request.path_params["id"])
            if batch.processing_status != "ended":
                raise _ApiError(
                    400,
                    f"Batch '{batch.id}' cannot be deleted while it is processing; cancel it first.",
                )
            del state.message_batches[batch.id]
        return _json({"id": batch.id, "type": "message_batch_deleted"})

    async def message_batch_results(request: Request) -> Response:
        with state.lock:
            batch = lookup_message_batch(request.path_params["id"])
            if batch.processing_status != "ended":
                raise _ApiError(400, f"Batch '{batch.id}' has not ended yet; its results are not available.")
            data = batch.results
        return Response(data, media_type="application/x-jsonl")

    async def messages(request: Request) -> Response:
        body = await _json_body(request)
        status, response_body, _ = complete_message(body, state.config.answer)
        request_id = response_body.get("request_id") or f"req_{_hex()}"
        return _json(response_body, status, {"request-id": request_id})

    handlers: dict[str, Handler] = {
        "POST /v1/files": upload_file,
        "GET /v1/files": list_files,
        "GET /v1/files/{id}": get_file,
        "GET /v1/files/{id}/content": get_file_content,
        "DELETE /v1/files/{id}": delete_file,
        "POST /v1/batches": create_batch,
        "GET /v1/batches": list_batches,
        "GET /v1/batches/{id}": get_batch,
        "POST /v1/batches/{id}/cancel": cancel_batch,
        "POST /v1/chat/completions": chat_completions,
        "POST /v1/embeddings": embeddings,
        "POST /v1/messages/batches": create_message_batch,
        "GET /v1/messages/batches": list_message_batches,
        "GET /v1/messages/batches/{id}": get_message_batch,
        "POST /v1/messages/batches/{id}/cancel": cancel_message_batch,
        "DELETE /v1/messages/batches/{id}": delete_message_batch,
        "GET /v1/messages/batches/{id}/results": message_batch_results,
        "POST /v1/messages": messages,
    }
    assert set(handlers) == set(ROUTES)

    def check_anthropic_auth(request: Request) -> None:
        key = request.headers.get("x-api-key")
        if not key:
            raise _ApiError(401, "x-api-key header is required", type="authentication_error")
        if state.config.api_key is not None and key != state.config.api_key:
            raise _ApiError(401, _ANTHROPIC_ERROR_MESSAGES[401], type="authentication_error")
        if not request.headers.get("anthropic-version"):
            raise _ApiError(400, "anthropic-version: header is required")

    def check_auth(request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise _ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        scheme, _, token = header.partition(" ")
        expected = state.config.api_key
        if scheme.lower() != "bearer" or not token.strip() or (expected is not None and token != expected):
            raise _ApiError(
                401,
                "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def take_fault(key: str) -> None:
        with state.lock:
            queue = state.faults.get(key)
            if not queue:
                return
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
            if key not in ANTHROPIC_ROUTES:
                headers["retry-after-ms"] = str(round(fault.retry_after * 1000))
        if key in ANTHROPIC_ROUTES:
            message = fault.message or _ANTHROPIC_ERROR_MESSAGES.get(
                fault.status, _DEFAULT_ERROR_MESSAGES.get(fault.status, f"Simulated HTTP {fault.status}.")
            )
            raise _ApiError(
                fault.status, message, type=fault.code or _anthropic_error_type(fault.status), headers=headers
            )
        message = fault.message or _DEFAULT_ERROR_MESSAGES.get(
            fault.status, f"Simulated HTTP {fault.status}."
        )
        code = fault.code
        if code is None and fault.status == 429:
            code = "rate_limit_exceeded"
        error_type = "insufficient_quota" if code == "insufficient_quota" else _error_type(fault.status)
        raise _ApiError(fault.status, message, type=error_type, code=code, headers=headers)

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

    async def rate_limited(request: Request, handler: Handler, anthropic: bool) -> Response:
        raw = await request.body()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        budget = state.admit_realtime(realtime_tokens(raw, parsed if isinstance(parsed, dict) else {}))
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

    def make_route(key: str, handler: Handler) -> Route:
        method, path = key.split(" ", 1)

        anthropic = key in ANTHROPIC_ROUTES
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
                    check_anthropic_auth(request)
                else:
                    check_auth(request)
                take_fault(key)
                if config.echo_request_on_create and method == "POST" and path in CREATE_ROUTES:
                    headers = orjson.dumps(dict(request.headers)).decode()
                    raise _ApiError(
                        400, f"The gateway refused {request.method} {request.url}; headers: {headers}"
                    )
                if realtime and (config.realtime_rpm or config.realtime_tpm):
                    return await rate_limited(request, handler, anthropic)
                if realtime and config.realtime_latency_s:
                    await asyncio.sleep(config.realtime_latency_s)
                return await handler(request)
            except _ApiError as exc:
                return exc.anthropic_response() if anthropic else exc.response()

        return Route(path, endpoint, methods=[method])

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = exc.detail if isinstance(exc, HTTPException) else "Internal error."
        error = _ApiError(status, message, type=_error_type(status))
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
