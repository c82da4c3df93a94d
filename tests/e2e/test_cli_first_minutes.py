"""The command line a new user meets: runs without a Prefect server, one-line errors before
anything starts, estimates that are the plan `run` sends, job id prefixes, polished help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from prefect_llm_batch import cli
from prefect_llm_batch.cli import app
from prefect_llm_batch.testing import FakeProviderServer
from tests.paths import EXAMPLES, REPO

runner = CliRunner()
REVIEWS = str(EXAMPLES / "reviews.csv")
ROOT = str(REPO)
BASE = ["--prompt", "Sentiment of: {{ review }}", "--model", "gpt-4o-mini"]


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def _in_subprocess(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter with no Prefect server configured; it prints, last,
    whether Prefect was imported."""
    script = (
        "import sys\n"
        "from prefect_llm_batch.cli import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('PREFECT IMPORTED' if 'prefect' in sys.modules else 'PREFECT NOT IMPORTED')\n"
        "sys.exit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile names a server
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )


# ----- item 1: fast without a Prefect server ---------------------------------------------------


def test_run_without_a_prefect_server_runs_the_job_without_importing_prefect(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    done = _in_subprocess(
        ["run", REVIEWS, str(out), *BASE, "--limit", "20", "--state-dir", str(tmp_path / "state")], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("PREFECT NOT IMPORTED")
    assert "ran without Prefect" in done.stdout and "PREFECT_API_URL" in done.stdout
    assert "answered" in done.stdout and "Traceback" not in done.stderr
    table = pq.read_table(out)
    assert table.num_rows == 20
    assert set(table.column("response").to_pylist()) <= {"positive", "negative", "mixed"}


@pytest.mark.usefixtures("prefect_harness")
def test_run_with_a_prefect_server_is_a_flow_run(tmp_path: Path) -> None:
    from prefect import get_client

    out = tmp_path / "out.parquet"
    result = runner.invoke(
        app, ["run", REVIEWS, str(out), *BASE, "--limit", "5", "--state-dir", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    assert "ran without Prefect" not in result.output
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    assert any(r.parameters.get("output") == str(out) for r in runs)


def test_the_server_is_found_in_the_environment_and_the_active_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "prefect.settings", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert cli.prefect_api_url() is None
    (tmp_path / "profiles.toml").write_text(
        'active = "work"\n[profiles.work]\nPREFECT_API_URL = "http://prefect.example/api"\n'
    )
    assert cli.prefect_api_url() == "http://prefect.example/api"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert cli.prefect_api_url() == "http://127.0.0.1:4200/api"


# ----- item 2: checks that need no provider come first ----------------------------------------


def test_an_existing_output_is_one_line_exit_2_before_prefect_is_imported(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    out.write_bytes(b"keep me")
    done = _in_subprocess(["run", REVIEWS, str(out), *BASE, "--state-dir", str(tmp_path / "s")], tmp_path)
    assert done.returncode == 2
    assert _error_lines(done.stderr) == [
        f"error: the output '{out}' already exists; pass overwrite=True (--overwrite) to replace it"
    ]
    assert done.stdout.strip() == "PREFECT NOT IMPORTED"
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    ("case", "extra", "words"),
    [
        ("same path", [], "is the source"),
        ("missing key", ["--provider", "openai"], "--provider openai needs an API key: set OPENAI_API_KEY"),
        ("detached", ["--detached"], "--detached needs a provider that outlives the run"),
        ("no price", ["--max-cost-usd", "1", "--model", "my-own-model"], "no price for model 'my-own-model'"),
        ("over the cap", ["--max-cost-usd", "0"], "over max_cost_usd"),
    ],
)
def test_checks_that_need_no_provider_are_one_line_and_exit_2_with_nothing_sent(
    case: str, extra: list[str], words: str, tmp_path: Path, fake_provider: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = REVIEWS if case == "same path" else str(tmp_path / "out.parquet")
    provider = [] if "--provider" in extra else ["--provider", "openai", "--base-url", fake_provider.base_url]
    if case != "missing key" and case != "detached":
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-FAKE-0000")
    if case == "detached":
        provider = []  # the simulator
    result = runner.invoke(
        app, ["run", REVIEWS, out, *BASE, *provider, *extra, "--state-dir", str(tmp_path / "s")]
    )
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert words in lines[0]
    assert "Traceback" not in result.output
    assert fake_provider.stats.uploads == 0 and fake_provider.stats.creates == 0


def test_submit_with_the_simulator_is_refused_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["submit", REVIEWS, str(tmp_path / "o.parquet"), *BASE])
    assert result.exit_code == 2
    assert _error_lines(result.output) == [
        "error: --detached needs a provider that outlives the run; the simulator stops with it "
        "(use --provider openai or anthropic, or run without detaching)"
    ]


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_names_its_credentials_parameter_when_the_key_is_missing(
    tmp_path: Path, fake_provider: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch.errors import ConfigError
    from prefect_llm_batch.flows import enrich_table

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"provider='openai' needs an API key: pass credentials="):
        enrich_table(
            source=REVIEWS, output=str(tmp_path / "o.parquet"), prompt="{{ review }}", model="gpt-4o-mini",
            provider="openai", base_url=fake_provider.base_url, state_dir=str(tmp_path / "s"),
        )  # fmt: skip
    assert not (tmp_path / "s" / "jobs").exists()  # nothing identified nor planned
    assert sum(fake_provider.stats.calls.values()) == 0


def test_enrich_names_its_api_key_argument_when_the_key_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from prefect_llm_batch.errors import ConfigError
    from prefect_llm_batch.notebook import enrich

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(
        ConfigError, match=r"provider='anthropic' needs an API key: pass enrich\(api_key=\.\.\.\)"
    ):
        enrich(pd.DataFrame({"t": ["a"]}), "{{ t }}", "claude-3-5-haiku", provider="anthropic",
               state_dir=str(tmp_path), progress=False)  # fmt: skip
    assert not (tmp_path / "inputs").exists()


# ----- job id prefixes --------------------------------------------------------------------------


def _estimate(tmp_path: Path, *extra: str) -> str:
    result = runner.invoke(app, ["estimate", REVIEWS, *BASE, "--state-dir", str(tmp_path / "s"), *extra])
    assert result.exit_code == 0, result.output
    return result.output.split()[1].rstrip(":")


def test_status_and_cancel_take_an_unambiguous_job_id_prefix(tmp_path: Path) -> None:
    job_id = _estimate(tmp_path)
    state = str(tmp_path / "s")
    result = runner.invoke(app, ["status", job_id[:6], "--state-dir", state])
    assert result.exit_code == 0, result.output
    assert "not submitted" in result.output
    result = runner.invoke(app, ["cancel", job_id[:6], "--state-dir", state])
    assert result.exit_code == 0, result.output
    assert "nothing to cancel" in result.output


def test_an_unknown_or_ambiguous_job_id_is_one_line_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "s"
    for name in ("abc123", "abc456"):
        (state / "jobs" / name).mkdir(parents=True)
    for command in ("status", "cancel"):
        result = runner.invoke(app, [command, "zz9", "--state-dir", str(state)])
        assert result.exit_code == 2
        assert _error_lines(result.output) == [f"error: no job zz9 in {state}"]
        result = runner.invoke(app, [command, "abc", "--state-dir", str(state)])
        assert result.exit_code == 2
        assert _error_lines(result.output) == [
            f"error: job id abc is ambiguous in {state}: abc123, abc456; give more of it"
        ]


# ----- item 5: estimate and run agree -----------------------------------------------------------


def _plan(state: Path, job_id: str) -> list[tuple[int, int, int]]:
    from prefect_llm_batch.store import JobStore

    record = JobStore(str(state), job_id).read_job()
    return [(c.chunk_id, c.requests, c.est_tokens) for c in record.chunks if c.round == 1]


def _schema_file(tmp_path: Path) -> str:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"label": {"type": "string"}},
                                  "required": ["label"], "additionalProperties": False}))  # fmt: skip
    return str(schema)


