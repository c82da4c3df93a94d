"""The realtime path against the OpenAI-compatible servers users run themselves (llama.cpp, Ollama,
vLLM): their error shapes, answers without ``usage``, and a server that cannot take
``response_format.type = "json_schema"`` (reported as its limitation, not retried). httpx's
MockTransport plays each server, as httpx's own tests do; the schema styles of a target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from prefect_llm_batch import local_model
from prefect_llm_batch.errors import ConfigError
from prefect_llm_batch.jobs.realtime import LOCAL_CONCURRENCY, choose_mode, pick_mode, realtime_client
from prefect_llm_batch.local_model import DEFAULT_CONCURRENCY, check_gguf, local_key_base_url
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.providers.realtime import RealtimeClient
from prefect_llm_batch.schemas import ResponseSchema
from prefect_llm_batch.simulator import open_target
from prefect_llm_batch.spec import ErrorKind, ProviderTarget

KEY = "fake-key-for-tests"
SCHEMA = ResponseSchema(
    {"type": "object", "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}}},
    name="sentiment",
)
#: What llama-cpp-python's server (0.3.36) answered a chat request whose response_format is json_schema
#: (measured: HTTP 500; its file path shortened).
LLAMA_CPP_REFUSAL = {
    "error": {
        "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
        "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': "
        "{'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, in "
        "create_chat_completion\n    POST /v1/chat/completions",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}


@pytest.fixture
def provider() -> Iterator[OpenAIBatchProvider]:
    p = OpenAIBatchProvider(api_key=KEY, base_url="http://127.0.0.1:8080/v1")
    yield p
    p.close()


def lines(
    provider: OpenAIBatchProvider, n: int, schema: ResponseSchema | None = None
) -> list[dict[str, Any]]:
    return [
        provider.build_line(f"row-{i}", provider.build_body("m", f"Review {i}", None, {}, schema))
        for i in range(n)
    ]


def client(provider: OpenAIBatchProvider, answer: Any, **kwargs: Any) -> RealtimeClient:
    return RealtimeClient(
        provider,
        api_key=KEY,
        base_url="http://127.0.0.1:8080/v1",
        wire="openai",
        transport=httpx.MockTransport(answer),
        **kwargs,
    )


def test_a_server_refusing_json_schema_is_reported_as_its_limitation_and_not_retried(
    provider: OpenAIBatchProvider,
) -> None:
    sent: list[dict[str, Any]] = []

    def llama_cpp(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.content))
        return httpx.Response(500, json=LLAMA_CPP_REFUSAL)

    realtime = client(provider, llama_cpp, max_concurrency=1, max_retries=3)
    results = realtime.run(lines(provider, 20, SCHEMA))
    assert len(sent) == 1 and realtime.stats.retries == 0  # not retried, and the other rows not sent
    assert [r.error_kind for r in results] == [ErrorKind.INVALID_REQUEST] * 20
    assert not ErrorKind.INVALID_REQUEST.retryable
    for result in results:
        assert "json_schema" in (result.error or "")
        assert "json_object_schema" in (result.error or "")  # names the option that works
    assert "Input should be 'text' or 'json_object'" in (results[0].error or "")
    assert all("not sent" in (r.error or "") for r in results[1:])


def test_a_500_that_names_nothing_about_the_schema_is_still_a_retried_server_error(
    provider: OpenAIBatchProvider,
) -> None:
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(500, json={"error": {"message": "CUDA out of memory"}})
        return httpx.Response(200, json={"choices": [{"message": {"content": '{"label": "positive"}'}}]})

    [result] = client(provider, flaky, max_retries=2).run(lines(provider, 1, SCHEMA))
    assert result.ok and result.attempts == 2


@pytest.mark.parametrize(
    ("status", "body", "message", "kind"),
    [
        (404, {"error": "model 'llama3' not found, try pulling it first"}, "model 'llama3' not found",
         ErrorKind.INVALID_REQUEST),  # Ollama
        (400, {"object": "error", "message": "max_tokens is too large", "type": "BadRequestError",
               "code": 400}, "max_tokens is too large", ErrorKind.INVALID_REQUEST),  # vLLM
        (422, {"detail": "Field required: messages"}, "Field required: messages",
         ErrorKind.INVALID_REQUEST),  # FastAPI
        (400, {"error": {"message": "context length exceeded", "type": "invalid_request_error"}},
         "context length exceeded", ErrorKind.INVALID_REQUEST),  # OpenAI, llama.cpp
        (400, "plain text: bad request body", "plain text: bad request body", ErrorKind.INVALID_REQUEST),
    ],
)  # fmt: skip
def test_error_shapes_of_each_server_keep_their_message(
    provider: OpenAIBatchProvider, status: int, body: Any, message: str, kind: ErrorKind
) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    [result] = client(provider, server).run(lines(provider, 1))
    assert result.error_kind is kind
    assert message in (result.error or "") and f"HTTP {status}" in (result.error or "")


def test_an_answer_without_usage_has_null_tokens_not_an_error(provider: OpenAIBatchProvider) -> None:
    def server(request: httpx.Request) -> httpx.Response:  # no usage, no id, no n
        return httpx.Response(
            200, json={"choices": [{"message": {"content": "positive"}, "finish_reason": "stop"}]}
        )

    [result] = client(provider, server).run(lines(provider, 1))
    assert result.ok and result.response == "positive"
    assert result.input_tokens is None and result.output_tokens is None


def test_schema_styles_shape_the_response_format(provider: OpenAIBatchProvider) -> None:
    openai_body = provider.build_body("m", "p", None, {}, SCHEMA)
    assert openai_body["response_format"]["type"] == "json_schema"
    llama = OpenAIBatchProvider(api_key=KEY, schema_style="json_object_schema")
    body = llama.build_body("m", "p", None, {}, SCHEMA)
    llama.close()
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA.strict()}
    with pytest.raises(ConfigError, match="schema_style"):
        OpenAIBatchProvider(api_key=KEY, schema_style="json_object")  # never without a schema


def test_the_schema_style_is_a_property_of_the_target() -> None:
    with open_target("openai", "http://127.0.0.1:8080/v1", schema_style="json_object_schema") as target:
        assert target.schema_style == "json_object_schema"
        with make_provider(target, api_key=KEY) as made:
            body = made.build_body("m", "p", None, {}, SCHEMA)
    assert body["response_format"]["type"] == "json_object" and "schema" in body["response_format"]
    with open_target("openai", "http://127.0.0.1:8080/v1") as target:
        assert target.schema_style == "openai"


def test_the_local_provider_always_runs_in_realtime_with_few_requests_in_flight() -> None:
    target = ProviderTarget(
        provider="local", base_url="http://127.0.0.1:1/v1", key_base_url="local://sha256-ab/v1"
    )
    for mode in ("batch", "auto", "realtime"):
        chosen, reason = choose_mode(mode, target, 5000, KEY)  # type: ignore[arg-type]
        assert chosen == "realtime" and "no batch API" in reason
    assert pick_mode("batch", target, 10, KEY, detached=False)[0] == "realtime"
    with OpenAIBatchProvider(api_key=KEY) as made:
        local = realtime_client(made, target, KEY, max_concurrency=None)
        assert local.max_concurrency == LOCAL_CONCURRENCY == DEFAULT_CONCURRENCY and local.store_each
        other = ProviderTarget(provider="openai", base_url="http://h/v1", key_base_url="http://h/v1")
        remote = realtime_client(made, other, KEY, max_concurrency=None)
        assert remote.max_concurrency == 16 and not remote.store_each


def test_a_model_file_that_is_not_gguf_is_refused_before_anything_runs(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigError, match="does not exist"):
        check_gguf(str(missing))
    zipped = tmp_path / "model.gguf"
    zipped.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ConfigError, match="not a GGUF model file"):
        check_gguf(str(zipped))
    with pytest.raises(ConfigError, match="does not exist"):
        check_gguf(str(tmp_path))  # a directory


def test_two_models_never_share_request_keys_and_a_moved_model_keeps_its_own(tmp_path: Path) -> None:
    first, second = tmp_path / "a.gguf", tmp_path / "b" / "a.gguf"
    second.parent.mkdir()
    first.write_bytes(b"GGUF" + b"\x01" * 64)
    second.write_bytes(b"GGUF" + b"\x02" * 64)  # the same file name, another model
    assert check_gguf(str(first)) == first
    assert local_key_base_url(first) != local_key_base_url(second)
    moved = tmp_path / "renamed.gguf"
    moved.write_bytes(first.read_bytes())
    assert local_key_base_url(moved) == local_key_base_url(first)


def test_without_the_local_extra_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_model, "_SERVER_MODULES", ("llama_cpp_not_installed_here",))
    with pytest.raises(ConfigError, match=r"make install-local.*prefect-llm-batch\[local\]"):
        local_model.check_local("local", None)
    with pytest.raises(ConfigError, match="make install-local"):
        local_model.LocalModelServer(Path("model.gguf")).start()
    assert local_model.check_local("openai", None) is None  # other providers need nothing of it
