"""The Gemini API batch mode routes (``v1beta``) and Google's key check.

Base URL :attr:`FakeProviderServer.gemini_base_url` (the server's root: no version suffix, as
``GOOGLE_GEMINI_BASE_URL``). Routes:

* ``POST /upload/v1beta/files``: the resumable upload. ``X-Goog-Upload-Command: start`` (with
  ``X-Goog-Upload-Protocol: resumable`` and ``X-Goog-Upload-Header-Content-Length``; body
  ``{"file": {"displayName"}}``) answers ``x-goog-upload-url`` (this route with an
  ``upload_id``); ``upload, finalize`` to that URL stores the bytes and answers ``{"file": File}``
  with ``x-goog-upload-status: final``. A file over ``max_file_bytes`` is 400.
* ``GET /v1beta/files/{name}``, ``GET /v1beta/files/{name}:download?alt=media`` (raw bytes),
  ``DELETE /v1beta/files/{name}``.
* ``POST /v1beta/models/{model}:batchGenerateContent`` with ``{"batch": {"displayName",
  "inputConfig": {"fileName"} | {"requests": {"requests": [{"request", "metadata": {"key"}}]}}}}``;
  ``GET /v1beta/batches`` (``pageSize``, ``pageToken``; ``{operations, nextPageToken}``, newest
  first), ``GET /v1beta/batches/{name}``, ``POST /v1beta/batches/{name}:cancel``,
  ``DELETE /v1beta/batches/{name}``. Batches are Operations ``{"name", "metadata":
  GenerateContentBatch, "done", "error"?}``.

Every route needs ``x-goog-api-key`` (403 ``PERMISSION_DENIED`` without; 400
``INVALID_ARGUMENT`` "API key not valid" when ``api_key`` is set and differs) and answers errors
as ``{"error": {"code", "message", "status"}}``.

A batch is ``BATCH_STATE_PENDING`` for ``validating_seconds``, ``BATCH_STATE_RUNNING`` for
``in_progress_seconds + finalizing_seconds`` (requests finish evenly), then
``BATCH_STATE_SUCCEEDED`` with ``output.responsesFile``: JSONL lines ``{"key", "response"}`` or
``{"key", "error": {"code", "message", "status"}}`` (gRPC codes), shuffled like OpenAI's files.
``validation_error`` ends every batch ``BATCH_STATE_FAILED`` with an operation ``error``
(``code`` 3, ``status`` the configured text) and no output; a line that is not a
``{"key", "request"}`` object does too. ``expire_after_requests`` ends a larger batch
``BATCH_STATE_EXPIRED`` once that many requests ran: the responses file holds those only. A
cancel ends the batch ``BATCH_STATE_CANCELLED`` at once, with the finished requests' lines.

Markers (``[[fake:...]]`` in a text part): ``400`` -> error line code 3 ``INVALID_ARGUMENT``;
``500`` -> code 13 ``INTERNAL``; ``timeout`` -> code 4 ``DEADLINE_EXCEEDED``; ``drop`` -> no
line; ``length`` -> ``finishReason`` ``MAX_TOKENS``, text cut; ``refusal`` and ``content_filter``
-> ``finishReason`` ``SAFETY`` without content; ``invalid_json`` -> broken JSON with a schema.
Requests are answered through the chat completions fake (:func:`complete_chat`): the answer text,
and with ``generationConfig.responseSchema`` (or ``responseJsonSchema``) a JSON answer fitting it.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from prefect_llm_batch.testing.completions import complete_chat
from prefect_llm_batch.testing.faults import sit_out_stall
from prefect_llm_batch.testing.state import _State
from prefect_llm_batch.testing.wire import Handler, _ApiError, _hex, _json, _json_body, _rfc3339

#: Batches and files live this long at Google (48 h).
GEMINI_TTL_SECONDS = 48 * 3600
#: gRPC status name of each HTTP status this fake answers.
HTTP_STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_OPERATION_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"

GeminiState = Literal[
    "BATCH_STATE_PENDING",
    "BATCH_STATE_RUNNING",
    "BATCH_STATE_SUCCEEDED",
    "BATCH_STATE_FAILED",
    "BATCH_STATE_CANCELLED",
    "BATCH_STATE_EXPIRED",
]


def gemini_error_response(error: _ApiError) -> Response:
    """An error in Google's envelope ``{"error": {"code", "message", "status"}}``."""
    status = HTTP_STATUS_NAMES.get(error.status, "INTERNAL" if error.status >= 500 else "INVALID_ARGUMENT")
    body = {"error": {"code": error.status, "message": error.message, "status": status}}
    return _json(body, error.status, error.headers)