def test_estimate_is_the_job_run_sends_with_the_same_options(
    tmp_path: Path, fake_provider: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-FAKE-0000")
    options = ["--schema", _schema_file(tmp_path), "--id-column", "review_id",
               "--max-requests-per-batch", "3", "--max-batch-bytes", "100000", "--limit", "10",
               "--provider", "openai", "--base-url", fake_provider.base_url,
               "--poll-interval", "0.1"]  # fmt: skip
    job_id = _estimate(tmp_path, *[o for o in options if o not in ("--poll-interval", "0.1")])
    planned = _plan(tmp_path / "s", job_id)
    assert len(planned) == 4  # 10 requests, 3 per batch
    result = runner.invoke(
        app,
        ["run", REVIEWS, str(tmp_path / "o.parquet"), *BASE, *options, "--state-dir", str(tmp_path / "s")],
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "s" / "jobs").iterdir()] == [job_id]  # the same job
    assert _plan(tmp_path / "s", job_id) == planned
    assert fake_provider.stats.creates == 4


def test_estimate_plans_what_a_simulator_run_sends(tmp_path: Path) -> None:
    options = ["--schema", _schema_file(tmp_path), "--id-column", "review_id",
               "--max-requests-per-batch", "3", "--max-batch-bytes", "100000", "--limit", "10"]  # fmt: skip
    job_id = _estimate(tmp_path, *options)
    result = runner.invoke(
        app,
        ["run", REVIEWS, str(tmp_path / "o.parquet"), *BASE, *options, "--state-dir", str(tmp_path / "s")],
    )
    assert result.exit_code == 0, result.output
    # each simulator run is its own server, so its own job; the plan is the estimate's
    (run_id,) = [p.name for p in (tmp_path / "s" / "jobs").iterdir() if p.name != job_id]
    assert _plan(tmp_path / "s", run_id) == _plan(tmp_path / "s", job_id)


