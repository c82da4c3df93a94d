"""A job as shards, in this process: the same output as one process, keys sent once job-wide,
a dataset of parts with a manifest, resumable; over real HTTP to the fake server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.errors import TableError
from prefect_llm_batch.jobs.dataset import MANIFEST
from prefect_llm_batch.jobs.sharded import run_sharded_job
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.shards import plan_shards
from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.table import read_table
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-shards-0000"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)


@pytest.fixture
def server() -> Any:
    with FakeProviderServer(FakeServerConfig(validating_seconds=0, in_progress_seconds=0.05)) as s:
        yield s


def target(server: FakeProviderServer) -> ProviderTarget:
    return ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)


def spec(**overrides: Any) -> JobSpec:
    return JobSpec(
        **{
            "prompt": "Tag {{ text }} from {{ city }}",
            "model": "gpt-4o-mini",
            "provider": "openai",
            **overrides,
        }
    )


def write_dataset(root: Path, cities: dict[str, list[str]], row_group_size: int = 4) -> str:
    """A hive-partitioned dataset: one part per city (``city=...`` folders)."""
    for city, texts in cities.items():
        folder = root / f"city={city}"
        folder.mkdir(parents=True)
        table = pa.table({"id": list(range(len(texts))), "text": texts})
        pq.write_table(table, folder / "part-0.parquet", row_group_size=row_group_size)
    return str(root)


def test_a_sharded_job_writes_every_row_in_order_with_partition_columns_and_a_manifest(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    source = write_dataset(
        tmp_path / "src", {"Oslo": [f"o{i}" for i in range(10)], "Rome": [f"r{i}" for i in range(7)]}
    )
    where = target(server)
    with make_provider(where, api_key=KEY, backoff=0.01) as provider:
        summary = run_sharded_job(
            source,
            spec(),
            provider,
            where,
            FAST,
            state_dir=str(tmp_path / "state"),
            output=str(tmp_path / "out"),
            rows_per_shard=5,
        )
    plan = plan_shards(source, rows_per_shard=5)
    # Oslo: row groups 0-1 (8 rows), then 2 (2); Rome: 0-1 (7): a shard never spans parts
    assert [(s.first_row_group, s.rows) for s in plan.shards] == [(0, 8), (2, 2), (0, 7)]
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["rows"] == 17 and manifest["shards"] == len(plan.shards)
    assert [p["path"] for p in manifest["parts"]] == [
        f"part-{i:05d}.parquet" for i in range(len(plan.shards))
    ]
    out = pa.concat_tables([pq.read_table(tmp_path / "out" / p["path"]) for p in manifest["parts"]])
    source_rows = read_table(source)
    assert out.column("text").to_pylist() == source_rows.column("text").to_pylist()
    assert out.column("city").to_pylist() == ["Oslo"] * 10 + ["Rome"] * 7
    assert all(r is not None for r in out.column("response").to_pylist())
    assert summary.rows == 17 and summary.ok_rows == 17
    assert server.stats.creates == len(plan.shards)


def test_a_request_repeated_in_two_shards_is_sent_once_and_both_rows_get_its_answer(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    same = ["same text"] * 3
    source = write_dataset(
        tmp_path / "src",
        {"Kyiv": [*same], "Oslo": [*same, "a", "b"], "Rome": [*same, "c"]},
        row_group_size=10,
    )
    where = target(server)
    job = spec(prompt="Tag {{ text }}")
    with make_provider(where, api_key=KEY, backoff=0.01) as provider:
        summary = run_sharded_job(
            source,
            job,
            provider,
            where,
            FAST,
            state_dir=str(tmp_path / "state"),
            output=str(tmp_path / "out"),
            rows_per_shard=1,
        )
    assert server.stats.requests_received == 4  # "same text", a, b, c: the repeated one once
    out = pq.read_table(tmp_path / "out")
    answers = dict(zip(out.column("text").to_pylist(), out.column("response").to_pylist(), strict=False))
    rome = out.filter(pa.compute.equal(out.column("city"), "Rome"))
    assert rome.column("response").to_pylist()[:3] == [answers["same text"]] * 3
    assert summary.ok_rows == 12
    kyiv = out.filter(pa.compute.equal(out.column("city"), "Kyiv"))
    assert (
        kyiv.column("response").to_pylist() == [answers["same text"]] * 3
    )  # shard 0 sends it; Oslo and Rome borrow


def test_the_sharded_output_equals_the_single_process_output(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    source = write_dataset(tmp_path / "src", {"Oslo": [f"o{i % 4}" for i in range(12)], "Rome": ["x", "o1"]})
    where = target(server)
    with make_provider(where, api_key=KEY, backoff=0.01) as provider:
        run_sharded_job(
            source,
            spec(),
            provider,
            where,
            FAST,
            state_dir=str(tmp_path / "s1"),
            output=str(tmp_path / "out"),
            rows_per_shard=4,
            single_file=True,
        )
        jobs.run_job(
            source,
            spec(),
            provider,
            where,
            FAST,
            state_dir=str(tmp_path / "s2"),
            output=str(tmp_path / "one.parquet"),
        )
    sharded, single = pq.read_table(tmp_path / "out"), pq.read_table(tmp_path / "one.parquet")
    keep = ["id", "text", "city", "response", "response_error_kind"]
    assert sharded.select(keep).equals(single.select(keep))


def test_an_existing_output_is_refused_before_anything_is_read(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MANIFEST).write_text("{}")
    where = target(server)
    with make_provider(where, api_key=KEY) as provider, pytest.raises(TableError, match="exists"):
        run_sharded_job(
            str(tmp_path / "missing"),
            spec(),
            provider,
            where,
            FAST,
            state_dir=str(tmp_path / "s"),
            output=str(tmp_path / "out"),
        )
    assert server.stats.uploads == 0