def check_gemini_auth(state: _State, request: Request) -> None:
    """Check ``x-goog-api-key`` (403 without one; 400 for a wrong one when ``api_key`` is set);
    the upload URL of an open session needs none."""
    if request.query_params.get("upload_id") in state.gemini_uploads:
        return  # an upload URL is authorized by its session (Google's SDK sends no key to it)
    key = request.headers.get("x-goog-api-key")
    if not key:
        raise _ApiError(
            403, "Method doesn't allow unregistered callers (callers without established identity)."
        )
    if state.config.api_key is not None and key != state.config.api_key:
        raise _ApiError(400, "API key not valid. Please pass a valid API key.")


@dataclass
class GeminiFile:
    """One stored file (an uploaded request file or a responses file)."""

    name: str
    display_name: str
    data: bytes
    created_at: float
    mime_type: str = "application/jsonl"
    source: str = "UPLOADED"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": _rfc3339(self.created_at),
            "updateTime": _rfc3339(self.created_at),
            "expirationTime": _rfc3339(self.created_at + GEMINI_TTL_SECONDS),
            "sha256Hash": hashlib.sha256(self.data).hexdigest(),
            "state": "ACTIVE",
            "source": self.source,
        }


@dataclass
class GeminiBatch:
    """One Gemini batch and everything the fake knows about it.

    ``lines`` holds one result line per request in input order (``None``: dropped).
    """

    name: str
    model: str
    display_name: str
    created_at: float
    created_clock: float
    input_config: dict[str, Any]
    lines: list[dict[str, Any] | None] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    run_limit: int = 0
    finished: int = 0
    state: GeminiState = "BATCH_STATE_PENDING"
    ended_at: float | None = None
    error: dict[str, Any] | None = None
    responses_file: str | None = None
    digest: str = ""
    #: The GenerateContentRequests as received, in input order (for tests to read the bodies).
    requests: list[Any] = field(default_factory=list)

    def stats(self) -> dict[str, str]:
        done = self.lines[: self.finished]
        failed = sum(1 for line in done if line is not None and "error" in line)
        return {
            "requestCount": str(len(self.lines)),
            "successfulRequestCount": str(self.finished - failed),
            "failedRequestCount": str(failed),
            "pendingRequestCount": str(len(self.lines) - self.finished),
        }

    def to_dict(self) -> dict[str, Any]:
        """The batch as an Operation."""
        ended = self.ended_at is not None
        metadata: dict[str, Any] = {
            "@type": _OPERATION_TYPE,
            "name": self.name,
            "model": self.model,
            "displayName": self.display_name,
            "inputConfig": self.input_config,
            "createTime": _rfc3339(self.created_at),
            "updateTime": _rfc3339(self.ended_at or self.created_at),
            "batchStats": self.stats(),
            "state": self.state,
        }
        if ended:
            metadata["endTime"] = _rfc3339(self.ended_at)
        if self.responses_file:
            metadata["output"] = {"responsesFile": self.responses_file}
        operation: dict[str, Any] = {"name": self.name, "metadata": metadata, "done": ended}
        if self.error is not None:
            operation["error"] = self.error
        return operation


