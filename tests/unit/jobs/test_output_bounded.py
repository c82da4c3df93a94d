"""The output of a job is matched by key and read a source at a time (memory bounded by the
sources in use, not the job): the key index against a dictionary, and whole jobs over real HTTP
to the fake server checked against the in-memory join they replace, with real Parquet read back."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.errors import StateError
from prefect_llm_batch.jobs.driver import run_batches
from prefect_llm_batch.jobs.output import JobAnswers, TableAnswers, latest_results, write_joined
from prefect_llm_batch.keys import ResultIndex, custom_id_array, custom_id_from_digest, decode_custom_ids
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.results import result_positions
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.table import scan_table
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "test-key-bounded-0000"
FAST = RunOptions(poll_interval=0.02, retry_backoff=0)

# ----- decoding custom_ids -------------------------------------------------------------------


def test_decoding_gives_back_the_digests() -> None:
    rng = random.Random(3)
    for size in (0, 1, 2, 7, 300):
        digests = [rng.randbytes(32) for _ in range(size)] + [bytes(32), b"\xff" * 32][: min(size, 2)]
        ids = pa.array([custom_id_from_digest(d) for d in digests], pa.string())
        words = decode_custom_ids(ids)
        assert words.shape == (len(digests), 4)
        assert [row.tobytes() for row in words] == digests
        assert decode_custom_ids(custom_id_array(digests)).tobytes() == b"".join(digests)
        chunked = pa.chunked_array([ids.slice(0, 1), ids.slice(1)], pa.string())
        assert decode_custom_ids(chunked).tobytes() == b"".join(digests)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("short", "not a request key"),
        ("a" * 42 + "!", "not a request key"),  # outside the alphabet
        ("A" * 42 + "B", "not a request key"),  # the last character carries bits no digest has
        ("=" * 43, "not a request key"),
    ],
)
def test_an_id_that_is_not_a_key_is_named_with_its_position(bad: str, why: str) -> None:
    good = custom_id_from_digest(bytes(32))
    with pytest.raises(ValueError, match=rf"row 11 has the id '{bad}', which is {why}"):
        decode_custom_ids(pa.array([good, bad, good]), what="row", first=10)


def test_a_null_id_is_named() -> None:
    with pytest.raises(ValueError, match="result 1 has no id"):
        decode_custom_ids(pa.array([custom_id_from_digest(bytes(32)), None]))


# ----- the key index -------------------------------------------------------------------------


def _keys(seeds: list[int], shared_first_word: bool) -> np.ndarray:
    """Distinct keys, one per seed value; all sharing their first word when asked."""
    rng = np.random.default_rng(0)
    table = rng.integers(0, 2**63, size=(64, 4), dtype=np.int64).astype(np.uint64)
    if shared_first_word:
        table[:, 0] = 7
    return table[np.asarray(seeds, np.int64)] if seeds else np.zeros((0, 4), np.uint64)


@pytest.mark.parametrize("shared", [False, True])
def test_lookup_finds_the_last_result_of_each_key(shared: bool) -> None:
    rng = random.Random(11)
    for _ in range(300):
        sources = [[rng.randrange(21) for _ in range(rng.randrange(16))] for _ in range(rng.randrange(6))]
        queries = [rng.randrange(26) for _ in range(rng.randrange(31))]
        index = ResultIndex([_keys(s, shared) for s in sources])
        expected: dict[int, int] = {}
        number = 0
        for source in sources:
            for seed in source:
                expected[seed] = number  # later results replace earlier ones
                number += 1
        found = index.lookup(_keys(queries, shared))
        assert found.tolist() == [expected.get(q, -1) for q in queries]
        assert index.size == number
        assert sorted(np.flatnonzero(index.latest).tolist()) == sorted(expected.values())


def test_an_older_result_between_two_keys_sharing_a_first_word_is_not_taken() -> None:
    a, b = _keys([1, 2], shared_first_word=True)
    index = ResultIndex([np.stack([a, b, a, b, a])])  # runs longer than two: a, b, a, b, a
    assert index.lookup(np.stack([a, b])).tolist() == [4, 3]
    assert index.latest.tolist() == [False, False, False, True, True]


# ----- whole jobs ----------------------------------------------------------------------------


def _reference(ref: jobs.JobRef, out: Path) -> pa.Table:
    """The output as it was built before: every result in memory, one hash lookup of the ids."""
    store = JobStore(ref.state_dir, ref.job_id)
    results, _ = latest_results(store)
    positions = result_positions(store.read_row_ids(), results, check_unique=False)
    write_joined(
        scan_table(store.read_job().source), TableAnswers(results, positions), str(out), overwrite=True
    )
    return pq.read_table(out)


def _run(
    source: str, state: Path, server: FakeProviderServer, *, options: RunOptions = FAST, **spec: Any
) -> jobs.JobRef:
    where = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
    job = JobSpec(prompt="Say {{ text }}", model="gpt-4o-mini", provider="openai", **spec)
    with make_provider(where, api_key=KEY, backoff=0.01) as provider:
        ref = jobs.prepare(source, job, provider, where, state_dir=str(state), cache=options.cache)
        run_batches(ref, provider, options)
    return ref


def _kept_answers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many answers are in memory after each slice of rows is taken."""
    seen: list[int] = []
    take = JobAnswers.take

    def recording(self: JobAnswers, start: int, count: int) -> tuple[pa.Table, pa.Array[Any]]:
        out = take(self, start, count)
        seen.append(out[0].num_rows)
        return out

    monkeypatch.setattr(JobAnswers, "take", recording)
    return seen


