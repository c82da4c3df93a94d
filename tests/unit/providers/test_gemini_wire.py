"""Gemini request and result shapes checked against an independent implementation of the wire
format: the google-genai SDK's own pydantic types (``extra='forbid'``) and its client, over real
HTTP against the fake server."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from google import genai
from google.genai import types
from pydantic import BaseModel

from prefect_llm_batch.providers.gemini import GeminiBatchProvider
from prefect_llm_batch.providers.gemini_wire import wire_lines
from prefect_llm_batch.results import results_to_table
from prefect_llm_batch.schemas import ResponseSchema
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-gemini-wire"


class Verdict(BaseModel):
    sentiment: str
    stars: int | None
    tags: list[str]


@pytest.fixture
def provider() -> Any:
    with GeminiBatchProvider(api_key=KEY) as p:
        yield p


def wire_line(provider: GeminiBatchProvider, schema: ResponseSchema | None = None) -> dict[str, Any]:
    body = provider.build_body(
        "gemini-2.5-flash", "Rate: great", "Be brief", {"temperature": 0, "max_tokens": 50}, schema
    )
    data = orjson.dumps(provider.build_line("row-1", body)) + b"\n"
    line: dict[str, Any] = orjson.loads(wire_lines(data))
    return line


def test_a_request_line_is_a_key_and_a_generate_content_request_the_sdk_accepts(provider: Any) -> None:
    line = wire_line(provider, ResponseSchema.from_user(Verdict))
    assert set(line) == {"key", "request"} and line["key"] == "row-1"
    request = line["request"]
    assert set(request) == {"model", "contents", "systemInstruction", "generationConfig"}
    content = types.Content.model_validate(request["contents"][0])
    assert content.role == "user" and content.parts and content.parts[0].text == "Rate: great"
    system = types.Content.model_validate(request["systemInstruction"])
    assert system.parts and system.parts[0].text == "Be brief"
    config = types.GenerationConfig.model_validate(request["generationConfig"])
    assert config.response_mime_type == "application/json" and config.max_output_tokens == 50
    schema = config.response_schema
    assert isinstance(schema, types.Schema) and schema.type == types.Type.OBJECT
    assert schema.properties and schema.properties["stars"].nullable is True
    assert schema.properties["tags"].items and schema.properties["tags"].items.type == types.Type.STRING
    assert schema.property_ordering == ["sentiment", "stars", "tags"]


def test_a_response_built_by_the_sdk_is_read_with_its_tokens_and_finish_reason(provider: Any) -> None:
    response = types.GenerateContentResponse(
        candidates=[
            types.Candidate(
                content=types.Content(role="model", parts=[types.Part(text="Hel"), types.Part(text="lo")]),
                finish_reason=types.FinishReason.MAX_TOKENS,
            )
        ],
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=7, candidates_token_count=2, thoughts_token_count=3
        ),
        model_version="gemini-2.5-flash-001",
    ).model_dump(mode="json", by_alias=True, exclude_none=True)
    result = provider.parse_line({"key": "row-1", "response": response}, "batches/b1")
    assert (result.custom_id, result.response, result.error_kind.value) == ("row-1", "Hello", "length")
    assert (result.input_tokens, result.output_tokens, result.model) == (7, 5, "gemini-2.5-flash-001")

    assert result.cache_read_tokens is None and result.cache_write_tokens is None


def test_cached_content_tokens_fill_the_cache_read_column_and_stay_in_the_input_tokens(
    provider: Any,
) -> None:
    # Gemini's promptTokenCount includes the cachedContentTokenCount tokens (google-genai's
    # UsageMetadata docs); it reports no cache writes.
    response = types.GenerateContentResponse(
        candidates=[
            types.Candidate(
                content=types.Content(role="model", parts=[types.Part(text="ok")]),
                finish_reason=types.FinishReason.STOP,
            )
        ],
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1200, cached_content_token_count=1024, candidates_token_count=1
        ),
    ).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert response["usageMetadata"]["cachedContentTokenCount"] == 1024
    result = provider.parse_line({"key": "row-1", "response": response}, "batches/b1")
    assert (result.input_tokens, result.cache_read_tokens, result.cache_write_tokens) == (1200, 1024, None)
    table = results_to_table([result])
    assert table.column("response_cache_read_tokens").to_pylist() == [1024]
    assert table.column("response_cache_write_tokens").to_pylist() == [None]


def test_the_sdk_client_and_our_provider_share_the_fake_servers_batches(provider: Any) -> None:
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        client = genai.Client(
            api_key=KEY, http_options=types.HttpOptions(base_url=server.gemini_base_url, api_version="v1beta")
        )
        data = wire_lines(orjson.dumps(provider.build_line("row-1", wire_line(provider)["request"])) + b"\n")
        uploaded = client.files.upload(
            file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="jsonl")
        )
        assert uploaded.name and uploaded.name.startswith("files/")
        job = client.batches.create(model="gemini-2.5-flash", src=uploaded.name)
        assert job.name and job.state == types.JobState.JOB_STATE_PENDING
        done = client.batches.get(name=job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.dest and done.dest.file_name
        raw = client.files.download(file=done.dest.file_name)
        answer = orjson.loads(raw.splitlines()[0])
        assert answer["key"] == "row-1"
        assert (
            types.GenerateContentResponse.model_validate(answer["response"]).text == "[simulated] Rate: great"
        )
        with GeminiBatchProvider(api_key=KEY, base_url=server.gemini_base_url) as ours:
            info = ours.retrieve(job.name)
            table = ours.read_results(info).table
        assert (info.status.value, info.output_file_id) == ("completed", done.dest.file_name)
        assert table.column("response").to_pylist() == ["[simulated] Rate: great"]
        assert [j.name for j in client.batches.list()] == [job.name]


@pytest.mark.parametrize(
    ("code", "kind"),
    [(3, "invalid_request"), (4, "request_timeout"), (8, "rate_limited"), (13, "server_error"), (16, "auth")],
)
def test_per_line_grpc_codes_map_to_error_kinds(provider: Any, code: int, kind: str) -> None:
    result = provider.parse_line({"key": "k", "error": {"code": code, "message": "m"}}, None)
    assert result.error_kind.value == kind


def test_an_unknown_batch_state_is_an_error_not_a_guess() -> None:
    from prefect_llm_batch.errors import ProviderRejected

    with pytest.raises(ProviderRejected, match="BATCH_STATE_PAUSED"):
        GeminiBatchProvider.batch_info({"name": "batches/x", "metadata": {"state": "BATCH_STATE_PAUSED"}})
