"""One runner per job, for the whole job: the lease covers planning, every round and the output.

A second run of a job that starts while the first one is still reading its source (planning)
is refused with JobLocked and changes nothing; the first run finishes with every row answered,
each batch created once, and the plan it wrote is the job's plan.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.cache import ResponseCache
from prefect_llm_batch.errors import JobLocked
from prefect_llm_batch.notebook import enrich
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.registry import list_jobs
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget
from prefect_llm_batch.store import JobRecord, JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

#: The module ``jobs.prepare`` (the package attribute of that name is the function).
PREPARE = importlib.import_module("prefect_llm_batch.jobs.prepare")

KEY = "fake-key-FAKE-lease-0000"
PROMPT = "Summarise {{ text }}"
MODEL = "gpt-4o-mini"
ROWS = 9


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, in_progress_seconds=0.1, seed=7)) as srv:
        yield srv


def frame(n: int = ROWS) -> pd.DataFrame:
    return pd.DataFrame({"id": list(range(n)), "text": [f"text {i:03d}" for i in range(n)]})


class StalledRead:
    """Makes the first read of a source (planning) wait until ``release`` is set (at most
    ``timeout`` seconds); ``reading`` is set once that read has started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, timeout: float = 30.0) -> None:
        self.reading = threading.Event()
        self.release = threading.Event()
        self.timeout = timeout
        self.calls = 0
        original = PREPARE.scan_table

        def scan_table(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                self.reading.set()
                self.release.wait(self.timeout)
            return original(*args, **kwargs)

        monkeypatch.setattr(PREPARE, "scan_table", scan_table)


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def only_job(state: Path) -> JobRecord:
    [record] = list_jobs(str(state))
    return record


def test_a_second_notebook_run_while_the_first_plans_is_refused_and_pays_nothing(
    server: FakeProviderServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    stall = StalledRead(monkeypatch)

    def run() -> pd.DataFrame:
        return enrich(
            frame(), PROMPT, MODEL, provider="openai", base_url=server.base_url, api_key=KEY,
            state_dir=str(state), poll_interval=0.02, max_requests_per_batch=3, progress=False,
        )  # fmt: skip

    first, outcome = in_thread(run)
    try:
        assert stall.reading.wait(30), "the first run never started reading its source"
        with pytest.raises(JobLocked, match=rf"is being run by process {os.getpid()}.*wait for it to finish"):
            run()
        assert server.stats.creates == 0 and server.stats.uploads == 0  # the second run sent nothing
    finally:
        stall.release.set()
        first.join(60)
    assert "error" not in outcome, outcome.get("error")
    answered = outcome["value"]
    assert answered["response"].notna().all() and len(answered) == ROWS
    assert answered["response_error_kind"].isna().all()
    assert server.stats.creates == 3 and server.stats.requests_received == ROWS
    record = only_job(state)  # planned once, by the run that held the job: three batches, none cached
    assert [c.requests for c in record.chunks] == [3, 3, 3] and record.cached_requests == 0
    assert server.creates_for(record.job_id) == 3
    # Run again once the first has ended: resumed from its state, nothing sent again.
    again = run()
    assert again["response"].tolist() == answered["response"].tolist()
    assert server.stats.creates == 3 and only_job(state).chunks == record.chunks


@pytest.mark.usefixtures("prefect_harness")
def test_a_second_flow_run_while_the_first_plans_is_refused_and_the_first_finishes(
    server: FakeProviderServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch.flows import enrich_table

    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(frame(), preserve_index=False), source)
    state = tmp_path / "state"
    stall = StalledRead(monkeypatch)

    def run(output: str) -> Any:
        return enrich_table(
            source=str(source), output=output, prompt=PROMPT, model=MODEL, provider="openai",
            base_url=server.base_url, state_dir=str(state), poll_interval=0.05, retry_backoff=0,
            max_requests_per_batch=3,
        )  # fmt: skip

    first, outcome = in_thread(lambda: run(str(tmp_path / "a.parquet")))
    try:
        assert stall.reading.wait(60), "the first run never started reading its source"
        with pytest.raises(JobLocked, match=rf"is being run by process {os.getpid()}"):
            run(str(tmp_path / "b.parquet"))
        assert server.stats.creates == 0
    finally:
        stall.release.set()
        first.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["value"].ok_rows == ROWS and server.stats.creates == 3
    assert not (tmp_path / "b.parquet").exists()
    output = pq.read_table(tmp_path / "a.parquet")
    assert output.column("response").null_count == 0 and output.num_rows == ROWS
    record = only_job(state)
    assert [c.requests for c in record.chunks] == [3, 3, 3] and record.cached_requests == 0


def test_a_planned_job_is_resumed_as_planned_even_when_the_cache_could_answer_it(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(frame(), preserve_index=False), source)
    state = str(tmp_path / "state")
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    spec = JobSpec(
        prompt=PROMPT, model=MODEL, provider="openai", limits=BatchLimits(max_requests_per_batch=3)
    )
    with make_provider(where, api_key=KEY) as provider:
        ref = jobs.prepare(str(source), spec, provider, where, state_dir=state)
        store = JobStore(state, ref.job_id)
        planned = {p.name: p.read_bytes() for p in Path(store.root, "requests").iterdir()}
        ids = store.read_row_ids().to_pylist()
        ResponseCache(state).add("elsewhere", pa.table({"custom_id": ids, "response": ["cached"] * ROWS}))
        again = jobs.prepare(str(source), spec, provider, where, state_dir=state)
    assert again == ref and again.cached_requests == 0 and again.chunks == 3
    assert {p.name: p.read_bytes() for p in Path(store.root, "requests").iterdir()} == planned


def test_the_lease_is_reentrant_within_a_run_and_exclusive_across_runs(tmp_path: Path) -> None:
    store = JobStore(str(tmp_path / "state"), "job1")
    refused: list[BaseException] = []

    def other_run() -> None:
        try:
            with store.lease():
                pass
        except JobLocked as exc:
            refused.append(exc)

    with store.lease() as outer:
        with store.lease() as inner:  # a step of the same run that takes the lease again
            assert inner.holder() == outer.holder()
        holder = store.lease().holder()
        assert holder is not None and holder["id"] == outer.owner["id"]  # still held after the step
        thread = threading.Thread(target=other_run)
        thread.start()
        thread.join()
    assert len(refused) == 1 and "job job1 is being run by process" in str(refused[0])
    assert store.lease().holder() is None  # released by the outer exit only
