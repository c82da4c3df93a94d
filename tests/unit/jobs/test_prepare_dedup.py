"""De-duplication in prepare: :class:`DigestSet` gives exactly what a Python set of digests gave
(duplicates within a slice, across slices, all-duplicate and all-distinct slices, digests that
share their sort key), and prepare's files are the same with either (cache hits included)."""

from __future__ import annotations

import importlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.batchfile import build_request_set
from prefect_llm_batch.cache import ResponseCache
from prefect_llm_batch.jobs.input_checks import check_and_render
from prefect_llm_batch.keys import DigestSet, first_new
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.results import RowResult, results_to_table
from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.table import reading as table_reading

#: The module ``jobs.prepare`` (the package attribute of that name is the function).
PREPARE = importlib.import_module("prefect_llm_batch.jobs.prepare")
FULL = (1 << 64) - 1
#: Sort-key masks: the real one, and narrower ones under which distinct digests share keys
#: (0: every digest has the same key), so that the exact fallback starts at different times.
MASKS = [FULL, (1 << 16) - 1, (1 << 6) - 1, 1, 0]


def _digest(rng: random.Random, key: int | None = None) -> bytes:
    """A random digest; with ``key``, its first 8 bytes are that key (little-endian)."""
    tail = rng.randbytes(24)
    head = rng.randbytes(8) if key is None else key.to_bytes(8, "little")
    return head + tail


class _Reference:
    """The de-duplication prepare did before :class:`DigestSet`: a Python set of bytes."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def add(self, digests: list[bytes]) -> npt.NDArray[np.int64]:
        return np.asarray(first_new(digests, self.seen), np.int64)

    def __len__(self) -> int:
        return len(self.seen)

    def clear(self) -> None:
        self.seen.clear()


def _slices(rng: random.Random, pool: list[bytes], count: int) -> list[list[bytes]]:
    kinds = ["mixed", "distinct", "all the same", "repeats of earlier", "empty", "one"]
    out: list[list[bytes]] = []
    for _ in range(count):
        kind = rng.choice(kinds)
        size = rng.randint(1, 300)
        if kind == "mixed":
            out.append([rng.choice(pool) for _ in range(size)])
        elif kind == "distinct":
            out.append(rng.sample(pool, min(size, len(pool))))
        elif kind == "all the same":
            out.append([rng.choice(pool)] * size)
        elif kind == "repeats of earlier":
            earlier = [d for s in out for d in s] or pool
            out.append([rng.choice(earlier) for _ in range(size)])
        elif kind == "empty":
            out.append([])
        else:
            out.append([rng.choice(pool)])
    return out


@pytest.mark.parametrize("mask", MASKS, ids=[f"mask-{m:x}" for m in MASKS])
@pytest.mark.parametrize("seed", range(6))
def test_digest_set_equals_a_python_set(mask: int, seed: int) -> None:
    rng = random.Random(seed * 31 + mask % 97)
    pool = [_digest(rng) for _ in range(rng.choice([5, 50, 400, 3000]))]
    reference, digests = _Reference(), DigestSet(key_mask=mask)
    for part in _slices(rng, pool, 40):
        expected = reference.add(part)
        got = digests.add(part)
        assert got.dtype == np.int64
        assert got.tolist() == expected.tolist()
        assert len(digests) == len(reference)


def test_all_distinct_then_all_repeated() -> None:
    rng = random.Random(1)
    first = [_digest(rng) for _ in range(5000)]
    digests = DigestSet()
    assert digests.add(first).tolist() == list(range(5000))
    assert digests.add(list(reversed(first))).tolist() == []
    assert digests.add([first[7]] * 100 + [first[8]]).tolist() == []
    again = [_digest(rng) for _ in range(3)]
    assert digests.add([again[0], first[0], again[0], again[1], again[2], again[1]]).tolist() == [0, 3, 4]
    assert len(digests) == 5003
    digests.clear()
    assert len(digests) == 0 and digests.add(first[:3]).tolist() == [0, 1, 2]


@pytest.mark.parametrize("where", ["same slice", "later slice", "after merges"])
def test_distinct_digests_sharing_a_key_switch_to_an_exact_set(where: str) -> None:
    rng = random.Random(2)
    a, b = _digest(rng, key=42), _digest(rng, key=42)  # same first 8 bytes, different digests
    assert a != b
    digests, reference = DigestSet(), _Reference()
    slices: list[list[bytes]] = []
    if where == "after merges":
        slices += [[_digest(rng) for _ in range(rng.randint(1, 200))] for _ in range(12)]
    if where == "same slice":
        slices.append([_digest(rng), a, a, b, a, b])
    else:
        slices += [[a, _digest(rng), a], [_digest(rng), b, a, b]]
    slices.append([a, b, *slices[0]])
    for part in slices:
        assert digests.add(part).tolist() == reference.add(part).tolist()
        assert len(digests) == len(reference)
    assert digests._exact is not None  # the fallback was taken


def test_digests_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DigestSet().add([b"short"])


# -- prepare itself ---------------------------------------------------------------------------

BASE = "https://x/v1"


def _table(rows: int, seed: int) -> pa.Table:
    """Texts that repeat inside a slice, across slices, and runs of one text."""
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(rows):
        roll = rng.random()
        if texts and roll < 0.3:
            texts.append(rng.choice(texts))  # a repeat from anywhere before
        elif texts and roll < 0.4:
            texts.append(texts[-1])  # a repeat of the row just before
        else:
            texts.append(f'text {i} "{rng.random():.6f}"\n')
    return pa.table({"text": texts, "n": [i % 3 for i in range(rows)]})


def _files(state: Path, job_id: str) -> dict[str, Any]:
    """Everything prepare wrote, but the job record's time."""
    root = state / "jobs" / job_id
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(root))
        if name == "job.json":
            record = orjson.loads(path.read_bytes())
            record.pop("created_at")
            out[name] = record
        elif name.startswith("chunks/"):
            state_record = orjson.loads(path.read_bytes())
            state_record.pop("updated_at", None)
            out[name] = state_record
        elif name.endswith(".parquet"):
            out[name] = pq.read_table(path).to_pylist()
        else:
            out[name] = path.read_bytes()
    return out


