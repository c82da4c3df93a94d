"""The state directory under faults: cleaning keeps paid work, damage is only damage, a cache
read survives a concurrent clear, an old state directory is closed, ``status`` names a damaged file.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prefect_llm_batch import cache as cache_module
from prefect_llm_batch import jobs
from prefect_llm_batch.cache import ResponseCache
from prefect_llm_batch.cli import app
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.registry import clean_jobs, write_pending
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget
from prefect_llm_batch.store import ChunkState, JobStore, is_damage
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-FAKE-state-faults-0000"
SPEC = JobSpec(
    prompt="Say {{ text }}",
    model="gpt-4o-mini",
    provider="openai",
    limits=BatchLimits(max_requests_per_batch=3),
)
cli = CliRunner()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, in_progress_seconds=60, seed=5)) as srv:
        yield srv


def prepare(server: FakeProviderServer, tmp_path: Path, name: str, *, submit: bool = False) -> jobs.JobRef:
    """A job of two batches of three requests, planned in ``tmp_path/state`` (its first batch
    created when ``submit``; it then runs for a minute at the fake provider)."""
    source = tmp_path / f"{name}.parquet"
    pq.write_table(pa.table({"text": [f"{name} {i}" for i in range(6)]}), source)
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    with make_provider(where, api_key=KEY) as provider:
        ref = jobs.prepare(str(source), SPEC, provider, where, state_dir=str(tmp_path / "state"))
        if submit:
            jobs.submit_chunk(ref, 0, provider)
    return ref


def segment(ids: list[str]) -> pa.Table:
    return pa.table({"custom_id": ids, "response": [f"answer {i}" for i in ids]})


# Finding 3: `jobs clean` keeps paid work ------------------------------------------------------


def test_jobs_clean_keeps_jobs_with_batches_not_collected_or_pending_unless_forced(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    running = prepare(server, tmp_path, "running", submit=True)
    pending = prepare(server, tmp_path, "pending")
    write_pending(str(state), pending.job_id, b"{}")  # submitted detached: collect finishes it
    planned = prepare(server, tmp_path, "planned")  # never sent: nothing to lose
    batch_id = JobStore(str(state), running.job_id).read_chunk(0).batch_id
    assert batch_id is not None and server.stats.creates == 1

    result = cli.invoke(app, ["jobs", "clean", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert f"kept job {running.job_id}: 1 batch(es) submitted and not collected ({batch_id})" in result.output
    assert f"kept job {pending.job_id}: it is pending" in result.output
    assert "--force" in result.output and "removed 1 job(s)" in result.output
    assert (state / "jobs" / running.job_id).is_dir() and (state / "jobs" / pending.job_id).is_dir()
    assert (state / "pending" / f"{pending.job_id}.json").exists()
    assert not (state / "jobs" / planned.job_id).exists()
    assert JobStore(str(state), running.job_id).lease().holder() is None  # the check took no lease for good

    report = clean_jobs(str(state))
    assert report.removed == [] and set(report.kept) == {running.job_id, pending.job_id}

    result = cli.invoke(app, ["jobs", "clean", "--force", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert "removed 2 job(s)" in result.output and not list((state / "jobs").iterdir())
    assert not (state / "pending" / f"{pending.job_id}.json").exists()


# Finding 8 (status half): a damaged job is one line naming the file and the fix -----------------


def test_status_of_a_damaged_job_prints_the_file_and_the_fix_without_a_traceback(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    ref = prepare(server, tmp_path, "damaged", submit=True)
    healthy = cli.invoke(app, ["status", ref.job_id, "--state-dir", str(state)])
    assert healthy.exit_code == 0, healthy.output
    chunk_file = state / "jobs" / ref.job_id / "chunks" / "chunk-00000.json"
    for damaged in (chunk_file, state / "jobs" / ref.job_id / "job.json"):
        damaged.write_bytes(b'{"chunk_id": 0, "batch_')  # torn
        result = cli.invoke(app, ["status", ref.job_id, "--state-dir", str(state)])
        assert result.exit_code == 1
        assert isinstance(result.exception, SystemExit)  # handled, not a StateError traceback
        assert "Traceback" not in result.output
        [line] = result.output.strip().splitlines()
        assert str(damaged) in line and "is damaged" in line
        assert f"prefect-llm-batch jobs clean {ref.job_id}" in line


# Finding 9: damage is only undecodable bytes --------------------------------------------------


def corrupt_reads() -> list[BaseException]:
    """The errors Arrow and orjson raise for real undecodable bytes."""
    sink = io.BytesIO()
    pq.write_table(segment([f"id{i:04d}" for i in range(2000)]), sink, compression="snappy")
    good = sink.getvalue()
    footer_gone = good[: len(good) // 2]
    thrift = bytearray(good)
    thrift[-300:-10] = bytes(b ^ 0x5A for b in thrift[-300:-10])
    pages = bytearray(good)
    pages[100:400] = bytes(b ^ 0x5A for b in pages[100:400])
    errors: list[BaseException] = []
    for data in (footer_gone, b"", bytes(thrift), bytes(pages)):
        with pytest.raises(Exception) as caught:
            pq.read_table(io.BytesIO(data))
        errors.append(caught.value)
    with pytest.raises(ValueError) as bad_json:
        orjson.loads(b'{"chunk_id": 0, "batch_')
    return [*errors, bad_json.value]


def test_only_undecodable_bytes_count_as_damage() -> None:
    for error in corrupt_reads():
        assert is_damage(error), repr(error)
    not_damage = [
        MemoryError(),
        pa.ArrowMemoryError("malloc of size 1073741824 failed"),
        pa.ArrowNotImplementedError("Support for codec 'lzo' not built"),
        OSError("Connection reset by peer"),  # a transient object-store error, no errno
        OSError(errno.EIO, "Input/output error"),
        FileNotFoundError(errno.ENOENT, "gone"),
        PermissionError(errno.EACCES, "forbidden"),
    ]
    for error in not_damage:
        assert not is_damage(error), repr(error)


@pytest.mark.parametrize(
    "error",
    [pa.ArrowMemoryError("malloc of size 1073741824 failed"), OSError("Connection reset by peer")],
    ids=["arrow-memory", "errno-less-oserror"],
)
def test_a_cache_read_failing_for_another_reason_than_damage_is_raised_not_skipped(
    error: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ResponseCache(str(tmp_path / "state"))
    cache.add("a", segment(["x", "y"]))

    def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(cache_module.pq, "ParquetFile", failing)
    with caplog.at_level(logging.WARNING, logger="prefect_llm_batch"), pytest.raises(type(error)):
        cache.lookup(["x"])
    assert "damaged" not in caplog.text  # not mistaken for a damaged segment (and its answers lost)


# Finding 10: a segment deleted between listing and reading ------------------------------------


def test_cache_readers_skip_a_segment_deleted_between_listing_and_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ResponseCache(str(tmp_path / "state"))
    cache.add("old", segment(["a", "b"]))
    cache.add("new", segment(["c"]))
    listed = cache.segments()
    kept = next(p for p in listed if "-new" in p)
    os.remove(next(p for p in listed if "-old" in p))  # a `cache clear` in between
    monkeypatch.setattr(cache, "segments", lambda: listed)  # what was listed before it
    with caplog.at_level(logging.WARNING, logger="prefect_llm_batch"):
        found = cache.lookup(["a", "c"])
        assert found is not None and found.column("custom_id").to_pylist() == ["c"]
        assert cache.ids().to_pylist() == ["c"]
        size = os.path.getsize(kept)
        assert cache.stats() == (1, 1, size)
        assert cache.clear() == (1, size)
    assert not os.path.exists(kept)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # skipped silently


# Finding 13: an old, open state directory is closed on the first write ------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_first_write_closes_a_state_directory_made_with_looser_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old_file = state / "jobs" / "old" / "job.json"
    old_file.parent.mkdir(parents=True)
    old_file.write_text("{}")
    (state / "cache").mkdir()
    for path in (state, state / "jobs", state / "jobs" / "old", state / "cache"):
        path.chmod(0o755)
    old_file.chmod(0o644)
    JobStore(str(state), "job1").write_chunk(ChunkState(chunk_id=0))
    assert mode(state) == mode(state / "jobs") == mode(state / "cache") == 0o700
    assert mode(old_file) == 0o644  # not file by file (documented): the closed folders hide it
    assert mode(state / "jobs" / "job1" / "chunks" / "chunk-00000.json") == 0o600


def test_a_state_directory_shared_with_other_files_keeps_its_mode_but_its_folders_are_closed(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "project"
    (shared / "cache").mkdir(parents=True)
    (shared / "notes.txt").write_text("mine")
    shared.chmod(0o755)
    (shared / "cache").chmod(0o755)
    ResponseCache(str(shared)).add("a", segment(["x"]))
    assert mode(shared) == 0o755 and mode(shared / "cache") == 0o700
