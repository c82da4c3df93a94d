"""The ``local`` provider with the real bundled model (SmolLM2-135M-Instruct through llama.cpp's
server): the CLI and a Prefect flow end to end, a schema job, resume after SIGKILL, a bad model file,
and llama.cpp's server used as a user's own OpenAI-compatible server. Properties, not opinions.

Needs `make install-local`; run with `make test-local` (`make test` leaves this folder out).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.local_model import LOG_ENV, LocalModelServer, bundled_model
from prefect_llm_batch.providers.realtime import has_batch_api

pytestmark = pytest.mark.local

ROOT = Path(__file__).resolve().parents[2]
SENTIMENT = ROOT / "examples" / "sentiment.csv"
PROMPT = "Is this review positive or negative? Answer with one word. Review: {{ review }}"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["label"],
    "additionalProperties": False,
}
#: One line of the server's access log per chat request (its error tracebacks also name the route).
ACCESS_LINE = '"POST /v1/chat/completions HTTP/1.1"'
NEW_COLUMNS = {"response", "response_error_kind", "response_error", "response_input_tokens",
               "response_output_tokens"}  # fmt: skip


def rows(tmp_path: Path, n: int) -> Path:
    """The first ``n`` reviews of the sentiment set as Parquet (without their labels)."""
    table = pacsv.read_csv(SENTIMENT).slice(0, n).drop_columns(["label"])
    path = tmp_path / f"reviews-{n}.parquet"
    pq.write_table(table, path)
    return path


def cli(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "prefect_llm_batch.cli", "run", *args]
    run_env = {**os.environ, **(env or {})}
    run_env.pop("PREFECT_API_URL", None)  # the run in this process, without Prefect
    return subprocess.Popen(command, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rpartition(")")[2].split()[0] != "Z"


def assert_answers(table: pa.Table, n: int, *, cut_allowed: bool = True) -> None:
    """Every row has a non-empty answer; a plain answer may be cut at ``max_tokens`` (``length``, text
    kept: this small model often talks on), nothing else may go wrong."""
    assert table.num_rows == n
    assert set(table.column_names) >= NEW_COLUMNS
    kinds = set(table.column("response_error_kind").to_pylist())
    assert kinds <= ({None, "length"} if cut_allowed else {None}), table.column("response_error").to_pylist()
    assert all(isinstance(text, str) and text.strip() for text in table.column("response").to_pylist())


def assert_schema_answers(path: Path, n: int) -> pa.Table:
    """Every one of the ``n`` rows answered, uncut, with JSON valid in :data:`SCHEMA`."""
    table = pq.read_table(path)
    assert_answers(table, n, cut_allowed=False)
    for answer in table.column("response").to_pylist():
        jsonschema.validate(json.loads(answer), SCHEMA)
    return table


def test_cli_answers_20_rows_with_the_real_model_and_stops_its_server(tmp_path: Path) -> None:
    src, state, log = rows(tmp_path, 20), tmp_path / "state", tmp_path / "server.log"
    options = ["--prompt", PROMPT, "--model", "smollm2", "--provider", "local", "--id-column", "id",
               "--param", "max_tokens=16", "--state-dir", str(state)]  # fmt: skip
    estimate = subprocess.run(
        [sys.executable, "-m", "prefect_llm_batch.cli", "estimate", str(src), *options],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert estimate.returncode == 0, estimate.stdout + estimate.stderr
    planned_job = estimate.stdout.split()[1].rstrip(":")
    proc = cli(str(src), str(tmp_path / "out.parquet"), *options, "--max-error-rate", "1",
               env={LOG_ENV: str(log)})  # fmt: skip
    servers: list[int] = []
    while not servers and proc.poll() is None:
        servers = children(proc.pid)
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=600)
    text = output.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "realtime" in text and "no batch API" in text  # the summary says how it ran, and why
    assert f"job {planned_job}" in text  # the run is the job the estimate planned
    table = pq.read_table(tmp_path / "out.parquet")
    assert_answers(table, 20)
    assert table.column("id").to_pylist() == list(range(1, 21))  # every row, in input order
    assert servers and not any(alive(pid) for pid in servers)  # its server was stopped with it

    sent = log.read_text().count(ACCESS_LINE)
    cut = table.num_rows - table.column("response_error_kind").null_count  # errors are not cached
    # The same rows in another file: another job (a rerun of the same job would only write its
    # output again), whose requests are the same as the first job's: answered ones hit the cache.
    same_rows = tmp_path / "same-rows.csv"
    pacsv.write_csv(pq.read_table(src), same_rows)
    again = cli(str(same_rows), str(tmp_path / "again.parquet"), *options, "--max-error-rate", "1",
                env={LOG_ENV: str(log)})  # fmt: skip
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output.decode()[-3000:]
    assert log.read_text().count(ACCESS_LINE) - sent == cut  # every answer came from the cache
    cached = pq.read_table(tmp_path / "again.parquet").column("response_cached").to_pylist()
    assert cached == [kind is None for kind in table.column("response_error_kind").to_pylist()]


@pytest.mark.usefixtures("prefect_harness")
def test_flow_answers_20_rows_with_the_real_model(tmp_path: Path) -> None:
    from prefect_llm_batch.flows import enrich_table

    out = tmp_path / "flow.parquet"
    summary: Any = enrich_table(
        source=str(rows(tmp_path, 20)), output=str(out), prompt=PROMPT, model="smollm2", provider="local",
        params={"max_tokens": 16}, id_column="id", state_dir=str(tmp_path / "state"), max_error_rate=1.0,
    )  # fmt: skip
    assert summary.mode == "realtime"
    assert_answers(pq.read_table(out), 20)


def test_enrich_in_a_notebook_answers_with_the_real_model(tmp_path: Path) -> None:
    from prefect_llm_batch.notebook import enrich

    frame = pacsv.read_csv(SENTIMENT).slice(0, 5).drop_columns(["label"]).to_pandas().set_index("id")
    out: Any = enrich(
        frame, PROMPT, "smollm2", provider="local", response_format=SCHEMA, params={"max_tokens": 24},
        progress=False, state_dir=str(tmp_path / "state"),
    )  # fmt: skip
    assert list(out.index) == list(frame.index) and out["response_error_kind"].isna().all()
    assert set(out["label"]) <= {"positive", "negative"}


def test_every_answer_of_a_schema_job_validates(tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    out = tmp_path / "schema.parquet"
    proc = cli(
        str(rows(tmp_path, 20)), str(out), "--prompt", PROMPT, "--model", "smollm2", "--provider", "local",
        "--schema", str(schema_file), "--param", "max_tokens=24", "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output.decode()[-3000:]
    table = assert_schema_answers(out, 20)
    assert set(table.column("label").to_pylist()) <= {"positive", "negative"}


def test_resume_after_sigkill_sends_no_answered_row_again(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    state = tmp_path / "state"
    out = tmp_path / "resumed.parquet"
    args = [
        str(rows(tmp_path, 40)), str(out), "--prompt", PROMPT, "--model", "smollm2", "--provider", "local",
        "--param", "max_tokens=16", "--max-error-rate", "1", "--state-dir", str(state),
    ]  # fmt: skip
    first = cli(*args, env={LOG_ENV: str(log)})
    deadline = time.monotonic() + 300
    stored: list[Path] = []
    while len(stored) < 8 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
        stored = list(state.glob("jobs/*/results/chunk-*.part-*.parquet"))
    assert 8 <= len(stored) < 40, "the run was not killed mid-job"
    servers = children(first.pid)
    first.send_signal(signal.SIGKILL)  # the run only: its server must notice and exit by itself
    first.wait(timeout=30)
    answered = {cid for part in state.glob("jobs/*/results/chunk-*.part-*.parquet")
                for cid in pq.read_table(part).column("custom_id").to_pylist()}  # fmt: skip
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert servers and not any(alive(pid) for pid in servers), "the killed run's model server lives on"
    sent_before = log.read_text().count(ACCESS_LINE)

    second = cli(*args, env={LOG_ENV: str(log)})
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output.decode()[-3000:]
    sent_after = log.read_text().count(ACCESS_LINE) - sent_before
    assert sent_after == 40 - len(answered)  # exactly the rows without a stored answer
    assert_answers(pq.read_table(out), 40)


def test_a_bad_model_file_is_a_clear_error_before_any_row_is_read(tmp_path: Path) -> None:
    not_a_table = tmp_path / "rows.parquet"
    not_a_table.write_bytes(b"not parquet at all")  # reading a row would fail with another error
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    for model, message in (
        (not_gguf, "is not a GGUF model file"),
        (tmp_path / "missing.gguf", "does not exist"),
    ):
        proc = cli(
            str(not_a_table), str(tmp_path / "out.parquet"), "--prompt", PROMPT, "--model", "m",
            "--provider", "local", "--local-model", str(model), "--state-dir", str(tmp_path / "state"),
        )  # fmt: skip
        output, _ = proc.communicate(timeout=120)
        text = output.decode()
        assert proc.returncode == 2, text
        assert message in text and str(model.name) in text and "parquet" not in text.lower()
    assert not (tmp_path / "state").exists()  # nothing planned


# ---- llama.cpp's server as a user's own OpenAI-compatible server ------------------------------


@pytest.fixture(scope="module")
def users_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    """llama.cpp's server started by the test, as a user starts theirs; its log in ``server.log_file``."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    os.environ[LOG_ENV] = str(log)
    try:
        with LocalModelServer(bundled_model()) as server:
            server.log_file = log  # type: ignore[attr-defined]
            yield server
    finally:
        os.environ.pop(LOG_ENV, None)


