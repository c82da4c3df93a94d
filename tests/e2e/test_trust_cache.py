"""The cache and the jobs share no mutable file: damage to one never reaches the other, a damaged
file is named with its fix, and ``cache clear`` / ``jobs clean`` free the bytes they report
(disk usage measured with ``st_blocks``)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prefect_llm_batch import jobs
from prefect_llm_batch.cache import ResponseCache
from prefect_llm_batch.cli import app
from prefect_llm_batch.errors import StateError
from prefect_llm_batch.jobs.driver import run_batches
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.registry import clean_jobs
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-FAKE-cache-0000"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)
SPEC = JobSpec(
    prompt="Summarise {{ text }}", model="gpt-4o-mini", provider="openai",
    limits=BatchLimits(max_requests_per_batch=3),
)  # fmt: skip
cli = CliRunner()


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=11)) as srv:
        yield srv


def source(path: Path, n: int = 6, note: str | None = None, text: str = "text") -> str:
    """A table of ``n`` rows; ``note`` adds a column the prompt does not use (another job, the same
    requests); ``text`` starts every prompt's text (other requests)."""
    columns: dict[str, list[object]] = {"id": list(range(n)), "text": [f"{text} {i:03d}" for i in range(n)]}
    if note is not None:
        columns["note"] = [note] * n
    pq.write_table(pa.table(columns), path)
    return str(path)


def run(
    server: FakeProviderServer, src: str, state: Path, output: Path
) -> tuple[jobs.JobRef, jobs.JobSummary]:
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    with make_provider(where, api_key=KEY, backoff=0.01) as provider:
        ref = jobs.prepare(src, SPEC, provider, where, state_dir=str(state))
        run_batches(ref, provider, FAST)
    return ref, jobs.assemble(ref, output=str(output), overwrite=True)


def damage(path: Path) -> None:
    """Overwrite a file's Parquet footer in place (the same file, as a bad disk or a stray write would)."""
    with open(path, "r+b") as handle:
        handle.seek(-12, os.SEEK_END)
        handle.write(b"\xff" * 8)


