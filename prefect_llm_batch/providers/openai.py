"""The OpenAI Batch API (and OpenAI-compatible gateways that speak it), over httpx.

Implements the wire facts of the project's provider reference literally: multipart upload
with ``purpose=batch``, ``POST /batches`` with ``completion_window="24h"`` and metadata, status
mapping (case-normalised), output **and** error files (``error_file_id`` may be null or ``""``,
``output_file_id`` null when every request failed), result lines joined by ``custom_id``.

Retries: 408, 409, 429 (not ``insufficient_quota``), 5xx and network errors are retried with
exponential backoff and jitter, honouring ``retry-after-ms`` / ``retry-after``. A create is the
exception: a create that may have reached the server (timeout, dropped connection, 5xx) is
never retried; it raises :class:`~prefect_llm_batch.errors.AmbiguousCreate` so the caller can
look for the batch by its metadata first.

Examples:
    >>> p = OpenAIBatchProvider(api_key="test-key", base_url="https://api.openai.com/v1/")
    >>> p.build_line("k1", {"model": "m"})
    {'custom_id': 'k1', 'method': 'POST', 'url': '/v1/chat/completions', 'body': {'model': 'm'}}
    >>> p.parse_line({"custom_id": "k1", "response": None,
    ...               "error": {"code": "batch_expired", "message": "expired"}}, "b").error_kind.value
    'batch_expired'
    >>> p.close()
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import httpx

from ..errors import (
    ConfigError,
    InputError,
    LLMBatchError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from ..requests import chat_body, normalise_base_url
from ..results import (
    NEVER_RAN_CODES,
    RowResult,
    error_kind_for_status,
    parse_chat_completion,
    parse_embedding,
    short,
)
from ..schemas import ResponseSchema
from ..spec import BatchLimits, ErrorKind
from .base import BatchInfo, BatchProvider, BatchStatus, decode_result_lines
from .http import RetryingHTTP

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
#: Endpoints this provider builds requests for.
ENDPOINTS = frozenset({CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT})

_STATUSES = {s.value: s for s in BatchStatus}


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


def _error_fields(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """Message, code and type of an OpenAI error envelope (or the raw text)."""
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
    """Translate an HTTP error response into the project's error tree (quoting the provider)."""
    status = response.status_code
    message, code, etype = _error_fields(response)
    text = f"{what} failed with HTTP {status}: {message}"
    kind = error_kind_for_status(status, code, etype)
    if kind is ErrorKind.RATE_LIMITED:
        return RateLimited(text, retry_after=parse_retry_after(response.headers))
    if kind is ErrorKind.SERVER_ERROR:
        return ProviderUnavailable(text, status_code=status, retry_after=parse_retry_after(response.headers))
    return ProviderRejected(text, status_code=status, code=code)


