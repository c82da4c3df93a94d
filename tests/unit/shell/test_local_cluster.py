"""The run's local Dask cluster: its workers get the run's environment, and starting it leaves the
flow process' environment alone (Dask's nanny writes its tuning variables into it otherwise), and they
do not run Dask's sampling profiler."""

from __future__ import annotations

import os
from typing import Any

import pytest

from prefect_llm_batch.shard_tasks import local_cluster_kwargs, own_worker_environment

pytestmark = pytest.mark.timeout(300)


def _worker_environment(dask_worker: Any) -> tuple[str | None, str | None, int, bool]:
    import pyarrow as pa

    profiling = "profile" in dask_worker.periodic_callbacks  # Client.run passes the worker
    return (
        os.environ.get("OMP_NUM_THREADS"),
        os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        pa.cpu_count(),
        profiling,
    )


def test_the_runs_cluster_leaves_this_process_alone_sizes_arrows_pool_per_worker_and_does_not_profile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distributed import Client, LocalCluster

    for name in ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    with (
        own_worker_environment(),
        LocalCluster(**local_cluster_kwargs(1)) as cluster,
        Client(cluster) as client,
    ):
        [(threads, trim, pool, profiling)] = client.run(_worker_environment).values()
    assert "OMP_NUM_THREADS" not in os.environ and "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert threads == str(os.cpu_count() or 1) and pool == (os.cpu_count() or 1)
    assert trim is None
    assert not profiling  # Dask's sampling profiler costs a worker ~10% CPU; the run has no dashboard
