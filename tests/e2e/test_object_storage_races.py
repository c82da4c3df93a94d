"""Conditional writes on S3 (moto's server on a loopback port): the job lease and an output
published without overwrite, when another writer comes between the check and the write.

Faults are placed where the store is reached: a wrapper around s3fs's one call to S3 holds or
precedes a put of the key under test (s3fs runs its calls on one event loop, so the wrapper
waits with ``asyncio.sleep``, never a blocking lock)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pyarrow as pa
import pytest
import s3fs

from prefect_llm_batch.cache import ResponseCache
from prefect_llm_batch.errors import JobLocked, TableError
from prefect_llm_batch.files import read_bytes, write_parquet_atomic
from prefect_llm_batch.jobs.checks import check_output_writable
from prefect_llm_batch.object_stores import conditional_writes
from prefect_llm_batch.registry import read_pending, write_pending
from prefect_llm_batch.store import JobStore
from tests.s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, FakeS3

Hook = Callable[[dict[str, Any]], Awaitable[None]]


def before_puts(monkeypatch: pytest.MonkeyPatch, key_suffix: str, hook: Hook) -> None:
    """Run ``hook(kwargs)`` before every ``put_object`` of a key ending with ``key_suffix``."""
    original = s3fs.S3FileSystem._call_s3

    async def call_s3(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "put_object" and str(kwargs.get("Key", "")).endswith(key_suffix):
            await hook(kwargs)
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call_s3)


def test_s3_is_a_store_with_conditional_writes(s3: FakeS3) -> None:
    assert conditional_writes(s3.url("x"))
    assert not conditional_writes("memory://x")


def test_two_leases_racing_on_one_s3_job_exactly_one_wins(
    s3: FakeS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runners find the lease free; the second one's put comes after the first has checked
    its own (past the read-back pause of a plain put): the store must refuse it."""
    arrived: list[int] = []

    async def hold(_kwargs: dict[str, Any]) -> None:
        arrived.append(len(arrived))
        order = arrived[-1]
        for _ in range(500):  # both runners have checked the lease before either writes it
            if len(arrived) >= 2:
                break
            await asyncio.sleep(0.01)
        if order == 1:
            await asyncio.sleep(0.6)

    before_puts(monkeypatch, "jobs/job1/lease.json", hold)
    store = JobStore(s3.url("state"), "job1")
    outcomes: list[str] = []

    def race() -> None:
        try:
            store.lease().acquire()
        except JobLocked:
            outcomes.append("locked")
        except Exception as exc:  # anything else is a bug too
            outcomes.append(f"error: {exc!r}")
        else:
            outcomes.append("held")

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["held", "locked"]


def test_a_lease_taken_over_just_before_its_renewal_is_not_overwritten(
    s3: FakeS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JobStore(s3.url("state"), "job1")
    lease = store.lease()
    lease.acquire()
    other = {"id": "another-runner", "host": "another-host", "pid": 1, "expires_at": 4e9}
    armed = [True]

    async def take_over(_kwargs: dict[str, Any]) -> None:
        if armed and armed.pop():  # another runner took the lease after this one checked it
            s3.put("state/jobs/job1/lease.json", orjson.dumps(other))

    before_puts(monkeypatch, "jobs/job1/lease.json", take_over)
    with pytest.raises(JobLocked, match="taken over"):
        lease.renew()
    assert orjson.loads(s3.get("state/jobs/job1/lease.json"))["id"] == "another-runner"


def test_an_output_that_appears_between_the_check_and_the_put_is_not_overwritten(
    s3: FakeS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def appear(_kwargs: dict[str, Any]) -> None:
        s3.put("out/enriched.parquet", b"another writer's output")

    before_puts(monkeypatch, "out/enriched.parquet", appear)
    with pytest.raises(TableError, match="already exists; pass overwrite=True"):
        write_parquet_atomic(pa.table({"a": [1]}), s3.url("out/enriched.parquet"))
    assert s3.get("out/enriched.parquet") == b"another writer's output"


def test_the_lease_works_with_storage_options_alone_and_keeps_no_credential(
    s3: FakeS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name)
    s3fs.S3FileSystem.clear_instance_cache()
    store = JobStore(s3.url("state"), "job1", s3.storage_options)
    with store.lease() as lease:
        record = read_bytes(store._lease_path(), storage_options=s3.storage_options)
        assert orjson.loads(record)["id"] == lease.owner["id"]
        assert FAKE_ACCESS_KEY_ID.encode() not in record and FAKE_SECRET_ACCESS_KEY.encode() not in record
        with pytest.raises(JobLocked, match="is being run by process"):
            JobStore(s3.url("state"), "job1", s3.storage_options).lease().acquire()
    assert s3.object_keys() == []  # released


def test_state_written_by_another_machine_is_seen_by_a_process_that_listed_it_before(
    s3: FakeS3,
) -> None:
    """s3fs keeps listings per filesystem instance, for the life of the process: a long-lived
    process (a notebook, a Prefect worker, a Dask worker) must still see what others write."""
    state = s3.url("state")
    write_pending(state, "job-a", b"{}")
    assert [path.rsplit("/", 1)[-1] for path, _ in read_pending(state)] == ["job-a.json"]
    cache = ResponseCache(state)
    cache.add_results("shard-1", b"results of shard 1")
    assert len(cache.segments()) == 1
    store = JobStore(state, "job-a")
    store.write_cancel("first")
    assert store.is_cancelled()
    store.clear_cancel()
    assert not store.is_cancelled()

    s3.put("state/pending/job-b.json", b"{}")  # another machine: submitted a detached job,
    s3.put("state/cache/results/99999999999999999999-shard-2.parquet", b"results of shard 2")
    s3.put("state/jobs/job-a/cancel.json", b'{"at": 0, "reason": "by another machine"}')  # cancelled

    assert [path.rsplit("/", 1)[-1] for path, _ in read_pending(state)] == ["job-a.json", "job-b.json"]
    assert len(ResponseCache(state).segments()) == 2
    assert JobStore(state, "job-a").is_cancelled()


def test_a_write_to_a_bucket_that_does_not_exist_fails_and_creates_no_bucket(s3: FakeS3) -> None:
    with pytest.raises(TableError, match=r"cannot write 's3://no-such-bucket-0/out/o.parquet'.*bucket"):
        write_parquet_atomic(pa.table({"a": [1]}), "s3://no-such-bucket-0/out/o.parquet")
    with pytest.raises(TableError, match=r"the output 's3://no-such-bucket-1/o.parquet' cannot be written"):
        check_output_writable("s3://no-such-bucket-1/o.parquet")
    buckets = {bucket["Name"] for bucket in s3.client().list_buckets()["Buckets"]}
    assert s3.bucket in buckets and not buckets & {"no-such-bucket-0", "no-such-bucket-1"}