def posts(server: LocalModelServer) -> int:
    """Chat requests the server has answered so far (its access log)."""
    log: Path = server.log_file  # type: ignore[attr-defined]
    return log.read_text().count(ACCESS_LINE)


def test_a_users_llama_cpp_server_runs_in_auto_mode_through_openai(
    users_server: LocalModelServer, tmp_path: Path
) -> None:
    assert not has_batch_api(users_server.base_url, users_server.api_key)  # what auto mode asks
    assert httpx.get(f"{users_server.base_url}/models").status_code == 401  # the run's key is needed
    assert users_server.api_key not in Path(f"/proc/{users_server.pid}/cmdline").read_text()  # not in `ps`
    out = tmp_path / "auto.parquet"
    proc = cli(
        str(rows(tmp_path, 20)), str(out), "--prompt", PROMPT, "--model", "smollm2", "--provider", "openai",
        "--base-url", users_server.base_url, "--mode", "auto", "--param", "max_tokens=16",
        "--max-error-rate", "1",
        "--state-dir", str(tmp_path / "state"),
        env={"OPENAI_API_KEY": users_server.api_key},
    )  # fmt: skip
    output, _ = proc.communicate(timeout=600)
    text = output.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "realtime" in text
    assert_answers(pq.read_table(out), 20)
    assert users_server.api_key not in text


