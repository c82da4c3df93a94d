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

import functools
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import httpx
import pyarrow as pa

from ..errors import (
    ConfigError,
    InputError,
    LLMBatchError,
    ProviderRejected,
)
from ..images import Image
from ..moderations import parse_moderation
from ..results import (
    EMBEDDING_COLUMN,
    NEVER_RAN_CODES,
    RowResult,
    error_kind_for_status,
    parse_chat_completion,
    parse_embedding,
    parse_response,
    short,
)
from ..schemas import ResponseSchema
from ..spec import (
    CHAT_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    MODERATIONS_ENDPOINT,
    RESPONSES_ENDPOINT,
    BatchLimits,
    ErrorKind,
    normalise_base_url,
)
from .base import (
    BatchInfo,
    BatchProvider,
    BatchStatus,
    ResultLines,
    decode_result_lines,
)
from .http import RetryingHTTP, error_for_response, redact_error, redact_json
from .openai_results import parse_chat_results

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Endpoints this provider builds requests for.
ENDPOINTS = frozenset({CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT, MODERATIONS_ENDPOINT})


def chat_body(
    model: str, prompt: str, system: str | None = None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build a chat-completions request body.

    Examples:
        >>> chat_body("gpt-4o-mini", "Hi", system="Be brief", params={"temperature": 0})
        {'model': 'gpt-4o-mini', 'messages': [{'role': 'system', 'content': 'Be brief'}, \
{'role': 'user', 'content': 'Hi'}], 'temperature': 0}
    """
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {"model": model, "messages": messages}
    if params:
        body.update(params)
    return body


def responses_body(
    model: str,
    prompt: str,
    system: str | None = None,
    params: dict[str, Any] | None = None,
    schema: ResponseSchema | None = None,
) -> dict[str, Any]:
    """Build a Responses API (``/v1/responses``) request body: the prompt as ``input``, the system
    prompt as ``instructions``, a response schema as ``text.format`` (``json_schema``, strict).

    Raises:
        InputError: ``params`` sets ``input`` or ``instructions`` (they come from the templates), or
            ``text.format`` together with a response schema.

    Examples:
        >>> responses_body("gpt-4o-mini", "Hi", system="Be brief", params={"max_output_tokens": 50})
        {'model': 'gpt-4o-mini', 'input': 'Hi', 'instructions': 'Be brief', 'max_output_tokens': 50}
        >>> schema = ResponseSchema({"type": "object", "properties": {"n": {"type": "integer"}}}, name="n")
        >>> responses_body("m", "Hi", schema=schema)["text"]["format"]["name"]
        'n'
    """
    params = dict(params or {})
    taken = sorted({"input", "instructions"} & set(params))
    if taken:
        raise InputError(
            f"params may not set {taken} on the responses endpoint: input is the rendered prompt and "
            "instructions the system prompt"
        )
    body: dict[str, Any] = {"model": model, "input": prompt}
    if system:
        body["instructions"] = system
    body.update(params)
    if schema is not None:
        text = params.get("text")
        text = dict(text) if isinstance(text, dict) else {}
        if "format" in text:
            raise InputError("params may not set text.format together with a response schema")
        text["format"] = {
            "type": "json_schema",
            "name": schema.name,
            "schema": schema.strict(),
            "strict": True,
        }
        body["text"] = text
    return body


#: OpenAI's largest image: 20 MB per image (vision guide, "Image input requirements").
OPENAI_MAX_IMAGE_BYTES = 20 * 1024 * 1024


def chat_image_part(image: Image) -> dict[str, Any]:
    """A chat-completions content part of an image: its URL, or its bytes as a base64 data URL.

    Examples:
        >>> chat_image_part(Image(url="https://x/cat.png"))
        {'type': 'image_url', 'image_url': {'url': 'https://x/cat.png'}}
    """
    return {"type": "image_url", "image_url": {"url": image.data_url()}}


def responses_image_part(image: Image) -> dict[str, Any]:
    """A Responses API ``input_image`` content part (``detail`` ``auto``, the API's default).

    Examples:
        >>> responses_image_part(Image(url="https://x/cat.png"))
        {'type': 'input_image', 'image_url': 'https://x/cat.png', 'detail': 'auto'}
    """
    return {"type": "input_image", "image_url": image.data_url(), "detail": "auto"}


def chat_body_with_images(body: dict[str, Any], images: list[Image]) -> dict[str, Any]:
    """A chat-completions body whose last user message is its text then one part per image.

    Examples:
        >>> body = chat_body("m", "What is it?")
        >>> chat_body_with_images(body, [Image(url="https://x/a.png")])["messages"][0]["content"]
        [{'type': 'text', 'text': 'What is it?'}, {'type': 'image_url', 'image_url': {'url': 'https://x/a.png'}}]
    """
    messages = [dict(m) for m in body["messages"]]
    user = messages[-1]
    user["content"] = [{"type": "text", "text": user["content"]}, *(chat_image_part(i) for i in images)]
    return {**body, "messages": messages}


def responses_body_with_images(body: dict[str, Any], images: list[Image]) -> dict[str, Any]:
    """A Responses API body whose ``input`` is one user message: the prompt (``input_text``) then
    one ``input_image`` per image.

    Examples:
        >>> body = responses_body("m", "What is it?")
        >>> responses_body_with_images(body, [Image(url="https://x/a.png")])["input"][0]["content"][0]
        {'type': 'input_text', 'text': 'What is it?'}
    """
    content = [{"type": "input_text", "text": body["input"]}, *(responses_image_part(i) for i in images)]
    return {**body, "input": [{"role": "user", "content": content}]}


_STATUSES = {s.value: s for s in BatchStatus}


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
        schema_style: How chat requests carry a response schema (``spec.SchemaStyle``):
            ``openai`` (``json_schema``) or ``json_object_schema`` (llama.cpp's servers).
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
        schema_style: str = "openai",
    ) -> None:
        if not api_key:
            raise ConfigError("no API key: set OPENAI_API_KEY or pass a credentials block")
        if schema_style not in ("openai", "json_object_schema"):
            raise ConfigError(f"schema_style must be openai or json_object_schema, not {schema_style!r}")
        self.name = name
        self.schema_style = schema_style
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
        if self._endpoint == MODERATIONS_ENDPOINT:
            if schema is not None or system:
                raise InputError(
                    "moderations take one input template: no system prompt or response schema "
                    "(the answer columns are flagged and one score per category)"
                )
            return {"model": model, "input": prompt, **params}
        if self._endpoint == RESPONSES_ENDPOINT:
            return responses_body(model, prompt, system, params, schema)
        body = chat_body(model, prompt, system, params)
        if schema is not None:
            body["response_format"] = schema.response_format(self.schema_style)
        return body

    max_image_bytes = OPENAI_MAX_IMAGE_BYTES

    def add_images(self, body: dict[str, Any], images: list[Image]) -> dict[str, Any]:
        """The body with the images after the prompt: ``image_url`` parts (chat completions) or
        ``input_image`` parts (Responses); URLs as they are, bytes as base64 data URLs.

        Raises:
            ConfigError: The endpoint is embeddings or moderations (text only here).
        """
        if not images:
            return body
        if self._endpoint == CHAT_ENDPOINT:
            return chat_body_with_images(body, images)
        if self._endpoint == RESPONSES_ENDPOINT:
            return responses_body_with_images(body, images)
        return super().add_images(body, images)

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
                if self._endpoint == RESPONSES_ENDPOINT:
                    return parse_response(cid, body, batch_id)
                if self._endpoint == MODERATIONS_ENDPOINT:
                    return parse_moderation(cid, body, batch_id)
                return parse_chat_completion(cid, body, batch_id)
            err = body.get("error") if isinstance(body, dict) else None
            err = err if isinstance(err, dict) else {}
            status_code = status if isinstance(status, int) else 500
            kind = error_kind_for_status(status_code, err.get("code"), err.get("type"))
            message = err.get("message") or f"HTTP {status_code}"
            return RowResult(
                custom_id=cid,
                error_kind=kind,
                error=short(self._redact(f"HTTP {status_code}: {message}")),
                batch_id=batch_id,
            )
        if isinstance(error, dict):
            code = str(error.get("code") or "")
            kind = NEVER_RAN_CODES.get(code, ErrorKind.SERVER_ERROR)
            message = error.get("message") or code or "the request did not run"
            return RowResult(
                custom_id=cid,
                error_kind=kind,
                error=short(self._redact(f"{code}: {message}")),
                batch_id=batch_id,
            )
        return RowResult(
            custom_id=cid,
            error_kind=ErrorKind.PARSE_ERROR,
            error="result line has neither response nor error",
            batch_id=batch_id,
        )

    def parse_results(
        self,
        data: bytes,
        batch_id: str | None,
        *,
        where: str = "a result file",
        embeddings: bool = False,
        unreadable: list[int] | None = None,
        first_line: int = 1,
    ) -> pa.Table:
        """Parse an output or error file (or a slice of whole lines of one); chat completions
        are parsed vectorised (:func:`parse_chat_results`), anything it does not take (a slice
        with an unreadable line among others) line by line.

        Examples:
            >>> p = OpenAIBatchProvider(api_key="test-key")
            >>> line = b'{"custom_id":"k1","response":null,"error":{"code":"batch_expired","message":"late"}}'
            >>> p.parse_results(line + b"\\n", "batch_1")["response_error_kind"].to_pylist()
            ['batch_expired']
            >>> p.close()
        """
        table = None
        if self._endpoint == CHAT_ENDPOINT:
            table = parse_chat_results(data, batch_id, self.parse_line)
        if table is None:
            return super().parse_results(
                data,
                batch_id,
                where=where,
                embeddings=embeddings,
                unreadable=unreadable,
                first_line=first_line,
            )
        if embeddings:
            table = table.append_column(EMBEDDING_COLUMN, pa.nulls(table.num_rows, pa.list_(pa.float32())))
        return table

    # ---- HTTP ---------------------------------------------------------------------------

    def _error_for_response(self, response: httpx.Response, what: str) -> LLMBatchError:
        return error_for_response(response, what)

    expires_remote_files = True

    def upload(self, data: bytes, filename: str, *, expires_after: int | None = None) -> str | None:
        """Upload a batch input file (``purpose=batch``); with ``expires_after`` (seconds), the
        provider deletes it that long after its creation (the SDK's multipart spelling
        ``expires_after[anchor]=created_at``, ``expires_after[seconds]=N``)."""
        form = {"purpose": "batch"}
        if expires_after is not None:
            form |= {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(expires_after)}

        def call() -> httpx.Response:
            return self._send(
                "POST",
                "/files",
                "upload of the batch input file",
                files={"file": (filename, data, "application/jsonl")},
                data=form,
            )

        payload = self._retrying(call).json()
        return str(payload["id"])

    def create(
        self,
        data: bytes,
        input_file_id: str | None,
        metadata: dict[str, str],
        *,
        requests: int,
        output_expires_after: int | None = None,
    ) -> BatchInfo:
        """Create a batch from an uploaded file; with ``output_expires_after`` (seconds), its output
        and error files are deleted that long after their creation."""
        if not input_file_id:
            raise ValueError("the OpenAI Batch API creates batches from an uploaded file: upload first")
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": self.wire_endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        if output_expires_after is not None:
            body["output_expires_after"] = {"anchor": "created_at", "seconds": output_expires_after}
        # A 429 means the batch was not made: retry it. Anything that may have reached the
        # server raises AmbiguousCreate and is resolved by the caller through find_batch.
        response = self._retrying(
            lambda: self._send("POST", "/batches", "create batch", idempotent=False, json=body)
        )
        return self._batch(response.json())

    def find_batch(
        self,
        metadata: dict[str, str],
        created_after: float | None = None,
        *,
        requests: int | None = None,
        exclude: Collection[str] = (),
        input_file_id: str | None = None,
    ) -> BatchInfo | None:
        """Return the newest batch whose metadata holds every item of ``metadata`` and, when
        ``input_file_id`` is given, that was made from that file; never one in ``exclude``.

        Both together prove a batch is the caller's: another job (or a copy of this job's state)
        can reuse the metadata, but not the file the caller uploaded. ``requests`` is not needed.
        """
        after: str | None = None
        for _ in range(1000):  # 100,000 batches at most
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = self._json("GET", "/batches", "list batches", params=params)
            data = page.get("data") or []
            for raw in data:
                if raw.get("id") in exclude:
                    continue
                if input_file_id is not None and raw.get("input_file_id") != input_file_id:
                    continue
                meta = raw.get("metadata") or {}
                if all(meta.get(k) == v for k, v in metadata.items()):
                    return self._batch(raw)
            if not page.get("has_more") or not data:
                return None
            oldest = data[-1].get("created_at")
            if created_after is not None and isinstance(oldest, (int, float)) and oldest < created_after:
                return None
            after = str(page.get("last_id") or data[-1].get("id"))
        return None

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self._batch(self._json("GET", f"/batches/{batch_id}", f"retrieve batch {batch_id}"))

    def cancel(self, batch_id: str) -> BatchInfo:
        return self._batch(self._json("POST", f"/batches/{batch_id}/cancel", f"cancel batch {batch_id}"))

    def _batch(self, raw: dict[str, Any]) -> BatchInfo:
        """:meth:`batch_info` with the provider's text redacted (``errors.data``, an unknown status)."""
        secrets = self._secrets()
        try:
            info = self.batch_info(raw)
        except LLMBatchError as exc:
            raise redact_error(exc, secrets) from None
        info.errors = redact_json(info.errors, secrets)
        return info

    def _download(self, file_id: str, what: str) -> bytes:
        return self._retrying(lambda: self._send("GET", f"/files/{file_id}/content", what)).content

    def iter_results(self, batch: BatchInfo) -> Iterator[RowResult]:
        for file_id, what in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
            if not file_id:  # null, or "" on clean batches of some services
                continue
            data = self._download(file_id, f"download of the {what} file of batch {batch.id}")
            for line in decode_result_lines(data.splitlines(), f"the {what} file of batch {batch.id}"):
                yield self.parse_line(line, batch.id)

    def read_results(self, batch: BatchInfo, *, embeddings: bool = False) -> ResultLines:
        """Stream the output and error files to local temporary files in pieces, and parse each
        in slices: memory holds a slice of a file's raw bytes and the parsed results, not the
        file; an unreadable line is counted."""
        parts = []
        for file_id, what in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
            if not file_id:  # null, or "" on clean batches of some services
                continue
            download = f"download of the {what} file of batch {batch.id}"
            save = functools.partial(self._save, f"/files/{file_id}/content", download)
            where = f"the {what} file of batch {batch.id}"
            parts.append(self.read_result_file(save, batch.id, where=where, embeddings=embeddings))
        return ResultLines.combine(parts, embeddings=embeddings)

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
