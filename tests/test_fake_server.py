"""The fake OpenAI batch provider, exercised over real HTTP with httpx."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig
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