def _prepare(
    source: Path, state: Path, spec: JobSpec, monkeypatch: pytest.MonkeyPatch, reference: bool
) -> tuple[jobs.JobRef, dict[str, Any]]:
    with monkeypatch.context() as patch:
        if reference:
            patch.setattr(PREPARE, "DigestSet", _Reference)
        target = ProviderTarget(provider="openai", base_url=BASE, key_base_url=BASE)
        provider = OpenAIBatchProvider(api_key="unused", base_url=BASE)
        ref = jobs.prepare(str(source), spec, provider, target, state_dir=str(state))
    return ref, _files(state, ref.job_id)


@pytest.mark.parametrize("slice_rows", [1, 7, 64, 10_000])
@pytest.mark.parametrize("system", [None, "{% if n %}sys {{ n }}{% endif %}"])
def test_prepare_writes_the_same_files_as_with_a_python_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_rows: int, system: str | None
) -> None:
    table = _table(300, seed=slice_rows)
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    spec = JobSpec(
        prompt="Q {{ text }}", system=system, model="m", provider="openai",
        limits=BatchLimits(max_requests_per_batch=13),
    )  # fmt: skip
    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", slice_rows)
    ref, files = _prepare(source, tmp_path / "new", spec, monkeypatch, reference=False)
    _, expected_files = _prepare(source, tmp_path / "old", spec, monkeypatch, reference=True)
    assert files == expected_files
    prompts, systems = check_and_render(spec, table)
    expected = build_request_set(
        provider="openai", base_url=BASE, endpoint="/v1/chat/completions", prompts=prompts,
        systems=systems, build_body=lambda p, s: OpenAIBatchProvider.build_body(
            OpenAIBatchProvider(api_key="unused", base_url=BASE), "m", p, s, {}, None),
    )  # fmt: skip
    assert ref.unique_requests == len(expected.unique_ids) < 300
    store = JobStore(ref.state_dir, ref.job_id)
    assert store.read_row_ids().to_pylist() == expected.row_ids
    sent = [
        orjson.loads(line)["custom_id"]
        for chunk in store.read_job().chunks
        for line in store.read_chunk_input(chunk.chunk_id).splitlines()
    ]
    assert sent == expected.unique_ids


