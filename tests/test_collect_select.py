"""Picking one result per request (``select_results``): the sorted-hash lookup equals Arrow's
``index_in`` and the whole pick equals the per-line reference, on regular and irregular inputs."""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from prefect_llm_batch.jobs import batches
from prefect_llm_batch.jobs.batches import select_results
from prefect_llm_batch.results import RowResult, results_to_table
from prefect_llm_batch.spec import ErrorKind

from .test_collect_fast import BATCH, reference_select


def index_in(ids: pa.ChunkedArray[Any], wanted: pa.Array[Any]) -> list[int]:
    """The reference lookup: Arrow's hash lookup, -1 for an id not wanted."""
    return np.asarray(pc.fill_null(pc.index_in(ids, value_set=wanted), -1)).tolist()


def lookup(ids: pa.ChunkedArray[Any], wanted: pa.Array[Any]) -> list[int]:
    got = batches._lookup(ids, wanted)
    assert got.dtype == np.int64 and len(got) == len(ids)
    return got.tolist()


def sorted_lookup(ids: pa.ChunkedArray[Any], wanted: pa.Array[Any]) -> list[int]:
    """The sorted-hash path itself (it must not decline the inputs it is given here)."""
    got = batches._sorted_lookup(ids, wanted)
    assert got is not None
    return got.tolist()