def disk_usage(root: Path) -> int:
    """Bytes the files under ``root`` take on disk (each file once, however many names it has)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def sizes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def test_a_damaged_job_file_leaves_the_cache_answering_and_is_named_with_its_fix(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    ref, first = run(server, source(tmp_path / "a.parquet"), state, tmp_path / "a-out.parquet")
    assert first.ok_rows == 6 and server.stats.creates == 2
    store = JobStore(str(state), ref.job_id)
    damage(Path(store.results_path(0)))
    # Another job with the same requests: every answer still comes from the cache.
    _, second = run(server, source(tmp_path / "b.parquet", note="b"), state, tmp_path / "b-out.parquet")
    assert server.stats.creates == 2 and second.cached_requests == 6 and second.ok_rows == 6
    answers = pq.read_table(tmp_path / "b-out.parquet").column("response").to_pylist()
    assert answers == pq.read_table(tmp_path / "a-out.parquet").column("response").to_pylist()
    # The damaged job: a named error (the file, and how to fix it), not an Arrow traceback.
    with pytest.raises(StateError, match=rf"chunk-00000\.parquet of job {ref.job_id} is damaged") as caught:
        jobs.assemble(ref, output=str(tmp_path / "again.parquet"), overwrite=True)
    assert f"prefect-llm-batch jobs clean {ref.job_id}" in str(caught.value)
    Path(store.root, "job.json").write_bytes(b'{"format": 2, "job_id": ')  # torn
    with pytest.raises(StateError, match=rf"job\.json of job {ref.job_id} is damaged.*jobs clean"):
        store.read_job()
    # The fix the message gives works: delete the job, run again, pay nothing.
    result = cli.invoke(app, ["jobs", "clean", ref.job_id, "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert "removed 1 job(s)" in result.output and not Path(store.root).exists()
    _, again = run(server, source(tmp_path / "a.parquet"), state, tmp_path / "a-out.parquet")
    assert again.ok_rows == 6 and again.cached_requests == 6 and server.stats.creates == 2


def test_a_damaged_cache_segment_is_skipped_with_a_warning_naming_it_and_its_requests_are_sent(
    server: FakeProviderServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    ref, _ = run(server, source(tmp_path / "a.parquet"), state, tmp_path / "a-out.parquet")
    segments = sorted((state / "cache" / "results").iterdir())
    [broken] = [s for s in segments if "-chunk-00000-" in s.name]
    assert len(segments) == 2
    damage(broken)
    received = server.stats.requests_received
    with caplog.at_level(logging.WARNING, logger="prefect_llm_batch"):
        _, summary = run(server, source(tmp_path / "b.parquet", note="b"), state, tmp_path / "b-out.parquet")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(broken) in w and "damaged" in w and "cache clear" in w for w in warnings), warnings
    # Only the damaged segment's three requests are sent again; the other segment answers.
    assert server.stats.creates == 3 and server.stats.requests_received - received == 3
    assert summary.ok_rows == 6 and summary.cached_requests == 3
    assert pq.read_table(tmp_path / "b-out.parquet").column("response").null_count == 0
    # The job's own results were never touched by the damage to the cache.
    assert JobStore(str(state), ref.job_id).read_results(0).num_rows == 3
    result = cli.invoke(app, ["cache", "info", "--state-dir", str(state)])
    assert result.exit_code == 0 and "segment(s)" in result.output


def test_cache_clear_frees_the_bytes_it_reports(server: FakeProviderServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run(server, source(tmp_path / "a.parquet", n=60), state, tmp_path / "a-out.parquet")
    segments = sorted((state / "cache").rglob("*.parquet"))
    assert len(segments) == 20
    reported = sizes(segments)
    before = disk_usage(state)
    result = cli.invoke(app, ["cache", "clear", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert before - disk_usage(state) >= reported > 0
    assert "removed 20 segment(s)" in result.output and "freeing" in result.output
    assert ResponseCache(str(state)).stats() == (0, 0, 0)
    assert ResponseCache(str(state)).clear() == (0, 0)


def test_jobs_clean_deletes_what_it_is_asked_frees_it_and_keeps_held_jobs(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    finished, _ = run(server, source(tmp_path / "a.parquet", n=30), state, tmp_path / "a-out.parquet")
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    with make_provider(where, api_key=KEY) as provider:  # planned, never run
        planned = jobs.prepare(
            source(tmp_path / "b.parquet", n=7, text="bee"), SPEC, provider, where, state_dir=str(state)
        )
        held = jobs.prepare(
            source(tmp_path / "c.parquet", n=8, text="sea"), SPEC, provider, where, state_dir=str(state)
        )
    folders = {
        name: state / "jobs" / ref.job_id for name, ref in (("a", finished), ("b", planned), ("c", held))
    }

    result = cli.invoke(app, ["jobs", "clean", "--finished", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert "removed 1 job(s)" in result.output
    assert not folders["a"].exists() and folders["b"].exists() and folders["c"].exists()
    # What was freed is on the disk: the cache's copies are not the job's files.
    cache_before = disk_usage(state / "cache")
    creates = server.stats.creates
    again, summary = run(server, source(tmp_path / "a.parquet", n=30), state, tmp_path / "a-out.parquet")
    assert server.stats.creates == creates and summary.cached_requests == 30  # the cache answered
    assert disk_usage(state / "cache") == cache_before

    result = cli.invoke(app, ["jobs", "clean", "--older-than", "1", "--state-dir", str(state)])
    assert "removed 0 job(s)" in result.output  # every job changed within the day
    old = time.time() - 2 * 86400
    for path in folders["b"].rglob("*"):
        os.utime(path, (old, old))
    size_b = sizes([p for p in folders["b"].rglob("*") if p.is_file()])
    before = disk_usage(state)
    report = clean_jobs(str(state), older_than_s=86400)
    assert report.removed == [planned.job_id] and report.bytes == size_b
    assert before - disk_usage(state) >= report.bytes > 0

    with JobStore(str(state), held.job_id).lease():  # a run holds job c
        result = cli.invoke(app, ["jobs", "clean", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert re.search(
        rf"kept job {held.job_id}: job {held.job_id} is being run by process {os.getpid()}", result.output
    )
    assert "removed 1 job(s)" in result.output  # the rerun of a, finished
    assert folders["c"].exists() and not folders["a"].exists()
    assert JobStore(str(state), held.job_id).read_job().job_id == held.job_id
    assert JobStore(str(state), again.job_id).lease().holder() is None
