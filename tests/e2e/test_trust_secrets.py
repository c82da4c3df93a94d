"""Trust under faults: secrets never leave the provider layer, and the job state is owner-only.

A provider error that quotes the request (gateways echo headers, bodies and URLs) must not carry
the key into an exception, a log, a Prefect state, the state directory, the output or the
terminal; the state directory is 0700/0600 whatever the umask; the simulator takes only its key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import ConfigError, LLMBatchError, ProviderRejected
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.providers import KEY_ENV, api_key_for, make_provider, target_for
from prefect_llm_batch.providers.anthropic import AnthropicBatchProvider
from prefect_llm_batch.providers.http import REDACTED, redact
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.providers.realtime import RealtimeClient, has_batch_api
from prefect_llm_batch.results import MAX_ERROR_CHARS
from prefect_llm_batch.simulator import open_target
from prefect_llm_batch.spec import JobSpec, ProviderTarget
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig
from tests.paths import REPO

KEY = "fake-key-SECRET-0123456789abcdef"
#: A part of the key no redaction marker or ordinary text contains: a cut key still shows it.
KEY_PART = b"SECRET-0123"
PROMPT = "Sentiment of: {{ text }}"


def leaks(data: bytes | str) -> bool:
    """True when ``data`` holds the key or a recognisable part of it."""
    raw = data.encode() if isinstance(data, str) else data
    return KEY.encode() in raw or KEY_PART in raw


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def write_source(tmp_path: Path, n: int = 4) -> str:
    path = tmp_path / "in.csv"
    pa_csv.write_csv(pa.table({"id": list(range(n)), "text": [f"review {i}" for i in range(n)]}), str(path))
    return str(path)


def prefect_database_files() -> list[Path]:
    """The files of the test Prefect server's SQLite database (with its WAL), logs flushed first."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    APILogHandler().flush()
    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    database = Path(url.split(":///", 1)[1])
    files = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
    assert database in files
    return files


