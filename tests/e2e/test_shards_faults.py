"""A Dask worker killed (SIGKILL, by PID) while it prepares or collects a shard: the job finishes,
no batch is created twice (the fake server counts), and the output equals the single-process run's.
Two runs of one sharded job: one proceeds, the other is refused clearly."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import JobLocked
from prefect_llm_batch.jobs.dataset import MANIFEST
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.timeout(900)


def _kill_plugin(name: str, marker: str, delay: float) -> Any:
    from distributed import WorkerPlugin

    class KillOnStart(WorkerPlugin):  # type: ignore[misc]
        """The first worker to start a task whose key holds ``name`` kills itself (SIGKILL, its
        own PID) ``delay`` seconds later, once (a marker file remembers)."""

        def __init__(self, name: str, marker: str, delay: float) -> None:
            self.name, self.marker, self.delay = name, marker, delay

        def setup(self, worker: Any) -> None:
            self.worker = worker

        def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
            if finish != "executing" or self.name not in str(key):
                return
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL)).start()

        def teardown(self, worker: Any) -> None:
            pass

    return KillOnStart(name, marker, delay)


def write_dataset(root: Path, rows: int = 12_000) -> str:
    for city in ("Oslo", "Rome"):
        folder = root / f"city={city}"
        folder.mkdir(parents=True)
        texts = [f"{city} review number {i % 9000}" for i in range(rows)]
        pq.write_table(
            pa.table({"id": list(range(rows)), "text": texts}), folder / "part-0.parquet", row_group_size=3000
        )
    return str(root)


@pytest.fixture
def cluster(server: FakeProviderServer) -> Iterator[Any]:
    """A local cluster whose workers start with the provider key in their environment (as workers
    of a remote cluster must have it: the flow never sends them a key from its environment)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeServerConfig(validating_seconds=0.1, in_progress_seconds=0.5)) as s:
        monkeypatch.setenv("OPENAI_API_KEY", "fake-key-shards-faults")
        yield s


def run(source: str, output: Path, state: Path, server: FakeProviderServer, **options: Any) -> Any:
    from prefect_llm_batch.flows import enrich_table

    return enrich_table(
        source=source, output=str(output), state_dir=str(state), prompt="Tag {{ text }} ({{ city }})",
        model="gpt-4o-mini", provider="openai", base_url=server.base_url, poll_interval=0.2, **options,
    )  # fmt: skip


@pytest.mark.parametrize("step", ["prepare_shard_task", "collect_shard_task"])
def test_a_worker_killed_during_a_step_costs_no_extra_batch_and_changes_no_answer(
    prefect_harness: None, tmp_path: Path, cluster: Any, server: FakeProviderServer, step: str
) -> None:
    from distributed import Client

    source = write_dataset(tmp_path / "src")
    with Client(cluster.scheduler_address) as client:
        client.register_plugin(_kill_plugin(step, str(tmp_path / "killed"), 0.05), name="kill")
        pids = set(client.run(os.getpid).values())
        summary = run(
            source, tmp_path / "out", tmp_path / "state", server, engine="dask",
            dask_address=cluster.scheduler_address, rows_per_shard=6000,
        )  # fmt: skip
        assert (tmp_path / "killed").exists(), "the plugin killed a worker"
        assert set(client.run(os.getpid).values()) != pids  # one was replaced by its nanny
    creates_sharded = server.stats.creates
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert creates_sharded == sum(1 for _ in manifest["parts"])  # one batch per shard, none twice
    run(source, tmp_path / "one.parquet", tmp_path / "state2", server, cache="off")
    parts = pa.concat_tables([pq.read_table(tmp_path / "out" / p["path"]) for p in manifest["parts"]])
    keep = ["id", "text", "city", "response", "response_error_kind"]
    assert parts.select(keep).equals(pq.read_table(tmp_path / "one.parquet").select(keep))
    assert summary.ok_rows == 24_000


def test_a_second_run_of_a_running_sharded_job_is_refused_clearly(
    prefect_harness: None, tmp_path: Path, server: FakeProviderServer
) -> None:
    from prefect_llm_batch.jobs.sharded import identify_sharded
    from prefect_llm_batch.providers import make_provider, target_for
    from prefect_llm_batch.shards import plan_shards, shard_fingerprint
    from prefect_llm_batch.spec import JobSpec
    from prefect_llm_batch.store import JobStore

    source = write_dataset(tmp_path / "src", rows=60)
    spec = JobSpec(
        prompt="Tag {{ text }} ({{ city }})", model="gpt-4o-mini", provider="openai", base_url=server.base_url
    )
    where = target_for("openai", server.base_url)
    plan = plan_shards(source, rows_per_shard=40)
    with make_provider(where, api_key="fake-key-x") as provider:
        identity = identify_sharded(plan, [shard_fingerprint(s) for s in plan.shards], spec, provider, where)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:  # another runner (its own thread and context) holds the job
        with JobStore(str(tmp_path / "state"), identity.job_id).lease():
            held.set()
            done.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(JobLocked, match=identity.job_id):
            run(source, tmp_path / "out", tmp_path / "state", server, rows_per_shard=40)
    finally:
        done.set()
        holder.join()
    assert server.stats.uploads == 0 and not (tmp_path / "out").exists()