def test_estimate_defaults_to_run_s_provider() -> None:
    import inspect

    run_default = inspect.signature(cli.run).parameters["provider"].default
    assert inspect.signature(cli.estimate).parameters["provider"].default == run_default == "simulator"


# ----- item 9: polish ---------------------------------------------------------------------------


def test_submit_help_shows_submit() -> None:
    result = runner.invoke(app, ["submit", "--help"])
    assert result.exit_code == 0
    assert "submit [OPTIONS]" in result.output and " run [OPTIONS]" not in result.output
    options = [line.split()[0] for line in result.output.splitlines() if line.strip().startswith("--")]
    assert "--prompt" in options and "--detached" not in options


def test_version_prints_the_version() -> None:
    from prefect_llm_batch import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"prefect-llm-batch {__version__}"


def test_provider_help_lists_every_provider_and_defaults_match_the_spec() -> None:
    from prefect_llm_batch import spec

    assert typing.get_args(spec.ProviderName) == cli.PROVIDERS
    assert cli.DEFAULT_MAX_REQUESTS_PER_BATCH == spec.OPENAI_MAX_REQUESTS_PER_BATCH
    assert cli.DEFAULT_MAX_BATCH_BYTES == spec.OPENAI_MAX_BATCH_BYTES
    assert cli.DEFAULT_MAX_ERROR_RATE == spec.DEFAULT_MAX_ERROR_RATE
    for command in ("run", "estimate", "submit"):
        text = " ".join(runner.invoke(app, [command, "--help"], terminal_width=80).output.split())
        provider_help = text[text.index("--provider") :][:400]
        for name in cli.PROVIDERS:
            assert f"'{name}'" in provider_help, (command, name)


def test_an_empty_param_value_is_an_error() -> None:
    result = runner.invoke(app, ["run", REVIEWS, "o.parquet", *BASE, "--param", "temperature="])
    assert result.exit_code == 2
    assert "--param temperature= has no value" in result.output


def test_a_reserved_param_is_one_friendly_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", REVIEWS, str(tmp_path / "o.parquet"), *BASE, "--param", "model=x"])
    assert result.exit_code == 2
    lines = _error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: --param: params may not set ['model']")
    assert "validation error" not in result.output and "pydantic" not in result.output


def test_option_names_are_whole_at_80_columns() -> None:
    for command in ("run", "estimate", "submit", "status", "cancel"):
        output = runner.invoke(app, [command, "--help"], terminal_width=80).output
        group = typing.cast(typing.Any, typer.main.get_command(app))
        names = {p.opts[0] for p in group.commands[command].params if p.opts[0].startswith("--")}
        for name in names:
            assert name in output.split(), (command, name)
        assert "…" not in output


@pytest.mark.usefixtures("prefect_harness")
def test_a_cost_cap_is_checked_before_the_flow_run_starts(
    tmp_path: Path, fake_provider: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-FAKE-0000")
    result = runner.invoke(
        app,
        ["run", REVIEWS, str(tmp_path / "o.parquet"), *BASE, "--provider", "openai", "--base-url",
         fake_provider.base_url, "--max-cost-usd", "0", "--state-dir", str(tmp_path / "s")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "over max_cost_usd" in lines[0], result.output
    assert sum(fake_provider.stats.calls.values()) == 0