@pytest.mark.parametrize("slice_rows", [5, 64])
def test_cache_hits_are_the_same_as_with_a_python_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_rows: int
) -> None:
    table = _table(240, seed=3)
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    limits = BatchLimits(max_requests_per_batch=11)
    spec = JobSpec(prompt="Q {{ text }}", model="m", provider="openai", limits=limits)
    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", slice_rows)
    first, _ = _prepare(source, tmp_path / "probe", spec, monkeypatch, reference=False)
    row_ids = JobStore(first.state_dir, first.job_id).read_row_ids().to_pylist()
    unique = list(dict.fromkeys(str(cid) for cid in row_ids))
    rng = random.Random(4)
    cached = rng.sample(unique, len(unique) // 3)
    outcomes: dict[str, Any] = {}
    for name, reference in (("new", False), ("old", True)):
        state = tmp_path / name
        ResponseCache(str(state)).add(
            "seed", results_to_table([RowResult(cid, response=f"cached {cid}") for cid in cached])
        )
        outcomes[name] = _prepare(source, state, spec, monkeypatch, reference=reference)
    (ref, files), (old_ref, old_files) = outcomes["new"], outcomes["old"]
    assert files == old_files
    assert ref.cached_requests == old_ref.cached_requests == len(cached)
    assert ref.unique_requests == len(unique)
    store = JobStore(ref.state_dir, ref.job_id)
    sent = [
        orjson.loads(line)["custom_id"]
        for chunk in store.read_job().chunks
        for line in store.read_chunk_input(chunk.chunk_id).splitlines()
    ]
    wanted = set(cached)
    assert sent == [cid for cid in unique if cid not in wanted]
    hits = [str(row["custom_id"]) for row in files["results/cached.parquet"]]
    assert sorted(hits) == sorted(cached)  # in the cache's order (the same files as before)


def test_a_slice_whose_first_request_opens_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 rows a slice, 5 requests a batch: every slice starts with a full batch open.
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(30)] + ["t3"] * 5}), source)
    limits = BatchLimits(max_requests_per_batch=5)
    spec = JobSpec(prompt="{{ text }}", model="m", provider="openai", limits=limits)
    monkeypatch.setattr(table_reading, "SCAN_BATCH_ROWS", 10)
    ref, _ = _prepare(source, tmp_path / "s", spec, monkeypatch, reference=False)
    assert ref.unique_requests == 30 and ref.chunks == 6
    store = JobStore(ref.state_dir, ref.job_id)
    assert [c.requests for c in store.read_job().chunks] == [5] * 6


def test_a_digest_set_takes_decoded_words_as_it_takes_bytes() -> None:
    import numpy as np

    from prefect_llm_batch.keys import DigestSet

    rng = np.random.default_rng(7)
    pool = rng.integers(0, 2**63, size=(50, 4), dtype=np.uint64)
    slices = [pool[rng.integers(0, 50, 40)] for _ in range(4)]
    as_bytes, as_words = DigestSet(), DigestSet()
    for words in slices:
        expected = as_bytes.add([row.tobytes() for row in words]).tolist()
        assert as_words.add(words).tolist() == expected
    assert len(as_words) == len(as_bytes) == len({row.tobytes() for w in slices for row in w})
