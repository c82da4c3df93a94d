"""The Gemini API batch mode (Gemini Developer API, ``v1beta``), over httpx.

Wire facts (``docs/providers.md``, section "Gemini API batch mode", says where each was read):

* Key in the ``x-goog-api-key`` header, sent only to the base URL's origin. The base URL has
  **no** version suffix (``GOOGLE_GEMINI_BASE_URL`` convention, default
  ``https://generativelanguage.googleapis.com``); batch mode lives under ``v1beta``.
* Requests go as a JSONL **file** through the Files API's resumable upload (``POST
  upload/v1beta/files`` with ``X-Goog-Upload-Protocol: resumable`` and ``X-Goog-Upload-Command:
  start``, then ``upload, finalize`` to the ``x-goog-upload-url`` it answers). Each line is
  ``{"key": custom_id, "request": GenerateContentRequest}``. Inline requests are not used: one
  path for every size (files take up to 2 GB, inline requests under 20 MB).
* Create ``POST v1beta/models/{model}:batchGenerateContent`` with ``{"batch": {"displayName",
  "inputConfig": {"fileName"}}}``; get ``GET v1beta/batches/{id}``; list ``GET v1beta/batches``
  (``{operations, nextPageToken}``); cancel ``POST v1beta/batches/{id}:cancel``. Answers are
  Operations: the batch is in ``metadata`` (``state``, ``batchStats``, ``output.responsesFile``).
* Result lines ``{"key", "response": GenerateContentResponse}`` or ``{"key", "error": {"code",
  "message"}}`` (gRPC codes), in no guaranteed order; downloaded from
  ``v1beta/files/{id}:download?alt=media``.

Batches carry no metadata: the job's ``{job_id, chunk_id, attempt}`` metadata is written into the
``displayName`` (:func:`display_name`), and :meth:`GeminiBatchProvider.find_batch` matches a listed
batch on it and on its input file, which proves the batch is the caller's.

States (the raw state is kept in :attr:`~.base.BatchInfo.raw_status`; the SDK's ``JOB_STATE_*``
spellings are read too):

===========================  ==============
``metadata.state``           status
===========================  ==============
``BATCH_STATE_PENDING``      ``validating``
``BATCH_STATE_RUNNING``      ``in_progress``
``BATCH_STATE_SUCCEEDED``    ``completed``
``BATCH_STATE_FAILED``       ``failed``
``BATCH_STATE_CANCELLED``    ``cancelled``
``BATCH_STATE_EXPIRED``      ``expired``
anything else                error
===========================  ==============

Per-line errors carry gRPC status codes (:data:`GRPC_CODE_KINDS`); an HTTP status (>= 100) or a
status name (``INVALID_ARGUMENT``) is read too. Vertex AI batch prediction (GCS / BigQuery in and
out) is a different API and is not supported.

Examples:
    >>> p = GeminiBatchProvider(api_key="fake-key-gemini")
    >>> body = p.build_body("gemini-2.5-flash", "Hi", "Be brief", {"temperature": 0})
    >>> body["model"], body["contents"]
    ('models/gemini-2.5-flash', [{'role': 'user', 'parts': [{'text': 'Hi'}]}])
    >>> body["systemInstruction"], body["generationConfig"]
    ({'parts': [{'text': 'Be brief'}]}, {'temperature': 0})
    >>> p.build_line("k1", {"contents": []})
    {'custom_id': 'k1', 'request': {'contents': []}}
    >>> wire_lines(b'{"custom_id":"k1","request":{}}\\n')
    b'{"key":"k1","request":{}}\\n'
    >>> p.parse_line({"key": "k1", "error": {"code": 4, "message": "late"}}, "batches/1").error_kind.value
    'request_timeout'
    >>> p.close()
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import httpx
import orjson
import pyarrow as pa

from ..errors import ConfigError, InputError, LLMBatchError, ProviderRejected, ProviderUnavailable
from ..images import Image
from ..results import RowResult, results_to_table, short
from ..schemas import ResponseSchema
from ..spec import BatchLimits, ErrorKind, normalise_base_url
from .anthropic_wire import parse_rfc3339
from .base import BatchInfo, BatchProvider, ResultLines
from .gemini_wire import (
    DISPLAY_NAME_PREFIX,
    STATES,
    as_dict,
    count_value,
    decode_keyed_lines,
    display_name,
    gemini_schema,
    line_error_kind,
    parse_generate_content,
    wire_lines,
)
from .http import RetryingHTTP, error_for_response, redact_json, url_origin

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
#: The API version of batch mode and the Files API.
API_VERSION = "v1beta"
#: The endpoint written into request keys (the requests are GenerateContent requests).
GENERATE_CONTENT_ENDPOINT = "/v1beta/models:generateContent"
#: Content type of uploaded request files.
JSONL_MIME_TYPE = "application/jsonl"
#: Batches listed per page by :meth:`GeminiBatchProvider.find_batch`.
LIST_PAGE_SIZE = 100


#: Gemini's inline data: a request of more than 20 MB in all must use the Files API instead
#: (image understanding guide); its base64 text is 4/3 of the bytes.
GEMINI_MAX_IMAGE_BYTES = 20_000_000 * 3 // 4


def inline_image_part(image: Image) -> dict[str, Any]:
    """A GenerateContent part carrying an image's bytes (``inlineData``: ``mimeType``, base64 ``data``).

    Examples:
        >>> inline_image_part(Image(data=b"GIF89a", media_type="image/gif"))
        {'inlineData': {'mimeType': 'image/gif', 'data': 'R0lGODlh'}}
    """
    return {"inlineData": {"mimeType": image.media_type, "data": image.base64()}}


def _batch_path(batch_id: str) -> str:
    return f"/{API_VERSION}/{batch_id if batch_id.startswith('batches/') else 'batches/' + batch_id}"


def _file_path(file_id: str) -> str:
    return f"/{API_VERSION}/{file_id if file_id.startswith('files/') else 'files/' + file_id}"


class GeminiBatchProvider(RetryingHTTP, BatchProvider):
    """The Gemini API batch mode (see the module docstring for the wire format).

    Args:
        api_key: The API key (sent as ``x-goog-api-key``, only to the base URL's origin). Never
            logged or stored.
        base_url: Base URL **without** a version (``GOOGLE_GEMINI_BASE_URL`` convention).
        name: Provider identity in request keys.
        key_base_url: Base URL written into request keys, when it differs from where requests go.
        limits: Batch size limits; default ``BatchLimits()``.
        max_retries: Attempts for retryable calls, first one included.
        backoff: Initial backoff in seconds, doubling per attempt with jitter up to ``max_backoff``.
        max_backoff: Longest wait between two attempts when the server gives no ``retry-after``.
        read_timeout: Read timeout of ordinary calls in seconds.
        transport: Optional httpx transport (tests pass ``httpx.MockTransport``).
        sleep: Sleep function used between retries.

    Raises:
        ConfigError: ``api_key`` is empty.

    Examples:
        >>> import httpx
        >>> def answer(request: httpx.Request) -> httpx.Response:
        ...     assert request.headers["x-goog-api-key"] == "fake-key-gemini"
        ...     return httpx.Response(200, json={"name": "batches/b1", "metadata": {
        ...         "state": "BATCH_STATE_SUCCEEDED", "createTime": "2025-01-01T00:00:00Z",
        ...         "batchStats": {"requestCount": "3", "successfulRequestCount": "2",
        ...                        "failedRequestCount": "1"},
        ...         "output": {"responsesFile": "files/out1"}}})
        >>> with GeminiBatchProvider(api_key="fake-key-gemini", transport=httpx.MockTransport(answer)) as p:
        ...     info = p.retrieve("batches/b1")
        >>> info.status.value, info.raw_status, info.total, info.completed, info.failed, info.output_file_id
        ('completed', 'BATCH_STATE_SUCCEEDED', 3, 2, 1, 'files/out1')
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        name: str = "gemini",
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
            raise ConfigError(
                "no API key: set GOOGLE_API_KEY (or GEMINI_API_KEY) or pass a credentials block"
            )
        self.name = name
        self.limits = limits or BatchLimits()
        self._base_url = base_url.rstrip("/")
        self._open_client(
            base_url=self._base_url,
            key_base_url=normalise_base_url(key_base_url or base_url),
            headers={"x-goog-api-key": api_key},
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            read_timeout=read_timeout,
            transport=transport,
            sleep=sleep,
            home_only_header="x-goog-api-key",
        )

    @property
    def key_base_url(self) -> str:
        return self._key_base_url

    @property
    def endpoint(self) -> str:
        return GENERATE_CONTENT_ENDPOINT

    # ---- pure ---------------------------------------------------------------------------

    def build_body(
        self,
        model: str,
        prompt: str,
        system: str | None,
        params: dict[str, Any],
        schema: ResponseSchema | None = None,
    ) -> dict[str, Any]:
        """Build a GenerateContentRequest: ``contents`` (one user turn), ``systemInstruction``,
        and ``generationConfig`` from ``params`` (Gemini's names: ``temperature``,
        ``maxOutputTokens``...; OpenAI's ``max_tokens`` is read as ``maxOutputTokens``).

        The ``model`` is in the body (``models/...``) so the request key covers it. With a
        ``schema``, ``responseMimeType`` is ``application/json`` and ``responseSchema`` the schema
        (:func:`gemini_schema`).

        Raises:
            InputError: ``params`` asks to stream or sets the response format itself.
        """
        if params.get("stream"):
            raise InputError("params.stream: Gemini batch mode does not stream; remove 'stream'")
        config = dict(params)
        if "max_tokens" in config:
            config["maxOutputTokens"] = config.pop("max_tokens")
        if schema is not None:
            taken = {"responseMimeType", "responseSchema", "responseJsonSchema"} & set(config)
            if taken:
                raise InputError(f"params may not set {sorted(taken)} with a response schema")
            config["responseMimeType"] = "application/json"
            config["responseSchema"] = gemini_schema(schema.schema)
        body: dict[str, Any] = {
            "model": model if model.startswith(("models/", "tunedModels/")) else f"models/{model}",
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        if config:
            body["generationConfig"] = config
        return body

    max_image_bytes = GEMINI_MAX_IMAGE_BYTES
    #: Image URLs are not passed through (``fileData`` takes Files API URIs): bytes only.
    accepts_image_urls = False

    def add_images(self, body: dict[str, Any], images: list[Image]) -> dict[str, Any]:
        """The body whose user turn's parts are the text then one ``inlineData`` part per image."""
        if not images:
            return body
        contents = [dict(c) for c in body["contents"]]
        user = contents[-1]
        user["parts"] = [*user["parts"], *(inline_image_part(i) for i in images)]
        return {**body, "contents": contents}

    def build_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The stored line ``{"custom_id", "request"}``: the job's chunk files keep ``custom_id``
        first, as every provider's do; :meth:`upload` sends it as ``{"key", "request"}``
        (:func:`wire_lines`)."""
        return {"custom_id": custom_id, "request": body}

    def parse_line(self, line: dict[str, Any], batch_id: str | None) -> RowResult:
        key = str(line.get("key"))
        error = line.get("error")
        if isinstance(error, dict):
            error = redact_json(error, self._secrets())
            kind, status = line_error_kind(error)
            message = short(f"{status}: {error.get('message') or 'the request failed'}")
            return RowResult(custom_id=key, error_kind=kind, error=message, batch_id=batch_id)
        if "response" not in line:
            return RowResult(
                custom_id=key,
                error_kind=ErrorKind.PARSE_ERROR,
                error="result line has neither response nor error",
                batch_id=batch_id,
            )
        return parse_generate_content(key, line.get("response"), batch_id)

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
        """Parse a responses file (lines keyed by ``key``, not ``custom_id``); see the base class.

        Examples:
            >>> p = GeminiBatchProvider(api_key="fake-key-gemini")
            >>> bad: list[int] = []
            >>> data = b'{"key": "k1", "error": {"code": 13}}\\n{"ke'
            >>> t = p.parse_results(data, "batches/1", unreadable=bad)
            >>> t.to_pydict()["response_error_kind"], bad
            (['server_error'], [2])
            >>> p.close()
        """
        lines = decode_keyed_lines(data.splitlines(), where, unreadable=unreadable, first_line=first_line)
        return results_to_table((self.parse_line(line, batch_id) for line in lines), embeddings=embeddings)

    @staticmethod
    def batch_info(raw: dict[str, Any]) -> BatchInfo:
        """Map a batch Operation (``{"name", "metadata": GenerateContentBatch, "error"?}``) to
        :class:`BatchInfo`; a bare GenerateContentBatch (no ``metadata``) is read too.

        Raises:
            ProviderRejected: The state is missing or unknown (never guessed).
        """
        batch = as_dict(raw.get("metadata")) or raw
        name = str(raw.get("name") or batch.get("name"))
        raw_state = str(batch.get("state"))
        status = STATES.get(raw_state)
        if status is None:
            raise ProviderRejected(f"batch {name} has the unknown state {raw_state!r}; refusing to guess")
        stats = as_dict(batch.get("batchStats"))
        output = as_dict(batch.get("output")) or as_dict(raw.get("response"))
        errors: list[dict[str, Any]] = []
        error = raw.get("error")
        if isinstance(error, dict):
            errors.append({"code": error.get("status") or error.get("code"), "message": error.get("message")})
        display = batch.get("displayName")
        metadata: dict[str, str] = {}
        if isinstance(display, str) and display.startswith(DISPLAY_NAME_PREFIX):
            try:
                decoded = orjson.loads(display[len(DISPLAY_NAME_PREFIX) :])
                metadata = {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}
            except orjson.JSONDecodeError:
                metadata = {}
        responses = output.get("responsesFile")
        input_file = as_dict(batch.get("inputConfig")).get("fileName")
        return BatchInfo(
            id=name,
            status=status,
            raw_status=raw_state,
            total=count_value(stats.get("requestCount")),
            completed=count_value(stats.get("successfulRequestCount")),
            failed=count_value(stats.get("failedRequestCount")),
            input_file_id=input_file if isinstance(input_file, str) else None,
            output_file_id=responses if isinstance(responses, str) and responses else None,
            created_at=parse_rfc3339(batch.get("createTime")),
            errors=errors,
            metadata=metadata,
        )

    # ---- HTTP ---------------------------------------------------------------------------

    def _error_for_response(self, response: httpx.Response, what: str) -> LLMBatchError:
        error = error_for_response(response, what)
        if isinstance(error, ProviderRejected) and error.code is None:
            # Google's envelope {"error": {"code": 400, "message", "status"}}: the status is the code.
            try:
                status = as_dict(as_dict(response.json()).get("error")).get("status")
            except ValueError:
                status = None
            if isinstance(status, str):
                return ProviderRejected(error.message, status_code=error.status_code, code=status)
        return error

    def upload(self, data: bytes, filename: str) -> str:
        """Upload the requests file with the resumable protocol; return its name (``files/...``)."""
        what = f"upload of {filename}"

        def attempt() -> str:
            wire = wire_lines(data)
            start = self._send(
                "POST",
                f"/upload/{API_VERSION}/files",
                what,
                headers={
                    "X-Goog-Upload-Protocol": "resumable",
                    "X-Goog-Upload-Command": "start",
                    "X-Goog-Upload-Header-Content-Length": str(len(wire)),
                    "X-Goog-Upload-Header-Content-Type": JSONL_MIME_TYPE,
                    "content-type": "application/json",
                },
                content=orjson.dumps({"file": {"displayName": filename}}),
            )
            url = start.headers.get("x-goog-upload-url")
            if not url:
                raise ProviderUnavailable(f"{what}: the answer to the upload start has no x-goog-upload-url")
            if url_origin(url) != self._origin:
                raise ProviderRejected(
                    f"{what}: the upload URL is on another host; refusing to send the file"
                )
            done = self._send(
                "POST",
                url,
                what,
                headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
                content=wire,
            )
            if done.headers.get("x-goog-upload-status", "final") != "final":
                raise ProviderUnavailable(f"{what}: the upload was not finalized")
            name = as_dict(as_dict(done.json()).get("file")).get("name")
            if not isinstance(name, str) or not name:
                raise ProviderUnavailable(f"{what}: the answer names no file")
            return name

        return self._retrying(attempt)

    @staticmethod
    def model_of(data: bytes) -> str:
        """The ``model`` of the first request line of ``data`` (``models/...``).

        Raises:
            ValueError: No line carries a model.
        """
        for raw in data.splitlines():
            if raw.strip():
                model = as_dict(as_dict(orjson.loads(raw)).get("request")).get("model")
                if isinstance(model, str) and model:
                    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
                break
        raise ValueError("the first line of the batch input has no request.model")

    def create(
        self, data: bytes, input_file_id: str | None, metadata: dict[str, str], *, requests: int
    ) -> BatchInfo:
        """Create a batch from the uploaded file ``input_file_id``; ``metadata`` goes in the
        ``displayName`` and the model is read from ``data``'s first line.

        Raises:
            AmbiguousCreate: A timeout, dropped connection or 5xx: the batch may exist.
            ProviderRejected: 4xx other than 429.
            ValueError: No ``input_file_id``, or no model in ``data``.
        """
        if not input_file_id:
            raise ValueError("Gemini batches are created from an uploaded file; upload first")
        model = self.model_of(data)
        payload = orjson.dumps(
            {"batch": {"displayName": display_name(metadata), "inputConfig": {"fileName": input_file_id}}}
        )
        response = self._retrying(
            lambda: self._send(
                "POST",
                f"/{API_VERSION}/{model}:batchGenerateContent",
                "create batch",
                idempotent=False,
                content=payload,
                headers={"content-type": "application/json"},
            )
        )
        info = self.batch_info(as_dict(response.json()))
        info.input_file_id = info.input_file_id or input_file_id
        return info

    def list_batches(self) -> Iterator[dict[str, Any]]:
        """Every batch Operation the key can see, page by page."""
        token: str | None = None
        for _ in range(10_000):
            params: dict[str, Any] = {"pageSize": LIST_PAGE_SIZE}
            if token:
                params["pageToken"] = token
            page = self._json("GET", f"/{API_VERSION}/batches", "list batches", params=params)
            yield from (op for op in page.get("operations") or [] if isinstance(op, dict))
            token = page.get("nextPageToken") or None
            if not token:
                return

    def find_batch(
        self,
        metadata: dict[str, str],
        created_after: float | None = None,
        *,
        requests: int | None = None,
        exclude: Collection[str] = (),
        input_file_id: str | None = None,
    ) -> BatchInfo | None:
        """The newest listed batch whose ``displayName`` holds ``metadata`` (and whose input file
        is ``input_file_id``, when the listing shows it), created after ``created_after``."""
        found: BatchInfo | None = None
        for raw in self.list_batches():
            try:
                info = self.batch_info(raw)
            except ProviderRejected:
                continue
            if info.id in exclude or info.metadata != metadata:
                continue
            if input_file_id and info.input_file_id and info.input_file_id != input_file_id:
                continue
            if created_after is not None and info.created_at is not None and info.created_at < created_after:
                continue
            if found is None or (info.created_at or 0.0) > (found.created_at or 0.0):
                found = info
        return found

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self.batch_info(self._json("GET", _batch_path(batch_id), f"retrieve batch {batch_id}"))

    def cancel(self, batch_id: str) -> BatchInfo:
        self._json("POST", f"{_batch_path(batch_id)}:cancel", f"cancel batch {batch_id}")
        return self.retrieve(batch_id)

    def _download_path(self, batch: BatchInfo) -> str | None:
        return f"{_file_path(batch.output_file_id)}:download?alt=media" if batch.output_file_id else None

    def iter_results(self, batch: BatchInfo) -> Iterator[RowResult]:
        """Yield one result per line of the batch's responses file (none without one)."""
        path = self._download_path(batch)
        if path is None:
            return
        with tempfile.TemporaryFile(prefix="prefect-llm-batch-results-") as file:
            self._save(path, f"download of the responses of {batch.id}", file)
            file.seek(0)
            for line in decode_keyed_lines(file, f"the responses file of {batch.id}"):
                yield self.parse_line(line, batch.id)

    def read_results(self, batch: BatchInfo, *, embeddings: bool = False) -> ResultLines:
        """Stream the responses file to a local temporary file and parse it in slices; a batch
        without one (failed, or nothing finished) has no lines."""
        path = self._download_path(batch)
        if path is None:
            return ResultLines.combine([], embeddings=embeddings)
        what = f"download of the responses of {batch.id}"
        save = functools.partial(self._save, path, what)
        where = f"the responses file of {batch.id}"
        return self.read_result_file(save, batch.id, where=where, embeddings=embeddings)

    def delete_file(self, file_id: str) -> None:
        """Delete an uploaded file (a file already gone is fine)."""
        try:
            self._retrying(lambda: self._send("DELETE", _file_path(file_id), f"delete file {file_id}"))
        except ProviderRejected as exc:
            if exc.status_code != 404:
                raise

    def close(self) -> None:
        self._client.close()
