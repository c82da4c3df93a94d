"""Cost estimates before sending, the budget guard, and the actual cost after a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prefect_llm_batch.cli import app
from prefect_llm_batch.costs import Estimate, estimate_cost, price_for
from prefect_llm_batch.errors import CostLimitExceeded
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "test-key-costs"


def test_prices_match_by_longest_prefix_and_can_be_overridden() -> None:
    assert price_for("gpt-4o-mini-2024-07-18") == (0.075, 0.30)
    assert price_for("gpt-4o-2024-08-06") == (1.25, 5.00)
    assert price_for("my-model", {"my-": (1.0, 2.0)}) == (1.0, 2.0)
    assert estimate_cost("gpt-4o", 2_000_000, 1_000_000) == pytest.approx(2.5 + 5.0)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig()) as srv:
        yield srv


def source(tmp_path: Path) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["same", "same", "other", "third one"]}), path)
    return str(path)


@pytest.mark.usefixtures("prefect_harness")
def test_dry_run_estimates_without_sending(server: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    estimate = enrich_table(
        source=source(tmp_path), output=str(tmp_path / "o.parquet"), prompt="Summarise {{ text }}",
        model="gpt-4o-mini", params={"max_tokens": 50}, provider="openai", base_url=server.base_url,
        state_dir=str(state), dry_run=True,
    )  # fmt: skip
    assert isinstance(estimate, Estimate)
    assert sum(server.stats.calls.values()) == 0
    assert (estimate.rows, estimate.unique_requests, estimate.requests_to_send) == (4, 3, 3)
    lines = [line for f in state.glob("jobs/*/requests/*.jsonl") for line in f.read_bytes().splitlines()]
    assert estimate.input_tokens == sum((len(line) + 1) // 4 for line in lines)
    assert estimate.output_tokens == 3 * 50
    assert estimate.cost_usd == pytest.approx((estimate.input_tokens * 0.075 + 150 * 0.30) / 1e6)


@pytest.mark.usefixtures("prefect_harness")
def test_budget_guard_refuses_with_the_numbers(server: Any, tmp_path: Path) -> None:
    with pytest.raises(CostLimitExceeded, match=r"over max_cost_usd=\$0\.0000.*3 to send"):
        enrich_table(
            source=source(tmp_path), output=str(tmp_path / "o.parquet"), prompt="Summarise {{ text }}",
            model="gpt-4o", provider="openai", base_url=server.base_url, state_dir=str(tmp_path / "s"),
            max_cost_usd=0.00000001,
        )  # fmt: skip
    assert sum(server.stats.calls.values()) == 0


@pytest.mark.usefixtures("prefect_harness")
def test_actual_cost_after_the_run(server: Any, tmp_path: Path) -> None:
    summary = enrich_table(
        source=source(tmp_path), output=str(tmp_path / "o.parquet"), prompt="Summarise {{ text }}",
        model="gpt-4o-mini", provider="openai", base_url=server.base_url, state_dir=str(tmp_path / "s"),
        poll_interval=0.05, max_cost_usd=1.0,
    )  # fmt: skip
    assert summary.input_tokens > 0
    assert summary.cost_usd == pytest.approx(
        (summary.input_tokens * 0.075 + summary.output_tokens * 0.30) / 1e6
    )


def test_estimate_command_needs_no_key_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(
        app,
        ["estimate", source(tmp_path), "--prompt", "Summarise {{ text }}", "--model", "gpt-4o-mini",
         "--base-url", "http://127.0.0.1:9/v1", "--state-dir", str(tmp_path / "s")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 rows, 3 unique requests (0 cached), 3 to send in 1 batch(es)" in result.output
    assert "~$" in result.output
