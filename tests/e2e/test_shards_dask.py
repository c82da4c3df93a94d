"""A job as shards on a Dask cluster through Prefect: the per-shard steps as tasks on worker
processes, the poller in the flow; the output equals the single-process run's."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.jobs.sharded import MANIFEST

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
    result = CliRunner().invoke(
        app,
        ["run", source, str(tmp_path / "o"), "--prompt", "x {{ text }}", "--model", "m", "--engine", "dask"]
        + ["--limit", "5"],
    )
    assert result.exit_code == 2 and "--limit" in result.output
