"""The prefect-llm-batch command: help, parameters, clear errors, a trial run."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prefect_llm_batch.cli import app, parse_param
from tests.paths import EXAMPLES

runner = CliRunner()


def test_help_lists_the_commands_and_options() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "run" in result.output and "fake-server" in result.output
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--prompt", "--model", "--provider", "--state-dir", "--limit", "--overwrite", "--param"):
        assert option in result.output


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("temperature=0", ("temperature", 0)),
        ("max_tokens=50", ("max_tokens", 50)),
        ('stop=["a"]', ("stop", ["a"])),
        ("user=alice", ("user", "alice")),
        ("note=a=b", ("note", "a=b")),
        ("flag=true", ("flag", True)),
    ],
)
def test_param_values_are_json_when_they_parse(text: str, parsed: tuple[str, object]) -> None:
    assert parse_param(text) == parsed


def test_bad_param_is_rejected() -> None:
    result = runner.invoke(
        app, ["run", "a.csv", "b.parquet", "--prompt", "x", "--model", "m", "--param", "nokey"]
    )
    assert result.exit_code != 0
    assert "key=value" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_trial_run_with_limit_against_the_simulator(tmp_path: Path) -> None:
    source = EXAMPLES / "reviews.csv"
    out = tmp_path / "trial.parquet"
    result = runner.invoke(
        app,
        [
            "run",
            str(source),
            str(out),
            "--prompt",
            "Sentiment of: {{ review }}",
            "--model",
            "gpt-4o-mini",
            "--limit",
            "7",
            "--state-dir",
            str(tmp_path / "state"),
            "--id-column",
            "review_id",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "simulator, not from a model" in result.output
    table = pq.read_table(out)
    assert table.num_rows == 7
    assert table.column("review_id").to_pylist() == [1, 2, 3, 4, 5, 6, 7]
    assert set(table.column("response").to_pylist()) <= {"positive", "negative", "mixed"}


@pytest.mark.usefixtures("prefect_harness")
def test_missing_column_is_a_one_line_error_not_a_traceback(tmp_path: Path) -> None:
    source = EXAMPLES / "reviews.csv"
    result = runner.invoke(
        app,
        [
            "run",
            str(source),
            str(tmp_path / "o.parquet"),
            "--prompt",
            "{{ reveiw }}",
            "--model",
            "m",
            "--state-dir",
            str(tmp_path / "state"),
        ],
    )
    assert result.exit_code == 1
    assert "reveiw" in result.output and "review" in result.output
    assert "Traceback" not in result.output


def test_real_provider_without_key_fails_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from prefect_llm_batch.errors import ConfigError
    from prefect_llm_batch.providers import make_provider, openai_target

    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_provider(openai_target("http://127.0.0.1:9/v1"))
