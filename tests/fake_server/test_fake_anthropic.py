"""The fake server's Anthropic Message Batches routes, over real HTTP, driven by the provider class."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prefect_llm_batch.batchfile import encode_line
from prefect_llm_batch.errors import AmbiguousCreate, ProviderRejected
from prefect_llm_batch.providers.anthropic import AnthropicBatchProvider
from prefect_llm_batch.providers.anthropic_wire import parse_rfc3339
from prefect_llm_batch.providers.base import BatchInfo, BatchProvider, BatchStatus
from prefect_llm_batch.results import RowResult
from prefect_llm_batch.schemas import ResponseSchema
from prefect_llm_batch.spec import ErrorKind
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "sk-ant-test"
MODEL = "claude-3-5-haiku-latest"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
BATCH_FIELDS = {
    "id", "type", "processing_status", "request_counts", "ended_at", "created_at", "expires_at",
    "archived_at", "cancel_initiated_at", "results_url",
}  # fmt: skip


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as fake:
        yield fake


def make_provider(server: FakeProviderServer, **kwargs: Any) -> AnthropicBatchProvider:
    return AnthropicBatchProvider(
        api_key=KEY, base_url=server.anthropic_base_url, sleep=lambda s: None, **kwargs
    )


def jsonl(provider: BatchProvider, prompts: dict[str, str], **params: Any) -> bytes:
    return b"".join(
        encode_line(provider.build_line(cid, provider.build_body(MODEL, prompt, None, params)))
        for cid, prompt in prompts.items()
    )


def wait(provider: BatchProvider, batch_id: str, timeout: float = 5.0) -> list[BatchInfo]:
    seen = [provider.retrieve(batch_id)]
    deadline = time.monotonic() + timeout
    while not seen[-1].status.ended:
        assert time.monotonic() < deadline, seen[-1]
        time.sleep(0.02)
        seen.append(provider.retrieve(batch_id))
    return seen


def results(provider: BatchProvider, info: BatchInfo) -> dict[str, RowResult]:
    collected = list(provider.iter_results(info))
    by_id = {r.custom_id: r for r in collected}
    assert len(by_id) == len(collected)
    return by_id


def test_end_to_end_build_create_poll_results() -> None:
    config = FakeServerConfig(
        api_key=KEY, validating_seconds=0.1, in_progress_seconds=0.3, finalizing_seconds=0.1
    )
    prompts = {
        f"row-{i}": f"What is the sentiment? Review {i}: {'great' if i % 2 else 'awful'}" for i in range(12)
    }
    with FakeProviderServer(config) as server, make_provider(server) as provider:
        data = jsonl(provider, prompts, temperature=0)
        assert provider.upload(data, "chunk.jsonl") is None
        created = provider.create(data, None, {"job_id": "j"}, requests=len(prompts))
        assert created.id.startswith("msgbatch_") and created.status is BatchStatus.IN_PROGRESS
        assert (created.total, created.completed, created.failed) == (12, None, None)
        assert created.created_at is not None and abs(created.created_at - time.time()) < 5

        wire = server.message_batch(created.id)
        assert set(wire) == BATCH_FIELDS and wire["type"] == "message_batch"
        assert wire["results_url"] is None and wire["ended_at"] is None and wire["archived_at"] is None
        lifetime = (parse_rfc3339(wire["expires_at"]) or 0) - (parse_rfc3339(wire["created_at"]) or 0)
        assert lifetime == pytest.approx(86400, abs=1e-3)

        seen = wait(provider, created.id)
        assert {i.status for i in seen[:-1]} == {BatchStatus.IN_PROGRESS} and len(seen) > 2
        assert all(i.raw_status == "in_progress" and i.completed is None for i in seen[:-1])
        done = seen[-1]
        assert done.status is BatchStatus.COMPLETED and done.raw_status == "ended"
        assert (done.total, done.completed, done.failed) == (12, 12, 0)
        assert done.output_file_id == f"{server.anthropic_base_url}/v1/messages/batches/{done.id}/results"

        by_id = results(provider, done)
        assert set(by_id) == set(prompts)
        assert by_id["row-1"].response == "positive" and by_id["row-2"].response == "negative"
        assert all(r.ok and r.batch_id == done.id and r.model == MODEL for r in by_id.values())
        assert all(
            r.finish_reason == "end_turn" and r.input_tokens and r.output_tokens for r in by_id.values()
        )

        raw = httpx.get(done.output_file_id, headers=HEADERS)
        lines = [json.loads(line) for line in raw.text.splitlines()]
        assert [line["custom_id"] for line in lines] != list(prompts)  # shuffled
        assert set(lines[0]) == {"custom_id", "result"} and lines[0]["result"]["type"] == "succeeded"
        assert lines[0]["result"]["message"]["type"] == "message"
        assert server.message_batch(done.id)["request_counts"] == {
            "processing": 0, "succeeded": 12, "errored": 0, "canceled": 0, "expired": 0,
        }  # fmt: skip
        assert server.stats.creates == 1 and server.stats.requests_received == 12
        assert server.stats.calls["POST /v1/messages/batches"] == 1
        assert server.stats.calls["GET /v1/messages/batches/{id}"] == len(seen)
        assert server.stats.calls["GET /v1/messages/batches/{id}/results"] == 2


def test_markers_and_bad_params_become_row_results(server: FakeProviderServer) -> None:
    with make_provider(server) as provider:
        prompts = {"ok": "Summarize: all is well"} | {
            name: f"Summarize this text please [[fake:{name}]]"
            for name in ("400", "500", "refusal", "length", "content_filter", "drop", "timeout")
        }
        data = jsonl(provider, prompts, max_tokens=2)
        bad = [
            {
                "custom_id": "no_max_tokens",
                "params": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            },
            {
                "custom_id": "no_model",
                "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            },
            {"custom_id": "streams", "params": {**provider.build_body(MODEL, "x", None, {}), "stream": True}},
        ]
        data += b"".join(encode_line(line) for line in bad)
        created = provider.create(data, None, {}, requests=11)
        done = wait(provider, created.id)[-1]
        assert done.status is BatchStatus.EXPIRED  # [[fake:timeout]] is an expired result
        assert server.message_batch(done.id)["request_counts"] == {
            "processing": 0, "succeeded": 5, "errored": 5, "canceled": 0, "expired": 1,
        }  # fmt: skip
        by_id = results(provider, done)
    assert set(by_id) == set(prompts) - {"drop"} | {"no_max_tokens", "no_model", "streams"}
    assert by_id["ok"].ok and by_id["ok"].response == "[simulated] Summarize: all is well"
    assert by_id["400"].error_kind is ErrorKind.INVALID_REQUEST and "[[fake:400]]" in (
        by_id["400"].error or ""
    )
    assert by_id["500"].error_kind is ErrorKind.SERVER_ERROR and "api_error" in (by_id["500"].error or "")
    for refused in ("refusal", "content_filter"):
        assert by_id[refused].error_kind is ErrorKind.REFUSAL and by_id[refused].finish_reason == "refusal"
    length = by_id["length"]
    assert length.error_kind is ErrorKind.LENGTH and length.finish_reason == "max_tokens"
    assert length.response and len(length.response) <= 8
    assert by_id["timeout"].error_kind is ErrorKind.BATCH_EXPIRED
    for name, field in (("no_max_tokens", "max_tokens"), ("no_model", "model"), ("streams", "stream")):
        assert by_id[name].error_kind is ErrorKind.INVALID_REQUEST and field in (by_id[name].error or "")


def test_structured_answers_through_a_forced_tool(server: FakeProviderServer) -> None:
    schema = ResponseSchema(
        {
            "type": "object",
            "properties": {
                "label": {"enum": ["positive", "negative", "mixed"]},
                "words": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["label", "words"],
        },
        name="review",
    )
    with make_provider(server) as provider:
        body = provider.build_body(MODEL, "Sentiment of: I love it", "Answer with the tool", {}, schema)
        created = provider.create(encode_line(provider.build_line("r1", body)), None, {}, requests=1)
        [result] = results(provider, wait(provider, created.id)[-1]).values()
    assert result.ok and result.finish_reason == "tool_use" and result.response is not None
    answer = json.loads(result.response)
    assert schema.convert(answer) == {"label": "positive", "words": 5, "tags": ["positive"]}
    assert result.response == json.dumps(answer, sort_keys=True, separators=(",", ":"))  # canonical JSON


def test_create_validation(server: FakeProviderServer) -> None:
    good = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    with make_provider(server) as provider:
        for lines, message in (
            ([{"custom_id": "has space", "params": good}], "custom_id"),
            ([{"custom_id": "x" * 65, "params": good}], "custom_id"),
            ([{"custom_id": "a", "params": good}, {"custom_id": "a", "params": good}], "Duplicate"),
        ):
            with pytest.raises(ProviderRejected, match=message) as info:
                provider.create(b"".join(encode_line(line) for line in lines), None, {}, requests=len(lines))
            assert info.value.status_code == 400 and info.value.code == "invalid_request_error"
        empty = httpx.post(
            f"{server.anthropic_base_url}/v1/messages/batches", headers=HEADERS, json={"requests": []}
        )
        assert empty.status_code == 400 and empty.json()["type"] == "error"
        ok = provider.create(
            encode_line({"custom_id": "A-z_09" + "x" * 58, "params": good}), None, {}, requests=1
        )
        assert ok.total == 1
    assert server.stats.creates == 1 and len(server.message_batches) == 1


@pytest.mark.parametrize(
    "config", [FakeServerConfig(anthropic_max_requests=2), FakeServerConfig(anthropic_max_bytes=300)]
)
def test_too_large_batches_are_413(config: FakeServerConfig) -> None:
    with FakeProviderServer(config) as server, make_provider(server) as provider:
        data = jsonl(provider, {f"r{i}": "Summarize: a short text" for i in range(3)})
        with pytest.raises(ProviderRejected, match="HTTP 413") as info:
            provider.create(data, None, {}, requests=3)
        assert info.value.code == "request_too_large" and server.stats.creates == 0


def test_expiry_keeps_the_first_requests() -> None:
    with (
        FakeProviderServer(FakeServerConfig(expire_after_requests=3)) as server,
        make_provider(server) as provider,
    ):
        created = provider.create(
            jsonl(provider, {f"r{i}": f"Summarize item {i}" for i in range(5)}), None, {}, requests=5
        )
        done = wait(provider, created.id)[-1]
        assert done.status is BatchStatus.EXPIRED and (done.total, done.completed, done.failed) == (5, 3, 2)
        by_id = results(provider, done)
    assert sorted(cid for cid, r in by_id.items() if r.ok) == ["r0", "r1", "r2"]
    assert {by_id[cid].error_kind for cid in ("r3", "r4")} == {ErrorKind.BATCH_EXPIRED}


def test_cancel_keeps_finished_requests() -> None:
    config = FakeServerConfig(in_progress_seconds=1.0, cancelling_seconds=0.1)
    with FakeProviderServer(config) as server, make_provider(server) as provider:
        created = provider.create(
            jsonl(provider, {f"r{i}": f"Summarize item {i}" for i in range(10)}), None, {}, requests=10
        )
        time.sleep(0.3)
        cancelling = provider.cancel(created.id)
        assert cancelling.status is BatchStatus.CANCELLING and cancelling.raw_status == "canceling"
        assert server.message_batch(created.id)["cancel_initiated_at"] is not None
        assert provider.cancel(created.id).status is BatchStatus.CANCELLING  # again: a no-op
        done = wait(provider, created.id)[-1]
        assert done.status is BatchStatus.CANCELLED and done.total == 10
        finished = done.completed or 0
        assert 0 < finished < 10 and done.failed == 10 - finished
        by_id = results(provider, done)
        assert sorted(cid for cid, r in by_id.items() if r.ok) == [f"r{i}" for i in range(finished)]
        assert {r.error_kind for r in by_id.values() if not r.ok} == {ErrorKind.BATCH_CANCELLED}
        with pytest.raises(ProviderRejected, match="already ended"):
            provider.cancel(created.id)


def test_server_side_cancel_before_anything_ran() -> None:
    with (
        FakeProviderServer(FakeServerConfig(validating_seconds=5.0)) as server,
        make_provider(server) as provider,
    ):
        created = provider.create(jsonl(provider, {"a": "x", "b": "y"}), None, {}, requests=2)
        assert server.cancel_message_batch(created.id)["processing_status"] == "canceling"
        done = provider.retrieve(created.id)
        assert done.status is BatchStatus.CANCELLED and (done.completed, done.failed) == (0, 2)
        assert {r.error_kind for r in provider.iter_results(done)} == {ErrorKind.BATCH_CANCELLED}
        with pytest.raises(ValueError, match="already ended"):
            server.cancel_message_batch(created.id)


def test_find_batch_resolves_an_ambiguous_create(server: FakeProviderServer) -> None:
    with make_provider(server, read_timeout=0.3) as provider:
        before = time.time() - 1
        other = provider.create(jsonl(provider, {"a": "x", "b": "y"}), None, {}, requests=2)
        server.stall_next_create(2.0, route="/v1/messages/batches")
        data = jsonl(provider, {"a": "x", "b": "y", "c": "z"})
        with pytest.raises(AmbiguousCreate):
            provider.create(data, None, {"job_id": "j"}, requests=3)
        assert server.stats.creates == 2  # the batch was made although the answer never came
        found = provider.find_batch({"job_id": "j"}, created_after=before, requests=3)
        assert found is not None and found.id != other.id and found.total == 3
        assert provider.find_batch({}, created_after=before, requests=2) == provider.retrieve(other.id)
        assert provider.find_batch({}, created_after=time.time() + 60, requests=3) is None
        provider.create(data, None, {}, requests=3)
        assert provider.find_batch({}, created_after=before, requests=3) is None  # two candidates
    with pytest.raises(ValueError, match="unknown create route"):
        server.stall_next_create(1.0, route="/v1/messages")


def test_faults_are_retried_with_anthropic_envelopes(server: FakeProviderServer) -> None:
    server.fail_next("POST", "/v1/messages/batches", status=429, times=2, retry_after=0.01)
    with make_provider(server) as provider:
        created = provider.create(jsonl(provider, {"a": "x"}), None, {}, requests=1)
        assert server.stats.calls["POST /v1/messages/batches"] == 3 and server.stats.creates == 1
        server.fail_next("GET", "/v1/messages/batches/{id}", status=529)
        assert provider.retrieve(created.id).id == created.id
        server.fail_next("POST", "/v1/messages/batches", status=500)
        with pytest.raises(AmbiguousCreate):
            provider.create(jsonl(provider, {"a": "x"}), None, {}, requests=1)
    server.fail_next("GET", "/v1/messages/batches", status=429, retry_after=2)
    limited = httpx.get(f"{server.anthropic_base_url}/v1/messages/batches", headers=HEADERS)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert "retry-after-ms" not in limited.headers and limited.headers["request-id"].startswith("req_")
    assert limited.json()["type"] == "error" and limited.json()["error"]["type"] == "rate_limit_error"
    server.fail_next("POST", "/v1/messages", status=529)
    overloaded = httpx.post(f"{server.anthropic_base_url}/v1/messages", headers=HEADERS, json={})
    assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"


def test_auth_and_version_header(server: FakeProviderServer) -> None:
    url = f"{server.anthropic_base_url}/v1/messages/batches"
    missing = httpx.get(url, headers={"anthropic-version": "2023-06-01"})
    assert missing.status_code == 401
    assert set(missing.json()) == {"type", "error", "request_id"}
    assert missing.json()["error"]["type"] == "authentication_error"
    wrong = httpx.get(url, headers={**HEADERS, "x-api-key": "sk-wrong"})
    assert wrong.status_code == 401 and "sk-wrong" not in wrong.text
    bearer = httpx.get(url, headers={"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"})
    assert bearer.status_code == 401
    no_version = httpx.get(url, headers={"x-api-key": KEY})
    assert no_version.status_code == 400 and "anthropic-version" in no_version.json()["error"]["message"]
    assert httpx.get(url, headers=HEADERS).status_code == 200
    with AnthropicBatchProvider(api_key="sk-wrong", base_url=server.anthropic_base_url) as provider:
        with pytest.raises(ProviderRejected, match="HTTP 401") as info:
            provider.retrieve("msgbatch_x")
        assert info.value.code == "authentication_error"
    # The OpenAI routes still want a Bearer token.
    assert httpx.get(server.base_url + "/batches", headers=HEADERS).status_code == 401


def test_list_delete_and_results_routes(server: FakeProviderServer) -> None:
    one = {"x": "y"}
    with make_provider(server) as provider:
        ids = [provider.create(jsonl(provider, one), None, {}, requests=1).id for _ in range(5)]
    with httpx.Client(base_url=server.anthropic_base_url, headers=HEADERS) as client:
        pages, after = [], None
        while True:
            page = client.get(
                "/v1/messages/batches", params={"limit": 2} | ({"after_id": after} if after else {})
            )
            assert page.status_code == 200 and set(page.json()) == {"data", "has_more", "first_id", "last_id"}
            pages.append(page.json())
            if not page.json()["has_more"]:
                break
            after = page.json()["last_id"]
        assert [b["id"] for p in pages for b in p["data"]] == ids[::-1]
        assert [len(p["data"]) for p in pages] == [2, 2, 1]
        newer = client.get("/v1/messages/batches", params={"before_id": ids[1], "limit": 2}).json()
        assert [b["id"] for b in newer["data"]] == [ids[3], ids[2]] and newer["has_more"] is True
        assert len(client.get("/v1/messages/batches").json()["data"]) == 5
        for bad in ({"limit": 0}, {"limit": 1001}):
            assert client.get("/v1/messages/batches", params=bad).status_code == 400
        assert client.get("/v1/messages/batches", params={"limit": 1000}).status_code == 200
        unknown = client.get("/v1/messages/batches/msgbatch_nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
        nowhere = client.get("/v1/messages/nowhere")
        assert nowhere.status_code == 404 and nowhere.json()["error"]["type"] == "not_found_error"

        ended = client.get(f"/v1/messages/batches/{ids[0]}").json()
        assert ended["processing_status"] == "ended" and ended["results_url"].startswith("http://127.0.0.1:")
        deleted = client.delete(f"/v1/messages/batches/{ids[0]}")
        assert deleted.json() == {"id": ids[0], "type": "message_batch_deleted"}
        assert client.get(f"/v1/messages/batches/{ids[0]}").status_code == 404
        assert server.stats.calls["DELETE /v1/messages/batches/{id}"] == 1

    with (
        FakeProviderServer(FakeServerConfig(in_progress_seconds=5.0)) as slow,
        httpx.Client(base_url=slow.anthropic_base_url, headers=HEADERS) as client,
        make_provider(slow) as provider,
    ):
        batch_id = provider.create(jsonl(provider, one), None, {}, requests=1).id
        running = client.delete(f"/v1/messages/batches/{batch_id}")
        assert running.status_code == 400 and running.json()["error"]["type"] == "invalid_request_error"
        assert client.get(f"/v1/messages/batches/{batch_id}/results").status_code == 400
        assert batch_id in slow.message_batches


def test_realtime_messages(server: FakeProviderServer) -> None:
    url = f"{server.anthropic_base_url}/v1/messages"
    content = [{"type": "text", "text": "Sentiment? I love it"}]
    body = {
        "model": MODEL,
        "max_tokens": 50,
        "system": "[[fake:nothing]] Be brief",
        "messages": [{"role": "user", "content": content}],
    }
    answer = httpx.post(url, headers=HEADERS, json=body)
    assert answer.status_code == 200 and answer.headers["request-id"]
    message = answer.json()
    assert message["type"] == "message" and message["role"] == "assistant" and message["model"] == MODEL
    assert (
        message["content"] == [{"type": "text", "text": "positive"}] and message["stop_reason"] == "end_turn"
    )
    assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] == 2
    tool = {"name": "grade", "input_schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}
    forced = httpx.post(
        url, headers=HEADERS, json={**body, "tools": [tool], "tool_choice": {"type": "tool", "name": "grade"}}
    )
    [block] = forced.json()["content"]
    assert block["type"] == "tool_use" and block["name"] == "grade" and block["input"] == {"ok": True}
    assert forced.json()["stop_reason"] == "tool_use"
    for marker, status, etype in (
        ("400", 400, "invalid_request_error"),
        ("500", 500, "api_error"),
        ("drop", 500, "api_error"),
        ("timeout", 504, "timeout_error"),
    ):
        failed = httpx.post(url, headers=HEADERS, json={**body, "system": f"[[fake:{marker}]]"})
        assert failed.status_code == status and failed.json()["error"]["type"] == etype
    no_max = {k: v for k, v in body.items() if k != "max_tokens"}
    rejected = httpx.post(url, headers=HEADERS, json=no_max)
    assert rejected.status_code == 400 and rejected.json()["error"]["message"] == "max_tokens: Field required"
    assert server.stats.calls["POST /v1/messages"] == 7 and server.stats.creates == 0


def test_reset_forgets_message_batches(server: FakeProviderServer) -> None:
    with make_provider(server) as provider:
        batch_id = provider.create(jsonl(provider, {"a": "x"}), None, {}, requests=1).id
        server.reset()
        assert not server.message_batches and server.stats.creates == 0
        with pytest.raises(ProviderRejected, match="404"):
            provider.retrieve(batch_id)


def test_stalled_message_batches_hold_until_cancelled_or_released() -> None:
    body = {
        "requests": [
            {
                "custom_id": f"r{i}",
                "params": {
                    "model": MODEL,
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": f"hi {i}"}],
                },
            }
            for i in range(3)
        ]
    }
    with (
        FakeProviderServer(FakeServerConfig(api_key=KEY, stall_in="in_progress")) as server,
        httpx.Client(base_url=server.anthropic_base_url, headers=HEADERS) as client,
    ):
        held = client.post("/v1/messages/batches", json=body).json()["id"]
        released = client.post("/v1/messages/batches", json=body).json()["id"]
        time.sleep(0.05)
        for batch_id in (held, released):
            batch = client.get(f"/v1/messages/batches/{batch_id}").json()
            assert batch["processing_status"] == "in_progress" and batch["request_counts"]["processing"] == 3
        canceling = client.post(f"/v1/messages/batches/{held}/cancel").json()
        assert canceling["processing_status"] == "canceling"
        batch = client.get(f"/v1/messages/batches/{held}").json()
        assert batch["processing_status"] == "ended"
        assert batch["request_counts"] == {
            "processing": 0,
            "succeeded": 0,
            "errored": 0,
            "canceled": 3,
            "expired": 0,
        }
        lines = [
            json.loads(line) for line in client.get(f"/v1/messages/batches/{held}/results").text.splitlines()
        ]
        assert {line["result"]["type"] for line in lines} == {"canceled"} and len(lines) == 3

        server.unstall_batches()
        batch = client.get(f"/v1/messages/batches/{released}").json()
        assert batch["processing_status"] == "ended" and batch["request_counts"]["succeeded"] == 3
        assert batch["ended_at"] >= batch["created_at"]


@pytest.mark.parametrize("status", ["validating", "finalizing"])
def test_other_stalls_do_not_hold_message_batches(status: Any) -> None:
    with (
        FakeProviderServer(FakeServerConfig(api_key=KEY, stall_in=status)) as server,
        make_provider(server) as provider,
    ):
        data = jsonl(provider, {"a": "hello"})
        created = provider.create(data, None, {"job_id": "j"}, requests=1)
        assert wait(provider, created.id)[-1].status is BatchStatus.COMPLETED
        assert server.creates_for("j") == 0  # counts OpenAI batches only
