"""Anthropic Message Batches end to end through the enrich_table flow, over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.results import OUTPUT_COLUMNS
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "test-key-anthropic-e2e"


class Verdict(BaseModel):
    sentiment: str
    stars: int


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=3)) as srv:
        yield srv


def source(tmp_path: Path, texts: list[str]) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path)
    return str(path)


def run(server: Any, src: str, out: Path, **kwargs: Any) -> Any:
    return enrich_table(
        source=src, output=str(out), prompt="Sentiment of: {{ text }}", model="claude-3-5-haiku-latest",
        provider="anthropic", base_url=server.anthropic_base_url, state_dir=str(out.parent / "state"),
        poll_interval=0.05, retry_backoff=0, max_error_rate=1.0, **kwargs,
    )  # fmt: skip


def test_mixed_results_land_on_their_rows(server: Any, tmp_path: Path) -> None:
    texts = [
        "love it, great",
        "awful, broken",
        "bad request [[fake:400]]",
        "too slow [[fake:timeout]]",
        "fine",
    ]
    out = tmp_path / "out.parquet"
    summary = run(server, source(tmp_path, texts), out, max_requests_per_batch=2, max_attempts=1)
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", *OUTPUT_COLUMNS]
    assert table.column("response").to_pylist()[:2] == ["positive", "negative"]
    kinds = table.column("response_error_kind").to_pylist()
    assert kinds == [None, None, "invalid_request", "batch_expired", None]
    assert table.column("response_input_tokens")[0].as_py() > 0
    assert len(summary.batch_ids) == 3 and all(b.startswith("msgbatch_") for b in summary.batch_ids)
    assert server.stats.calls["POST /v1/messages/batches"] == 3


def test_structured_answers_through_a_forced_tool(server: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    run(server, source(tmp_path, ["love it, great", "awful"]), out, response_format=Verdict)
    table = pq.read_table(out)
    assert table.schema.field("stars").type == pa.int64()
    assert table.column("sentiment").to_pylist() == ["positive", "negative"]
    assert table.column("response_error_kind").null_count == 2


def test_missing_key_fails_before_anything_is_sent(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch.errors import ConfigError

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        run(server, source(tmp_path, ["x"]), tmp_path / "out.parquet")
    assert sum(server.stats.calls.values()) == 0