def json_schema_of(schema: Any) -> Any:
    """A Gemini ``responseSchema`` (OpenAPI subset) back as JSON Schema, for the answer fake."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {k: json_schema_of(v) for k, v in value.items()}
        elif key in ("items",):
            out[key] = json_schema_of(value)
        elif key == "anyOf" and isinstance(value, list):
            out["anyOf"] = [json_schema_of(v) for v in value]
        elif key not in ("nullable", "propertyOrdering"):
            out[key] = value
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _texts(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    return "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def request_problem(request: Any) -> str | None:
    """What Gemini would reject in a GenerateContentRequest, or ``None``."""
    if not isinstance(request, dict):
        return "request: must be a GenerateContentRequest object"
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for index, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{index}].parts: contents.parts must not be empty."
    if "stream" in request:
        return 'Invalid JSON payload received. Unknown name "stream": Cannot find field.'
    return None


def answer_request(state: _State, model: str, key: str, request: Any) -> dict[str, Any] | None:
    """Answer one request of a batch: its result line, or ``None`` for a dropped one."""
    problem = request_problem(request)
    if problem is not None:
        return {"key": key, "error": {"code": 3, "message": problem, "status": "INVALID_ARGUMENT"}}
    messages: list[dict[str, Any]] = []
    system = _texts(request.get("systemInstruction"))
    if system:
        messages.append({"role": "system", "content": system})
    for content in request["contents"]:
        role = "assistant" if content.get("role") == "model" else "user"
        messages.append({"role": role, "content": _texts(content)})
    config = request.get("generationConfig") if isinstance(request.get("generationConfig"), dict) else {}
    chat: dict[str, Any] = {
        "model": str(request.get("model") or model).removeprefix("models/"),
        "messages": messages,
    }
    if isinstance(config.get("maxOutputTokens"), int):
        chat["max_tokens"] = config["maxOutputTokens"]
    schema = config.get("responseJsonSchema") or json_schema_of(config.get("responseSchema"))
    if config.get("responseMimeType") == "application/json":
        chat["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": True}}
            if isinstance(schema, dict)
            else {"type": "json_object"}
        )
    status, body, never_ran = complete_chat(chat, state.config.answer, int(time.time()))
    if never_ran == "drop":
        return None
    if never_ran is not None:
        return {
            "key": key,
            "error": {"code": 4, "message": "Deadline expired.", "status": "DEADLINE_EXCEEDED"},
        }
    if status >= 400:
        code, name = (3, "INVALID_ARGUMENT") if status < 500 else (13, "INTERNAL")
        message = str(body.get("error", {}).get("message") or "Internal error encountered.")
        return {"key": key, "error": {"code": code, "message": message, "status": name}}
    choice = body["choices"][0]
    text = choice["message"]["content"]
    reason = {"stop": "STOP", "length": "MAX_TOKENS"}.get(choice["finish_reason"], "SAFETY")
    candidate: dict[str, Any] = {"finishReason": reason if text is not None else "SAFETY", "index": 0}
    if text is not None:
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    usage = body["usage"]
    response = {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": usage["prompt_tokens"],
            "candidatesTokenCount": usage["completion_tokens"],
            "totalTokenCount": usage["total_tokens"],
        },
        "modelVersion": chat["model"],
        "responseId": _hex(20),
    }
    return {"key": key, "response": response}


def advance_gemini_batch(state: _State, batch: GeminiBatch, now: float | None = None) -> None:
    """Move a batch to the state it has reached by ``now`` (a ``time.monotonic()`` value)."""
    if batch.ended_at is not None:
        return
    cfg = state.config
    now = time.monotonic() if now is None else now
    t_started = batch.created_clock + cfg.validating_seconds
    t_ran = t_started + cfg.in_progress_seconds
    t_ended = t_ran + cfg.finalizing_seconds
    if now < t_started:
        return
    if batch.error is not None or cfg.validation_error is not None:
        batch.error = batch.error or {
            "code": 3,
            "message": cfg.validation_error,
            "status": cfg.validation_error,
        }
        end_gemini_batch(state, batch, "BATCH_STATE_FAILED", t_started)
        return
    batch.state = "BATCH_STATE_RUNNING"
    fraction = 1.0 if cfg.in_progress_seconds <= 0 else min(1.0, (now - t_started) / cfg.in_progress_seconds)
    batch.finished = math.floor(batch.run_limit * fraction)
    if now >= t_ended:
        batch.finished = batch.run_limit
        expired = batch.run_limit < len(batch.lines)
        end_gemini_batch(state, batch, "BATCH_STATE_EXPIRED" if expired else "BATCH_STATE_SUCCEEDED", t_ended)


def end_gemini_batch(state: _State, batch: GeminiBatch, end: GeminiState, clock: float) -> None:
    """End a batch: the finished requests' lines go into its responses file (none when failed)."""
    batch.state = end
    batch.ended_at = batch.created_at + (clock - batch.created_clock)
    if end == "BATCH_STATE_FAILED":
        return
    lines = [line for line in batch.lines[: batch.finished] if line is not None]
    if state.config.shuffle:
        random.Random(f"{state.config.seed}:{batch.digest}").shuffle(lines)
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    name = f"files/batch-{batch.name.removeprefix('batches/')}"
    state.gemini_files[name] = GeminiFile(
        name, f"responses of {batch.name}", data, time.time(), source="GENERATED"
    )
    batch.responses_file = name