def test_a_users_llama_cpp_server_refuses_json_schema_once_and_takes_json_object_schema(
    users_server: LocalModelServer, tmp_path: Path
) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    src = rows(tmp_path, 10)
    common = ["--prompt", PROMPT, "--model", "smollm2", "--provider", "openai", "--base-url",
              users_server.base_url, "--mode", "realtime", "--schema", str(schema_file),
              "--param", "max_tokens=24", "--max-error-rate", "1", "--realtime-concurrency", "1"]  # fmt: skip
    env = {"OPENAI_API_KEY": users_server.api_key}
    before = posts(users_server)
    refused = cli(
        str(src), str(tmp_path / "refused.parquet"), *common, "--state-dir", str(tmp_path / "s1"), env=env
    )
    output, _ = refused.communicate(timeout=600)
    assert posts(users_server) - before == 1  # not retried, and the other rows not sent
    table = pq.read_table(tmp_path / "refused.parquet")
    kinds = set(table.column("response_error_kind").to_pylist())
    assert kinds == {"invalid_request"}, output.decode()[-2000:]
    assert all("json_object_schema" in error for error in table.column("response_error").to_pylist())

    out = tmp_path / "styled.parquet"
    styled = cli(str(src), str(out), *common, "--schema-style", "json_object_schema",
                 "--state-dir", str(tmp_path / "s2"), env=env)  # fmt: skip
    output, _ = styled.communicate(timeout=600)
    assert styled.returncode == 0, output.decode()[-3000:]
    assert_schema_answers(out, 10)
