"""The fake OpenAI batch provider (chat, embeddings, markers, stalls), exercised over real HTTP with httpx."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prefect_llm_batch.testing import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    EMBEDDING_DIMENSIONS,
    MARKERS,
    FakeProviderServer,
    FakeServerConfig,
    default_embedding,
)
from prefect_llm_batch.testing.answers import default_answer

pytest_plugins = ["prefect_llm_batch.testing.pytest_plugin"]

AUTH = {"Authorization": "Bearer sk-test"}
MODEL = "gpt-4o-mini"
ENDPOINT = "/v1/chat/completions"


def request_line(custom_id: str, content: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    line: dict[str, Any] = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    for key, value in overrides.items():
        if key in ("model", "stream"):
            body[key] = value
        else:
            line[key] = value
    return line


def to_jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeServerConfig()) as fake:
        yield fake


@pytest.fixture
def client(server: FakeProviderServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=5.0) as http:
        yield http


def upload(client: httpx.Client, data: bytes, filename: str = "input.jsonl") -> dict[str, Any]:
    response = client.post("/files", files={"file": (filename, data)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def create(client: httpx.Client, file_id: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    payload = {
        "input_file_id": file_id,
        "endpoint": ENDPOINT,
        "completion_window": "24h",
        "metadata": metadata,
    }
    response = client.post("/batches", json=payload)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def submit(client: httpx.Client, lines: list[dict[str, Any]]) -> dict[str, Any]:
    return create(client, upload(client, to_jsonl(lines))["id"])


def retrieve(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = client.get(f"/batches/{batch_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_until_done(client: httpx.Client, batch_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = retrieve(client, batch_id)
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.02)


def content(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    response = client.get(f"/files/{file_id}/content")
    assert response.status_code == 200
    return read_jsonl(response.content)


BATCH_FIELDS = {
    "id", "object", "endpoint", "model", "input_file_id", "completion_window", "status", "errors",
    "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at",
    "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at", "request_counts",
    "metadata", "usage",
}  # fmt: skip


def test_happy_path_moves_through_states_with_shuffled_output() -> None:
    config = FakeServerConfig(validating_seconds=0.15, in_progress_seconds=0.5, finalizing_seconds=0.15)
    reviews = [f"What is the sentiment? Review {i}: {'great' if i % 2 else 'awful'}" for i in range(20)]
    lines = [request_line(f"row-{i}", text) for i, text in enumerate(reviews)]
    with (
        FakeProviderServer(config) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        file_obj = upload(client, to_jsonl(lines))
        assert file_obj["id"].startswith("file-") and file_obj["object"] == "file"
        assert file_obj["purpose"] == "batch" and file_obj["bytes"] == len(to_jsonl(lines))
        batch = create(client, file_obj["id"], metadata={"job_id": "j1", "chunk_id": "0"})
        assert set(batch) == BATCH_FIELDS
        assert batch["id"].startswith("batch_") and batch["object"] == "batch"
        assert batch["status"] == "validating" and batch["expires_at"] == batch["created_at"] + 86400
        assert batch["metadata"] == {"job_id": "j1", "chunk_id": "0"}

        seen: list[tuple[str, dict[str, int]]] = []
        while batch["status"] != "completed":
            time.sleep(0.03)
            batch = retrieve(client, batch["id"])
            seen.append((batch["status"], batch["request_counts"]))
        statuses = [status for status, _ in seen]
        assert statuses == sorted(
            statuses, key=["validating", "in_progress", "finalizing", "completed"].index
        )
        assert {"validating", "in_progress", "finalizing"} <= set(statuses)
        in_progress_done = [c["completed"] for s, c in seen if s == "in_progress"]
        assert in_progress_done == sorted(in_progress_done) and in_progress_done[-1] < 20
        assert all(c == {"total": 20, "completed": 20, "failed": 0} for s, c in seen if s == "finalizing")

        assert batch["model"] == MODEL and batch["errors"] is None and batch["error_file_id"] is None
        assert batch["in_progress_at"] <= batch["finalizing_at"] <= batch["completed_at"]
        assert batch["usage"]["input_tokens"] > 0 and batch["usage"]["output_tokens"] > 0
        output_file = client.get(f"/files/{batch['output_file_id']}").json()
        assert output_file["purpose"] == "batch_output" and output_file["filename"].endswith(".jsonl")

        results = content(client, batch["output_file_id"])
        ids = [line["custom_id"] for line in results]
        assert sorted(ids) == sorted(line["custom_id"] for line in lines)
        assert ids != [line["custom_id"] for line in lines]  # shuffled
        by_id = {line["custom_id"]: line for line in results}
        first = by_id["row-1"]
        assert first["id"].startswith("batch_req_") and first["error"] is None
        assert first["response"]["status_code"] == 200 and first["response"]["request_id"].startswith("req_")
        body = first["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "positive", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ]
        assert by_id["row-2"]["response"]["body"]["choices"][0]["message"]["content"] == "negative"
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert (
            server.stats.creates == 1 and server.stats.uploads == 1 and server.stats.requests_received == 20
        )
        assert server.stats.calls["POST /v1/batches"] == 1
        assert server.stats.calls["GET /v1/batches/{id}"] == len(seen)
        assert server.batches[batch["id"]].status == "completed"


def test_answers_are_deterministic() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Summarize: " + "word " * 30}]}
    assert default_answer(body) == default_answer(json.loads(json.dumps(body)))
    assert default_answer(body).startswith("[simulated] Summarize:") and default_answer(body).endswith("...")
    sentiment = {"messages": [{"role": "user", "content": "Give the sentiment: great food, rude staff"}]}
    assert default_answer(sentiment) == "mixed"


@pytest.mark.parametrize(
    ("lines", "code", "line_number"),
    [
        ([request_line("a", "x")], "invalid_json_line", 2),
        ([request_line("a", "x"), request_line("a", "y")], "duplicate_custom_id", 2),
        ([request_line("a", "x"), request_line("b", "y", url="/v1/embeddings")], "url_mismatch", 2),
        ([request_line("a", "x"), request_line("b", "y", model="gpt-4o")], "model_mismatch", 2),
        ([request_line("a", "x", stream=True)], "invalid_request", 1),
        ([], "empty_file", None),
    ],
    ids=[
        "invalid_json_line",
        "duplicate_custom_id",
        "url_mismatch",
        "model_mismatch",
        "stream",
        "empty_file",
    ],
)
def test_validation_failures(
    client: httpx.Client, lines: list[dict[str, Any]], code: str, line_number: int | None
) -> None:
    data = to_jsonl(lines)
    if code == "invalid_json_line":
        data += b"{not json\n"
    batch = submit_raw(client, data)
    assert batch["status"] == "validating"
    batch = retrieve(client, batch["id"])
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    assert batch["errors"]["object"] == "list"
    error = batch["errors"]["data"][0]
    assert set(error) == {"code", "message", "param", "line"}
    assert error["code"] == code and error["line"] == line_number and error["message"]


def submit_raw(client: httpx.Client, data: bytes) -> dict[str, Any]:
    return create(client, upload(client, data)["id"])


def test_token_limit_exceeded() -> None:
    with (
        FakeProviderServer(FakeServerConfig(enqueued_token_limit=5)) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        batch = retrieve(
            client, submit(client, [request_line("a", "a prompt longer than twenty chars")])["id"]
        )
        assert batch["status"] == "failed"
        assert batch["errors"]["data"][0]["code"] == "token_limit_exceeded"


def test_forced_validation_error() -> None:
    with (
        FakeProviderServer(FakeServerConfig(validation_error="token_limit_exceeded")) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        batch = retrieve(client, submit(client, [request_line("a", "x")])["id"])
        assert batch["status"] == "failed" and batch["model"] == MODEL
        assert batch["errors"]["data"][0]["code"] == "token_limit_exceeded"
        assert MODEL in batch["errors"]["data"][0]["message"]


def test_markers_make_single_rows_misbehave(client: httpx.Client) -> None:
    lines = [request_line("ok", "Summarize: all is well")] + [
        request_line(name, f"Summarize this text please [[fake:{name}]]")
        for name in ("400", "500", "refusal", "length", "content_filter", "drop", "timeout")
    ]
    batch = wait_until_done(client, submit(client, lines)["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 8, "completed": 5, "failed": 3}
    output = {line["custom_id"]: line for line in content(client, batch["output_file_id"])}
    errors = {line["custom_id"]: line for line in content(client, batch["error_file_id"])}
    assert set(output) == {"ok", "refusal", "length", "content_filter"}
    assert set(errors) == {"400", "500", "timeout"}  # "drop" has no line at all

    def choice(custom_id: str) -> dict[str, Any]:
        result: dict[str, Any] = output[custom_id]["response"]["body"]["choices"][0]
        return result

    assert choice("ok")["message"]["content"] == "[simulated] Summarize: all is well"
    assert choice("refusal")["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": "I can't help with that.",
    }
    full = default_answer(lines[4]["body"])
    assert choice("length")["finish_reason"] == "length"
    assert (
        full.startswith(choice("length")["message"]["content"])
        and choice("length")["message"]["content"] != full
    )
    assert choice("content_filter")["finish_reason"] == "content_filter"
    assert choice("content_filter")["message"]["content"] is None
    for custom_id, status, error_type in (
        ("400", 400, "invalid_request_error"),
        ("500", 500, "server_error"),
    ):
        line = errors[custom_id]
        assert line["error"] is None and line["response"]["status_code"] == status
        assert set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}
        assert line["response"]["body"]["error"]["type"] == error_type
    assert errors["timeout"]["response"] is None and errors["timeout"]["error"]["code"] == "request_timeout"


def test_all_failed_batch_has_no_output_file(client: httpx.Client) -> None:
    batch = wait_until_done(client, submit(client, [request_line("a", "[[fake:500]]")])["id"])
    assert batch["status"] == "completed" and batch["output_file_id"] is None
    assert batch["error_file_id"] is not None


def test_realtime_chat_completions(client: httpx.Client) -> None:
    body = request_line("x", "Sentiment? I love it")["body"]
    answer = client.post("/chat/completions", json=body)
    assert answer.status_code == 200
    assert answer.json()["object"] == "chat.completion"
    assert answer.json()["choices"][0]["message"]["content"] == "positive"
    for marker, status in (("400", 400), ("500", 500), ("timeout", 408), ("drop", 500)):
        failed = client.post("/chat/completions", json=request_line("x", f"Hi [[fake:{marker}]]")["body"])
        assert failed.status_code == status and set(failed.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    failed = client.post("/chat/completions", json=request_line("x", "Hi [[fake:400]]")["body"])
    assert failed.status_code == 400 and failed.json()["error"]["type"] == "invalid_request_error"


def test_create_and_upload_are_validated(client: httpx.Client) -> None:
    bad_name = client.post("/files", files={"file": ("in.json", b"{}")}, data={"purpose": "batch"})
    assert bad_name.status_code == 400
    assert bad_name.json()["error"]["message"] == "Invalid file format for Batch API. Must be .jsonl"
    bad_purpose = client.post("/files", files={"file": ("in.jsonl", b"{}")}, data={"purpose": "fine-tune"})
    assert bad_purpose.status_code == 400
    file_id = upload(client, to_jsonl([request_line("a", "x")]))["id"]
    good = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
    bad_payloads = [
        {**good, "input_file_id": "file-nope"},
        {**good, "completion_window": "48h"},
        {**good, "metadata": {str(i): "v" for i in range(17)}},
        {**good, "metadata": {"k" * 65: "v"}},
        {**good, "metadata": {"k": "v" * 513}},
    ]
    for payload in bad_payloads:
        response = client.post("/batches", json=payload)
        assert response.status_code == 400, payload
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    ok = client.post("/batches", json={**good, "metadata": {str(i): "v" * 512 for i in range(16)}})
    assert ok.status_code == 200


def test_fail_next_answers_429_with_retry_after(server: FakeProviderServer, client: httpx.Client) -> None:
    file_id = upload(client, to_jsonl([request_line("a", "x")]))["id"]
    server.fail_next("POST", "/v1/batches", status=429, times=2, retry_after=0.05)
    payload = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
    for _ in range(2):
        limited = client.post("/batches", json=payload)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "0.05" and limited.headers["retry-after-ms"] == "50"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert server.stats.creates == 0 and not server.batches
    assert client.post("/batches", json=payload).status_code == 200
    assert server.stats.creates == 1 and server.stats.calls["POST /v1/batches"] == 3

    server.fail_next("POST", "/v1/chat/completions", status=429, code="insufficient_quota")
    quota = client.post("/chat/completions", json=request_line("x", "hi")["body"])
    assert quota.status_code == 429 and "retry-after" not in quota.headers
    assert quota.json()["error"]["code"] == quota.json()["error"]["type"] == "insufficient_quota"
    server.fail_next("GET", "/v1/files/{id}/content", status=503)
    assert client.get(f"/files/{file_id}/content").status_code == 503
    assert client.get(f"/files/{file_id}/content").status_code == 200
    with pytest.raises(ValueError, match="unknown route"):
        server.fail_next("GET", "/v1/nope")


def test_stalled_create_times_out_but_makes_the_batch(
    server: FakeProviderServer, client: httpx.Client
) -> None:
    file_id = upload(client, to_jsonl([request_line("a", "x")]))["id"]
    server.stall_next_create(seconds=3.0)
    payload = {
        "input_file_id": file_id,
        "endpoint": ENDPOINT,
        "completion_window": "24h",
        "metadata": {"k": "1"},
    }
    with pytest.raises(httpx.ReadTimeout):
        client.post("/batches", json=payload, timeout=httpx.Timeout(5.0, read=0.3))
    assert server.stats.creates == 1
    listing = client.get("/batches").json()
    assert [b["metadata"] for b in listing["data"]] == [{"k": "1"}]


def test_cancel_keeps_finished_requests() -> None:
    config = FakeServerConfig(in_progress_seconds=1.0)
    lines = [request_line(f"r{i}", f"Summarize item {i}") for i in range(10)]
    with (
        FakeProviderServer(config) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        batch = submit(client, lines)
        time.sleep(0.45)
        cancelling = client.post(f"/batches/{batch['id']}/cancel")
        assert cancelling.status_code == 200 and cancelling.json()["status"] == "cancelling"
        assert cancelling.json()["cancelling_at"] is not None
        batch = retrieve(client, batch["id"])
        assert batch["status"] == "cancelled" and batch["cancelled_at"] is not None
        finished = batch["request_counts"]["completed"]
        assert 0 < finished < 10 and batch["request_counts"]["total"] == 10
        output = content(client, batch["output_file_id"])
        errors = content(client, batch["error_file_id"])
        assert sorted(line["custom_id"] for line in output) == [f"r{i}" for i in range(finished)]
        assert len(errors) == 10 - finished
        assert all(e["response"] is None and e["error"]["code"] == "batch_cancelled" for e in errors)
        again = client.post(f"/batches/{batch['id']}/cancel")
        assert again.status_code == 400 and again.json()["error"]["message"]


def test_expiry_keeps_the_first_requests() -> None:
    lines = [request_line(f"r{i}", f"Summarize item {i}") for i in range(5)]
    with (
        FakeProviderServer(FakeServerConfig(expire_after_requests=3)) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        batch = wait_until_done(client, submit(client, lines)["id"])
        assert batch["status"] == "expired" and batch["expired_at"] is not None
        assert batch["completed_at"] is None
        assert batch["request_counts"] == {"total": 5, "completed": 3, "failed": 0}
        output = content(client, batch["output_file_id"])
        errors = content(client, batch["error_file_id"])
        assert sorted(line["custom_id"] for line in output) == ["r0", "r1", "r2"]
        assert sorted(line["custom_id"] for line in errors) == ["r3", "r4"]
        assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)


def test_list_batches_paginates_newest_first(client: httpx.Client) -> None:
    file_id = upload(client, to_jsonl([request_line("a", "x")]))["id"]
    created = [create(client, file_id, metadata={"chunk_id": str(i)})["id"] for i in range(5)]
    pages: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"after": after} if after else {})
        page = client.get("/batches", params=params).json()
        assert page["object"] == "list" and page["first_id"] == page["data"][0]["id"]
        pages.append(page)
        if not page["has_more"]:
            break
        after = page["last_id"]
    listed = [batch for page in pages for batch in page["data"]]
    assert [b["id"] for b in listed] == created[::-1]
    assert [b["metadata"]["chunk_id"] for b in listed] == ["4", "3", "2", "1", "0"]
    assert [len(page["data"]) for page in pages] == [2, 2, 1]
    assert len(client.get("/batches").json()["data"]) == 5
    assert client.get("/batches", params={"limit": 0}).status_code == 400
    assert client.get("/batches", params={"limit": 101}).status_code == 400


def test_files_endpoints(client: httpx.Client) -> None:
    data = to_jsonl([request_line("a", "x")])
    file_obj = upload(client, data)
    assert client.get(f"/files/{file_obj['id']}").json() == file_obj
    assert client.get(f"/files/{file_obj['id']}/content").content == data
    assert [f["id"] for f in client.get("/files", params={"purpose": "batch"}).json()["data"]] == [
        file_obj["id"]
    ]
    deleted = client.delete(f"/files/{file_obj['id']}")
    assert deleted.json() == {"id": file_obj["id"], "object": "file", "deleted": True}
    missing = client.get(f"/files/{file_obj['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/batches/batch_nope").status_code == 404
    assert client.get("/nowhere").json()["error"]["message"].startswith("Invalid URL")


def test_auth() -> None:
    with FakeProviderServer(FakeServerConfig(api_key="sk-right")) as server:
        url = server.base_url + "/batches"
        missing = httpx.get(url)
        assert missing.status_code == 401 and set(missing.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
        wrong = httpx.get(url, headers={"Authorization": "Bearer sk-wrong"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert "sk-wrong" not in wrong.text
        assert httpx.get(url, headers={"Authorization": "Bearer sk-right"}).status_code == 200
    with FakeProviderServer() as server:
        assert httpx.get(server.base_url + "/batches").status_code == 401
        assert (
            httpx.get(server.base_url + "/batches", headers={"Authorization": "Bearer any"}).status_code
            == 200
        )


def test_restart_keeps_port_and_state_and_reset_forgets(
    server: FakeProviderServer, client: httpx.Client
) -> None:
    batch_id = submit(client, [request_line("a", "x")])["id"]
    port = server.port
    server.stop()
    with pytest.raises(httpx.ConnectError):
        client.get(f"/batches/{batch_id}")
    server.start()
    assert server.port == port
    assert retrieve(client, batch_id)["status"] == "completed"
    server.reset()
    assert server.stats.creates == 0 and not server.batches and not server.files
    assert client.get(f"/batches/{batch_id}").status_code == 404


def test_server_side_cancel_and_inspection() -> None:
    with (
        FakeProviderServer(FakeServerConfig(validating_seconds=5.0)) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        batch_id = submit(client, [request_line("a", "x"), request_line("b", "y")])["id"]
        assert server.batches[batch_id].status == "validating"
        assert server.cancel_batch(batch_id)["status"] == "cancelling"
        batch = retrieve(client, batch_id)
        assert batch["status"] == "cancelled" and batch["in_progress_at"] is None
        assert batch["output_file_id"] is None
        assert {e["error"]["code"] for e in content(client, batch["error_file_id"])} == {"batch_cancelled"}


def test_pytest_plugin_fixture(fake_provider: FakeProviderServer) -> None:
    response = httpx.get(fake_provider.base_url + "/batches", headers=AUTH)
    assert response.status_code == 200 and fake_provider.stats.calls["GET /v1/batches"] == 1


# ----- embeddings ---------------------------------------------------------------------------------

EMBED_MODEL = "text-embedding-3-small"


def embedding_line(custom_id: str, text: str | list[str], **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": EMBED_MODEL, "input": text, **body},
    }


def create_for(client: httpx.Client, lines: list[dict[str, Any]], endpoint: str) -> dict[str, Any]:
    file_id = upload(client, to_jsonl(lines))["id"]
    payload = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
    response = client.post("/batches", json=payload)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def norm(vector: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


def test_realtime_embeddings(server: FakeProviderServer, client: httpx.Client) -> None:
    answer = client.post("/embeddings", json={"model": EMBED_MODEL, "input": "hello world"})
    assert answer.status_code == 200 and answer.headers["x-request-id"].startswith("req_")
    body = answer.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == EMBED_MODEL
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    [item] = body["data"]
    assert set(item) == {"object", "index", "embedding"}
    assert item["object"] == "embedding" and item["index"] == 0
    vector = item["embedding"]
    assert len(vector) == 1536 and abs(norm(vector) - 1.0) < 1e-9
    assert vector == default_embedding(EMBED_MODEL, "hello world")
    again = client.post("/embeddings", json={"model": EMBED_MODEL, "input": "hello world"}).json()
    assert again["data"][0]["embedding"] == vector  # deterministic
    other = client.post("/embeddings", json={"model": EMBED_MODEL, "input": "hello there"}).json()
    assert other["data"][0]["embedding"] != vector

    for model, size in [*EMBEDDING_DIMENSIONS.items(), ("my-local-embedder", DEFAULT_EMBEDDING_DIMENSIONS)]:
        sized = client.post("/embeddings", json={"model": model, "input": "x"}).json()
        assert len(sized["data"][0]["embedding"]) == size, model
    assert DEFAULT_EMBEDDING_DIMENSIONS == 256

    many = client.post(
        "/embeddings",
        json={"model": "text-embedding-3-large", "input": ["a", "bb", "hello world"], "dimensions": 8},
    ).json()
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    assert all(len(d["embedding"]) == 8 and abs(norm(d["embedding"]) - 1) < 1e-9 for d in many["data"])
    assert many["data"][2]["embedding"] == default_embedding("text-embedding-3-large", "hello world", 8)
    assert many["usage"]["prompt_tokens"] == many["usage"]["total_tokens"] == 1 + 1 + 3

    encoded = client.post(
        "/embeddings",
        json={"model": EMBED_MODEL, "input": "hi", "dimensions": 4, "encoding_format": "base64"},
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<4f", base64.b64decode(encoded))
    assert decoded == pytest.approx(default_embedding(EMBED_MODEL, "hi", 4), abs=1e-6)
    floats = {"model": EMBED_MODEL, "input": "hi", "dimensions": 4, "encoding_format": "float"}
    assert client.post("/embeddings", json=floats).json()["data"][0]["embedding"] == default_embedding(
        EMBED_MODEL, "hi", 4
    )

    bad_bodies: list[tuple[dict[str, Any], str | None]] = [
        ({"input": "x"}, "model"),
        ({"model": EMBED_MODEL}, None),
        ({"model": EMBED_MODEL, "input": ""}, None),
        ({"model": EMBED_MODEL, "input": []}, None),
        ({"model": EMBED_MODEL, "input": [1, 2, 3]}, None),
        ({"model": EMBED_MODEL, "input": ["x"] * 2049}, "input"),
        ({"model": EMBED_MODEL, "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": EMBED_MODEL, "input": "x", "dimensions": 1537}, "dimensions"),
        ({"model": "text-embedding-ada-002", "input": "x", "dimensions": 8}, "dimensions"),
        ({"model": EMBED_MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ]
    for bad, param in bad_bodies:
        rejected = client.post("/embeddings", json=bad)
        assert rejected.status_code == 400, bad
        error = rejected.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]

    for marker, status in (("400", 400), ("500", 500), ("timeout", 408), ("drop", 500)):
        failed = client.post(
            "/embeddings", json={"model": EMBED_MODEL, "input": ["ok", f"x [[fake:{marker}]]"]}
        )
        assert failed.status_code == status and set(failed.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    ignored = client.post("/embeddings", json={"model": EMBED_MODEL, "input": "x [[fake:refusal]]"})
    assert ignored.status_code == 200 and len(ignored.json()["data"]) == 1

    server.fail_next("POST", "/v1/embeddings", status=503)
    assert client.post("/embeddings", json={"model": EMBED_MODEL, "input": "x"}).status_code == 503
    assert client.post("/embeddings", json={"model": EMBED_MODEL, "input": "x"}).status_code == 200
    assert server.stats.calls["POST /v1/embeddings"] >= 20


def test_embeddings_batch(client: httpx.Client) -> None:
    lines = [
        embedding_line("one", "first text"),
        embedding_line("many", ["a", "b c"], dimensions=16),
        embedding_line("bad", "x", dimensions=99999),
        *(embedding_line(marker, f"text [[fake:{marker}]]") for marker in ("400", "500", "drop", "timeout")),
    ]
    batch = create_for(client, lines, "/v1/embeddings")
    assert batch["endpoint"] == "/v1/embeddings" and batch["status"] == "validating"
    batch = wait_until_done(client, batch["id"])
    assert batch["status"] == "completed" and batch["model"] == EMBED_MODEL
    assert batch["request_counts"] == {"total": 7, "completed": 3, "failed": 4}  # "drop" counts as done
    assert batch["usage"]["input_tokens"] > 0 and batch["usage"]["output_tokens"] == 0
    output = {line["custom_id"]: line for line in content(client, batch["output_file_id"])}
    errors = {line["custom_id"]: line for line in content(client, batch["error_file_id"])}
    assert set(output) == {"one", "many"} and set(errors) == {"bad", "400", "500", "timeout"}
    one = output["one"]["response"]
    assert one["status_code"] == 200 and output["one"]["error"] is None
    assert one["body"]["object"] == "list" and one["body"]["model"] == EMBED_MODEL
    assert one["body"]["data"] == [
        {"object": "embedding", "index": 0, "embedding": default_embedding(EMBED_MODEL, "first text")}
    ]
    realtime = client.post("/embeddings", json=lines[0]["body"]).json()
    assert one["body"] == realtime  # the batch answers exactly like the realtime route
    many = output["many"]["response"]["body"]["data"]
    assert [(d["index"], len(d["embedding"])) for d in many] == [(0, 16), (1, 16)]
    for custom_id, status in (("bad", 400), ("400", 400), ("500", 500)):
        assert errors[custom_id]["response"]["status_code"] == status and errors[custom_id]["error"] is None
    assert errors["timeout"]["response"] is None and errors["timeout"]["error"]["code"] == "request_timeout"


@pytest.mark.parametrize(
    ("endpoint", "lines", "code"),
    [
        ("/v1/embeddings", [embedding_line("a", "x"), request_line("b", "y")], "url_mismatch"),
        (ENDPOINT, [request_line("a", "x"), embedding_line("b", "y")], "url_mismatch"),
        (
            "/v1/embeddings",
            [
                embedding_line("a", "x"),
                {**embedding_line("b", "y"), "body": {"model": "other", "input": "y"}},
            ],
            "model_mismatch",
        ),
    ],
    ids=["chat-line-in-embeddings-batch", "embeddings-line-in-chat-batch", "model_mismatch"],
)
def test_embeddings_batch_validation(
    client: httpx.Client, endpoint: str, lines: list[dict[str, Any]], code: str
) -> None:
    batch = retrieve(client, create_for(client, lines, endpoint)["id"])
    assert batch["status"] == "failed"
    assert batch["errors"]["data"][0]["code"] == code and batch["errors"]["data"][0]["line"] == 2


def test_embeddings_count_toward_the_enqueued_token_limit() -> None:
    with (
        FakeProviderServer(FakeServerConfig(enqueued_token_limit=5)) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        small = retrieve(client, create_for(client, [embedding_line("a", "tiny")], "/v1/embeddings")["id"])
        assert small["status"] == "completed"
        big = [embedding_line("a", "a prompt longer than twenty chars")]
        batch = retrieve(client, create_for(client, big, "/v1/embeddings")["id"])
        assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "token_limit_exceeded"


# ----- [[fake:invalid_json]] ----------------------------------------------------------------------

SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "review",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "label": {"enum": ["positive", "negative", "mixed"]},
                "summary": {"type": "string"},
            },
            "required": ["label", "summary"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize(
    "response_format", [SCHEMA_FORMAT, {"type": "json_object"}], ids=["schema", "object"]
)
def test_invalid_json_marker_breaks_structured_answers(
    client: httpx.Client, response_format: dict[str, Any]
) -> None:
    prompt = "Sentiment of this review: great food [[fake:invalid_json]]"
    line = request_line("bad", prompt)
    line["body"]["response_format"] = response_format
    valid = default_answer(line["body"])
    json.loads(valid)
    clean = request_line("good", "Sentiment of this review: great food")
    clean["body"]["response_format"] = response_format

    realtime = client.post("/chat/completions", json=line["body"])
    assert realtime.status_code == 200
    choice = realtime.json()["choices"][0]
    text = choice["message"]["content"]
    assert choice["finish_reason"] == "stop" and text and valid.startswith(text) and text != valid
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)

    batch = wait_until_done(client, submit(client, [line, clean])["id"])
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    output = {line["custom_id"]: line for line in content(client, batch["output_file_id"])}
    assert output["bad"]["response"]["body"]["choices"][0]["message"]["content"] == text
    assert json.loads(output["good"]["response"]["body"]["choices"][0]["message"]["content"]) == json.loads(
        valid
    )


def test_invalid_json_marker_without_response_format_is_a_no_op(client: httpx.Client) -> None:
    body = request_line("a", "Summarize: the cat sat [[fake:invalid_json]]")["body"]
    answer = client.post("/chat/completions", json=body).json()["choices"][0]
    assert answer["message"]["content"] == "[simulated] Summarize: the cat sat" == default_answer(body)
    assert answer["finish_reason"] == "stop"
    assert "invalid_json" in MARKERS


# ----- stalled batches ----------------------------------------------------------------------------


def test_config_stall_in_progress_holds_until_cancelled() -> None:
    lines = [request_line(f"r{i}", f"Summarize item {i}") for i in range(4)]
    with (
        FakeProviderServer(FakeServerConfig(stall_in="in_progress")) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        assert server.stalled_in == "in_progress"
        batch_id = submit(client, lines)["id"]
        for _ in range(3):
            batch = retrieve(client, batch_id)
            assert batch["status"] == "in_progress" and batch["in_progress_at"] is not None
            assert batch["request_counts"] == {"total": 4, "completed": 0, "failed": 0}
            time.sleep(0.05)
        assert client.post(f"/batches/{batch_id}/cancel").json()["status"] == "cancelling"
        batch = retrieve(client, batch_id)
        assert batch["status"] == "cancelled" and batch["output_file_id"] is None
        errors = content(client, batch["error_file_id"])
        assert sorted(e["custom_id"] for e in errors) == ["r0", "r1", "r2", "r3"]
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_config_stall_in_validating_and_finalizing() -> None:
    lines = [request_line("a", "x"), request_line("b", "y")]
    with (
        FakeProviderServer(FakeServerConfig(stall_in="validating")) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        batch_id = submit(client, lines)["id"]
        time.sleep(0.05)
        batch = retrieve(client, batch_id)
        assert batch["status"] == "validating" and batch["in_progress_at"] is None
        server.cancel_batch(batch_id)
        batch = retrieve(client, batch_id)
        assert batch["status"] == "cancelled" and batch["in_progress_at"] is None
        assert {e["error"]["code"] for e in content(client, batch["error_file_id"])} == {"batch_cancelled"}
    with (
        FakeProviderServer(FakeServerConfig(stall_in="finalizing")) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        batch_id = submit(client, lines)["id"]
        time.sleep(0.05)
        batch = retrieve(client, batch_id)
        assert batch["status"] == "finalizing" and batch["finalizing_at"] is not None
        assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        assert batch["output_file_id"] is None
        client.post(f"/batches/{batch_id}/cancel")
        batch = retrieve(client, batch_id)
        assert batch["status"] == "cancelled" and batch["error_file_id"] is None
        assert sorted(line["custom_id"] for line in content(client, batch["output_file_id"])) == ["a", "b"]


def test_stall_and_unstall_mid_test_resume_where_they_stopped() -> None:
    config = FakeServerConfig(in_progress_seconds=0.4, finalizing_seconds=0.1)
    lines = [request_line(f"r{i}", f"Summarize item {i}") for i in range(10)]
    with (
        FakeProviderServer(config) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        server.stall_batches("in_progress")
        fresh = submit(client, lines)["id"]
        time.sleep(0.6)  # longer than the whole schedule
        batch = retrieve(client, fresh)
        assert batch["status"] == "in_progress" and batch["request_counts"]["completed"] == 0
        server.unstall_batches()
        assert server.stalled_in is None
        batch = retrieve(client, fresh)  # the stalled time does not count: still all to run
        assert batch["status"] == "in_progress" and batch["request_counts"]["completed"] < 5
        batch = wait_until_done(client, fresh)
        assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 10
        assert batch["in_progress_at"] <= batch["finalizing_at"] <= batch["completed_at"]
        assert batch["completed_at"] >= batch["created_at"]


def test_stall_freezes_a_running_batch_where_it_is() -> None:
    lines = [request_line(f"r{i}", f"Summarize item {i}") for i in range(20)]
    with (
        FakeProviderServer(FakeServerConfig(in_progress_seconds=0.6)) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        batch_id = submit(client, lines)["id"]
        time.sleep(0.2)
        server.stall_batches("in_progress")
        frozen = retrieve(client, batch_id)["request_counts"]["completed"]
        assert 0 < frozen < 20
        time.sleep(0.3)
        batch = retrieve(client, batch_id)
        assert batch["status"] == "in_progress" and batch["request_counts"]["completed"] == frozen
        # switching the stall to a later status releases this one: it runs and stops at finalizing
        server.stall_batches("finalizing")
        assert frozen <= retrieve(client, batch_id)["request_counts"]["completed"] < 20
        deadline = time.monotonic() + 5
        while (batch := retrieve(client, batch_id))["status"] != "finalizing":
            assert time.monotonic() < deadline and batch["status"] == "in_progress"
            time.sleep(0.02)
        time.sleep(0.05)
        assert retrieve(client, batch_id)["status"] == "finalizing"
        server.unstall_batches()
        assert retrieve(client, batch_id)["status"] == "completed"


def test_stall_does_not_touch_batches_past_it_and_reset_restores_config() -> None:
    with (
        FakeProviderServer(FakeServerConfig(stall_in="finalizing")) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH) as client,
    ):
        server.unstall_batches()
        done = submit(client, [request_line("a", "x")])["id"]
        assert retrieve(client, done)["status"] == "completed"
        server.stall_batches("validating")
        assert retrieve(client, done)["status"] == "completed"
        held = submit(client, [request_line("a", "x")])["id"]
        assert retrieve(client, held)["status"] == "validating"
        server.unstall_batches()
        server.unstall_batches()  # idempotent
        assert retrieve(client, held)["status"] == "completed"
        server.reset()
        assert server.stalled_in == "finalizing"
    with pytest.raises(ValueError, match="stall"):
        FakeServerConfig(stall_in="running")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot stall"):
        FakeProviderServer().stall_batches("completed")  # type: ignore[arg-type]


# ----- creates per job ----------------------------------------------------------------------------


def test_creates_for_counts_batches_per_job(server: FakeProviderServer, client: httpx.Client) -> None:
    file_id = upload(client, to_jsonl([request_line("a", "x")]))["id"]
    create(client, file_id, metadata={"job_id": "job-1", "chunk_id": "0"})
    create(client, file_id, metadata={"job_id": "job-1", "chunk_id": "1"})
    create(client, file_id, metadata={"job_id": "job-2"})
    create(client, file_id, metadata={"chunk_id": "9"})
    create(client, file_id)
    server.fail_next("POST", "/v1/batches", status=500)
    failed = client.post(
        "/batches",
        json={
            "input_file_id": file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": {"job_id": "job-2"},
        },
    )
    assert failed.status_code == 500
    server.stall_next_create(seconds=2.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": ENDPOINT,
                "completion_window": "24h",
                "metadata": {"job_id": "job-2"},
            },
            timeout=httpx.Timeout(5.0, read=0.2),
        )
    assert (server.creates_for("job-1"), server.creates_for("job-2"), server.creates_for("nope")) == (2, 2, 0)
    assert server.stats.creates_by_job == {"job-1": 2, "job-2": 2} and server.stats.creates == 6
    server.reset()
    assert server.creates_for("job-1") == 0


def test_public_names_are_reexported() -> None:
    import prefect_llm_batch.testing as testing

    for name in ("EMBEDDING_DIMENSIONS", "FakeMessageBatch", "StallStatus", "default_embedding", "MARKERS"):
        assert name in testing.__all__ and hasattr(testing, name)
    assert "POST /v1/embeddings" in testing.ROUTES
