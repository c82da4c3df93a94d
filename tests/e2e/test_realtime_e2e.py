"""Realtime and auto mode through the enrich_table flow: same rows, keys, cache; no batches."""

from __future__ import annotations

import os
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


def test_realtime_resume_does_not_resend_finished_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch import jobs
    from prefect_llm_batch.jobs import realtime as realtime_jobs
    from prefect_llm_batch.providers import make_provider
    from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
    from prefect_llm_batch.store import JobStore

    monkeypatch.setattr(realtime_jobs, "REALTIME_SLICE", 4)
    spec = JobSpec(prompt="Sentiment of: {{ text }}", model="gpt-4o-mini", provider="openai")
    options = RunOptions(poll_interval=0.01, retry_backoff=0)
    with FakeProviderServer(FakeServerConfig()) as server:
        target = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
        with make_provider(target, api_key=KEY) as provider:
            ref = jobs.prepare(source(tmp_path, 10), spec, provider, target, state_dir=str(tmp_path / "s"))
            client = realtime_jobs.realtime_client(provider, target, KEY)
            store = JobStore(ref.state_dir, ref.job_id)

            class Crash(Exception):
                pass

            calls = {"n": 0}
            real_run = client.run

            def crash_on_second_slice(lines: list[dict[str, Any]]) -> Any:
                calls["n"] += 1
                if calls["n"] == 2:
                    raise Crash
                return real_run(lines)

            monkeypatch.setattr(client, "run", crash_on_second_slice)
            with pytest.raises(Crash):
                realtime_jobs.run_chunk_realtime(ref, 0, client, options)
            sent_before = server.stats.calls["POST /v1/chat/completions"]
            assert sent_before == 4 and len(store.read_partial_results(0)) == 1
            monkeypatch.setattr(client, "run", real_run)
            assert realtime_jobs.run_chunk_realtime(ref, 0, client, options) == 10
            assert server.stats.calls["POST /v1/chat/completions"] - sent_before == 6
        summary = jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    assert summary.ok_rows == 10
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == list(range(10))
    # The chunk's answers are in the response cache: its stored results, in a file of its own.
    from prefect_llm_batch.cache import ResponseCache

    assert ResponseCache(ref.state_dir).stats()[:2] == (1, 10)
    [segment] = (tmp_path / "s" / "cache" / "results").iterdir()
    stored = store.results_path(0)
    assert segment.read_bytes() == Path(stored).read_bytes() and not os.path.samefile(segment, stored)
