"""Picking one result per request (``select_results``): the whole pick equals the per-line
reference, on regular and irregular inputs."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from prefect_llm_batch.jobs.collect import select_results
from prefect_llm_batch.results import RowResult, results_to_table
from prefect_llm_batch.spec import ErrorKind

from .test_collect_results import BATCH, reference_select


def b64_ids(rng: random.Random, n: int, width: int = 43) -> list[str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return ["".join(rng.choice(alphabet) for _ in range(width)) for _ in range(n)]


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
def test_select_results_equals_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    wanted = b64_ids(rng, rng.randint(1, 200))
    results = random_results(rng, wanted)
    table = results_to_table(results)
    if seed % 2:  # several chunks, as parsed files give
        table = pa.concat_tables([table.slice(0, len(results) // 2), table.slice(len(results) // 2)])
    got = select_results(table, wanted, BATCH)
    assert got.to_pylist() == reference_select(results, wanted)
    assert got.schema == table.schema
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