def b64_ids(rng: random.Random, n: int, width: int = 43) -> list[str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return ["".join(rng.choice(alphabet) for _ in range(width)) for _ in range(n)]


def chunked(values: list[str | None], pieces: int, rng: random.Random, kind: Any = None) -> Any:
    kind = kind or pa.string()
    cuts = sorted(rng.sample(range(1, len(values)), min(pieces - 1, len(values) - 1))) if values else []
    bounds = [0, *cuts, len(values)]
    return pa.chunked_array([pa.array(values[a:b], kind) for a, b in itertools.pairwise(bounds)], kind)


@pytest.mark.parametrize("seed", range(12))
def test_sorted_lookup_equals_index_in_on_random_ids(seed: int) -> None:
    rng = random.Random(seed)
    width = rng.choice([1, 3, 8, 9, 16, 43, 44])
    pool = sorted(set(b64_ids(rng, rng.randint(1, 300), width)))
    wanted = rng.sample(pool, rng.randint(1, len(pool)))
    lines: list[str | None] = [rng.choice(pool) for _ in range(rng.randint(0, 400))]  # dups, unknowns
    lines += rng.sample(wanted, len(wanted) // 2)
    rng.shuffle(lines)
    if seed % 3 == 0 and lines:
        lines[rng.randrange(len(lines))] = None  # a null id
        lines.append("x" * (width + 1))  # another width
        lines.append("é" * width)  # same number of characters, more bytes
    ids = chunked(lines, rng.randint(1, 5), rng)
    array = pa.array(wanted, pa.string())
    want = index_in(ids, array)
    assert lookup(ids, array) == want
    if wanted and len(lines):
        assert sorted_lookup(ids, array) == want


def test_lookup_of_a_permutation_the_usual_case() -> None:
    rng = random.Random(1)
    wanted = b64_ids(rng, 2000)
    lines: list[str | None] = list(wanted)
    rng.shuffle(lines)
    ids, array = chunked(lines, 7, rng), pa.array(wanted)
    assert sorted_lookup(ids, array) == lookup(ids, array) == index_in(ids, array)


def test_lookup_of_lines_in_expected_order() -> None:
    wanted = b64_ids(random.Random(2), 500)
    ids, array = pa.chunked_array([pa.array(wanted[:200]), pa.array(wanted[200:])]), pa.array(wanted)
    assert sorted_lookup(ids, array) == lookup(ids, array) == list(range(500)) == index_in(ids, array)


@pytest.mark.parametrize(
    ("wanted", "lines"),
    [
        pytest.param(["aa", "bb", "aa"], ["aa", "bb", "cc"], id="repeated wanted id"),
        pytest.param(["aa", "bbb"], ["aa", "bbb"], id="wanted of two widths"),
        pytest.param(["aa", None], ["aa", "bb"], id="null wanted id"),
        pytest.param(["", ""], ["", "a"], id="empty ids"),
        pytest.param([], ["aa"], id="nothing wanted"),
        pytest.param(["aa"], [], id="no lines"),
    ],
)
def test_inputs_the_sorted_lookup_declines_still_equal_index_in(
    wanted: list[str | None], lines: list[str | None]
) -> None:
    ids, array = pa.chunked_array([pa.array(lines, pa.string())]), pa.array(wanted, pa.string())
    if wanted and lines:
        assert batches._sorted_lookup(ids, array) is None
    assert lookup(ids, array) == index_in(ids, array)


def test_sliced_arrays_and_large_strings() -> None:
    rng = random.Random(3)
    pool = b64_ids(rng, 300, 12)
    wanted = pa.array(pool, pa.string()).slice(17, 200)
    lines = pa.array([rng.choice(pool) for _ in range(500)], pa.large_string())
    ids = pa.chunked_array([lines.slice(5, 100), lines.slice(150, 300)])
    assert sorted_lookup(ids, wanted) == index_in(ids, wanted)
    large = pa.array(pool[17:217], pa.large_string())
    assert sorted_lookup(ids, large) == index_in(ids, large)


def test_every_hash_colliding_falls_back_to_index_in(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(4)
    wanted = b64_ids(rng, 100)
    ids, array = chunked([*wanted, *b64_ids(rng, 20)], 3, rng), pa.array(wanted)
    monkeypatch.setattr(batches, "_MIXES", (np.uint64(0),))  # every key 0: all collide
    assert batches._sorted_lookup(ids, array) is None
    assert lookup(ids, array) == index_in(ids, array)
    monkeypatch.setattr(batches, "_MIXES", (np.uint64(0), np.uint64(0x9E3779B97F4A7C15)))  # second try
    assert sorted_lookup(ids, array) == index_in(ids, array)


def test_a_line_whose_key_matches_but_bytes_differ_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys of the first 8 bytes only: lines sharing them with a wanted id must still not match it."""

    def first_word_keys(self: Any, mix: Any, bits: int, positions: Any) -> Any:
        key = self.words[0] >> np.uint64(bits) << np.uint64(bits)
        return key | positions.astype(np.uint64)

    monkeypatch.setattr(batches._IdWords, "keys", first_word_keys)
    wanted = ["AAAAAAAA-one", "BBBBBBBB-two", "CCCCCCCC-six"]
    lines = ["BBBBBBBB-two", "AAAAAAAA-ten", "CCCCCCCC-six", "AAAAAAAA-one", "DDDDDDDD-one", "BBBBBBBB-xyz"]
    ids, array = pa.chunked_array([pa.array(lines[:2]), pa.array(lines[2:])]), pa.array(wanted)
    assert sorted_lookup(ids, array) == index_in(ids, array) == [1, -1, 2, 0, -1, -1]


def random_results(rng: random.Random, wanted: list[str]) -> list[RowResult]:
    """Lines as a batch may return them: most ids once, some twice (errors and successes in any
    order, successes now and then with different answers), some missing, some unknown, text with unicode."""
    results = []
    for cid in wanted:
        roll = rng.random()
        if roll < 0.1:
            continue  # missing
        copies = 2 if roll > 0.85 else 1
        for _ in range(copies):
            if rng.random() < 0.3:
                kind = rng.choice([ErrorKind.SERVER_ERROR, ErrorKind.RATE_LIMITED, ErrorKind.BATCH_EXPIRED])
                results.append(RowResult(cid, error_kind=kind, error=f"{kind.value} ✗", batch_id=BATCH))
            else:
                tokens = rng.randint(1, 99)
                results.append(
                    RowResult(
                        cid,
                        response=f"réponse {cid} 日本" + ("" if rng.random() < 0.8 else " bis"),
                        input_tokens=tokens,
                        batch_id=BATCH,
                    )
                )
    for _ in range(rng.randint(0, 5)):
        results.append(RowResult(b64_ids(rng, 1)[0], response="not ours", batch_id=BATCH))
    rng.shuffle(results)
    return results


@pytest.mark.parametrize("seed", range(8))
def test_select_results_equals_the_reference_and_the_hash_lookup(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    wanted = b64_ids(rng, rng.randint(1, 200))
    results = random_results(rng, wanted)
    table = results_to_table(results)
    if seed % 2:  # several chunks, as parsed files give
        table = pa.concat_tables([table.slice(0, len(results) // 2), table.slice(len(results) // 2)])
    got = select_results(table, wanted, BATCH)
    assert got.to_pylist() == reference_select(results, wanted)
    assert got.schema == table.schema
    monkeypatch.setattr(batches, "_sorted_lookup", lambda ids, wanted: None)
    assert select_results(table, pa.array(wanted), BATCH).equals(got)


def test_select_results_of_lines_in_expected_order_and_of_a_permutation() -> None:
    rng = random.Random(9)
    wanted = b64_ids(rng, 300)
    results = [RowResult(cid, response=f"answer {i}", batch_id=BATCH) for i, cid in enumerate(wanted)]
    in_order = select_results(results_to_table(results), wanted, BATCH)
    assert in_order.to_pylist() == reference_select(results, wanted)
    rng.shuffle(results)
    shuffled = select_results(
        pa.concat_tables([results_to_table(results[:100]), results_to_table(results[100:])]), wanted, BATCH
    )
    assert shuffled.to_pylist() == reference_select(results, wanted) == in_order.to_pylist()
    assert shuffled["custom_id"].to_pylist() == wanted


def test_select_results_with_extra_columns_keeps_them() -> None:
    wanted = ["k1", "k2", "k3"]
    results = [RowResult("k3", response="c"), RowResult("k1", response="a")]
    table = results_to_table(results, embeddings=True)
    got = select_results(table, wanted, BATCH)
    assert got.schema == table.schema
    assert got["response"].to_pylist() == ["a", None, "c"]
    assert got["response_error_kind"].to_pylist() == [None, "missing", None]
