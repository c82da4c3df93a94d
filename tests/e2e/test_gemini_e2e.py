"""Gemini API batch mode end to end through the enrich_table flow and the CLI, over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from prefect_llm_batch.cli import app
from prefect_llm_batch.errors import ConfigError, LLMBatchError
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.results import OUTPUT_COLUMNS
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "fake-key-gemini-e2e"


class Verdict(BaseModel):
    sentiment: str
    stars: int


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=5)) as srv:
        yield srv


def source(tmp_path: Path, texts: list[str]) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path)
    return str(path)


def run(server: Any, src: str, out: Path, **kwargs: Any) -> Any:
    return enrich_table(
        source=src, output=str(out), prompt="Sentiment of: {{ text }}", model="gemini-2.5-flash",
        provider="gemini", base_url=server.gemini_base_url, state_dir=str(out.parent / "state"),
        poll_interval=0.05, retry_backoff=0, max_error_rate=1.0, **kwargs,
    )  # fmt: skip


def test_per_line_errors_land_on_their_rows_by_key(server: Any, tmp_path: Path) -> None:
    texts = ["love it, great", "awful, broken", "bad request [[fake:400]]", "slow [[fake:timeout]]", "fine"]
    out = tmp_path / "out.parquet"
    summary = run(server, source(tmp_path, texts), out, max_requests_per_batch=2, max_attempts=1)
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", *OUTPUT_COLUMNS]
    assert table.column("response").to_pylist()[:2] == ["positive", "negative"]
    kinds = table.column("response_error_kind").to_pylist()
    assert kinds == [None, None, "invalid_request", "request_timeout", None]
    assert "INVALID_ARGUMENT" in table.column("response_error")[2].as_py()
    assert table.column("response_input_tokens")[0].as_py() > 0
    assert len(summary.batch_ids) == 3 and all(b.startswith("batches/") for b in summary.batch_ids)
    assert server.stats.calls["POST /upload/v1beta/files"] == 6  # start + finalize per chunk
    assert server.stats.calls["POST /v1beta/models/{model}:batchGenerateContent"] == 3


def test_an_expired_job_keeps_its_answers_and_sends_the_rest_again(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    texts = [f"love it {i}" for i in range(5)]
    with FakeProviderServer(FakeServerConfig(api_key=KEY, expire_after_requests=3)) as srv:
        out = tmp_path / "out.parquet"
        run(srv, source(tmp_path, texts), out, max_attempts=2)
        states = [op["metadata"]["state"] for op in srv_batches(srv)]
    table = pq.read_table(out)
    assert table.column("response_error_kind").null_count == 5
    assert sorted(table.column("response_attempts").to_pylist()) == [1, 1, 1, 2, 2]
    assert states == ["BATCH_STATE_SUCCEEDED", "BATCH_STATE_EXPIRED"]  # newest first


def srv_batches(srv: Any) -> list[dict[str, Any]]:
    import httpx

    answer = httpx.get(f"{srv.gemini_base_url}/v1beta/batches", headers={"x-goog-api-key": KEY})
    return list(answer.json()["operations"])


def test_a_failed_job_stops_the_flow_with_the_providers_reason(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    config = FakeServerConfig(api_key=KEY, validation_error="INVALID_ARGUMENT")
    with FakeProviderServer(config) as srv, pytest.raises(LLMBatchError, match="INVALID_ARGUMENT"):
        run(srv, source(tmp_path, ["x"]), tmp_path / "out.parquet", max_attempts=1)


def test_structured_answers_through_the_response_schema(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    run(server, source(tmp_path, ["love it, great", "awful"]), out, response_format=Verdict)
    table = pq.read_table(out)
    assert table.schema.field("stars").type == pa.int64()
    assert table.column("sentiment").to_pylist() == ["positive", "negative"]
    assert table.column("response_error_kind").null_count == 2


def test_missing_key_fails_before_anything_is_sent(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(ConfigError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        run(server, source(tmp_path, ["x"]), tmp_path / "out.parquet")
    assert sum(server.stats.calls.values()) == 0


def test_the_cli_runs_a_gemini_job(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        app,
        [
            "run", source(tmp_path, ["love it", "awful"]), str(out),
            "--prompt", "Sentiment of: {{ text }}", "--model", "gemini-2.5-flash",
            "--provider", "gemini", "--base-url", server.gemini_base_url,
            "--state-dir", str(tmp_path / "state"), "--poll-interval", "0.05",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column("response").to_pylist() == ["positive", "negative"]
    assert KEY not in result.output
