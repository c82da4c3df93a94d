"""The Anthropic provider against httpx.MockTransport: wire shapes, retries, status mapping, results."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from prefect_llm_batch.batchfile import encode_line
from prefect_llm_batch.errors import (
    AmbiguousCreate,
    ConfigError,
    InputError,
    ProviderRejected,
    ProviderUnavailable,
    Terminal,
)
from prefect_llm_batch.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicBatchProvider
from prefect_llm_batch.providers.anthropic_wire import parse_rfc3339, tool_for_schema
from prefect_llm_batch.providers.base import BatchInfo, BatchStatus
from prefect_llm_batch.schemas import ResponseSchema
from prefect_llm_batch.spec import BatchLimits, ErrorKind

KEY = "test-key-not-real"
BASE = "https://fake.example"
CANCEL_AT = "2024-08-20T18:40:00Z"

Handler = Callable[[httpx.Request], httpx.Response]


def provider(handler: Handler, **kwargs: Any) -> AnthropicBatchProvider:
    return AnthropicBatchProvider(
        api_key=KEY, base_url=BASE, transport=httpx.MockTransport(handler), sleep=lambda s: None, **kwargs
    )


def err(status: int, etype: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"}
    return httpx.Response(status, json=body, headers=headers)


def batch(status: str = "in_progress", **extra: Any) -> dict[str, Any]:
    counts = {"processing": 3, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    return {
        "id": "msgbatch_1",
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "created_at": "2024-08-20T18:37:24.100435Z",
        "expires_at": "2024-08-21T18:37:24.100435Z",
        "ended_at": None,
        "cancel_initiated_at": None,
        "archived_at": None,
        "results_url": None,
        **extra,
    }


def ended(**counts: int) -> dict[str, int]:
    return {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0, **counts}


def results_line(custom_id: str, result: dict[str, Any]) -> bytes:
    return json.dumps({"custom_id": custom_id, "result": result}).encode() + b"\n"


def message(*content: dict[str, Any], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": list(content),
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicBatchProvider(api_key="")


def test_identity_endpoint_and_limits() -> None:
    with AnthropicBatchProvider(api_key=KEY, base_url="https://API.anthropic.com/") as p:
        assert p.name == "anthropic" and p.endpoint == "/v1/messages"
        assert p.key_base_url == "https://api.anthropic.com"
        assert p.limits == BatchLimits()
        assert p.upload(b"{}\n", "x.jsonl") is None


def test_build_body_defaults_max_tokens_and_merges_params() -> None:
    with AnthropicBatchProvider(api_key=KEY) as p:
        body = p.build_body("claude", "Hi", None, {})
        assert body == {
            "model": "claude",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        body = p.build_body("claude", "Hi", "Be brief", {"max_tokens": 5, "temperature": 0})
        assert body["max_tokens"] == 5 and body["system"] == "Be brief" and body["temperature"] == 0
        assert p.build_line("k", body) == {"custom_id": "k", "params": body}
        with pytest.raises(InputError, match="stream"):
            p.build_body("claude", "Hi", None, {"stream": True})
        for bad in (0, "10", True):
            with pytest.raises(InputError, match="max_tokens"):
                p.build_body("claude", "Hi", None, {"max_tokens": bad})


def test_build_body_with_a_schema_forces_a_tool() -> None:
    schema = ResponseSchema({"type": "object", "properties": {"label": {"type": "string"}}}, name="review")
    with AnthropicBatchProvider(api_key=KEY) as p:
        body = p.build_body("claude", "Hi", None, {}, schema)
    assert body["tool_choice"] == {"type": "tool", "name": "review"}
    [tool] = body["tools"]
    assert tool["name"] == "review" and tool["input_schema"] == schema.schema and tool["description"]


def test_tool_for_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    params = tool_for_schema(schema, name="count")
    assert set(params) == {"tools", "tool_choice"}
    [tool] = params["tools"]
    assert tool == {"name": "count", "description": tool["description"], "input_schema": schema}
    assert tool["description"] and params["tool_choice"] == {"type": "tool", "name": "count"}
    assert tool_for_schema(schema)["tool_choice"] == {"type": "tool", "name": "answer"}


def test_create_sends_inline_requests_with_headers_and_retries_429() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return err(429, "rate_limit_error", "Too many requests", {"retry-after": "0"})
        return httpx.Response(200, json=batch())

    lines = [{"custom_id": "a", "params": {"model": "m", "max_tokens": 1}}, {"custom_id": "b", "params": {}}]
    data = b"".join(encode_line(line) for line in lines)
    with provider(handler) as p:
        info = p.create(data, None, {"job_id": "j"}, requests=2)
    assert info.status is BatchStatus.IN_PROGRESS and info.raw_status == "in_progress"
    assert len(seen) == 2
    request = seen[-1]
    assert request.method == "POST" and str(request.url) == f"{BASE}/v1/messages/batches"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {"requests": lines}


def test_create_too_large_is_terminal_and_quotes_the_provider() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return err(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.")

    with provider(handler) as p, pytest.raises(ProviderRejected) as info:
        p.create(encode_line({"custom_id": "a", "params": {}}), None, {}, requests=1)
    assert isinstance(info.value, Terminal) and len(calls) == 1
    assert info.value.status_code == 413 and info.value.code == "request_too_large"
    assert "maximum allowed number of bytes" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value.args)


@pytest.mark.parametrize(
    "failure",
    [
        lambda r: err(500, "api_error", "Internal server error"),
        lambda r: err(529, "overloaded_error", "Overloaded"),
        lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)),
        lambda r: (_ for _ in ()).throw(httpx.RemoteProtocolError("dropped", request=r)),
    ],
    ids=["500", "529", "read-timeout", "dropped"],
)
def test_create_that_may_have_happened_is_ambiguous_and_not_retried(failure: Handler) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return failure(request)

    with provider(handler) as p, pytest.raises(AmbiguousCreate):
        p.create(encode_line({"custom_id": "a", "params": {}}), None, {}, requests=1)
    assert len(calls) == 1


def test_create_that_never_connected_is_retried() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=batch())

    with provider(handler) as p:
        assert (
            p.create(encode_line({"custom_id": "a", "params": {}}), None, {}, requests=1).id == "msgbatch_1"
        )
    assert len(calls) == 3


def test_create_refuses_bad_input_lines_before_sending() -> None:
    with provider(lambda r: pytest.fail("nothing may be sent")) as p:
        with pytest.raises(ValueError, match="line 2"):
            p.create(encode_line({"custom_id": "a", "params": {}}) + b"{nope\n", None, {}, requests=2)
        with pytest.raises(ValueError, match="line 1"):
            p.create(encode_line({"custom_id": "a", "body": {}}), None, {}, requests=1)


def test_overloaded_reads_are_retried_then_give_up() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return err(529, "overloaded_error", "Overloaded", {"retry-after": "0"})

    with provider(handler, max_retries=3) as p, pytest.raises(ProviderUnavailable, match="529"):
        p.retrieve("msgbatch_1")
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("status", "etype"),
    [
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (400, "invalid_request_error"),
    ],
)
def test_terminal_errors_are_not_retried(status: int, etype: str) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return err(status, etype, "nope, not allowed")

    with provider(handler) as p, pytest.raises(ProviderRejected) as info:
        p.retrieve("msgbatch_1")
    assert len(calls) == 1 and info.value.code == etype and "nope, not allowed" in str(info.value)
    assert KEY not in str(info.value)


def test_retrieve_cancel_and_paths() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.url.path.endswith("/cancel"):
            return httpx.Response(200, json=batch("canceling", cancel_initiated_at="2024-08-20T18:40:00Z"))
        return httpx.Response(200, json=batch())

    with provider(handler) as p:
        assert p.retrieve("msgbatch_1").status is BatchStatus.IN_PROGRESS
        assert p.cancel("msgbatch_1").status is BatchStatus.CANCELLING
        p.delete_file("anything")  # no files: nothing is sent
    assert seen == [
        ("GET", "/v1/messages/batches/msgbatch_1"),
        ("POST", "/v1/messages/batches/msgbatch_1/cancel"),
    ]


@pytest.mark.parametrize(
    ("raw", "status", "counts"),
    [
        (batch("in_progress"), BatchStatus.IN_PROGRESS, (3, None, None)),
        (batch("canceling", cancel_initiated_at=CANCEL_AT), BatchStatus.CANCELLING, (3, None, None)),
        (batch("ended", request_counts=ended(succeeded=2, errored=1)), BatchStatus.COMPLETED, (3, 2, 1)),
        (batch("ended", request_counts=ended(errored=3)), BatchStatus.COMPLETED, (3, 0, 3)),
        (batch("ended", request_counts=ended(succeeded=1, expired=2)), BatchStatus.EXPIRED, (3, 1, 2)),
        (batch("ended", request_counts=ended(expired=3)), BatchStatus.EXPIRED, (3, 0, 3)),
        (
            batch(
                "ended",
                cancel_initiated_at=CANCEL_AT,
                request_counts=ended(succeeded=1, canceled=1, expired=1),
            ),
            BatchStatus.CANCELLED,
            (3, 1, 2),
        ),
        (batch("ENDED", request_counts=ended(succeeded=3)), BatchStatus.COMPLETED, (3, 3, 0)),
    ],
    ids=["in_progress", "canceling", "ended", "all-errored", "expired", "all-expired", "cancelled", "case"],
)
def test_status_mapping(raw: dict[str, Any], status: BatchStatus, counts: tuple[int | None, ...]) -> None:
    info = AnthropicBatchProvider.batch_info(raw)
    assert info.status is status and info.raw_status == raw["processing_status"]
    assert (info.total, info.completed, info.failed) == counts
    assert info.created_at == pytest.approx(1724179044.100435)
    assert info.metadata == {} and info.errors == []


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ProviderRejected, match="unknown status"):
        AnthropicBatchProvider.batch_info(batch("paused"))


def test_parse_rfc3339() -> None:
    assert parse_rfc3339("2024-08-20T18:37:24Z") == parse_rfc3339("2024-08-20T20:37:24+02:00")
    assert parse_rfc3339("2024-08-20T18:37:24.1234567891Z") == pytest.approx(1724179044.123456)
    assert parse_rfc3339("not a date") is None and parse_rfc3339(17) is None


def succeeded(custom_id: str, msg: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "result": {"type": "succeeded", "message": msg}}


def test_succeeded_results() -> None:
    with AnthropicBatchProvider(api_key=KEY) as p:
        blocks = [{"type": "text", "text": "Hello, "}, {"type": "thinking", "thinking": "hm"}]
        text = p.parse_line(succeeded("a", message(*blocks, {"type": "text", "text": "world"})), "msgbatch_1")
        assert (text.response, text.error_kind, text.finish_reason) == ("Hello, world", None, "end_turn")
        assert (text.input_tokens, text.output_tokens, text.model, text.batch_id) == (
            7,
            3,
            "claude-test",
            "msgbatch_1",
        )
        cut = p.parse_line(succeeded("b", message({"type": "text", "text": "Hel"}, stop="max_tokens")), None)
        assert (
            cut.error_kind is ErrorKind.LENGTH and cut.response == "Hel" and cut.finish_reason == "max_tokens"
        )
        refused = p.parse_line(succeeded("c", message(stop="refusal")), None)
        assert refused.error_kind is ErrorKind.REFUSAL and refused.response is None
        empty = p.parse_line(succeeded("d", message()), None)
        assert empty.error_kind is ErrorKind.PARSE_ERROR
        call = {
            "type": "tool_use",
            "id": "t",
            "name": "answer",
            "input": {"z": 1, "a": {"y": [1], "b": None}},
        }
        tool = p.parse_line(
            succeeded("e", message({"type": "text", "text": "Sure."}, call, stop="tool_use")), None
        )
        assert tool.ok and tool.response == '{"a":{"b":null,"y":[1]},"z":1}'
        assert tool.finish_reason == "tool_use"


@pytest.mark.parametrize(
    ("etype", "kind"),
    [
        ("invalid_request_error", ErrorKind.INVALID_REQUEST),
        ("authentication_error", ErrorKind.AUTH),
        ("permission_error", ErrorKind.AUTH),
        ("rate_limit_error", ErrorKind.RATE_LIMITED),
        ("overloaded_error", ErrorKind.SERVER_ERROR),
        ("api_error", ErrorKind.SERVER_ERROR),
        ("something_new", ErrorKind.SERVER_ERROR),
    ],
)
def test_errored_results(etype: str, kind: ErrorKind) -> None:
    envelope = {
        "type": "error",
        "error": {"type": etype, "message": "max_tokens: Field required"},
        "request_id": "r",
    }
    with AnthropicBatchProvider(api_key=KEY) as p:
        result = p.parse_line(
            {"custom_id": "a", "result": {"type": "errored", "error": envelope}}, "msgbatch_1"
        )
        flat = p.parse_line(
            {"custom_id": "a", "result": {"type": "errored", "error": envelope["error"]}}, None
        )
    assert result.error_kind is kind and flat.error_kind is kind and result.batch_id == "msgbatch_1"
    assert result.error == f"{etype}: max_tokens: Field required"
    assert kind.retryable is (etype != "invalid_request_error" and kind is not ErrorKind.AUTH)


def test_canceled_expired_and_unknown_results() -> None:
    with AnthropicBatchProvider(api_key=KEY) as p:
        canceled = p.parse_line({"custom_id": "a", "result": {"type": "canceled"}}, "b")
        expired = p.parse_line({"custom_id": "b", "result": {"type": "expired"}}, "b")
        odd = p.parse_line({"custom_id": "c", "result": {"type": "teleported"}}, "b")
        none = p.parse_line({"custom_id": "d"}, "b")
    assert canceled.error_kind is ErrorKind.BATCH_CANCELLED and canceled.batch_id == "b"
    assert expired.error_kind is ErrorKind.BATCH_EXPIRED
    assert odd.error_kind is ErrorKind.PARSE_ERROR and "teleported" in (odd.error or "")
    assert none.error_kind is ErrorKind.PARSE_ERROR


def ended_batch(results_url: str | None) -> BatchInfo:
    raw = batch("ended", request_counts=ended(succeeded=1, errored=1, expired=1), results_url=results_url)
    return AnthropicBatchProvider.batch_info(raw)


def test_results_are_streamed_from_the_results_url_on_the_same_origin() -> None:
    seen: list[str] = []
    body = (
        results_line("a", {"type": "succeeded", "message": message({"type": "text", "text": "yes"})})
        + b"\n"
        + results_line("b", {"type": "errored", "error": {"type": "error", "error": {"type": "api_error"}}})
        + results_line("c", {"type": "expired"})
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert request.headers["x-api-key"] == KEY
        return httpx.Response(200, content=body)

    info = ended_batch(f"{BASE}/v1/messages/batches/msgbatch_1/results?page=1")
    assert info.output_file_id is not None
    with provider(handler) as p:
        results = {r.custom_id: r for r in p.iter_results(info)}
    assert seen == [f"{BASE}/v1/messages/batches/msgbatch_1/results?page=1"]
    assert results["a"].response == "yes" and results["a"].batch_id == "msgbatch_1"
    assert results["b"].error_kind is ErrorKind.SERVER_ERROR
    assert results["c"].error_kind is ErrorKind.BATCH_EXPIRED


@pytest.mark.parametrize(
    "results_url", [None, "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results"]
)
def test_results_fall_back_to_the_base_url(results_url: str | None) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=results_line("a", {"type": "canceled"}))

    with provider(handler) as p:
        [result] = list(p.iter_results(ended_batch(results_url)))
    assert seen == [f"{BASE}/v1/messages/batches/msgbatch_1/results"]
    assert result.error_kind is ErrorKind.BATCH_CANCELLED


def test_results_download_is_retried_and_bad_lines_are_errors() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return err(500, "api_error", "Internal server error")
        return httpx.Response(200, content=results_line("a", {"type": "canceled"}) + b"{not json\n")

    with provider(handler) as p, pytest.raises(ProviderUnavailable, match="line 2"):
        list(p.iter_results(ended_batch(None)))
    assert len(calls) == 2


def test_the_key_does_not_follow_a_redirect_to_another_origin() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "fake.example":
            return httpx.Response(302, headers={"location": "https://storage.example/results.jsonl"})
        return httpx.Response(200, content=results_line("a", {"type": "expired"}))

    with provider(handler) as p:
        assert [r.custom_id for r in p.iter_results(ended_batch(None))] == ["a"]
    assert [r.url.host for r in seen] == ["fake.example", "storage.example"]
    assert seen[0].headers["x-api-key"] == KEY and "x-api-key" not in seen[1].headers


def listed(batch_id: str, created_at: str, total: int) -> dict[str, Any]:
    return batch(id=batch_id, created_at=created_at, request_counts={**ended(), "processing": total})


def test_find_batch_adopts_the_only_batch_of_that_size() -> None:
    def page(*items: tuple[str, str, int], more: bool) -> dict[str, Any]:
        data = [listed(f"msgbatch_{n}", f"2024-08-20T{hhmm}:00Z", total) for n, hhmm, total in items]
        return {"data": data, "has_more": more, "last_id": data[-1]["id"]}

    pages = {
        None: page(("5", "12:05", 2), ("4", "12:04", 3), more=True),
        "msgbatch_4": page(("3", "12:03", 7), ("2", "12:02", 2), more=True),
        "msgbatch_2": page(("1", "11:00", 7), more=False),
    }
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/messages/batches"
        seen.append(dict(request.url.params))
        return httpx.Response(200, json={**pages[request.url.params.get("after_id")], "first_id": None})

    since = parse_rfc3339("2024-08-20T12:00:00Z")
    with provider(handler) as p:
        found = p.find_batch({"job_id": "j"}, created_after=since, requests=3)
        assert found is not None and found.id == "msgbatch_4"
        assert seen[0] == {"limit": "100"} and seen[1] == {"limit": "100", "after_id": "msgbatch_4"}
        # Two batches of 2 requests since then: ambiguous, so nothing is adopted.
        assert p.find_batch({}, created_after=since, requests=2) is None
        # Only the batch of 7 since then counts; the older one is not looked at.
        seen.clear()
        found = p.find_batch({}, created_after=since, requests=7)
        assert found is not None and found.id == "msgbatch_3" and len(seen) == 3
        # Without a time limit, two batches of 7: ambiguous.
        assert p.find_batch({}, requests=7) is None
        assert p.find_batch({}, created_after=since, requests=4) is None
        assert p.find_batch({"job_id": "j"}, created_after=since) is None
