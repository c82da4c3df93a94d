"""What the command line reports once a job has run: its cost (estimated and billed) in the
summary and the markdown artifact, `status` of every job, fully cached jobs, and an `estimate`
that is what `run` sends and pays (issue 21, items 4 and 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from prefect_llm_batch import artifacts
from prefect_llm_batch.cli import app
from prefect_llm_batch.jobs import JobSummary, estimate, job_ref
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer
from tests.paths import EXAMPLES

runner = CliRunner()
REVIEWS = str(EXAMPLES / "reviews.csv")
BASE = ["--prompt", "Sentiment of: {{ review }}", "--model", "gpt-4o"]


def _flat(output: str) -> str:
    """The output with table borders and line breaks gone (rich wraps cells at 80 columns)."""
    return " ".join(re.sub(r"[│┃┏┓┗┛┡┩└┘┌┐├┤─━┬┴┼╇╈╋]", " ", output).split())


def _job_ids(state: Path) -> list[str]:
    return sorted(p.name for p in (state / "jobs").iterdir())


def test_estimate_then_run_send_and_cost_the_same(
    tmp_path: Path, fake_provider: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "fake-key-summary")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"label": {"type": "string"}},
                                  "required": ["label"], "additionalProperties": False}))  # fmt: skip
    state = tmp_path / "s"
    options = ["--schema", str(schema), "--id-column", "review_id", "--max-requests-per-batch", "4",
               "--max-batch-bytes", "100000", "--limit", "10", "--provider", "openai",
               "--base-url", fake_provider.base_url, "--state-dir", str(state)]  # fmt: skip
    planned = runner.invoke(app, ["estimate", REVIEWS, *BASE, *options])
    assert planned.exit_code == 0, planned.output
    found = re.search(r"(\d+) to send in (\d+) batch\(es\).*~(\$\d+\.\d{4})", planned.output)
    assert found, planned.output
    to_send, batches, cost = int(found[1]), int(found[2]), found[3]
    assert (to_send, batches) == (10, 3)
    assert sum(fake_provider.stats.calls.values()) == 0

    result = runner.invoke(
        app, ["run", REVIEWS, str(tmp_path / "o.parquet"), *BASE, *options, "--poll-interval", "0.1"]
    )
    assert result.exit_code == 0, result.output
    assert fake_provider.stats.requests_received == to_send
    assert fake_provider.stats.creates == batches
    assert f"cost {cost} estimated, $" in _flat(result.output), result.output
    (job_id,) = _job_ids(state)
    summary = JobSummary.model_validate_json(JobStore(str(state), job_id).read_summary() or b"")
    record = JobStore(str(state), job_id).read_job()
    assert summary.estimated_cost_usd == estimate(job_ref(record, str(state)), record.params).cost_usd
    assert summary.cost_usd is not None and summary.cost_usd > 0
    assert f"${summary.cost_usd:.4f} for the tokens billed" in _flat(result.output)


def test_the_markdown_artifact_shows_the_estimated_and_billed_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[str] = []
    monkeypatch.setattr(
        artifacts, "create_markdown_artifact", lambda markdown, key: published.append(markdown)
    )
    monkeypatch.setattr(artifacts, "create_table_artifact", lambda table, key: None)
    artifacts.publish_summary(
        JobSummary(
            job_id="j1",
            output="o.parquet",
            state_dir="s",
            provider="openai",
            model="gpt-4o",
            rows=0,
            unique_requests=0,
            ok_rows=0,
            error_rows=0,
            cost_usd=0.0123,
            estimated_cost_usd=0.0456,
        )
    )
    (markdown,) = published
    assert "| cost (batch prices) | $0.0456 estimated, $0.0123 for the tokens billed |" in markdown


def _simulator_run(tmp_path: Path, output: str, limit: int) -> Any:
    return runner.invoke(
        app, ["run", REVIEWS, output, *BASE, "--limit", str(limit), "--state-dir", str(tmp_path / "s")]
    )


def test_status_lists_each_job_s_full_id_state_output_rows_done_and_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _simulator_run(tmp_path, "o.parquet", 5).exit_code == 0
    planned = runner.invoke(app, ["estimate", REVIEWS, *BASE, "--limit", "7", "--state-dir", "s"])
    assert planned.exit_code == 0, planned.output
    (written_id,) = [j for j in _job_ids(tmp_path / "s") if JobStore("s", j).read_job().rows == 5]
    (planned_id,) = [j for j in _job_ids(tmp_path / "s") if j != written_id]

    result = runner.invoke(app, ["status", "--state-dir", "s"], terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    written = lines[lines.index(next(line for line in lines if line.startswith(written_id))) :][:2]
    assert re.fullmatch(rf"{written_id}  written  rows 5/5  requests 5/5  \d+ s ago", written[0]), written
    assert written[1].startswith("    output o.parquet;"), written
    planned = lines[lines.index(next(line for line in lines if line.startswith(planned_id))) :][:2]
    assert re.fullmatch(rf"{planned_id}  planned  rows 0/7  requests 5/7  \d+ s ago", planned[0]), planned
    assert planned[1].startswith("    output -;"), planned


def test_a_fully_cached_job_says_so_in_the_summary_and_in_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _simulator_run(tmp_path, "first.parquet", 5).exit_code == 0
    before = set(_job_ids(tmp_path / "s"))
    again = _simulator_run(tmp_path, "second.parquet", 3)  # another job, every answer cached
    assert again.exit_code == 0, again.output
    assert "none: every request was answered from the cache" in _flat(again.output)
    (cached_id,) = set(_job_ids(tmp_path / "s")) - before

    result = runner.invoke(app, ["status", cached_id, "--state-dir", "s"])
    assert result.exit_code == 0, result.output
    assert "every request was answered from the cache" in result.output
    assert "chunk" not in result.output  # no empty batch table
    assert "written" in result.output and "second.parquet" in result.output
