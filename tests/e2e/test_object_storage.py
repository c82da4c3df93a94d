"""A job with its source, state and output on ``s3://`` (s3fs) against moto's S3 server on a
loopback port, and the fake provider over real HTTP: through the flow and through the CLI."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.providers.openai import chat_body
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig, default_answer
from tests.s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, FakeS3

pytestmark = pytest.mark.usefixtures("prefect_harness")

KEY = "fake-key-object-storage-0000"
PROMPT = "Summarise {{ text }}"
MODEL = "gpt-4o-mini"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=3)) as srv:
        yield srv


def put_source(s3: FakeS3, n: int, key: str = "in/reviews.parquet") -> str:
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(n)), "text": [f"text {i:03d}" for i in range(n)]}), sink)
    s3.put(key, sink.getvalue())
    return s3.url(key)


def expected(n: int) -> list[str]:
    return [default_answer(chat_body(MODEL, f"Summarise text {i:03d}")) for i in range(n)]


def read_output(s3: FakeS3, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(s3.get(key)))


def run_flow(server: FakeProviderServer, source: str, output: str, state_dir: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "prompt": PROMPT,
        "model": MODEL,
        "provider": "openai",
        "base_url": server.base_url,
        "state_dir": state_dir,
        "poll_interval": 0.05,
        "retry_backoff": 0,
        **kwargs,
    }
    return enrich_table(source=source, output=output, **options)


def no_credentials_in(s3: FakeS3, prefect_home: Path) -> None:
    """Neither the access key id nor the secret in any object of the bucket or file of the Prefect home."""
    secrets = [FAKE_ACCESS_KEY_ID.encode(), FAKE_SECRET_ACCESS_KEY.encode()]
    keys = s3.object_keys()
    assert keys
    for key in keys:
        data = s3.get(key)
        assert not any(secret in data for secret in secrets), key
        assert not any(secret.decode() in key for secret in secrets), key
    for root, _dirs, files in os.walk(prefect_home):
        for name in files:
            data = (Path(root) / name).read_bytes()
            assert not any(secret in data for secret in secrets), Path(root) / name


def test_a_job_with_source_state_and_output_on_s3_runs_through_the_flow(
    server: FakeProviderServer, s3: FakeS3
) -> None:
    source = put_source(s3, 10)
    output, state = s3.url("out/enriched.parquet"), s3.url("state")
    summary = run_flow(server, source, output, state, max_requests_per_batch=4)

    assert summary.ok_rows == 10 and server.stats.creates == 3
    table = read_output(s3, "out/enriched.parquet")
    assert table.column("id").to_pylist() == list(range(10))
    assert table.column("response").to_pylist() == expected(10)
    keys = s3.object_keys()
    assert any(key.startswith(f"state/jobs/{summary.job_id}/") for key in keys), keys
    assert any(key.startswith("state/cache/") for key in keys), keys

    rerun = run_flow(server, source, s3.url("out/again.parquet"), s3.url("state"), max_requests_per_batch=4)
    assert rerun.ok_rows == 10 and server.stats.creates == 3  # answered from the state on S3
    assert read_output(s3, "out/again.parquet").column("response").to_pylist() == expected(10)
    no_credentials_in(s3, Path(os.environ["PREFECT_HOME"]))


def test_an_output_in_a_bucket_that_does_not_exist_fails_before_sending_and_creates_no_bucket(
    server: FakeProviderServer, s3: FakeS3
) -> None:
    source = put_source(s3, 3)
    with pytest.raises(TableError, match=r"'s3://no-such-bucket-2/out.parquet' cannot be written"):
        run_flow(server, source, "s3://no-such-bucket-2/out.parquet", s3.url("state"))
    assert server.stats.requests_received == 0 and server.stats.uploads == 0
    buckets = {bucket["Name"] for bucket in s3.client().list_buckets()["Buckets"]}
    assert s3.bucket in buckets and not buckets & {"no-such-bucket-2"}


# ----- the CLI, killed and run again ---------------------------------------------------------


def cli_env() -> dict[str, str]:
    """The test's environment (the fake AWS variables included), on the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "OPENAI_API_KEY": KEY}
    api_url = PREFECT_API_URL.value()
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_cli_with_state_on_s3_killed_while_waiting_resumes_without_resubmitting(
    server: FakeProviderServer, s3: FakeS3
) -> None:
    source = put_source(s3, 10)
    args = [
        sys.executable, "-m", "prefect_llm_batch.cli", "run", source, s3.url("out/cli.parquet"),
        "--prompt", PROMPT, "--model", MODEL, "--provider", "openai", "--base-url", server.base_url,
        "--state-dir", s3.url("state"), "--poll-interval", "0.05", "--retry-backoff", "0",
        "--max-requests-per-batch", "4",
    ]  # fmt: skip
    env = cli_env()
    server.stall_batches("in_progress")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: server.stats.creates == 3 or proc.poll() is not None, "the 3 batches")
        assert proc.poll() is None, "the run ended before its batches were created"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert "out/cli.parquet" not in s3.object_keys()
    assert any(key.endswith("/lease.json") for key in s3.object_keys())  # left behind by the killed run
    server.unstall_batches()

    rerun = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr).decode()[-3000:]
    assert server.stats.creates == 3 and server.stats.uploads == 3  # polled, not submitted again
    table = read_output(s3, "out/cli.parquet")
    assert table.column("response").to_pylist() == expected(10)
    assert set(table.column("response_batch_id").to_pylist()) == set(server.batches)
    assert not any(key.endswith("/lease.json") for key in s3.object_keys())  # released at the end
    no_credentials_in(s3, Path(os.environ["PREFECT_HOME"]))
