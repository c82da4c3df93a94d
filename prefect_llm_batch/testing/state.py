"""The batch state machine: stored files, OpenAI batches and Anthropic message batches, their clocks,
stalls and validation, and the result files they end with.

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

Batch validation failures (``status: failed``, ``errors.data[].code``): ``empty_file``,
``invalid_json_line`` (also for lines missing ``custom_id``/``method``/``url``/``body``),
``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``, ``invalid_request`` (a body with
``stream: true``) and, with ``enqueued_token_limit`` set, ``token_limit_exceeded``.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from prefect_llm_batch.testing.answers import embedding_inputs, estimate_tokens, prompt_tokens
from prefect_llm_batch.testing.completions import complete_chat, complete_embeddings, complete_message
from prefect_llm_batch.testing.config import (
    _BATCH_WINDOW_SECONDS,
    _FILE_TTL_SECONDS,
    _STALL_ORDER,
    EMBEDDINGS_ENDPOINT,
    MODERATIONS_ENDPOINT,
    RESPONSES_ENDPOINT,
    TERMINAL_STATUSES,
    BatchStatus,
    FakeServerConfig,
    MessageBatchStatus,
    ServerStats,
    StallStatus,
)
from prefect_llm_batch.testing.faults import _Fault, _LineFault, result_bytes
from prefect_llm_batch.testing.responses_moderations import (
    complete_moderation,
    complete_response,
    responses_request_tokens,
)
from prefect_llm_batch.testing.wire import _anthropic_error_body, _ApiError, _hex, _rfc3339

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
    #: Seconds its output and error files live (``output_expires_after``); None: 30 days.
    output_expires_after: int | None = None

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
    #: The requests as received (``{"custom_id", "params"}`` each), for tests to read the bodies.
    requests: list[dict[str, Any]] = field(default_factory=list)

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


class _State:
    """All mutable state of one fake provider, guarded by one lock."""

    def __init__(self, config: FakeServerConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.files: dict[str, FakeFile] = {}
        #: Prompt prefixes Anthropic requests marked cacheable (prompt caching), as the fake saw them.
        self.prompt_cache: set[str] = set()
        self.batches: dict[str, FakeBatch] = {}
        self.stats = ServerStats()
        self.message_batches: dict[str, FakeMessageBatch] = {}
        #: Gemini files, batches and open upload sessions (``testing.gemini_routes``).
        self.gemini_files: dict[str, Any] = {}
        self.gemini_batches: dict[str, Any] = {}
        self.gemini_uploads: dict[str, str] = {}
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
            self.gemini_files.clear()
            self.gemini_batches.clear()
            self.gemini_uploads.clear()
            self.faults.clear()
            self.stalls.clear()
            self.line_faults.clear()
            self.stall_in = self.config.stall_in
            self.stats.creates = self.stats.uploads = self.stats.requests_received = 0
            self.stats.calls.clear()
            self.stats.creates_by_job.clear()
            self.stats.realtime_429 = 0
            self.window.clear()

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
        batch.results = result_bytes(self.line_faults, lines)

    def run_message_request(self, custom_id: str, params: Any) -> _MessageOutcome:
        """Answer one message batch request (bad params become an ``errored`` result)."""
        if not isinstance(params, dict):
            status, body, never_ran = (
                400,
                _anthropic_error_body("invalid_request_error", "params: Input should be a valid dictionary"),
                None,
            )
        else:
            status, body, never_ran = complete_message(
                params, self.config.answer, batch=True, cache=self.prompt_cache
            )
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
        elif endpoint == RESPONSES_ENDPOINT:
            status, response_body, never_ran = complete_response(body, self.config.answer, created)
        elif endpoint == MODERATIONS_ENDPOINT:
            status, response_body, never_ran = complete_moderation(body)
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
        usage = response_body.get("usage") or {}
        if not self.config.line_usage:  # counted in the batch's usage only
            response_body = {k: v for k, v in response_body.items() if k != "usage"}
        line["response"] = {"status_code": status, "request_id": f"req_{_hex(32)}", "body": response_body}
        line["error"] = None
        return _Outcome(
            custom_id,
            line,
            succeeded=status < 400,
            input_tokens=int(usage.get("prompt_tokens", usage.get("input_tokens", 0))),
            output_tokens=int(usage.get("completion_tokens", usage.get("output_tokens", 0))),
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
        ttl = batch.output_expires_after or _FILE_TTL_SECONDS
        if output:
            batch.output_file_id = self._store_result_file(
                f"batch_{batch.id}_output.jsonl", output, now, spoil=True, ttl=ttl
            ).id
        if failed:
            batch.error_file_id = self._store_result_file(
                f"batch_{batch.id}_error.jsonl", failed, now, ttl=ttl
            ).id

    def _store_result_file(
        self,
        filename: str,
        lines: list[dict[str, Any]],
        now: int,
        *,
        spoil: bool = False,
        ttl: int = _FILE_TTL_SECONDS,
    ) -> FakeFile:
        data = (
            result_bytes(self.line_faults, lines)
            if spoil
            else b"".join(orjson.dumps(line) + b"\n" for line in lines)
        )
        stored = FakeFile(f"file-{_hex()}", data, filename, "batch_output", now, now + ttl)
        self.files[stored.id] = stored
        return stored


def _request_tokens(endpoint: str, body: Mapping[str, Any]) -> int:
    """Prompt tokens of one batch request body of ``endpoint``."""
    if endpoint == EMBEDDINGS_ENDPOINT:
        return sum(estimate_tokens(text) for text in embedding_inputs(body) or [])
    if endpoint == MODERATIONS_ENDPOINT:
        return 0
    if endpoint == RESPONSES_ENDPOINT:
        return responses_request_tokens(body)
    return prompt_tokens(body)
