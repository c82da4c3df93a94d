"""`--endpoint` on the command line: moderations and Responses jobs, and a clear error for others."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prefect_llm_batch.cli import app

runner = CliRunner()


def source(tmp_path: Path) -> Path:
    path = tmp_path / "posts.csv"
    path.write_text("post\na calm sentence\nthey attack at dawn\n", encoding="utf-8")
    return path


@pytest.mark.usefixtures("prefect_harness")
def test_run_with_endpoint_moderations_writes_flagged_and_scores(tmp_path: Path) -> None:
    out = tmp_path / "moderated.parquet"
    result = runner.invoke(
        app,
        ["run", str(source(tmp_path)), str(out), "--prompt", "{{ post }}",
         "--model", "omni-moderation-latest", "--endpoint", "moderations",
         "--state-dir", str(tmp_path / "state")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("flagged").to_pylist() == [False, True]
    assert table.schema.field("violence").type == pa.float64()


@pytest.mark.usefixtures("prefect_harness")
def test_run_with_endpoint_responses_answers_through_the_responses_api(tmp_path: Path) -> None:
    out = tmp_path / "answers.parquet"
    result = runner.invoke(
        app,
        ["run", str(source(tmp_path)), str(out), "--prompt", "Sentiment: {{ post }}",
         "--model", "gpt-4o-mini", "--endpoint", "responses", "--system", "One word.",
         "--state-dir", str(tmp_path / "state")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("response_error_kind").to_pylist() == [None, None]
    assert table.column("response_input_tokens")[0].as_py() > 0


def test_an_unknown_endpoint_is_a_usage_error_naming_the_choices(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["run", str(source(tmp_path)), str(tmp_path / "o.parquet"), "--prompt", "{{ post }}", "--model", "m",
         "--endpoint", "images", "--state-dir", str(tmp_path / "state")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--endpoint must be one of chat/completions, embeddings, responses, moderations" in result.output