def flow_run_messages(flow_run_id: Any) -> tuple[str, list[str]]:
    """The flow run's state message and its log messages, read back from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> tuple[str, list[str]]:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            return str(run.state.message if run.state else ""), [log.message for log in logs]

    return asyncio.run(read())


# ---- the echo fault over real HTTP: a flow run and a CLI run ------------------------------------


@pytest.fixture
def echo_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, echo_request_on_create=True)) as server:
        yield server


def test_the_echo_fault_quotes_the_key_in_the_answer(echo_server: FakeProviderServer) -> None:
    # The fault itself: without redaction the key would be in the provider's text.
    answer = httpx.post(
        f"{echo_server.base_url}/batches", headers={"Authorization": f"Bearer {KEY}"}, json={}
    )
    assert answer.status_code == 400 and KEY in answer.json()["error"]["message"]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_create_error_quoting_the_request_leaks_the_key_nowhere(
    echo_server: FakeProviderServer,
    provider: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    state_dir = tmp_path / "state"
    output = tmp_path / "out.parquet"
    state = enrich_table(
        source=write_source(tmp_path),
        output=str(output),
        prompt=PROMPT,
        model="claude-3-5-haiku-latest" if provider == "anthropic" else "gpt-4o-mini",
        provider=provider,  # type: ignore[arg-type]
        base_url=echo_server.anthropic_base_url if provider == "anthropic" else echo_server.base_url,
        state_dir=str(state_dir),
        poll_interval=0.05,
        retry_backoff=0,
        return_state=True,
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ProviderRejected) and error.status_code == 400
    shown = "".join(traceback.format_exception(error)) + repr(error) + repr(error.args)
    assert "HTTP 400" in shown and REDACTED in shown  # the provider's echo is quoted, redacted
    assert not leaks(shown)

    captured = capfd.readouterr()
    assert not leaks(caplog.text + captured.out + captured.err)
    assert "HTTP 400" in caplog.text
    state_files = files_under(state_dir)
    assert state_files
    for path in [*state_files, *([output] if output.exists() else [])]:
        assert not leaks(path.read_bytes()), path

    message, logs = flow_run_messages(state.state_details.flow_run_id)
    assert "HTTP 400" in message and REDACTED in message
    assert not leaks(message) and not any(leaks(m) for m in logs)
    for path in prefect_database_files():
        assert not leaks(path.read_bytes()), path
    home = Path(os.environ["PREFECT_HOME"])
    for path in files_under(home):
        assert not leaks(path.read_bytes()), path


@pytest.mark.usefixtures("prefect_harness")
def test_the_cli_prints_the_gateway_error_without_the_key(
    echo_server: FakeProviderServer, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    state_dir = tmp_path / "state"
    env = {
        **os.environ,
        "OPENAI_API_KEY": KEY,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-c", "from prefect_llm_batch.cli import app; app()",
        "run", write_source(tmp_path), str(tmp_path / "out.parquet"),
        "--prompt", PROMPT, "--model", "gpt-4o-mini",
        "--provider", "openai", "--base-url", echo_server.base_url, "--state-dir", str(state_dir),
        "--poll-interval", "0.05",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 1, done.stderr.decode()[-3000:]
    assert b"HTTP 400" in done.stderr and REDACTED.encode() in done.stderr
    assert not leaks(done.stdout) and not leaks(done.stderr)
    assert files_under(state_dir)
    for path in files_under(state_dir):
        assert not leaks(path.read_bytes()), path
    for path in prefect_database_files():
        assert not leaks(path.read_bytes()), path


# ---- every other piece of provider text the providers keep ---------------------------------------


def echo(request: httpx.Request) -> str:
    """What a gateway that quotes the request says: method, URL and headers."""
    return f"cannot route {request.method} {request.url}: {json.dumps(dict(request.headers))}"


def test_a_proxy_error_quoting_the_header_is_redacted_in_the_chained_exception() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"proxy refused: authorization: {request.headers['authorization']}")

    with (
        OpenAIBatchProvider(
            api_key=KEY,
            base_url="https://gw.example/v1",
            transport=httpx.MockTransport(refuse),
            max_retries=1,
        ) as provider,
        pytest.raises(LLMBatchError) as raised,
    ):
        provider.retrieve("batch_1")
    rendered = "".join(traceback.format_exception(raised.value))
    assert "proxy refused" in rendered and not leaks(rendered)


def test_batch_errors_data_quoting_the_key_is_redacted() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        errors = {"data": [{"code": "invalid_request", "message": echo(request), "line": 1}]}
        return httpx.Response(200, json={"id": "batch_1", "status": "failed", "errors": errors})

    with OpenAIBatchProvider(api_key=KEY, transport=httpx.MockTransport(answer)) as provider:
        info = provider.retrieve("batch_1")
    assert "cannot route" in info.error_summary() and not leaks(info.error_summary())
    assert not leaks(json.dumps(info.errors))


def test_per_line_errors_of_result_files_are_redacted_before_they_are_cut() -> None:
    # The key sits where the message is cut: a redaction after the cut would leave its start.
    message = "x" * (MAX_ERROR_CHARS - 30) + f" Authorization: Bearer {KEY}"
    lines = [
        {
            "custom_id": "a",
            "response": {"status_code": 400, "body": {"error": {"message": message}}},
            "error": None,
        },
        {
            "custom_id": "b",
            "response": None,
            "error": {"code": "server_error", "message": f"upstream key {KEY}"},
        },
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    with OpenAIBatchProvider(api_key=KEY) as provider:
        table = provider.parse_results(data, "batch_1")
    errors = table.column("response_error").to_pylist()
    assert all(errors) and not any(leaks(e) for e in errors)

    with AnthropicBatchProvider(api_key=KEY) as anthropic:
        result = anthropic.parse_line(
            {
                "custom_id": "a",
                "result": {"type": "errored", "error": {"type": "api_error", "message": message}},
            },
            "msgbatch_1",
        )
    assert result.error and not leaks(result.error)


def test_realtime_error_answers_quoting_the_request_are_redacted() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"error": {"message": echo(request), "type": "invalid_request_error"}}
        )

    with OpenAIBatchProvider(api_key=KEY) as provider:
        client = RealtimeClient(
            provider, api_key=KEY, base_url="https://gw.example/v1", wire="openai",
            transport=httpx.MockTransport(answer),
        )  # fmt: skip
        [result] = client.run([provider.build_line("a", {"model": "m"})])
    assert result.error and "cannot route" in result.error and not leaks(result.error)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=echo(request))

    with pytest.raises(ProviderRejected) as raised:
        has_batch_api("https://gw.example/v1", KEY, httpx.MockTransport(refuse))
    assert "cannot route" in str(raised.value) and not leaks(repr(raised.value))


def test_redact_removes_keys_auth_headers_tokens_and_userinfo() -> None:
    text = (
        f'{{"authorization": "Bearer other-token-123", "x-api-key": "kkk-123", "api-key": "azure-123"}} '
        f"https://user:pass@gw.example/v1 sk-FAKEabcdefghijk9 {KEY}"
    )
    shown = redact(text, [KEY])
    for secret in ("other-token-123", "kkk-123", "azure-123", "user:pass", "sk-FAKEabcdefghijk9", KEY):
        assert secret not in shown
    assert shown.count(REDACTED) == 6


# ---- owner-only state ----------------------------------------------------------------------------


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("umask", [0o022, 0o000], indirect=True)
def test_the_state_directory_is_owner_only_whatever_the_umask(
    umask: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    state_dir = tmp_path / "state"
    output = tmp_path / "out.parquet"
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        enrich_table(
            source=write_source(tmp_path, n=6),
            output=str(output),
            prompt=PROMPT,
            model="gpt-4o-mini",
            provider="openai",
            base_url=server.base_url,
            state_dir=str(state_dir),
            poll_interval=0.05,
            max_requests_per_batch=3,
        )
    modes = {
        str(path.relative_to(tmp_path)): stat.S_IMODE(path.stat().st_mode)
        for path in [state_dir, *state_dir.rglob("*")]
    }
    assert any("cache" in name for name in modes) and any(name.endswith(".jsonl") for name in modes)
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o700 if (tmp_path / name).is_dir() else 0o600)
    }
    assert not wrong
    assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~umask
    assert pq.read_table(output).num_rows == 6


# ---- the simulator's key -------------------------------------------------------------------------


def test_the_simulator_accepts_only_the_key_generated_for_its_run() -> None:
    with open_target("simulator", simulator_seconds=0.0) as target:
        key = api_key_for(target, "fake-key-the-users-real-key")
        assert key != "fake-key-the-users-real-key"
        for other in ("simulator-key", "fake-key-the-users-real-key", "anything"):
            refused = httpx.get(f"{target.base_url}/batches", headers={"Authorization": f"Bearer {other}"})
            assert refused.status_code == 401
        assert (
            httpx.get(f"{target.base_url}/batches", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
        with make_provider(target, api_key="fake-key-the-users-real-key") as provider:
            assert provider.find_batch({"job_id": "none"}) is None  # its calls carry the run's key
    with open_target("simulator", simulator_seconds=0.0) as again:
        assert api_key_for(again) != key


# ---- credentials in a base URL (https://user:password@host/v1) -----------------------------------

PASSWORD = "pw-FAKE-userinfo-0123456789"


def with_userinfo(url: str) -> str:
    """``url`` with ``gwuser:PASSWORD@`` before its host, as a user might paste a gateway's URL."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://gwuser:{PASSWORD}@{rest}"


