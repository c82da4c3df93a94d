"""What the fake provider is told and what it counts: :class:`FakeServerConfig`, :class:`ServerStats`,
the route table and the endpoint and status constants the other modules of the fake share.

Examples:
    >>> "POST /v1/messages" in ANTHROPIC_ROUTES and "POST /v1/messages" in REALTIME_ROUTES
    True
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

#: Endpoints a batch may target in this fake.
SUPPORTED_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations"}
)
#: The embeddings endpoint (batch ``endpoint`` and line ``url``).
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
#: The Responses API endpoint (batch ``endpoint`` and line ``url``).
RESPONSES_ENDPOINT = "/v1/responses"
#: The moderations endpoint (batch ``endpoint`` and line ``url``).
MODERATIONS_ENDPOINT = "/v1/moderations"
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
    "POST /v1/responses",
    "POST /v1/moderations",
    "POST /v1/messages/batches",
    "GET /v1/messages/batches",
    "GET /v1/messages/batches/{id}",
    "POST /v1/messages/batches/{id}/cancel",
    "DELETE /v1/messages/batches/{id}",
    "GET /v1/messages/batches/{id}/results",
    "POST /v1/messages",
    # Gemini API batch mode (the ``:download`` route before the file route it would match).
    "POST /upload/v1beta/files",
    "GET /v1beta/files/{name}:download",
    "GET /v1beta/files/{name}",
    "DELETE /v1beta/files/{name}",
    "POST /v1beta/models/{model}:batchGenerateContent",
    "GET /v1beta/batches",
    "POST /v1beta/batches/{name}:cancel",
    "GET /v1beta/batches/{name}",
    "DELETE /v1beta/batches/{name}",
)
#: Realtime routes: rate limited by :attr:`FakeServerConfig.realtime_rpm` / ``realtime_tpm``.
REALTIME_ROUTES: frozenset[str] = frozenset(
    {
        "POST /v1/chat/completions",
        "POST /v1/embeddings",
        "POST /v1/responses",
        "POST /v1/moderations",
        "POST /v1/messages",
    }
)
#: Routes that do not exist on a server without a batch API (:attr:`FakeServerConfig.batch_api`).
BATCH_API_ROUTES: frozenset[str] = frozenset(
    r for r in ROUTES if r.split(" ", 1)[1].startswith(("/v1/files", "/v1/batches"))
)
#: Routes that speak the Anthropic wire format (``x-api-key`` auth, Anthropic error envelope).
ANTHROPIC_ROUTES: frozenset[str] = frozenset(r for r in ROUTES if " /v1/messages" in r)
#: Routes that speak the Gemini wire format (``x-goog-api-key`` auth, Google's error envelope).
GEMINI_ROUTES: frozenset[str] = frozenset(r for r in ROUTES if "v1beta/" in r)
#: Create routes whose answer :meth:`FakeProviderServer.stall_next_create` can delay.
CREATE_ROUTES: tuple[str, ...] = ("/v1/batches", "/v1/messages/batches", "/v1beta/batches")
#: The ``custom_id`` pattern of Anthropic message batches.
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

#: Text of the ``refusal`` field a ``[[fake:refusal]]`` answer carries.
REFUSAL_TEXT = "I can't help with that."
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
_FILE_TTL_SECONDS = 30 * 24 * 3600
_BATCH_WINDOW_SECONDS = 24 * 3600

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
        line_usage: If ``False``, result lines carry no ``usage``; the batch object still reports
            the batch's ``usage`` (the count a job's cost then comes from).

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
    line_usage: bool = True

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
        file_expiries: The ``expires_after`` seconds each uploaded file was created with (None:
            none asked).

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
    file_expiries: dict[str, int | None] = field(default_factory=dict)
