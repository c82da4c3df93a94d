"""max_cost_usd bounds a sharded job as a whole: the planned cost of all its shards before anything
is sent, and every retry round against the spend of all its shards (real HTTP to the fake server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import CostLimitExceeded
from prefect_llm_batch.jobs.estimate import estimate
from prefect_llm_batch.jobs.identity import job_ref
from prefect_llm_batch.jobs.sharded import ShardedJob, run_sharded_job
from prefect_llm_batch.jobs.spend import job_spend
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-shards-budget-0000"
SPEC = JobSpec(prompt="Tag {{ text }}", model="gpt-4o-mini", provider="openai")


def write_source(root: Path, shards: int = 3, rows: int = 6) -> str:
    """One Parquet file of ``shards`` row groups of ``rows`` rows (one shard each), all distinct."""
    root.mkdir()
    texts = [f"review number {i:04d} of the shop" for i in range(shards * rows)]
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), root / "in.parquet",
                   row_group_size=rows)  # fmt: skip
    return str(root / "in.parquet")


def run(server: FakeProviderServer, tmp_path: Path, source: str, max_cost_usd: float | None) -> Any:
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    options = RunOptions(poll_interval=0.02, retry_backoff=0, max_cost_usd=max_cost_usd)
    with make_provider(where, api_key=KEY, backoff=0.01) as provider:
        return run_sharded_job(
            source, SPEC, provider, where, options, state_dir=str(tmp_path / "state"),
            output=str(tmp_path / "out"), rows_per_shard=6, overwrite=True,
        )  # fmt: skip


def shard_stores(tmp_path: Path) -> list[JobStore]:
    (shards_json,) = (tmp_path / "state" / "jobs").glob("*/shards.json")
    job = ShardedJob.model_validate_json(shards_json.read_bytes())
    return [JobStore(str(tmp_path / "state"), shard_id) for shard_id in job.shard_job_ids]


def test_shards_each_under_the_cap_but_over_it_together_send_nothing(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src")
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=3)) as server:
        with pytest.raises(CostLimitExceeded):  # (any cap below the total: prepares the shards)
            run(server, tmp_path, source, max_cost_usd=0.0)
        stores = shard_stores(tmp_path)
        costs = [estimate(job_ref(s.read_job(), s.state_dir), SPEC.params).cost_usd for s in stores]
        assert len(costs) == 3 and all(c is not None and c > 0 for c in costs)
        cap = max(c for c in costs if c is not None) * 1.01  # every shard fits, the job does not
        assert cap < sum(c for c in costs if c is not None)
        with pytest.raises(CostLimitExceeded, match="over max_cost_usd"):
            run(server, tmp_path, source, max_cost_usd=cap)
        assert server.stats.uploads == 0 and server.stats.creates == 0
        assert server.stats.requests_received == 0


def long_answer(body: dict[str, Any]) -> str:
    return "a long answer " * 150  # far more output tokens than the estimate's 100 per request


def test_a_retry_round_that_takes_the_whole_job_over_the_cap_is_not_sent(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src")
    config = FakeServerConfig(api_key=KEY, seed=3, expire_after_requests=3, answer=long_answer)
    # the cap: over the plan of the whole job, and over what any one shard spends on its first
    # round plus the estimate of its retry round, but under the whole job's spend
    cap = 0.0009
    with FakeProviderServer(config) as server:
        summary = run(server, tmp_path, source, max_cost_usd=cap)
        assert server.stats.creates == 3  # round 1 of each shard; no round 2
        assert summary.rounds == 1 and summary.errors_by_kind == {"batch_expired": 9}
        assert "max_cost_usd=$0.0009" in summary.stopped
        spends = [job_spend(store).cost("gpt-4o-mini") or 0.0 for store in shard_stores(tmp_path)]
    # one shard's spend leaves room for its retry round (3 requests, ~$0.0001 estimated): a cap
    # per shard would have sent all three retry rounds
    assert all(0 < spent < cap * 0.6 for spent in spends), spends
    assert sum(spends) > cap
    assert summary.cost_usd == pytest.approx(sum(spends))
