"""The Azure OpenAI provider against httpx.MockTransport: URLs, auth header, lines, statuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import closing

import httpx
import pytest

from prefect_llm_batch.errors import ConfigError, ProviderRejected
from prefect_llm_batch.providers.azure import AzureOpenAIBatchProvider, azure_target
from prefect_llm_batch.providers.base import BatchInfo, BatchStatus

KEY = "azure-test-key-not-real"
RESOURCE = "https://res.openai.azure.com"
VERSION = "2024-10-21"

Handler = Callable[[httpx.Request], httpx.Response]


def batch(status: str = "validating", **extra: object) -> dict[str, object]:
    return {
        "id": "batch_1",
        "object": "batch",
        "status": status,
        "created_at": 100,
        "request_counts": {"total": 2, "completed": 2, "failed": 0},
        "metadata": {"job_id": "j"},
        **extra,
    }


def answer_line(cid: str) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    line = {"custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None}
    return json.dumps(line).encode() + b"\n"


def router(request: httpx.Request) -> httpx.Response:
    """A tiny Azure: answers each call of the provider by method and path suffix."""
    path = request.url.path
    if request.method == "POST" and path.endswith("/files"):
        return httpx.Response(200, json={"id": "file-in", "object": "file"})
    if request.method == "POST" and path.endswith("/batches"):
        return httpx.Response(200, json=batch("Validating"))
    if request.method == "GET" and path.endswith("/batches"):
        return httpx.Response(200, json={"data": [batch()], "has_more": False})
    if request.method == "GET" and path.endswith("/batches/batch_1"):
        return httpx.Response(200, json=batch("Completed"))
    if request.method == "POST" and path.endswith("/batches/batch_1/cancel"):
        return httpx.Response(200, json=batch("Cancelling"))
    if request.method == "GET" and path.endswith("/files/file-out/content"):
        return httpx.Response(200, content=answer_line("k1"))
    if request.method == "GET" and path.endswith("/files/file-err/content"):
        return httpx.Response(200, content=b"")  # Azure: zero-byte error file on a clean batch
    if request.method == "DELETE" and path.endswith("/files/file-in"):
        return httpx.Response(200, json={"id": "file-in", "deleted": True})
    return httpx.Response(404, json={"error": {"message": f"no route {request.method} {path}"}})


def provider(
    handler: Handler, api_version: str | None = VERSION, **kwargs: object
) -> AzureOpenAIBatchProvider:
    return AzureOpenAIBatchProvider(
        api_key=KEY,
        endpoint_url=RESOURCE,
        api_version=api_version,
        transport=httpx.MockTransport(handler),
        sleep=lambda s: None,
        **kwargs,  # type: ignore[arg-type]
    )


def exercise(p: AzureOpenAIBatchProvider) -> None:
    """Every HTTP call of the provider once."""
    assert p.upload(b'{"custom_id":"k1"}\n', "chunk.jsonl") == "file-in"
    assert p.create(b"", "file-in", {"job_id": "j"}, requests=1).status is BatchStatus.VALIDATING
    found = p.find_batch({"job_id": "j"})
    assert found is not None and found.id == "batch_1"
    assert p.retrieve("batch_1").status is BatchStatus.COMPLETED
    assert p.cancel("batch_1").status is BatchStatus.CANCELLING
    done = BatchInfo(
        id="batch_1", status=BatchStatus.COMPLETED, raw_status="completed",
        output_file_id="file-out", error_file_id="file-err",
    )  # fmt: skip
    assert [r.custom_id for r in p.iter_results(done)] == ["k1"]
    p.delete_file("file-in")


@pytest.mark.parametrize(
    ("api_version", "prefix", "query"),
    [(VERSION, "/openai/", {"api-version": VERSION}), (None, "/openai/v1/", {})],
    ids=["versioned", "v1"],
)
def test_every_call_has_azure_url_and_api_key_header(
    api_version: str | None, prefix: str, query: dict[str, str]
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return router(request)

    with closing(provider(handler, api_version=api_version)) as p:
        exercise(p)
    paths = [(r.method, r.url.path) for r in seen]
    assert paths == [
        ("POST", f"{prefix}files"),
        ("POST", f"{prefix}batches"),
        ("GET", f"{prefix}batches"),
        ("GET", f"{prefix}batches/batch_1"),
        ("POST", f"{prefix}batches/batch_1/cancel"),
        ("GET", f"{prefix}files/file-out/content"),
        ("GET", f"{prefix}files/file-err/content"),
        ("DELETE", f"{prefix}files/file-in"),
    ]
    for request in seen:
        assert request.url.host == "res.openai.azure.com"
        assert request.headers["api-key"] == KEY
        assert "authorization" not in request.headers
        params = dict(request.url.params)
        assert params.get("api-version") == query.get("api-version")
        if request.url.path.endswith("/batches") and request.method == "GET":
            assert params["limit"] == "100"  # the list's own params survive next to api-version


def test_create_body_and_lines_use_the_path_without_v1() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=batch())

    with closing(provider(handler)) as p:
        p.create(b"", "file-in", {"job_id": "j"}, requests=1)
        line = p.build_line("k1", p.build_body("my-deployment", "hi", None, {}))
        assert p.endpoint == "/v1/chat/completions"  # request keys and job records as for OpenAI
    assert bodies == [
        {
            "input_file_id": "file-in",
            "endpoint": "/chat/completions",
            "completion_window": "24h",
            "metadata": {"job_id": "j"},
        }
    ]
    assert line["url"] == "/chat/completions"
    assert line["body"]["model"] == "my-deployment"  # the deployment name, sent as given


def test_embeddings_lines_drop_v1_too() -> None:
    with closing(provider(router, endpoint="/v1/embeddings")) as p:
        assert p.build_line("k", {"model": "emb", "input": "x"})["url"] == "/embeddings"


def test_upload_is_multipart_with_purpose_batch() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return router(request)

    with closing(provider(handler)) as p:
        p.upload(b'{"custom_id":"a"}\n', "job-chunk-00000.jsonl")
    body = seen[0].read()
    assert b'name="purpose"' in body and b"batch" in body
    assert b'filename="job-chunk-00000.jsonl"' in body


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Validating", BatchStatus.VALIDATING),
        ("InProgress", BatchStatus.IN_PROGRESS),
        ("In Progress", BatchStatus.IN_PROGRESS),
        ("in_progress", BatchStatus.IN_PROGRESS),
        ("Finalizing", BatchStatus.FINALIZING),
        ("Completed", BatchStatus.COMPLETED),
        ("Cancelled", BatchStatus.CANCELLED),
        ("canceled", BatchStatus.CANCELLED),
        ("FAILED", BatchStatus.FAILED),
    ],
)
def test_statuses_are_normalised(raw: str, expected: BatchStatus) -> None:
    info = AzureOpenAIBatchProvider.batch_info(batch(raw))
    assert info.status is expected
    assert info.raw_status == raw
    assert info.total == 2 and info.metadata == {"job_id": "j"}


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ProviderRejected, match="Paused"):
        AzureOpenAIBatchProvider.batch_info(batch("Paused"))


def test_zero_byte_error_file_next_to_a_successful_output_file() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return router(request)

    raw = batch("completed", output_file_id="file-out", error_file_id="file-err")
    with closing(provider(handler)) as p:
        info = p.batch_info(raw)
        results = list(p.iter_results(info))
    assert [r.custom_id for r in results] == ["k1"]
    assert results[0].error_kind is None
    assert seen[-1].endswith("/files/file-err/content")  # downloaded, and empty is fine


def test_missing_key_names_the_env_var() -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        AzureOpenAIBatchProvider(api_key="", endpoint_url=RESOURCE, api_version=VERSION)


@pytest.mark.parametrize("url", ["", "  "])
def test_missing_endpoint_names_the_env_var(url: str) -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        AzureOpenAIBatchProvider(api_key=KEY, endpoint_url=url, api_version=VERSION)


def test_endpoint_that_is_not_a_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT") as info:
        AzureOpenAIBatchProvider(api_key=KEY, endpoint_url="res.openai.azure.com", api_version=None)
    assert KEY not in str(info.value)


def test_target_without_endpoint_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        azure_target()


@pytest.mark.parametrize("status", [401, 403, 404])
def test_the_key_never_appears_in_errors(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        message = "Access denied due to invalid subscription key or wrong API endpoint."
        return httpx.Response(status, json={"error": {"code": str(status), "message": message}})

    with closing(provider(handler)) as p, pytest.raises(ProviderRejected) as info:
        p.retrieve("batch_1")
    assert "Access denied" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value.args)


def test_key_base_url_differs_per_style_and_from_openai() -> None:
    with closing(provider(router)) as versioned, closing(provider(router, api_version=None)) as v1:
        assert versioned.key_base_url == "https://res.openai.azure.com/openai"
        assert v1.key_base_url == "https://res.openai.azure.com/openai/v1"
        assert versioned.name == "azure" and versioned.api_version == VERSION and v1.api_version is None


def test_trailing_openai_path_in_the_endpoint_is_tolerated() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return router(request)

    p = AzureOpenAIBatchProvider(
        api_key=KEY, endpoint_url=f"{RESOURCE}/openai/v1/", api_version=None,
        transport=httpx.MockTransport(handler),
    )  # fmt: skip
    with closing(p):
        p.retrieve("batch_1")
    assert seen[0].url == f"{RESOURCE}/openai/v1/batches/batch_1"


@pytest.mark.parametrize(
    ("env_version", "arg", "base_url", "key_base_url"),
    [
        (VERSION, None, f"{RESOURCE}/openai?api-version={VERSION}", f"{RESOURCE}/openai"),
        (None, None, f"{RESOURCE}/openai/v1", f"{RESOURCE}/openai/v1"),
        (VERSION, "v1", f"{RESOURCE}/openai/v1", f"{RESOURCE}/openai/v1"),
    ],
)
def test_azure_target_reads_the_sdk_env_vars(
    monkeypatch: pytest.MonkeyPatch,
    env_version: str | None,
    arg: str | None,
    base_url: str,
    key_base_url: str,
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://RES.openai.azure.com/")
    if env_version:
        monkeypatch.setenv("OPENAI_API_VERSION", env_version)
    else:
        monkeypatch.delenv("OPENAI_API_VERSION", raising=False)
    target = azure_target(api_version=arg)
    assert str(target.provider) == "azure"
    assert target.base_url.lower() == base_url.lower()
    assert target.key_base_url == key_base_url
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return router(request)

    transport = httpx.MockTransport(handler)
    with closing(AzureOpenAIBatchProvider.from_target(target, api_key=KEY, transport=transport)) as p:
        p.retrieve("batch_1")
        assert p.key_base_url == key_base_url
    assert str(seen[0].url).lower() == (
        f"{RESOURCE}/openai/v1/batches/batch_1"
        if "v1" in base_url
        else f"{RESOURCE}/openai/batches/batch_1?api-version={VERSION}"
    )


def test_make_provider_builds_azure_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_llm_batch.providers import make_provider, target_for

    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "test-key-azure-env")
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    target = target_for("azure", "https://my-resource.openai.azure.com")
    assert target.provider == "azure"
    with make_provider(target) as provider:
        assert isinstance(provider, AzureOpenAIBatchProvider)
        assert provider.build_line("k", {"model": "my-deployment"})["url"] == "/chat/completions"
