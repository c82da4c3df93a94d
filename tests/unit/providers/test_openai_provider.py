"""The OpenAI provider against httpx.MockTransport: wire shapes, retries, error translation."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from prefect_llm_batch.errors import AmbiguousCreate, ConfigError, ProviderRejected, ProviderUnavailable
from prefect_llm_batch.providers import OpenAIBatchProvider
from prefect_llm_batch.providers.base import BatchStatus
from prefect_llm_batch.spec import ErrorKind

KEY = "test-key-not-real"

Handler = Callable[[httpx.Request], httpx.Response]


def provider(handler: Handler, **kwargs: object) -> OpenAIBatchProvider:
    return OpenAIBatchProvider(
        api_key=KEY,
        base_url="https://fake.example/v1",
        transport=httpx.MockTransport(handler),
        sleep=lambda s: None,
        **kwargs,  # type: ignore[arg-type]
    )


def err(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"error": {"message": message, "type": "x", "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


def batch(status: str = "validating", **extra: object) -> dict[str, object]:
    return {
        "id": "batch_1",
        "object": "batch",
        "status": status,
        "created_at": 100,
        "request_counts": {"total": 2, "completed": 1, "failed": 0},
        "metadata": {},
        **extra,
    }


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIBatchProvider(api_key="")


def test_upload_is_multipart_with_purpose_batch() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "file-1", "object": "file"})

    with provider(handler) as p:
        assert p.upload(b'{"custom_id":"a"}\n', "job-chunk-00000.jsonl") == "file-1"
    request = seen[0]
    assert request.url == "https://fake.example/v1/files"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = request.read()
    assert b'name="purpose"' in body and b"batch" in body
    assert b'filename="job-chunk-00000.jsonl"' in body


def test_create_sends_window_endpoint_metadata_and_retries_429() -> None:
    calls: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        if len(calls) == 1:
            return err(429, "Too many requests", "rate_limit_exceeded", {"retry-after": "0"})
        return httpx.Response(200, json=batch())

    with provider(handler) as p:
        info = p.create(b"", "file-1", {"job_id": "j", "chunk_id": "0"}, requests=1)
    assert info.status is BatchStatus.VALIDATING
    assert len(calls) == 2
    assert calls[1] == {
        "input_file_id": "file-1",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"job_id": "j", "chunk_id": "0"},
    }


@pytest.mark.parametrize(
    "failure",
    [lambda r: err(500, "oops"), lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r))],
)
def test_create_that_may_have_happened_is_ambiguous_and_not_retried(failure: Handler) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return failure(request)

    with provider(handler) as p, pytest.raises(AmbiguousCreate):
        p.create(b"", "file-1", {}, requests=1)
    assert len(calls) == 1


def test_transient_errors_are_retried_then_give_up() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return err(503, "busy", headers={"retry-after-ms": "1"})

    with provider(handler, max_retries=3) as p, pytest.raises(ProviderUnavailable, match="503"):
        p.retrieve("batch_1")
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("status", "code"), [(401, None), (403, None), (429, "insufficient_quota"), (400, None)]
)
def test_terminal_errors_quote_the_provider_and_are_not_retried(status: int, code: str | None) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return err(status, "You exceeded your current quota.", code)

    with provider(handler) as p, pytest.raises(ProviderRejected) as info:
        p.retrieve("batch_1")
    assert len(calls) == 1
    assert "You exceeded your current quota." in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value.args)


def test_statuses_are_case_normalised_and_unknown_ones_refused() -> None:
    assert OpenAIBatchProvider.batch_info(batch("FINALIZING")).status is BatchStatus.FINALIZING
    assert OpenAIBatchProvider.batch_info(batch("Validating")).raw_status == "Validating"
    with pytest.raises(ProviderRejected, match="unknown status"):
        OpenAIBatchProvider.batch_info(batch("paused"))


def test_empty_error_file_id_is_no_file() -> None:
    info = OpenAIBatchProvider.batch_info(batch("completed", output_file_id="file-o", error_file_id=""))
    assert info.error_file_id is None and info.output_file_id == "file-o"


def test_results_come_from_output_and_error_files() -> None:
    ok = {
        "id": "r1",
        "custom_id": "a",
        "error": None,
        "response": {
            "status_code": 200,
            "request_id": "q",
            "body": {
                "model": "m",
                "choices": [{"message": {"content": "yes"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 1},
            },
        },
    }
    bad = {
        "id": "r2",
        "custom_id": "b",
        "error": None,
        "response": {
            "status_code": 400,
            "request_id": "q",
            "body": {
                "error": {"message": "bad param", "type": "invalid_request_error", "param": "x", "code": None}
            },
        },
    }
    never = {
        "id": "r3",
        "custom_id": "c",
        "response": None,
        "error": {"code": "batch_expired", "message": "late"},
    }
    files = {"file-o": [ok], "file-e": [bad, never]}

    def handler(request: httpx.Request) -> httpx.Response:
        file_id = request.url.path.split("/")[-2]
        return httpx.Response(200, content=b"\n".join(json.dumps(x).encode() for x in files[file_id]) + b"\n")

    info = OpenAIBatchProvider.batch_info(batch("expired", output_file_id="file-o", error_file_id="file-e"))
    with provider(handler) as p:
        results = {r.custom_id: r for r in p.iter_results(info)}
    assert results["a"].response == "yes" and results["a"].batch_id == "batch_1"
    assert results["b"].error_kind is ErrorKind.INVALID_REQUEST and "bad param" in (results["b"].error or "")
    assert results["c"].error_kind is ErrorKind.BATCH_EXPIRED


def test_all_failed_batch_has_no_output_file() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/files/file-e/content"
        line = {
            "custom_id": "a",
            "response": {"status_code": 500, "body": {"error": {"message": "x"}}},
            "error": None,
        }
        return httpx.Response(200, content=json.dumps(line).encode())

    info = OpenAIBatchProvider.batch_info(batch("completed", output_file_id=None, error_file_id="file-e"))
    with provider(handler) as p:
        [result] = list(p.iter_results(info))
    assert result.error_kind is ErrorKind.SERVER_ERROR


def test_find_batch_pages_through_the_list() -> None:
    pages = {
        None: {
            "data": [batch(id="batch_3", metadata={"job_id": "other"})],
            "has_more": True,
            "last_id": "batch_3",
        },
        "batch_3": {
            "data": [{**batch(), "id": "batch_2", "metadata": {"job_id": "j", "chunk_id": "1"}}],
            "has_more": False,
            "last_id": "batch_2",
        },
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "list", **pages[request.url.params.get("after")]})

    with provider(handler) as p:
        found = p.find_batch({"job_id": "j", "chunk_id": "1"})
        assert found is not None and found.id == "batch_2"
        assert p.find_batch({"job_id": "nope"}) is None