def shows_password(data: bytes | str) -> bool:
    raw = data.encode() if isinstance(data, str) else data
    return PASSWORD.encode() in raw or b"userinfo-0123" in raw


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("provider", "how"), [("openai", "auto"), ("openai", "realtime"), ("anthropic", "detached")]
)
def test_a_base_url_with_credentials_is_refused_before_anything_is_sent_or_stored(
    provider: str,
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # The password must reach no log, summary, exception or state file (pending/{job}.json holds the
    # job's spec and target); the key must not be swapped for it. So the run refuses up front.
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    state_dir = tmp_path / "state"
    with FakeProviderServer(FakeServerConfig(api_key=KEY, batch_api=how != "auto")) as server:
        base_url = server.anthropic_base_url if provider == "anthropic" else server.base_url
        state = enrich_table(
            source=write_source(tmp_path, n=120),
            output=str(tmp_path / "out.parquet"),
            prompt=PROMPT,
            model="claude-3-5-haiku-latest" if provider == "anthropic" else "gpt-4o-mini",
            provider=provider,  # type: ignore[arg-type]
            base_url=with_userinfo(base_url),
            state_dir=str(state_dir),
            poll_interval=0.05,
            retry_backoff=0,
            mode="batch" if how == "detached" else how,  # type: ignore[arg-type]
            detached=how == "detached",
            return_state=True,
        )
        calls = sum(server.stats.calls.values())
    error = state.result(raise_on_failure=False)
    shown = repr(error)
    if isinstance(error, BaseException):
        shown += "".join(traceback.format_exception(error))
    captured = capfd.readouterr()
    assert not shows_password(shown + caplog.text + captured.out + captured.err)
    for path in files_under(tmp_path):
        assert not shows_password(path.read_bytes()), path
    _, logs = flow_run_messages(state.state_details.flow_run_id)
    assert not any(shows_password(m) for m in logs)

    assert state.is_failed() and isinstance(error, ConfigError)
    assert calls == 0  # refused before any request
    message = str(error)
    assert "base_url" in message and "credentials" in message and KEY_ENV[provider] in message
    assert "gwuser" not in message and "127.0.0.1" in message  # the URL is shown without them


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_base_url_variable_with_credentials_is_a_config_error_naming_it(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = f"{provider.upper()}_BASE_URL"
    monkeypatch.setenv(variable, with_userinfo("https://gw.example/v1"))
    with pytest.raises(ConfigError) as raised:
        target_for(provider)
    message = str(raised.value)
    assert variable in message and "https://gw.example/v1" in message and not shows_password(message)
    with pytest.raises(ConfigError):
        JobSpec(prompt="{{ text }}", model="m", provider=provider, base_url=with_userinfo("https://gw/v1"))  # type: ignore[arg-type]


def test_the_auto_mode_reason_never_shows_url_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_llm_batch.jobs import realtime

    monkeypatch.setattr(realtime, "has_batch_api", lambda base_url, api_key: False)
    target = ProviderTarget.model_construct(  # however it was built
        provider="openai",
        base_url=with_userinfo("https://gw.example/v1"),
        key_base_url="https://gw.example/v1",
    )
    mode, reason = realtime.choose_mode("auto", target, 500, KEY)
    assert mode == "realtime" and "gw.example/v1 has no batch API" in reason
    assert not shows_password(reason) and "gwuser" not in reason
