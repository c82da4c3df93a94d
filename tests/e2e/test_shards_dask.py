"""A job as shards on a Dask cluster through Prefect: the per-shard steps as tasks on worker
processes, the poller in the flow; the output equals the single-process run's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.jobs.dataset import MANIFEST

pytestmark = pytest.mark.timeout(600)


def write_dataset(root: Path) -> str:
    for city in ("Oslo", "Rome"):
        folder = root / f"city={city}"
        folder.mkdir(parents=True)
        texts = [f"{city} review {i % 7}" for i in range(30)]
        pq.write_table(
            pa.table({"id": list(range(30)), "text": texts}), folder / "part-0.parquet", row_group_size=10
        )
    return str(root)


def test_a_job_runs_as_shards_on_a_local_dask_cluster_and_equals_the_single_process_run(
    prefect_harness: None, tmp_path: Path
) -> None:
    from prefect_llm_batch.flows import enrich_table

    source = write_dataset(tmp_path / "src")
    common = {"source": source, "prompt": "Tag {{ text }} ({{ city }})", "model": "gpt-4o-mini"}
    sharded = enrich_table(
        **common, output=str(tmp_path / "out"), state_dir=str(tmp_path / "state"), engine="dask",
        dask_workers=2, rows_per_shard=20,
    )  # fmt: skip
    single = enrich_table(**common, output=str(tmp_path / "one.parquet"), state_dir=str(tmp_path / "state2"))
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["rows"] == 60 and manifest["shards"] == 4
    parts = pa.concat_tables([pq.read_table(tmp_path / "out" / p["path"]) for p in manifest["parts"]])
    keep = ["id", "text", "city", "response", "response_error_kind"]
    assert parts.select(keep).equals(pq.read_table(tmp_path / "one.parquet").select(keep))
    assert sharded.rows == single.rows == 60 and sharded.ok_rows == 60


def test_the_cli_runs_a_dataset_as_shards_on_dask_into_one_file(
    prefect_harness: None, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from prefect_llm_batch.cli import app

    source = write_dataset(tmp_path / "src")
    out = tmp_path / "one.parquet"
    result = CliRunner().invoke(
        app,
        [
            "run", source, str(out), "--prompt", "Tag {{ text }}", "--model", "gpt-4o-mini",
            "--state-dir", str(tmp_path / "state"), "--engine", "dask", "--dask-workers", "1",
            "--rows-per-shard", "20", "--single-file",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 60 and table.column("city").to_pylist()[:1] == ["Oslo"]
    assert table.column("response").null_count == 0


def test_the_cli_refuses_shards_with_limit_before_anything_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from prefect_llm_batch.cli import app

    source = write_dataset(tmp_path / "src")
    args = ["run", source, str(tmp_path / "o"), "--prompt", "x {{ text }}", "--model", "m"]
    result = CliRunner().invoke(app, [*args, "--engine", "dask", "--limit", "5"])
    assert result.exit_code == 2 and "--limit" in result.output


def test_a_sharded_job_with_source_state_and_output_on_s3_keeps_no_credential(
    prefect_harness: None, tmp_path: Path, s3: Any
) -> None:
    from prefect_llm_batch.flows import enrich_table
    from tests.s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY

    local = Path(write_dataset(tmp_path / "src"))
    for part in sorted(local.rglob("*.parquet")):
        s3.put(f"src/{part.relative_to(local).as_posix()}", part.read_bytes())
    summary = enrich_table(
        source=s3.url("src"), output=s3.url("out"), state_dir=s3.url("state"),
        prompt="Tag {{ text }} ({{ city }})", model="gpt-4o-mini", engine="dask", dask_workers=2,
        rows_per_shard=20,
    )  # fmt: skip
    assert summary.rows == 60 and summary.ok_rows == 60
    keys = s3.object_keys()
    assert "out/_manifest.json" in keys
    parts = sorted(k for k in keys if k.startswith("out/part-"))
    assert parts == [f"out/part-{i:05d}.parquet" for i in range(4)]
    assert any(k.startswith("state/jobs/") and k.endswith("/shards.json") for k in keys)
    manifest = json.loads(s3.get("out/_manifest.json"))
    assert manifest["rows"] == 60
    for key in keys:
        body = s3.get(key)
        assert FAKE_ACCESS_KEY_ID.encode() not in body and FAKE_SECRET_ACCESS_KEY.encode() not in body, key
