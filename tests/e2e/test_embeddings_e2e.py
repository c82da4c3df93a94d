"""Embeddings through the same job machinery: vectors as float32 columns of a stable type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig, default_embedding

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "test-key-embeddings"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig()) as srv:
        yield srv


def run(server: Any, tmp_path: Path, texts: list[str], name: str, **kwargs: Any) -> pa.Table:
    src = tmp_path / f"{name}.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    out = tmp_path / f"{name}-out.parquet"
    enrich_table(
        source=str(src), output=str(out), prompt="{{ text }}", endpoint="embeddings", provider="openai",
        base_url=server.base_url, state_dir=str(tmp_path / "state"), poll_interval=0.05, retry_backoff=0,
        max_error_rate=1.0, max_attempts=1, **kwargs,
    )  # fmt: skip
    return pq.read_table(out)


def test_fixed_size_float32_vectors_when_the_width_is_known(server: Any, tmp_path: Path) -> None:
    table = run(server, tmp_path, ["red", "blue", "bad [[fake:400]]"], "dims", model="text-embedding-3-small",
                params={"dimensions": 8})  # fmt: skip
    assert table.schema.field("response_embedding").type == pa.list_(pa.float32(), 8)
    vectors = table.column("response_embedding").to_pylist()
    assert vectors[2] is None and table.column("response_error_kind")[2].as_py() == "invalid_request"
    expected = default_embedding("text-embedding-3-small", "red", 8)
    assert vectors[0] == pytest.approx(expected, rel=1e-6)
    assert table.column("response_input_tokens")[0].as_py() > 0


def test_model_width_table_and_stable_type_when_all_failed(server: Any, tmp_path: Path) -> None:
    ok = run(server, tmp_path, ["red"], "ok", model="text-embedding-3-small")
    failed = run(server, tmp_path, ["x [[fake:500]]"], "failed", model="text-embedding-3-small")
    assert ok.schema.field("response_embedding").type == pa.list_(pa.float32(), 1536)
    assert ok.schema.remove_metadata() == failed.schema.remove_metadata()
    unknown = run(server, tmp_path, ["red"], "unknown", model="my-local-embedder")
    assert unknown.schema.field("response_embedding").type == pa.list_(pa.float32())