class OpenAIBatchProvider(RetryingHTTP, BatchProvider):
    """The OpenAI Batch API.

    Args:
        api_key: The API key (sent as ``Authorization: Bearer``). Never logged or stored.
        base_url: Base URL including ``/v1`` (``OPENAI_BASE_URL`` convention).
        name: Provider identity in request keys.
        key_base_url: Base URL written into request keys, when it differs from where requests
            go (the simulator uses a fixed one so its answers are cached across ports).
        limits: Batch size limits.
        max_retries: Attempts for retryable calls, first one included.
        backoff: Initial backoff in seconds; it doubles per attempt, with jitter, up to ``max_backoff``.
        max_backoff: Longest wait between two attempts when the server gives no ``retry-after``.
        read_timeout: Read timeout of ordinary calls in seconds.
        transport: Optional httpx transport (tests pass ``httpx.MockTransport``).
        sleep: Sleep function used between retries (tests may pass a fake).
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        name: str = "openai",
        endpoint: str = CHAT_ENDPOINT,
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
            raise ConfigError("no API key: set OPENAI_API_KEY or pass a credentials block")
        self.name = name
        if endpoint not in ENDPOINTS:
            raise ConfigError(f"endpoint {endpoint!r} is not supported; use one of {sorted(ENDPOINTS)}")
        self._endpoint = endpoint
        self.limits = limits or BatchLimits()
        self._base_url = base_url.rstrip("/")
        self._open_client(
            base_url=self._base_url,
            key_base_url=normalise_base_url(key_base_url or base_url),
            headers={"Authorization": f"Bearer {api_key}"},
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            read_timeout=read_timeout,
            transport=transport,
            sleep=sleep,
        )

    @property
    def key_base_url(self) -> str:
        return self._key_base_url

    @property
    def endpoint(self) -> str:
        return self._endpoint

    # ---- pure ---------------------------------------------------------------------------

    def build_body(
        self,
        model: str,
        prompt: str,
        system: str | None,
        params: dict[str, Any],
        schema: ResponseSchema | None = None,
    ) -> dict[str, Any]:
        if self._endpoint == EMBEDDINGS_ENDPOINT:
            if schema is not None or system:
                raise InputError("embeddings take one input template: no system prompt or response schema")
            return {"model": model, "input": prompt, **params}
        body = chat_body(model, prompt, system, params)
        if schema is not None:
            body["response_format"] = schema.openai_response_format()
        return body

    @property
    def wire_endpoint(self) -> str:
        """The endpoint as written in input lines and at create (services may spell it differently)."""
        return self.endpoint

    def build_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": self.wire_endpoint, "body": body}

    def parse_line(self, line: dict[str, Any], batch_id: str | None) -> RowResult:
        cid = str(line.get("custom_id"))
        response = line.get("response")
        error = line.get("error")
        if isinstance(response, dict):
            status = response.get("status_code")
            body = response.get("body")
            if status == 200 and isinstance(body, dict):
                if self._endpoint == EMBEDDINGS_ENDPOINT:
                    return parse_embedding(cid, body, batch_id)
                return parse_chat_completion(cid, body, batch_id)
            err = body.get("error") if isinstance(body, dict) else None
            err = err if isinstance(err, dict) else {}
            status_code = status if isinstance(status, int) else 500
            kind = error_kind_for_status(status_code, err.get("code"), err.get("type"))
            message = err.get("message") or f"HTTP {status_code}"
            return RowResult(
                custom_id=cid,
                error_kind=kind,
                error=short(f"HTTP {status_code}: {message}"),
                batch_id=batch_id,
            )
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            kind = NEVER_RAN_CODES.get(code, ErrorKind.SERVER_ERROR)
            message = error.get("message") or code or "the request did not run"
            return RowResult(
                custom_id=cid, error_kind=kind, error=short(f"{code}: {message}"), batch_id=batch_id
            )
        return RowResult(
            custom_id=cid,
            error_kind=ErrorKind.PARSE_ERROR,
            error="result line has neither response nor error",
            batch_id=batch_id,
        )

    # ---- HTTP ---------------------------------------------------------------------------

    def _error_for_response(self, response: httpx.Response, what: str) -> LLMBatchError:
        return error_for_response(response, what)

    def upload(self, data: bytes, filename: str) -> str | None:
        def call() -> httpx.Response:
            return self._send(
                "POST",
                "/files",
                "upload of the batch input file",
                files={"file": (filename, data, "application/jsonl")},
                data={"purpose": "batch"},
            )

        payload = self._retrying(call).json()
        return str(payload["id"])

    def create(
        self, data: bytes, input_file_id: str | None, metadata: dict[str, str], *, requests: int
    ) -> BatchInfo:
        if not input_file_id:
            raise ValueError("the OpenAI Batch API creates batches from an uploaded file: upload first")
        body = {
            "input_file_id": input_file_id,
            "endpoint": self.wire_endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        # A 429 means the batch was not made: retry it. Anything that may have reached the
        # server raises AmbiguousCreate and is resolved by the caller through find_batch.
        response = self._retrying(
            lambda: self._send("POST", "/batches", "create batch", idempotent=False, json=body)
        )
        return self.batch_info(response.json())

    def find_batch(
        self,
        metadata: dict[str, str],
        created_after: float | None = None,
        *,
        requests: int | None = None,
        exclude: Collection[str] = (),
    ) -> BatchInfo | None:
        after: str | None = None
        for _ in range(1000):  # 100,000 batches at most
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = self._json("GET", "/batches", "list batches", params=params)
            data = page.get("data") or []
            for raw in data:
                meta = raw.get("metadata") or {}
                if all(meta.get(k) == v for k, v in metadata.items()):
                    return self.batch_info(raw)
            if not page.get("has_more") or not data:
                return None
            oldest = data[-1].get("created_at")
            if created_after is not None and isinstance(oldest, (int, float)) and oldest < created_after:
                return None
            after = str(page.get("last_id") or data[-1].get("id"))
        return None

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self.batch_info(self._json("GET", f"/batches/{batch_id}", f"retrieve batch {batch_id}"))

    def cancel(self, batch_id: str) -> BatchInfo:
        return self.batch_info(self._json("POST", f"/batches/{batch_id}/cancel", f"cancel batch {batch_id}"))

    def _download(self, file_id: str, what: str) -> bytes:
        return self._retrying(lambda: self._send("GET", f"/files/{file_id}/content", what)).content

    def iter_results(self, batch: BatchInfo) -> Iterator[RowResult]:
        for file_id, what in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
            if not file_id:  # null, or "" on clean batches of some services
                continue
            data = self._download(file_id, f"download of the {what} file of batch {batch.id}")
            for line in decode_result_lines(data.splitlines(), f"the {what} file of batch {batch.id}"):
                yield self.parse_line(line, batch.id)

    def delete_file(self, file_id: str) -> None:
        self._retrying(lambda: self._send("DELETE", f"/files/{file_id}", f"delete file {file_id}"))

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def batch_info(raw: dict[str, Any]) -> BatchInfo:
        """Map a batch object to :class:`BatchInfo` (status case-normalised; unknown is an error).

        Examples:
            >>> OpenAIBatchProvider.batch_info({"id": "batch_1", "status": "In_Progress"}).status.value
            'in_progress'
        """
        raw_status = str(raw.get("status"))
        status = _STATUSES.get(raw_status.lower())
        if status is None:
            raise ProviderRejected(
                f"batch {raw.get('id')} has the unknown status {raw_status!r}; refusing to guess"
            )
        counts = raw.get("request_counts") or {}
        errors = raw.get("errors") or {}
        created = raw.get("created_at")
        return BatchInfo(
            id=str(raw["id"]),
            status=status,
            raw_status=raw_status,
            total=counts.get("total"),
            completed=counts.get("completed"),
            failed=counts.get("failed"),
            input_file_id=raw.get("input_file_id"),
            output_file_id=raw.get("output_file_id") or None,
            error_file_id=raw.get("error_file_id") or None,
            created_at=float(created) if isinstance(created, (int, float)) else None,
            errors=list(errors.get("data") or []) if isinstance(errors, dict) else [],
            metadata=dict(raw.get("metadata") or {}),
            usage=dict(raw.get("usage") or {}),
        )
