"""Remote files that do not pile up, budgets that count what is in flight, and Anthropic prompt
caching in batches: real HTTP to the fake server, real Parquet read back (issue 19, items 3, 4, 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.local import run_table
from prefect_llm_batch.spec import JobSpec, RunOptions
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-spend-0000"
FAST: dict[str, Any] = {"poll_interval": 0.02, "retry_backoff": 0}


@pytest.fixture
def server() -> Any:
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=3)) as srv:
        yield srv


def source(tmp_path: Path, n: int = 6) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(n)), "text": [f"text {i:03d}" for i in range(n)]}), path)
    return str(path)


def openai_spec(server: FakeProviderServer, **extra: Any) -> JobSpec:
    return JobSpec(
        prompt="Summarise {{ text }}",
        model="gpt-4o-mini",
        provider="openai",
        base_url=server.base_url,
        **extra,
    )


# ---- 3. remote files expire --------------------------------------------------------------------


def test_uploaded_inputs_and_batch_outputs_expire_after_the_configured_seconds(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    options = RunOptions(**FAST, keep_input_files=True, input_file_expiry=7200, output_expiry=86400)
    summary = run_table(
        source(tmp_path), str(tmp_path / "out.parquet"), openai_spec(server), options,
        state_dir=str(tmp_path / "state"), api_key=KEY,
    )  # fmt: skip
    assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 6
    (batch,) = server.batches.values()
    assert batch.output_expires_after == 86400
    assert server.stats.file_expiries[batch.input_file_id] == 7200
    files = server.files
    assert files[batch.input_file_id].expires_at == files[batch.input_file_id].created_at + 7200
    assert batch.output_file_id is not None
    output_file = files[batch.output_file_id]
    assert output_file.expires_at == output_file.created_at + 86400


def test_by_default_inputs_expire_in_7_days_outputs_in_30_and_inputs_are_still_deleted(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    summary = run_table(
        source(tmp_path), str(tmp_path / "out.parquet"), openai_spec(server), RunOptions(**FAST),
        state_dir=str(tmp_path / "state"), api_key=KEY,
    )  # fmt: skip
    assert isinstance(summary, jobs.JobSummary)
    (batch,) = server.batches.values()
    assert batch.output_expires_after == 30 * 24 * 3600
    assert server.stats.file_expiries[batch.input_file_id] == 7 * 24 * 3600
    assert batch.input_file_id not in server.files  # deleted once collected, as before


@pytest.mark.parametrize("seconds", [3599, 2_592_001])
def test_out_of_range_expiry_is_refused_by_the_options_before_anything_is_sent(seconds: int) -> None:
    for field in ("input_file_expiry", "output_expiry"):
        with pytest.raises(ValueError, match=rf"{field}\n\s+Input should be (greater|less) than"):
            RunOptions(**{field: seconds})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"anchor": "created_at", "seconds": 60}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "output_expires_after.seconds"),
        ({"anchor": "last_accessed", "seconds": 7200}, "output_expires_after.anchor"),
    ],
)
def test_fake_server_rejects_an_out_of_range_output_expiry_as_openai_does(
    server: FakeProviderServer, body: dict[str, Any], param: str
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as client:
        line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
        uploaded = client.post("/files", files={"file": ("in.jsonl", line)}, data={"purpose": "batch"})
        bad_upload = client.post(
            "/files",
            files={"file": ("in.jsonl", line)},
            data={"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
        )
        created = client.post(
            "/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "output_expires_after": body,
            },
        )
    assert bad_upload.status_code == 400
    assert bad_upload.json()["error"]["param"] == "expires_after.seconds"
    assert created.status_code == 400
    assert created.json()["error"]["param"] == param
    assert server.stats.creates == 0


def test_cli_expiry_defaults_equal_the_run_options_defaults() -> None:
    from prefect_llm_batch import spec
    from prefect_llm_batch.cli import options as cli_options

    assert (
        cli_options.DEFAULT_INPUT_FILE_EXPIRY
        == spec.DEFAULT_INPUT_FILE_EXPIRY
        == RunOptions().input_file_expiry
    )
    assert cli_options.DEFAULT_OUTPUT_EXPIRY == spec.DEFAULT_OUTPUT_EXPIRY == RunOptions().output_expiry
