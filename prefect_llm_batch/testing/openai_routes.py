"""The OpenAI Files and Batch API routes (``/v1/files``, ``/v1/batches``) and OpenAI's Bearer auth.

Examples:
    >>> _page([{"id": "a"}, {"id": "b"}], "a", 10, "file")["data"]
    [{'id': 'b'}]
"""

from __future__ import annotations

import time
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from prefect_llm_batch.testing.config import _FILE_TTL_SECONDS, OPENAI_BATCH_ENDPOINTS, SUPPORTED_ENDPOINTS
from prefect_llm_batch.testing.faults import sit_out_stall
from prefect_llm_batch.testing.state import FakeBatch, FakeFile, _State
from prefect_llm_batch.testing.wire import Handler, _ApiError, _hex, _json, _json_body, _query_limit


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


def _check_expiry(value: Any, param: str) -> int | None:
    """The seconds of an ``expires_after`` / ``output_expires_after`` object, validated as OpenAI
    does (``anchor`` must be ``created_at``, ``seconds`` 3600..2592000); None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _ApiError(
            400, f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type"
        )
    if value.get("anchor") != "created_at":
        raise _ApiError(
            400,
            f"Invalid value for '{param}.anchor': expected 'created_at'.",
            param=f"{param}.anchor",
            code="invalid_value",
        )
    seconds = value.get("seconds")
    if isinstance(seconds, str) and seconds.isdigit():
        seconds = int(seconds)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 3600 <= seconds <= 2592000:
        raise _ApiError(
            400,
            f"Invalid '{param}.seconds': must be an integer between 3600 and 2592000.",
            param=f"{param}.seconds",
            code="invalid_value",
        )
    return seconds


def check_auth(state: _State, request: Request) -> None:
    """Check the Bearer key of an OpenAI route (401 with OpenAI's message otherwise)."""
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


def openai_batch_handlers(state: _State) -> dict[str, Handler]:
    """The Files and Batch API routes' handlers (before auth and faults), by route template."""

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
            anchor = form.get("expires_after[anchor]")
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
        expires_after = None
        if seconds is not None or anchor is not None:
            expires_after = _check_expiry({"anchor": anchor, "seconds": seconds}, "expires_after")
            ttl = expires_after or ttl
        now = int(time.time())
        stored = FakeFile(f"file-{_hex()}", data, filename, purpose, now, now + ttl)
        with state.lock:
            state.files[stored.id] = stored
            state.stats.uploads += 1
            state.stats.file_expiries[stored.id] = expires_after
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
        output_expiry = _check_expiry(body.get("output_expires_after"), "output_expires_after")
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
                output_expires_after=output_expiry,
            )
            state.batches[batch.id] = batch
            state.stats.creates += 1
            if metadata is not None and "job_id" in metadata:
                state.stats.creates_by_job[metadata["job_id"]] += 1
            state.stats.requests_received += sum(1 for line in input_file.data.split(b"\n") if line.strip())
            answer = batch.to_dict()
            stall = state.take_stall("/v1/batches")
        await sit_out_stall(state, stall)
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

    return {
        "POST /v1/files": upload_file,
        "GET /v1/files": list_files,
        "GET /v1/files/{id}": get_file,
        "GET /v1/files/{id}/content": get_file_content,
        "DELETE /v1/files/{id}": delete_file,
        "POST /v1/batches": create_batch,
        "GET /v1/batches": list_batches,
        "GET /v1/batches/{id}": get_batch,
        "POST /v1/batches/{id}/cancel": cancel_batch,
    }
