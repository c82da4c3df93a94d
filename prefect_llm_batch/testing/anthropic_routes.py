"""The Anthropic Message Batches routes (``/v1/messages/batches``) and Anthropic's key check.

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
"""

from __future__ import annotations

import hashlib
import time

from starlette.requests import Request
from starlette.responses import Response

from prefect_llm_batch.testing.config import ANTHROPIC_CUSTOM_ID
from prefect_llm_batch.testing.faults import sit_out_stall
from prefect_llm_batch.testing.state import FakeMessageBatch, _State
from prefect_llm_batch.testing.wire import (
    _ANTHROPIC_ERROR_MESSAGES,
    Handler,
    _ApiError,
    _hex,
    _json,
    _json_body,
    _query_limit,
)


def check_anthropic_auth(state: _State, request: Request) -> None:
    """Check ``x-api-key`` (401 ``authentication_error``) and ``anthropic-version`` (400)."""
    key = request.headers.get("x-api-key")
    if not key:
        raise _ApiError(401, "x-api-key header is required", type="authentication_error")
    if state.config.api_key is not None and key != state.config.api_key:
        raise _ApiError(401, _ANTHROPIC_ERROR_MESSAGES[401], type="authentication_error")
    if not request.headers.get("anthropic-version"):
        raise _ApiError(400, "anthropic-version: header is required")


def anthropic_batch_handlers(state: _State) -> dict[str, Handler]:
    """The Message Batches routes' handlers (before auth and faults), by route template."""

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
                requests=list(items),
            )
            state.message_batches[batch.id] = batch
            state.stats.creates += 1
            state.stats.requests_received += len(outcomes)
            answer = batch.to_dict(root_url(request))
            stall = state.take_stall("/v1/messages/batches")
        await sit_out_stall(state, stall)
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

    return {
        "POST /v1/messages/batches": create_message_batch,
        "GET /v1/messages/batches": list_message_batches,
        "GET /v1/messages/batches/{id}": get_message_batch,
        "POST /v1/messages/batches/{id}/cancel": cancel_message_batch,
        "DELETE /v1/messages/batches/{id}": delete_message_batch,
        "GET /v1/messages/batches/{id}/results": message_batch_results,
    }
