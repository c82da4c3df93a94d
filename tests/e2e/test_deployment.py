"""The real-server round trip, through the CLI as a user runs it.

``prefect server start`` on loopback with its own fresh ``PREFECT_HOME``; a process work pool;
``prefect deploy`` from ``deployments/prefect.yaml``; ``prefect deployment run``; one
``prefect worker start --run-once`` started from an unrelated directory; then the flow run's state,
the deployment as the server stored it, the registered block types (through the REST API) and
the Parquet output. About 40 s on 2 cores, most of it Prefect start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from tests.paths import REPO

PREFECT = [sys.executable, "-m", "prefect"]
DEPLOYMENT = "enrich-table/reviews-sentiment"
POOL = "local-pool"
RESULT_COLUMNS = [
    "response",
    "response_error_kind",
    "response_error",
    "response_input_tokens",
    "response_output_tokens",
]
BLOCK_TYPE_SLUGS = ["llm-batch-openai-credentials", "llm-batch-anthropic-credentials", "llm-batch-job"]

SERVER_START_TIMEOUT = 60.0
CLI_TIMEOUT = 60.0
WORKER_TIMEOUT = 120.0


@dataclass
class PrefectServer:
    """A running ``prefect server start`` and the environment its CLI calls use."""

    api_url: str
    env: dict[str, str]
    log: Path
    timings: dict[str, float] = field(default_factory=dict)

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url + "/", timeout=15.0)

    def cli(self, *args: str, cwd: Path, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``prefect ARGS`` against this server; return its output, fail with it on error."""
        started = time.monotonic()
        rc, output = run_in_own_group([*PREFECT, *args], cwd=cwd, env=self.env, timeout=timeout)
        self.timings[" ".join(args[:2])] = round(time.monotonic() - started, 1)
        assert rc == 0, f"`prefect {' '.join(args)}` exited with {rc}:\n{output}"
        return output


def run_in_own_group(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a command in its own process group; on timeout kill the whole group (workers fork)."""
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process)
        output, _ = process.communicate()
        pytest.fail(f"`{' '.join(args[2:])}` did not finish within {timeout:.0f} s:\n{output}")
    return process.returncode, output


def stop_group(process: subprocess.Popen[Any]) -> None:
    """Terminate a process group started with ``start_new_session=True``; kill it if it lingers."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_env(home: Path, api_url: str) -> dict[str, str]:
    """The caller's environment without any Prefect or provider settings, plus this server's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "OPENAI_", "ANTHROPIC_", "PREFECT_LLM_BATCH_"))
    }
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free loopback port with a fresh home; always stopped afterwards."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = isolated_env(home, api_url)
    log = tmp_path / "server.log"
    started = time.monotonic()
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = started + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"prefect server exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prefect server not healthy after {SERVER_START_TIMEOUT:.0f} s:\n{log.read_text()}"
                )
            time.sleep(0.25)
        server = PrefectServer(api_url=api_url, env=env, log=log)
        server.timings["server start"] = round(time.monotonic() - started, 1)
        yield server
    finally:
        stop_group(process)


@pytest.mark.timeout(600)
def test_deploy_run_and_check_on_a_real_server(prefect_server: PrefectServer, tmp_path: Path) -> None:
    server = prefect_server
    output = tmp_path / "out" / "reviews.parquet"
    state_dir = tmp_path / "state"
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()

    # The entry point registered the block types when the server started: nothing else did yet.
    with server.api() as api:
        for slug in BLOCK_TYPE_SLUGS:
            response = api.get(f"block_types/slug/{slug}")
            assert response.status_code == 200, f"block type {slug} not registered: {response.text}"
            assert response.json()["slug"] == slug

    server.cli("work-pool", "create", POOL, "--type", "process", "--overwrite", cwd=tmp_path)
    deployed = server.cli(
        "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", cwd=REPO
    )
    assert DEPLOYMENT in deployed
    assert "not found in provided values" not in deployed, deployed  # no template placeholder was blanked

    with server.api() as api:
        deployment = api.get(f"deployments/name/{DEPLOYMENT}").raise_for_status().json()
        collect = api.get("deployments/name/collect-jobs/collect").raise_for_status().json()
    assert collect["entrypoint"] == "prefect_llm_batch.flows.collect_jobs"
    assert [s["active"] for s in collect["schedules"]] == [False]
    assert deployment["entrypoint"] == "prefect_llm_batch.flows.enrich_table"
    assert deployment["work_pool_name"] == POOL
    assert deployment["paused"] is False
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
    parameters = deployment["parameters"]
    assert parameters["source"] == "examples/reviews.csv"
    assert parameters["provider"] == "simulator"
    assert parameters["prompt"].endswith('Review: {{ row["review"] }}'), parameters["prompt"]
    [schedule] = deployment["schedules"]
    assert schedule["active"] is False
    assert schedule["schedule"]["cron"] == "0 6 * * *"

    server.cli(
        "deployment",
        "run",
        DEPLOYMENT,
        "--param",
        f"output={output}",
        "--param",
        f"state_dir={state_dir}",
        cwd=elsewhere,
    )
    # Started away from the repository: the deployment's pull step finds the code and the input.
    worker_log = server.cli(
        "worker", "start", "--pool", POOL, "--run-once", cwd=elsewhere, timeout=WORKER_TIMEOUT
    )

    with server.api() as api:
        runs = (
            api.post("flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
            .raise_for_status()
            .json()
        )
    assert len(runs) == 1, f"expected only the triggered run (the schedule is inactive): {runs}"
    [run] = runs
    assert run["state_type"] == "COMPLETED", f"flow run ended {run['state_name']}:\n{worker_log}"
    assert run["parameters"]["output"] == str(output)

    table = pq.read_table(output)
    assert table.num_rows == 200
    for column in ["review_id", "review", *RESULT_COLUMNS]:
        assert column in table.column_names, table.column_names
    assert table.column("review_id").to_pylist() == list(range(1, 201))
    assert table.column("response_error_kind").null_count == 200
    assert table.column("response").null_count == 0

    # The run's artifacts, through the REST API: progress at 100, the summary, the sample rows.
    with server.api() as api:
        artifacts = (
            api.post("artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
            .raise_for_status()
            .json()
        )
    by_type = {a["type"]: a for a in artifacts}
    assert by_type["progress"]["data"] == 100.0
    assert "| rows | 200 |" in by_type["markdown"]["data"]
    assert "review_id" in str(by_type["table"]["data"])

    # The sharded deployment: the example dataset as shards on a local Dask cluster the flow run
    # starts (the scheduler's address is a parameter; empty here), picked up by the same worker.
    dataset = tmp_path / "out" / "reviews-dataset"
    server.cli(
        "deployment", "run", "enrich-table/reviews-sentiment-dask", "--param", f"output={dataset}",
        "--param", f"state_dir={tmp_path / 'state-dask'}", cwd=elsewhere,
    )  # fmt: skip
    worker_log = server.cli(
        "worker", "start", "--pool", POOL, "--run-once", cwd=elsewhere, timeout=WORKER_TIMEOUT * 2
    )
    manifest = json.loads((dataset / "_manifest.json").read_text())
    source_rows = pq.read_table(REPO / "examples" / "reviews-dataset").num_rows
    assert manifest["rows"] == source_rows and manifest["shards"] >= 12, worker_log
    parts = pq.read_table(dataset)
    assert parts.column("response").null_count == 0
    assert "month" in parts.column_names

    # Shown with `pytest -s`; the budget is about 60 s on 2 cores.
    print(f"\nreal-server round trip timings (s): {server.timings}")
