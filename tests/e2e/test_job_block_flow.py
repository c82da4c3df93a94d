"""The LLM Batch Job block as Prefect users use it: saved, loaded, run by ``run_llm_batch_job``
with either provider's credentials, over real HTTP to the fake server, real Parquet read back."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.blocks import AnthropicBatchCredentials, LLMBatchJob, OpenAIBatchCredentials
from prefect_llm_batch.errors import ConfigError
from prefect_llm_batch.flows import run_llm_batch_job
from prefect_llm_batch.spec import ProviderName
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "fake-key-FAKE-job-block-7d1e4b"
TEXTS = ["love it, great", "awful, broken", "fine", "great value", "terrible support"]


@pytest.fixture
def server() -> FakeProviderServer:
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=5)) as srv:
        yield srv  # type: ignore[misc]


def source(tmp_path: Path) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), path)
    return str(path)


def saved_job(provider: ProviderName, server: FakeProviderServer) -> str:
    credentials: OpenAIBatchCredentials | AnthropicBatchCredentials
    if provider == "anthropic":
        credentials = AnthropicBatchCredentials(api_key=KEY, base_url=server.anthropic_base_url)
        model = "claude-3-5-haiku-latest"
    else:
        credentials = OpenAIBatchCredentials(api_key=KEY, base_url=server.base_url)
        model = "gpt-4o-mini"
    name = f"job-{uuid.uuid4().hex[:12]}"
    job = LLMBatchJob(
        prompt="Sentiment of: {{ text }}", model=model, provider=provider, id_column="id",
        credentials=credentials,
    )  # fmt: skip
    job.save(name)
    return name


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_saved_job_block_runs_with_its_providers_credentials(
    provider: ProviderName, server: FakeProviderServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    caplog.set_level(logging.DEBUG)
    job = LLMBatchJob.load(saved_job(provider, server))
    assert isinstance(job, LLMBatchJob)
    expected = AnthropicBatchCredentials if provider == "anthropic" else OpenAIBatchCredentials
    assert type(job.credentials) is expected  # the union loads back the block type that was saved

    out = tmp_path / "out.parquet"
    state = run_llm_batch_job(
        job, source(tmp_path), str(out), state_dir=str(tmp_path / "state"),
        options={"poll_interval": 0.05, "retry_backoff": 0, "max_requests_per_batch": 2},
        return_state=True,
    )  # fmt: skip
    summary = state.result()

    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    assert table.column("response").null_count == 0
    assert table.column("response_error_kind").null_count == len(TEXTS)
    assert table.column("response").to_pylist()[:2] == ["positive", "negative"]
    assert summary.rows == len(TEXTS)
    create = "POST /v1/messages/batches" if provider == "anthropic" else "POST /v1/batches"
    assert server.stats.calls[create] == 3  # 5 rows, 2 per batch: the key came from the block

    APILogHandler().flush()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert run.name and run.flow_id and logs
    assert any("submit-batch" in log.message or "job " in log.message for log in logs)
    api_logs = "\n".join(log.message for log in logs)
    for text in (caplog.text, api_logs, json.dumps(run.model_dump(mode="json"))):
        assert KEY not in text


def test_options_that_the_block_sets_are_refused_before_anything_is_sent(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    job = LLMBatchJob.load(saved_job("openai", server))
    assert isinstance(job, LLMBatchJob)
    with pytest.raises(ConfigError, match=r"\['model'\] are set by the job block"):
        run_llm_batch_job(job, source(tmp_path), str(tmp_path / "out.parquet"), options={"model": "other"})
    with pytest.raises(ConfigError, match=r"\['poll_intervall'\] are not enrich_table parameters"):
        run_llm_batch_job(job, source(tmp_path), str(tmp_path / "out.parquet"), options={"poll_intervall": 1})
    assert sum(server.stats.calls.values()) == 0


def test_cancelling_the_run_cancels_its_batches_with_the_saved_blocks_key(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from prefect_llm_batch.flows import cancel_job_block_batches

    with FakeProviderServer(FakeServerConfig(api_key=KEY, stall_in="in_progress")) as server:
        job = LLMBatchJob.load(saved_job("anthropic", server))
        state = run_llm_batch_job(
            job, source(tmp_path), str(tmp_path / "out.parquet"), state_dir=str(tmp_path / "state"),
            detached=True, options={"max_requests_per_batch": 2}, return_state=True,
        )  # fmt: skip
        assert state.result().chunks == 3  # detached: submitted, the run has returned
        with get_client(sync_client=True) as client:  # the parameters as the API holds them
            flow_run = client.read_flow_run(state.state_details.flow_run_id)
        assert isinstance(flow_run.parameters["job"], dict)
        cancel_job_block_batches(run_llm_batch_job, flow_run, Cancelled())
        assert server.stats.calls["POST /v1/messages/batches"] == 3
        assert server.stats.calls["POST /v1/messages/batches/{id}/cancel"] == 3


def test_cancelling_an_enrich_table_run_uses_its_saved_credentials_block(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from prefect_llm_batch.flows import cancel_provider_batches, enrich_table

    with FakeProviderServer(FakeServerConfig(api_key=KEY, stall_in="in_progress")) as server:
        name = f"creds-{uuid.uuid4().hex[:12]}"
        AnthropicBatchCredentials(api_key=KEY, base_url=server.anthropic_base_url).save(name)
        state = enrich_table(
            source=source(tmp_path), output=str(tmp_path / "out.parquet"), prompt="Sentiment of: {{ text }}",
            model="claude-3-5-haiku-latest", provider="anthropic", id_column="id",
            credentials=AnthropicBatchCredentials.load(name), state_dir=str(tmp_path / "state"),
            detached=True, max_requests_per_batch=2, return_state=True,
        )  # fmt: skip
        assert state.result().chunks == 3
        with get_client(sync_client=True) as client:  # the parameters as the API holds them: a reference
            flow_run = client.read_flow_run(state.state_details.flow_run_id)
        assert isinstance(flow_run.parameters["credentials"], dict)
        cancel_provider_batches(enrich_table, flow_run, Cancelled())
        assert server.stats.calls["POST /v1/messages/batches/{id}/cancel"] == 3


def test_a_saved_job_block_keeps_its_model_column_and_image_columns(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    from tests.e2e.test_images_e2e import data_url, openai_bodies, png

    colours = [(255, 0, 0), (0, 0, 255)]
    for i, rgb in enumerate(colours):
        (tmp_path / f"{i}.png").write_bytes(png(1, 1, rgb))
    pq.write_table(
        pa.table(
            {"id": [0, 1], "text": ["r0", "r1"], "img": ["0.png", None], "model": ["model-a", "model-b"]}
        ),
        tmp_path / "in.parquet",
    )
    name = f"job-{uuid.uuid4().hex[:12]}"
    LLMBatchJob(
        prompt="Describe {{ text }}", model_column="model", image_columns=["img"], allow_missing_images=True,
        provider="openai", id_column="id",
        credentials=OpenAIBatchCredentials(api_key=KEY, base_url=server.base_url),
    ).save(name)  # fmt: skip
    job = LLMBatchJob.load(name)
    assert isinstance(job, LLMBatchJob)
    assert (job.model_column, job.image_columns, job.allow_missing_images) == ("model", ["img"], True)

    with pytest.raises(ConfigError, match=r"\['model_column'\] are set by the job block"):
        run_llm_batch_job(job, str(tmp_path / "in.parquet"), str(tmp_path / "x.parquet"),
                          options={"model_column": "other"})  # fmt: skip
    run_llm_batch_job(
        job, str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), state_dir=str(tmp_path / "state"),
        options={"poll_interval": 0.05, "retry_backoff": 0},
    )  # fmt: skip
    bodies = {body["model"]: body["messages"][0]["content"] for body in openai_bodies(server)}
    assert bodies["model-a"][1]["image_url"]["url"] == data_url("image/png", png(1, 1, colours[0]))
    assert bodies["model-b"] == "Describe r1"  # a null image cell: the text alone
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("response_model").to_pylist() == ["model-a", "model-b"]
