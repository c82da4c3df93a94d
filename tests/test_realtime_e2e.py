"""Realtime and auto mode through the enrich_table flow: same rows, keys, cache; no batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "test-key-realtime-e2e"


def source(tmp_path: Path, n: int) -> str:
    path = tmp_path / f"in-{n}.parquet"
    texts = [f"review {i}: {'love it' if i % 2 else 'awful'}" for i in range(n)]
    pq.write_table(pa.table({"id": list(range(n)), "text": texts}), path)
    return str(path)


def run(server: Any, src: str, out: Path, **kwargs: Any) -> Any:
    return enrich_table(
        source=src, output=str(out), prompt="Sentiment of: {{ text }}", model="gpt-4o-mini",
        provider="openai", base_url=server.base_url, state_dir=str(out.parent / f"state-{out.stem}"),
        poll_interval=0.05,
        retry_backoff=0, **kwargs,
    )  # fmt: skip


def test_realtime_mode_gives_the_batch_output_without_batches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src = source(tmp_path, 30)
    with FakeProviderServer(FakeServerConfig(realtime_rpm=600, realtime_window_s=1.0)) as server:
        batch = run(server, src, tmp_path / "batch.parquet")
        creates = server.stats.creates
        realtime = run(
            server, src, tmp_path / "realtime.parquet", mode="realtime", cache="off", realtime_rpm=1200
        )
        assert server.stats.creates == creates  # no batch for the realtime run
        assert server.stats.calls["POST /v1/chat/completions"] >= 30
    assert realtime.mode == "realtime" and batch.mode == "batch"
    keep = ["id", "text", "response", "response_error_kind"]
    assert (
        pq.read_table(tmp_path / "realtime.parquet")
        .select(keep)
        .equals(pq.read_table(tmp_path / "batch.parquet").select(keep))
    )


def test_auto_picks_realtime_for_a_server_without_a_batch_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(batch_api=False)) as server:
        summary = run(server, source(tmp_path, 120), tmp_path / "auto.parquet", mode="auto")
        assert server.stats.creates == 0
    assert summary.mode == "realtime" and "no batch API" in summary.mode_reason
    assert pq.read_table(tmp_path / "auto.parquet").column("response_error_kind").null_count == 120


def test_auto_picks_realtime_for_a_small_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig()) as server:
        summary = run(server, source(tmp_path, 5), tmp_path / "small.parquet", mode="auto")
        assert server.stats.creates == 0
    assert summary.mode == "realtime" and "5 requests" in summary.mode_reason
