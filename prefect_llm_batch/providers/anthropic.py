"""The Anthropic Message Batches API, over httpx.

Implements the wire facts of the project's provider reference literally: headers ``x-api-key``
and ``anthropic-version: 2023-06-01``; requests sent **inline** at create
(``POST /v1/messages/batches`` with ``{"requests": [{"custom_id", "params"}]}``, no file upload);
``processing_status`` mapped to :class:`~.base.BatchStatus`; results read as one JSONL stream
(``GET /v1/messages/batches/{id}/results``) whose lines ``{"custom_id", "result"}`` are joined
by ``custom_id``. The base URL has **no** ``/v1`` (``ANTHROPIC_BASE_URL`` convention).

Status mapping (the raw ``processing_status`` is kept in :attr:`~.base.BatchInfo.raw_status`):

=====================  ===========================================================  ==============
``processing_status``  condition                                                    status
=====================  ===========================================================  ==============
``in_progress``                                                                     ``in_progress``
``canceling``                                                                       ``cancelling``
``ended``              ``cancel_initiated_at`` is set                               ``cancelled``
``ended``              otherwise, ``request_counts.expired`` > 0                    ``expired``
``ended``              otherwise                                                    ``completed``
anything else                                                                       error
=====================  ===========================================================  ==============

Anthropic gives ``expired`` results only to requests that had not run when the batch's 24 h
window closed, so ``expired`` > 0 means exactly what OpenAI's ``expired`` status means: the
window ran out, finished requests have results, the rest must be sent again. A cancel wins
over expiry because someone asked for it (the caller decides whether that was the user).
``request_counts`` only count finished requests once the batch has ended, so ``completed`` and
``failed`` are ``None`` before then; ``total`` is always the sum of the counts.

Batch metadata: Anthropic batches carry **none** (nor an input file), so
:meth:`AnthropicBatchProvider.find_batch` cannot recognise "the batch of chunk 3 of job J". It
names a candidate only when the choice is unambiguous: among the batches created since
``created_after``, **exactly one** has ``requests`` requests. With none, or several (two chunks of
the same size, or another client submitting batches of that size), it returns ``None`` and the
caller creates the batch: paying twice for a chunk is possible then, attaching the wrong batch to
a chunk is not made more likely by guessing. Even a unique match can be another client's batch of
the same size, so the provider says :attr:`~.base.BatchProvider.proves_adoption` is False: the
caller adopts the candidate **provisionally**, never cancels it, and counts it as its own only
once it has ended and the ``custom_id`` values of its readable result lines are the chunk's (the
request ids can be read nowhere else); otherwise it leaves the batch alone and creates the chunk
again. For the same reason the caller looks back only a clock-skew margin before it recorded its
intent to create (:data:`~prefect_llm_batch.jobs.submit.ADOPT_CLOCK_SKEW_S`).

Retries: 408, 409, 429, 5xx (Anthropic's 529 ``overloaded_error`` included) and network errors
are retried with exponential backoff and jitter, honouring ``retry-after-ms`` / ``retry-after``.
A create is the exception, exactly as in :mod:`.openai`: 429 (``rate_limit_error``: nothing was
created) is retried, but a timeout, a dropped connection or a 5xx answer raises
:class:`~prefect_llm_batch.errors.AmbiguousCreate` and is never retried. HTTP 413
``request_too_large`` is :class:`~prefect_llm_batch.errors.ProviderRejected` (terminal).

Limits: Anthropic allows 100,000 requests or 256 MB per batch, but
:class:`~prefect_llm_batch.spec.BatchLimits` caps its fields at OpenAI's 50,000 requests and
200 MB, so this provider uses ``BatchLimits()`` (OpenAI's limits, which are stricter) by default.

Examples:
    >>> p = AnthropicBatchProvider(api_key="test-key")
    >>> body = p.build_body("claude-3-5-haiku-latest", "Hi", "Be brief", {"temperature": 0})
    >>> body["max_tokens"], body["messages"], body["system"], body["temperature"]
    (1024, [{'role': 'user', 'content': 'Hi'}], 'Be brief', 0)
    >>> p.build_line("k1", {"model": "m"})
    {'custom_id': 'k1', 'params': {'model': 'm'}}
    >>> p.parse_line({"custom_id": "k1", "result": {"type": "expired"}}, "msgbatch_1").error_kind.value
    'batch_expired'
    >>> p.close()
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import httpx
import orjson

from ..errors import ConfigError, InputError, LLMBatchError, ProviderRejected, ProviderUnavailable
from ..images import Image
from ..results import RowResult, short
from ..schemas import ResponseSchema
from ..spec import MESSAGES_ENDPOINT, BatchLimits, ErrorKind, normalise_base_url
from .anthropic_wire import (
    ANTHROPIC_MAX_IMAGE_BYTES,
    as_dict,
    as_int,
    errored_result,
    image_block,
    parse_message,
    parse_rfc3339,
    tool_for_schema,
)
from .base import (
    BatchInfo,
    BatchProvider,
    BatchStatus,
    ResultLines,
    decode_result_lines,
)
from .http import RetryingHTTP, error_fields, error_for_response, redact_json, url_origin

DEFAULT_BASE_URL = "https://api.anthropic.com"
#: The ``anthropic-version`` header sent with every call.
ANTHROPIC_VERSION = "2023-06-01"
#: ``max_tokens`` of a request whose params do not set it: Anthropic requires the field (>= 1),
#: OpenAI does not, so jobs written without it still run. Set ``max_tokens`` in the job's params
#: for longer answers (a cut answer is marked ``length``).
DEFAULT_MAX_TOKENS = 1024
#: Batches listed per page by :meth:`AnthropicBatchProvider.find_batch`.
LIST_PAGE_SIZE = 100


class AnthropicBatchProvider(RetryingHTTP, BatchProvider):
    """The Anthropic Message Batches API.

    Args:
        api_key: The API key (sent as ``x-api-key``, and only to the base URL's origin). Never
            logged or stored.
        base_url: Base URL **without** ``/v1`` (``ANTHROPIC_BASE_URL`` convention).
        name: Provider identity in request keys.
        key_base_url: Base URL written into request keys, when it differs from where requests go.
        limits: Batch size limits; default ``BatchLimits()`` (see the module docstring).
        max_retries: Attempts for retryable calls, first one included.
        backoff: Initial backoff in seconds; it doubles per attempt, with jitter, up to ``max_backoff``.
        max_backoff: Longest wait between two attempts when the server gives no ``retry-after``.
        read_timeout: Read timeout of ordinary calls in seconds.
        transport: Optional httpx transport (tests pass ``httpx.MockTransport``).
        sleep: Sleep function used between retries (tests may pass a fake).

    Raises:
        ConfigError: ``api_key`` is empty.

    Examples:
        >>> import httpx
        >>> def answer(request: httpx.Request) -> httpx.Response:
        ...     assert request.headers["anthropic-version"] == "2023-06-01"
        ...     return httpx.Response(200, json={"id": "msgbatch_1", "type": "message_batch",
        ...         "processing_status": "ended", "cancel_initiated_at": None,
        ...         "created_at": "2024-08-20T18:37:24.100435Z",
        ...         "request_counts": {"processing": 0, "succeeded": 2, "errored": 1,
        ...                            "canceled": 0, "expired": 0}})
        >>> with AnthropicBatchProvider(api_key="k", transport=httpx.MockTransport(answer)) as p:
        ...     info = p.retrieve("msgbatch_1")
        >>> info.status.value, info.raw_status, info.total, info.completed, info.failed
        ('completed', 'ended', 3, 2, 1)
    """

    #: A batch found by :meth:`find_batch` is a candidate only (see the module docstring).
    proves_adoption = False

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        name: str = "anthropic",
        key_base_url: str | None = None,
        limits: BatchLimits | None = None,
        max_retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        read_timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ConfigError("no API key: set ANTHROPIC_API_KEY or pass a credentials block")
        self.name = name
        self.limits = limits or BatchLimits()
        self._base_url = base_url.rstrip("/")
        self._open_client(
            base_url=self._base_url,
            key_base_url=normalise_base_url(key_base_url or base_url),
            headers={
                "x-api-key": api_key,
                "anthropic-version": ANTHROPIC_VERSION,
                "content-type": "application/json",
            },
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            read_timeout=read_timeout,
            transport=transport,
            sleep=sleep,
            home_only_header="x-api-key",
        )

    @property
    def key_base_url(self) -> str:
        return self._key_base_url

    @property
    def endpoint(self) -> str:
        return MESSAGES_ENDPOINT

    # ---- pure ---------------------------------------------------------------------------

    def build_body(
        self,
        model: str,
        prompt: str,
        system: str | None,
        params: dict[str, Any],
        schema: ResponseSchema | None = None,
    ) -> dict[str, Any]:
        """Build a Messages API body; ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS`.

        With a ``schema``, a tool shaped by it is forced (:func:`tool_for_schema`).

        Raises:
            InputError: ``params`` asks to stream, or has a ``max_tokens`` that is not an integer >= 1.
        """
        if params.get("stream"):
            raise InputError("params.stream: the Message Batches API does not stream; remove 'stream'")
        max_tokens = params.get("max_tokens", DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InputError(f"params.max_tokens must be an integer >= 1 for Anthropic, not {max_tokens!r}")
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }
        if system:
            body["system"] = system
        body.update(params)
        if schema is not None:
            body.update(tool_for_schema(schema.schema, name=schema.name))
        return body

    def cache_system_prompt(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body with its system prompt as one text block marked ``cache_control: {"type":
        "ephemeral"}`` (a body without a system prompt is returned as is).

        Examples:
            >>> p = AnthropicBatchProvider(api_key="fake-key-doc")
            >>> p.cache_system_prompt({"system": "Be brief."})["system"]
            [{'type': 'text', 'text': 'Be brief.', 'cache_control': {'type': 'ephemeral'}}]
        """
        system = body.get("system")
        if not isinstance(system, str) or not system:
            return body
        block = {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}
        return {**body, "system": [block]}

    max_image_bytes = ANTHROPIC_MAX_IMAGE_BYTES

    def add_images(self, body: dict[str, Any], images: list[Image]) -> dict[str, Any]:
        """The body whose user message is a text block then one image block per image
        (:func:`image_block`)."""
        if not images:
            return body
        messages = [dict(m) for m in body["messages"]]
        user = messages[-1]
        user["content"] = [{"type": "text", "text": user["content"]}, *(image_block(i) for i in images)]
        return {**body, "messages": messages}

    def build_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": body}

    def parse_line(self, line: dict[str, Any], batch_id: str | None) -> RowResult:
        cid = str(line.get("custom_id"))
        result = line.get("result")
        rtype = result.get("type") if isinstance(result, dict) else None
        if not isinstance(result, dict):
            message = "result line has no result"
        elif rtype == "succeeded":
            return parse_message(cid, result.get("message"), batch_id)
        elif rtype == "errored":
            return errored_result(cid, redact_json(result.get("error"), self._secrets()), batch_id)
        elif rtype == "canceled":
            return RowResult(
                custom_id=cid,
                error_kind=ErrorKind.BATCH_CANCELLED,
                error="canceled: the batch was canceled before this request ran",
                batch_id=batch_id,
            )
        elif rtype == "expired":
            return RowResult(
                custom_id=cid,
                error_kind=ErrorKind.BATCH_EXPIRED,
                error="expired: the batch reached its 24 hour limit before this request ran",
                batch_id=batch_id,
            )
        else:
            message = short(self._redact(f"result line has the unknown result type {rtype!r}"))
        return RowResult(custom_id=cid, error_kind=ErrorKind.PARSE_ERROR, error=message, batch_id=batch_id)

    @staticmethod
    def batch_info(raw: dict[str, Any]) -> BatchInfo:
        """Map a Message Batch object to :class:`BatchInfo` (see the module docstring's table).

        For want of files, ``output_file_id`` holds the batch's ``results_url`` (``None`` until it ends).

        Raises:
            ProviderRejected: The ``processing_status`` is unknown (never guessed).

        Examples:
            >>> counts = {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 2}
            >>> info = AnthropicBatchProvider.batch_info(
            ...     {"id": "msgbatch_1", "processing_status": "ended", "request_counts": counts})
            >>> info.status.value, info.total, info.completed, info.failed
            ('expired', 3, 1, 2)
        """
        raw_status = str(raw.get("processing_status"))
        counts = as_dict(raw.get("request_counts"))
        normal = raw_status.lower()
        if normal == "in_progress":
            status = BatchStatus.IN_PROGRESS
        elif normal == "canceling":
            status = BatchStatus.CANCELLING
        elif normal == "ended":
            if raw.get("cancel_initiated_at"):
                status = BatchStatus.CANCELLED
            elif as_int(counts.get("expired")) > 0:
                status = BatchStatus.EXPIRED
            else:
                status = BatchStatus.COMPLETED
        else:
            raise ProviderRejected(
                f"batch {raw.get('id')} has the unknown status {raw_status!r}; refusing to guess"
            )
        total = sum(as_int(v) for v in counts.values())
        completed = failed = None
        if status.ended:
            completed = as_int(counts.get("succeeded"))
            failed = sum(as_int(counts.get(k)) for k in ("errored", "canceled", "expired"))
        results_url = raw.get("results_url")
        return BatchInfo(
            id=str(raw["id"]),
            status=status,
            raw_status=raw_status,
            total=total if counts else None,
            completed=completed,
            failed=failed,
            output_file_id=results_url if isinstance(results_url, str) and results_url else None,
            created_at=parse_rfc3339(raw.get("created_at")),
        )

    # ---- HTTP ---------------------------------------------------------------------------

    def _error_for_response(self, response: httpx.Response, what: str) -> LLMBatchError:
        error = error_for_response(response, what)
        if isinstance(error, ProviderRejected) and error.code is None:
            # Anthropic's envelope has no code: its error type (request_too_large...) is the code.
            _, _, etype = error_fields(response)
            return ProviderRejected(error.message, status_code=error.status_code, code=etype)
        return error

    def upload(self, data: bytes, filename: str) -> None:
        """Nothing to upload: requests go inline with :meth:`create`."""
        return None

    def create(
        self, data: bytes, input_file_id: str | None, metadata: dict[str, str], *, requests: int
    ) -> BatchInfo:
        """Create a batch from ``data`` (JSONL of :meth:`build_line` lines), sent inline.

        ``input_file_id`` and ``metadata`` are ignored: Anthropic batches have neither.

        Raises:
            AmbiguousCreate: A timeout, dropped connection or 5xx: the batch may exist.
            ProviderRejected: 4xx other than 429, e.g. 413 ``request_too_large``.
            ValueError: A line of ``data`` is not a JSON object with ``custom_id`` and ``params``.
        """
        lines = []
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"line {number} of the batch input is not JSON") from exc
            if not isinstance(line, dict) or "custom_id" not in line or "params" not in line:
                raise ValueError(f"line {number} of the batch input is not a {{custom_id, params}} object")
            lines.append(line)
        payload = orjson.dumps({"requests": lines})
        # A 429 means the batch was not made: retry it. Anything that may have reached the
        # server raises AmbiguousCreate and is resolved by the caller through find_batch.
        response = self._retrying(
            lambda: self._send(
                "POST", "/v1/messages/batches", "create message batch", idempotent=False, content=payload
            )
        )
        return self.batch_info(response.json())

    def find_batch(
        self,
        metadata: dict[str, str],
        created_after: float | None = None,
        *,
        requests: int | None = None,
        exclude: Collection[str] = (),
        input_file_id: str | None = None,
    ) -> BatchInfo | None:
        """Name the one batch since ``created_after`` with ``requests`` requests: a candidate, not
        a proof (see the module docstring).

        ``metadata`` and ``input_file_id`` are ignored (Anthropic batches carry neither). Without
        ``requests`` nothing can be matched and the answer is ``None``. Batches in ``exclude``
        (those other chunks of the job own, or found not to be the caller's) are never candidates.
        """
        if requests is None:
            return None
        matches: list[BatchInfo] = []
        after: str | None = None
        for _ in range(10_000):  # 1,000,000 batches at most
            params: dict[str, Any] = {"limit": LIST_PAGE_SIZE}
            if after:
                params["after_id"] = after
            page = self._json("GET", "/v1/messages/batches", "list message batches", params=params)
            data = [raw for raw in page.get("data") or [] if isinstance(raw, dict)]
            too_old = False
            for raw in data:
                created = parse_rfc3339(raw.get("created_at"))
                if created_after is not None and created is not None and created < created_after:
                    too_old = True  # newest first: the rest are older still
                    break
                counts = raw.get("request_counts")
                if raw.get("id") in exclude:
                    continue
                if isinstance(counts, dict) and sum(as_int(v) for v in counts.values()) == requests:
                    matches.append(self.batch_info(raw))
                    if len(matches) > 1:
                        return None
            if too_old or not page.get("has_more") or not data:
                break
            after = str(page.get("last_id") or data[-1].get("id"))
        return matches[0] if len(matches) == 1 else None

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self.batch_info(
            self._json("GET", f"/v1/messages/batches/{batch_id}", f"retrieve message batch {batch_id}")
        )

    def cancel(self, batch_id: str) -> BatchInfo:
        return self.batch_info(
            self._json("POST", f"/v1/messages/batches/{batch_id}/cancel", f"cancel message batch {batch_id}")
        )

    def _results_url(self, batch: BatchInfo) -> str:
        url = batch.output_file_id
        # Follow results_url only on the base URL's origin (a gateway's batch may name
        # api.anthropic.com): the key goes nowhere else.
        if url and url.startswith(("http://", "https://")) and url_origin(url) == self._origin:
            return url
        return f"/v1/messages/batches/{batch.id}/results"

    def iter_results(self, batch: BatchInfo) -> Iterator[RowResult]:
        """Stream the batch's results (JSONL) and yield one result per line, ``batch_id`` set.

        Opening the stream is retried; a stream cut halfway raises
        :class:`~prefect_llm_batch.errors.ProviderUnavailable` (collect again from the start).
        """
        what = f"download of the results of message batch {batch.id}"
        url = self._results_url(batch)
        response = self._retrying(lambda: self._send("GET", url, what, stream=True))
        try:
            for line in decode_result_lines(
                response.iter_lines(), f"the results of message batch {batch.id}"
            ):
                yield self.parse_line(line, batch.id)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise ProviderUnavailable(f"{what}: the stream broke off ({type(exc).__name__})") from exc
        finally:
            response.close()

    def read_results(self, batch: BatchInfo, *, embeddings: bool = False) -> ResultLines:
        """Stream the batch's results to a local temporary file in pieces and parse it in slices:
        memory holds a slice of the raw results and the parsed ones, not the file; an unreadable
        line is counted."""
        what = f"download of the results of message batch {batch.id}"
        save = functools.partial(self._save, self._results_url(batch), what)
        where = f"the results of message batch {batch.id}"
        return self.read_result_file(save, batch.id, where=where, embeddings=embeddings)

    def delete_file(self, file_id: str) -> None:
        """Nothing to delete: Anthropic batches have no files."""
        return None

    def close(self) -> None:
        self._client.close()
