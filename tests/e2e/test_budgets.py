"""Provider budgets shared across shards and jobs: Prefect global concurrency limits held with
leases, against a real (temporary) Prefect server and the fake provider's enqueued-token limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.budgets import PrefectBudget, limit_names
from prefect_llm_batch.errors import BatchFailed
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeServerConfig(validating_seconds=0.1, in_progress_seconds=0.6)) as s:
        monkeypatch.setenv("OPENAI_API_KEY", "fake-key-budgets")
        yield s


def test_a_budget_is_a_global_concurrency_limit_taken_renewed_and_given_back(prefect_harness: None) -> None:
    budget = PrefectBudget("openai", "budget-test-model", max_enqueued_tokens=100, max_in_flight_batches=None)
    assert budget.ensure_limits() == {limit_names("openai", "budget-test-model")[0]: 100}
    first = budget.try_acquire(60)
    assert first is not None and len(first) == 1
    assert budget.try_acquire(60) is None  # 60 + 60 > 100: nothing taken
    budget.renew(first)
    budget.release(first)
    second = budget.try_acquire(60)
    assert second is not None
    budget.release(second)
    bigger = budget.try_acquire(500)  # a batch bigger than the budget takes all of it, alone
    assert bigger is not None and budget.try_acquire(1) is None
    budget.release(bigger)


def write_dataset(root: Path, shards: int = 4, rows: int = 12) -> str:
    for i in range(shards):
        folder = root / f"part={i}"
        folder.mkdir(parents=True)
        texts = [f"shard {i} review {j:03d} with the same length" for j in range(rows)]
        pq.write_table(pa.table({"id": list(range(rows)), "text": texts}), folder / "p.parquet")
    return str(root)


def run(source: str, state: Path, out: Path, server: FakeProviderServer, **options: Any) -> Any:
    from prefect_llm_batch.flows import enrich_table

    return enrich_table(
        source=source, output=str(out), state_dir=str(state), prompt="Tag {{ text }}", model="gpt-4o-mini",
        provider="openai", base_url=server.base_url, poll_interval=0.2, cache="off", rows_per_shard=12,
        **options,
    )  # fmt: skip


def test_shards_share_the_enqueued_token_budget_so_none_exceeds_the_providers_limit(
    prefect_harness: None, tmp_path: Path, server: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch import shard_tasks
    from prefect_llm_batch.store import JobStore

    source = write_dataset(tmp_path / "src")
    run(source, tmp_path / "calibrate", tmp_path / "o0", server)  # no limits: what one batch weighs
    one_batch = max(b.enqueued_tokens for b in server.batches.values())
    jobs_dir = tmp_path / "calibrate" / "jobs"
    estimate = max(
        c.est_tokens
        for job in jobs_dir.iterdir()
        if (job / "job.json").exists()
        for c in JobStore(str(tmp_path / "calibrate"), job.name).read_job().chunks
    )
    budget = int(estimate * 1.5)
    limited = FakeServerConfig(
        validating_seconds=0.1, in_progress_seconds=0.6, enqueued_token_limit=int(one_batch * 1.5)
    )  # room for one batch at a time
    with FakeProviderServer(limited) as provider:
        summary = run(source, tmp_path / "shared", tmp_path / "o1", provider, max_enqueued_tokens=budget)
        failed = [b for b in provider.batches.values() if b.status == "failed"]
        assert not failed, "no batch went over the provider's enqueued-token limit"
        assert summary.ok_rows == 48 and "shared" in summary.budget

    # The same job without the shared budget: its shards enqueue at once and the provider refuses some.
    monkeypatch.setattr(shard_tasks, "job_budget", lambda *args: None)
    with FakeProviderServer(limited) as provider:
        try:
            summary = run(source, tmp_path / "alone", tmp_path / "o2", provider, max_enqueued_tokens=budget)
        except BatchFailed as exc:  # retried, and still over the limit: the run says so
            assert "token_limit_exceeded" in str(exc)
        else:
            assert "own limits" in summary.budget
        assert [b for b in provider.batches.values() if b.status == "failed"]
