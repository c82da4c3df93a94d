"""Blocks: Prefect's block standards (offline), secrets that stay secret, the saved job, registration."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import uuid
import zlib

import httpx
import prefect.testing.standard_test_suites.blocks as prefect_block_suite
import pytest
from prefect import flow, get_run_logger
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite
from pydantic import ValidationError

from prefect_llm_batch.blocks import AnthropicBatchCredentials, LLMBatchJob, OpenAIBatchCredentials
from prefect_llm_batch.errors import ConfigError, LLMBatchError
from prefect_llm_batch.providers import anthropic_target, openai_target
from prefect_llm_batch.providers.base import BatchProvider
from prefect_llm_batch.spec import BatchLimits, JobSpec
from prefect_llm_batch.tasks import provider_for

SECRET = "test-key-5f3a9c1e-never-print-me"
MASK = "**********"


def png(width: int, height: int) -> bytes:
    """A plain-colour RGB PNG, encoded with the standard library only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit depth, RGB, no interlace
    pixels = b"".join(b"\x00" + b"\x10\xa3\x7f" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


class OfflineBlockStandardTestSuite(BlockStandardTestSuite):
    """Prefect's block standards, with the suite's logo download answered locally.

    The suite's ``test_has_a_valid_image`` (which runs when Pillow is installed) opens
    ``urlopen(str(block._logo_url))``; here that call gets a generated 250 x 250 PNG instead of
    going to the network. ``monkeypatch`` fails loudly should Prefect stop using ``urlopen``.
    """

    @pytest.fixture(autouse=True)
    def logo_served_locally(self, block: type[Block], monkeypatch: pytest.MonkeyPatch) -> list[str]:
        fetched: list[str] = []

        def urlopen(url: str, *args: object, **kwargs: object) -> io.BytesIO:
            assert url == str(block._logo_url), url
            fetched.append(url)
            return io.BytesIO(png(250, 250))

        monkeypatch.setattr(prefect_block_suite, "urlopen", urlopen)
        return fetched

    def test_logo_is_a_real_https_url(self, block: type[Block]) -> None:
        assert block._logo_url is not None
        assert str(block._logo_url).startswith("https://")

    def test_block_type_does_not_collide_with_prefect_openai(self, block: type[Block]) -> None:
        assert block.get_block_type_name() != "OpenAI Credentials"
        assert block.get_block_type_slug().startswith("llm-batch-")


class TestOpenAIBatchCredentialsStandards(OfflineBlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return OpenAIBatchCredentials


class TestAnthropicBatchCredentialsStandards(OfflineBlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return AnthropicBatchCredentials


class TestLLMBatchJobStandards(OfflineBlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return LLMBatchJob


def test_offline_logo_is_a_valid_square_png() -> None:
    data = png(250, 250)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert width == height == 250


def test_block_types_have_their_own_names() -> None:
    assert OpenAIBatchCredentials.get_block_type_name() == "LLM Batch OpenAI Credentials"
    assert OpenAIBatchCredentials.get_block_type_slug() == "llm-batch-openai-credentials"
    assert LLMBatchJob.get_block_type_name() == "LLM Batch Job"
    assert LLMBatchJob.get_block_type_slug() == "llm-batch-job"


def a_job(**fields: object) -> LLMBatchJob:
    defaults: dict[str, object] = {
        "prompt": "Sentiment of: {{ review }}",
        "system": "You are terse. Product: {{ product }}",
        "model": "gpt-4o-mini",
        "params": {"temperature": 0, "max_tokens": 5},
        "provider": "openai",
        "id_column": "review_id",
        "credentials": OpenAIBatchCredentials(api_key=SECRET, base_url="https://gw.example/v1"),
    }
    defaults.update(fields)
    return LLMBatchJob(**defaults)


# --- secrets -------------------------------------------------------------------------------------


def test_secrets_are_masked_in_repr_str_and_json() -> None:
    job = a_job()
    assert job.credentials is not None
    for shown in (repr(job.credentials), str(job.credentials), repr(job), str(job), job.model_dump_json()):
        assert SECRET not in shown
        assert MASK in shown
    assert job.credentials.api_key.get_secret_value() == SECRET


def test_validation_errors_do_not_echo_the_key() -> None:
    with pytest.raises(ValidationError) as info:
        LLMBatchJob(prompt="{{ review }}", credentials={"api_key": SECRET})  # type: ignore[call-arg]
    assert "model" in str(info.value)
    assert SECRET not in str(info.value)


def test_get_client_returns_a_new_provider_each_call() -> None:
    creds = OpenAIBatchCredentials(api_key=SECRET, base_url="https://gw.example/v1")
    with (
        creds.get_client() as first,
        creds.get_client(limits=BatchLimits(max_requests_per_batch=7)) as second,
    ):
        assert first is not second
        assert first.key_base_url == second.key_base_url == "https://gw.example/v1"
        assert second.limits.max_requests_per_batch == 7


def test_tasks_get_a_new_client_from_the_blocks_get_client_each_time() -> None:
    calls: list[dict[str, object]] = []

    class CountingCredentials(OpenAIBatchCredentials):
        _block_type_slug = "llm-batch-counting-test-credentials"

        def get_client(self, limits: BatchLimits | None = None, **options: object) -> BatchProvider:
            calls.append({"limits": limits, **options})
            return super().get_client(limits, **options)  # type: ignore[arg-type]

    creds = CountingCredentials(api_key=SECRET)
    target = openai_target("https://gw.example/v1")
    limits = BatchLimits(max_requests_per_batch=9)
    spec = JobSpec(prompt="{{ text }}", model="m", endpoint="/v1/embeddings", limits=limits)
    with provider_for(target, spec, creds) as first, provider_for(target, spec, creds) as second:
        assert first is not second
        assert first.key_base_url == "https://gw.example/v1"
        assert first.endpoint == "/v1/embeddings"
        assert first.limits.max_requests_per_batch == 9
    assert calls == [{"limits": spec.limits, "target": target, "endpoint": "/v1/embeddings"}] * 2


def test_get_client_takes_the_jobs_target_for_either_provider() -> None:
    anthropic, openai = AnthropicBatchCredentials(api_key=SECRET), OpenAIBatchCredentials(api_key=SECRET)
    with (
        anthropic.get_client(target=anthropic_target("https://a.example")) as a,
        openai.get_client(target=openai_target("https://o.example/v1")) as o,
    ):
        assert (a.key_base_url, a.endpoint) == ("https://a.example", "/v1/messages")
        assert o.key_base_url == "https://o.example/v1"


@pytest.mark.parametrize(
    ("creds", "target"),
    [
        (OpenAIBatchCredentials(api_key=SECRET), anthropic_target("https://a.example")),
        (AnthropicBatchCredentials(api_key=SECRET), openai_target("https://o.example/v1")),
    ],
)
def test_one_providers_key_is_never_sent_to_the_other(
    creds: OpenAIBatchCredentials | AnthropicBatchCredentials, target: object
) -> None:
    spec = JobSpec(prompt="{{ text }}", model="m")
    with pytest.raises(ConfigError, match="cannot be used with the") as info:
        provider_for(target, spec, creds)  # type: ignore[arg-type]
    assert SECRET not in str(info.value)


def test_a_job_block_with_the_other_providers_credentials_fails_when_built() -> None:
    with pytest.raises(ValidationError, match="use an LLM Batch Anthropic Credentials block") as info:
        a_job(provider="anthropic")
    assert SECRET not in str(info.value)
    job = a_job(provider="anthropic", credentials=AnthropicBatchCredentials(api_key=SECRET))
    assert isinstance(job.credentials, AnthropicBatchCredentials)


def test_the_key_goes_on_the_wire_and_nowhere_else(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[httpx.Request] = []

    def reject(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided", "code": None}})

    creds = OpenAIBatchCredentials(api_key=SECRET, base_url="https://gw.example/v1")
    logger = logging.getLogger("prefect_llm_batch.tests")
    caplog.set_level(logging.DEBUG)
    logger.info("using %s and %r", creds, creds)
    with (
        creds.get_client(transport=httpx.MockTransport(reject)) as provider,
        pytest.raises(LLMBatchError) as info,
    ):
        provider.retrieve("batch_abc")
    logger.error("retrieve failed: %s", info.value, exc_info=info.value)

    assert seen[0].url == httpx.URL("https://gw.example/v1/batches/batch_abc")
    assert seen[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in caplog.text
    assert MASK in caplog.text


# --- the saved job -------------------------------------------------------------------------------


def test_to_spec_maps_every_field() -> None:
    spec = a_job(response_schema={"type": "object", "properties": {"label": {"type": "string"}}}).to_spec(
        limits=BatchLimits(max_requests_per_batch=80)
    )
    assert spec == JobSpec(
        prompt="Sentiment of: {{ review }}",
        system="You are terse. Product: {{ product }}",
        model="gpt-4o-mini",
        params={"temperature": 0, "max_tokens": 5},
        provider="openai",
        base_url="https://gw.example/v1",
        id_column="review_id",
        response_schema={"type": "object", "properties": {"label": {"type": "string"}}},
        limits=BatchLimits(max_requests_per_batch=80),
    )
    assert SECRET not in spec.model_dump_json()


def test_to_spec_base_url_prefers_the_job_then_the_credentials() -> None:
    assert a_job(base_url="https://own.example/v1").to_spec().base_url == "https://own.example/v1"
    assert a_job().to_spec().base_url == "https://gw.example/v1"
    assert a_job(credentials=None, provider="simulator").to_spec().base_url is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "   "}, "the prompt template is empty"),
        ({"prompt": "{{ review }"}, "prompt has a syntax error"),
        ({"system": "{% if %}"}, "system prompt has a syntax error"),
        ({"params": {"messages": []}}, "params may not set ['messages']"),
        ({"provider": "anthropic-ish"}, "provider"),
        ({"model": ""}, "model"),
    ],
)
def test_a_bad_job_fails_when_the_block_is_built(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        a_job(**fields)
    assert message in str(info.value)
    assert SECRET not in str(info.value)


# --- against a Prefect server ----------------------------------------------------------------------


@pytest.fixture
def block_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.mark.usefixtures("prefect_harness")
def test_saved_job_loads_back_with_its_credentials_and_the_api_hides_the_key(block_name: str) -> None:
    from prefect.client.orchestration import get_client

    job = a_job()
    job.save(block_name)
    loaded = LLMBatchJob.load(block_name)
    assert isinstance(loaded, LLMBatchJob)
    assert loaded.to_spec() == job.to_spec()
    assert loaded.credentials is not None
    assert loaded.credentials.api_key.get_secret_value() == SECRET

    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(block_name, "llm-batch-job", include_secrets=False)
    assert SECRET not in json.dumps(document.model_dump(mode="json"))


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_that_logs_its_credentials_shows_them_masked() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    @flow(name="log-credentials", persist_result=False)
    def log_credentials(credentials: OpenAIBatchCredentials) -> str:
        get_run_logger().info("credentials: %s", credentials)
        from prefect.runtime import flow_run

        return str(flow_run.id)

    run_id = uuid.UUID(log_credentials(OpenAIBatchCredentials(api_key=SECRET)))
    APILogHandler().flush()  # logs reach the API in batches, from a background worker
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        run = client.read_flow_run(run_id)
    text = "\n".join(log.message for log in logs)
    assert "credentials: " in text and MASK in text
    assert SECRET not in text
    assert SECRET not in json.dumps(run.model_dump(mode="json"))


@pytest.mark.usefixtures("prefect_harness")
def test_prefect_block_register_registers_every_block_type() -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_llm_batch.blocks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Successfully registered 4 blocks" in result.stdout, result.stdout
    slugs = ("llm-batch-openai-credentials", "llm-batch-anthropic-credentials")
    slugs = (*slugs, "llm-batch-gemini-credentials")
    with get_client(sync_client=True) as client:
        for slug in (*slugs, "llm-batch-job"):
            assert client.read_block_type_by_slug(slug).slug == slug


@pytest.mark.parametrize("block", [OpenAIBatchCredentials, AnthropicBatchCredentials, LLMBatchJob])
def test_the_blocks_code_example_is_one_fenced_python_block(block: type[Block]) -> None:
    """The UI renders the code example as Markdown: a fence at the start of a line, nothing around it."""
    example = block.get_code_example()
    assert example is not None
    lines = example.splitlines()
    assert lines[0] == "```python" and lines[-1] == "```", example
    assert f"from prefect_llm_batch.blocks import {block.__name__}" in lines
    assert all(not line.startswith(" ") for line in lines if "import" in line or "load(" in line)


@pytest.mark.parametrize("block", [OpenAIBatchCredentials, AnthropicBatchCredentials, LLMBatchJob])
def test_the_blocks_description_has_no_rest_roles(block: type[Block]) -> None:
    """The UI shows the docstring's first text section as Markdown, where a role stays literal."""
    description = block.get_description()
    assert description
    assert not re.search(r":[a-z]+:`", description), description