def gemini_batch_handlers(state: _State) -> dict[str, Handler]:
    """The Gemini routes' handlers (before auth and faults), by route template."""

    def lookup_file(name: str) -> GeminiFile:
        found = state.gemini_files.get(f"files/{name}")
        if not isinstance(found, GeminiFile):
            raise _ApiError(404, f"File files/{name} not found.")
        return found

    def lookup_batch(name: str) -> GeminiBatch:
        batch = state.gemini_batches.get(f"batches/{name}")
        if not isinstance(batch, GeminiBatch):
            raise _ApiError(404, f"Batch batches/{name} not found.")
        advance_gemini_batch(state, batch)
        return batch

    async def upload(request: Request) -> Response:
        command = request.headers.get("x-goog-upload-command", "").replace(" ", "")
        if command == "start":
            if request.headers.get("x-goog-upload-protocol") != "resumable":
                raise _ApiError(400, "Only the resumable upload protocol is supported here.")
            body = await _json_body(request)
            display = str((body.get("file") or {}).get("displayName") or "")
            upload_id = _hex()
            with state.lock:
                state.gemini_uploads[upload_id] = display
            url = f"{str(request.base_url).rstrip('/')}/upload/v1beta/files?upload_id={upload_id}"
            return _json({}, headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        if command != "upload,finalize":
            raise _ApiError(400, f"Unsupported X-Goog-Upload-Command {command!r}.")
        upload_id = request.query_params.get("upload_id", "")
        data = await request.body()
        if len(data) > state.config.max_file_bytes:
            raise _ApiError(400, "File is too large.")
        with state.lock:
            if upload_id not in state.gemini_uploads:
                raise _ApiError(404, "Upload session not found.")
            display = state.gemini_uploads.pop(upload_id)
            name = f"files/{_hex(12)}"
            stored = GeminiFile(name, display, data, time.time())
            state.gemini_files[name] = stored
            state.stats.uploads += 1
        return _json({"file": stored.to_dict()}, headers={"x-goog-upload-status": "final"})

    async def get_file(request: Request) -> Response:
        with state.lock:
            return _json(lookup_file(request.path_params["name"]).to_dict())

    async def download_file(request: Request) -> Response:
        with state.lock:
            data = lookup_file(request.path_params["name"]).data
        return Response(data, media_type="application/octet-stream")

    async def delete_file(request: Request) -> Response:
        with state.lock:
            del state.gemini_files[lookup_file(request.path_params["name"]).name]
        return _json({})

    async def create_batch(request: Request) -> Response:
        model = f"models/{request.path_params['model']}"
        body = await _json_body(request)
        spec = body.get("batch")
        if not isinstance(spec, dict) or not isinstance(spec.get("inputConfig"), dict):
            raise _ApiError(400, "* BatchGenerateContentRequest.batch.input_config: input_config is required")
        input_config = spec["inputConfig"]
        items: list[tuple[str, Any]] = []
        problem: str | None = None
        if "fileName" in input_config:
            with state.lock:
                name = str(input_config["fileName"])
                stored = state.gemini_files.get(name)
                if stored is None:
                    raise _ApiError(404, f"File {name} not found.")
                data = stored.data
            for number, raw in enumerate(data.splitlines(), start=1):
                if not raw.strip():
                    continue
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    line = None
                if (
                    not isinstance(line, dict)
                    or not isinstance(line.get("key"), str)
                    or "request" not in line
                ):
                    problem = problem or f"line {number} of {name} is not a {{key, request}} object"
                    continue
                items.append((line["key"], line["request"]))
        else:
            inline = (input_config.get("requests") or {}).get("requests")
            if not isinstance(inline, list) or not inline:
                raise _ApiError(400, "* BatchGenerateContentRequest.batch.input_config: requests are empty")
            for index, item in enumerate(inline):
                key = ((item or {}).get("metadata") or {}).get("key") if isinstance(item, dict) else None
                items.append((str(key if key is not None else index), (item or {}).get("request")))
        lines = [answer_request(state, model, key, req) for key, req in items]
        expire = state.config.expire_after_requests
        with state.lock:
            batch = GeminiBatch(
                name=f"batches/{_hex(16)}",
                model=model,
                display_name=str(spec.get("displayName") or ""),
                created_at=time.time(),
                created_clock=time.monotonic(),
                input_config=input_config,
                lines=lines,
                keys=[key for key, _ in items],
                run_limit=len(lines) if expire is None else min(max(expire, 0), len(lines)),
                digest=hashlib.sha256(orjson.dumps(body)).hexdigest(),
                requests=[req for _, req in items],
            )
            if problem is not None:
                batch.error = {"code": 3, "message": problem, "status": "INVALID_ARGUMENT"}
            state.gemini_batches[batch.name] = batch
            state.stats.creates += 1
            state.stats.requests_received += len(lines)
            answer = batch.to_dict()
            stall = state.take_stall("/v1beta/batches")
        await sit_out_stall(state, stall)
        return _json(answer)

    async def list_batches(request: Request) -> Response:
        try:
            size = int(request.query_params.get("pageSize") or 50)
            start = int(request.query_params.get("pageToken") or 0)
        except ValueError:
            raise _ApiError(400, "Invalid pageSize or pageToken.") from None
        size = max(1, min(size, 1000))
        with state.lock:
            batches = list(reversed(state.gemini_batches.values()))
            for batch in batches:
                advance_gemini_batch(state, batch)
            page = [batch.to_dict() for batch in batches[start : start + size]]
        answer: dict[str, Any] = {"operations": page}
        if start + size < len(batches):
            answer["nextPageToken"] = str(start + size)
        return _json(answer)

    async def get_batch(request: Request) -> Response:
        with state.lock:
            return _json(lookup_batch(request.path_params["name"]).to_dict())

    async def cancel_batch(request: Request) -> Response:
        with state.lock:
            batch = lookup_batch(request.path_params["name"])
            if batch.ended_at is None:
                end_gemini_batch(state, batch, "BATCH_STATE_CANCELLED", time.monotonic())
        return _json({})

    async def delete_batch(request: Request) -> Response:
        with state.lock:
            del state.gemini_batches[lookup_batch(request.path_params["name"]).name]
        return _json({})

    return {
        "POST /upload/v1beta/files": upload,
        "GET /v1beta/files/{name}:download": download_file,
        "GET /v1beta/files/{name}": get_file,
        "DELETE /v1beta/files/{name}": delete_file,
        "POST /v1beta/models/{model}:batchGenerateContent": create_batch,
        "GET /v1beta/batches": list_batches,
        "POST /v1beta/batches/{name}:cancel": cancel_batch,
        "GET /v1beta/batches/{name}": get_batch,
        "DELETE /v1beta/batches/{name}": delete_batch,
    }