def _without_metadata(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata(None)


def test_output_equals_the_in_memory_join_with_cache_retries_duplicates_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [f"text {i:03d}" for i in range(40)]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": first}), path)
    limits = BatchLimits(max_requests_per_batch=6)
    options = FAST.model_copy(update={"max_attempts": 2})
    with FakeProviderServer(FakeServerConfig(seed=5)) as server:
        _run(str(path), tmp_path / "s", server, options=options, limits=limits)  # fills the cache
        second = [*first[:30], "flaky [[fake:500]]", "bad [[fake:400]]", "gone [[fake:drop]]"]
        second += [f"new {i:03d}" for i in range(20)] + [first[0], "new 005", "flaky [[fake:500]]"]
        pq.write_table(pa.table({"n": list(range(len(second))), "text": second}), path)
        ref = _run(str(path), tmp_path / "s", server, options=options, limits=limits)
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()
    assert record.cached_requests == 30 and record.rounds == 2  # the cache, and a retry round
    live = _kept_answers(monkeypatch)
    summary = jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    got = pq.read_table(tmp_path / "out.parquet")
    assert live  # the lazy path ran
    expected = _reference(ref, tmp_path / "reference.parquet")
    assert _without_metadata(got).equals(_without_metadata(expected))
    kinds = got.column("response_error_kind").to_pylist()
    assert kinds[30:33] == ["server_error", "invalid_request", "missing"]
    assert kinds[-1] == "server_error" and kinds[:30] == [None] * 30
    answers = got.column("response").to_pylist()
    assert answers[-3] == answers[0] and answers[-2] == answers[33 + 5]  # duplicates fanned out
    assert got.column("response_cached").to_pylist()[:30] == [True] * 30
    results, _ = latest_results(store)
    sent = results.filter(pa.compute.invert(results.column("response_cached")))
    assert summary.input_tokens == pa.compute.sum(sent.column("response_input_tokens")).as_py() > 0
    assert summary.output_tokens == pa.compute.sum(sent.column("response_output_tokens")).as_py() > 0
    assert summary.rows == len(second) and summary.error_rows == 4


@pytest.mark.parametrize("repeats", [False, True])
def test_answers_are_dropped_after_the_last_row_that_needs_them(
    repeats: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = [f"text {i:04d}" for i in range(3000)]
    if repeats:  # one row in ten repeats an earlier row, anywhere before it: sources stay in use
        rng = random.Random(4)
        for row in range(100, 3000, 10):
            values[row] = values[rng.randrange(row)]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": values}, schema=pa.schema([("text", pa.string())])), path)
    with FakeProviderServer(FakeServerConfig(seed=1)) as server:
        ref = _run(str(path), tmp_path / "s", server, limits=BatchLimits(max_requests_per_batch=100))
    record = JobStore(ref.state_dir, ref.job_id).read_job()
    assert len(record.chunks) == (28 if repeats else 30)
    kept = _kept_answers(monkeypatch)
    monkeypatch.setattr("prefect_llm_batch.jobs.output.SCAN_BATCH_ROWS", 250)  # parts of the row ids
    monkeypatch.setattr("prefect_llm_batch.table.reading.SCAN_BATCH_ROWS", 250)  # slices of the input
    summary = jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    # A slice of 250 rows reads at most 4 sources of 100 answers; the repeated requests add the
    # answers later rows still need (far fewer than the 2,800 of the job).
    assert len(kept) == 12 and max(kept) <= (600 if repeats else 400)
    got = pq.read_table(tmp_path / "out.parquet")
    assert got.column("text").to_pylist() == values
    assert got.column("response_error_kind").null_count == 3000
    answers = got.column("response").to_pylist()
    assert len(set(answers)) == record.unique_requests
    assert all(answers[values.index(v)] == a for v, a in zip(values, answers, strict=True))
    expected = _reference(ref, tmp_path / "reference.parquet")
    assert _without_metadata(got).equals(_without_metadata(expected))
    assert summary.input_tokens > 0


def test_damaged_row_ids_are_a_state_error_naming_the_row(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), path)
    with FakeProviderServer(FakeServerConfig()) as server:
        ref = _run(str(path), tmp_path / "s", server)
    store = JobStore(ref.state_dir, ref.job_id)
    ids = store.read_row_ids().to_pylist()
    store.write_row_ids([ids[0], ids[1], "r-2"])
    with pytest.raises(StateError, match=r"row ids of job \w+ are damaged: row 2 has the id 'r-2'"):
        jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()


def test_damaged_ids_in_later_slices_and_in_a_batch_s_results_are_state_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch.jobs import output

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(10)]}), path)
    with FakeProviderServer(FakeServerConfig()) as server:
        ref = _run(str(path), tmp_path / "s", server, limits={"max_requests_per_batch": 4})
    store = JobStore(ref.state_dir, ref.job_id)
    assert len(store.read_job().chunks) == 3
    monkeypatch.setattr(output, "SCAN_BATCH_ROWS", 3)  # row ids come in slices of 3
    ids = store.read_row_ids().to_pylist()
    store.write_row_ids([*ids[:7], "r-7", *ids[8:]])
    with pytest.raises(StateError, match=r"row ids of job \w+ are damaged: row 7 has the id 'r-7'"):
        jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    store.write_row_ids(ids)
    results = store.read_results(2)
    store.write_results(2, results.set_column(0, "custom_id", pa.array(["r-x"] * results.num_rows)))
    with pytest.raises(StateError, match=r"the results of chunk 2 of job \w+ are damaged: result 0 has"):
        jobs.assemble(ref, output=str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()
