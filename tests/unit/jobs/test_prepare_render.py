"""Rendering in prepare: the numpy scan for values JSON must escape finds exactly the rows the
regular expression matched, and the escaped contents equal orjson's, value by value."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from prefect_llm_batch.prompts import escaping
from prefect_llm_batch.prompts.escaping import NEEDS_ESCAPE, json_contents, rows_needing_escape

#: Every character JSON escapes, some it does not (DEL, non-ASCII), and plain text.
PIECES = [chr(c) for c in range(0x20)]
PIECES += ['"', "\\", "\x7f", "é", "漢", "🙂", "\u2028", " ", "/", "word", "x" * 40]


def _texts(rng: random.Random, n: int, escape_share: float) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.05:
            out.append(None)
        elif roll < 0.1:
            out.append("")
        elif roll < 0.1 + escape_share:
            out.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))))
        else:
            out.append("".join(rng.choice(PIECES[-5:]) for _ in range(rng.randint(1, 12))))
    return out


def _expected_rows(text: pa.Array[Any]) -> list[int]:
    matched = pc.match_substring_regex(text.cast(pa.large_string()), NEEDS_ESCAPE)
    return [i for i, hit in enumerate(matched.to_pylist()) if hit]


@pytest.mark.parametrize("block", [1, 3, 64, 1 << 18])
@pytest.mark.parametrize("seed", range(4))
def testrows_needing_escape_equals_the_regular_expression(
    monkeypatch: pytest.MonkeyPatch, block: int, seed: int
) -> None:
    monkeypatch.setattr(escaping, "SCAN_BLOCK", block)
    rng = random.Random(seed)
    for share in (0.0, 0.01, 0.3, 1.0):
        texts = [t or "" for t in _texts(rng, rng.randint(0, 400), share)]
        values = pa.array(texts, pa.large_binary())
        assert rows_needing_escape(values).tolist() == _expected_rows(values)
        if len(values) > 4:  # a slice: offsets that do not start at 0
            part = values.slice(3, len(values) - 4)
            assert rows_needing_escape(part).tolist() == _expected_rows(part)


def testrows_needing_escape_of_empty_arrays() -> None:
    assert rows_needing_escape(pa.array([], pa.large_binary())).tolist() == []
    assert rows_needing_escape(pa.array([b"", b""], pa.large_binary())).tolist() == []
    assert rows_needing_escape(pa.array([b"", b"\n", b""], pa.large_binary())).tolist() == [1]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def testjson_contents_equals_orjson_per_value(kind: pa.DataType) -> None:
    rng = random.Random(11)
    texts = _texts(rng, 700, 0.2)
    chunks = [texts[:250], texts[250:251], texts[251:]]
    column: Any = pa.chunked_array([pa.array(chunk, kind) for chunk in chunks])
    assert json_contents(column).to_pylist() == [orjson.dumps(t or "")[1:-1] for t in texts]
    clean: Any = pa.chunked_array([pa.array(["plain", None, "é"], kind)])
    assert json_contents(clean).to_pylist() == [b"plain", b"", "é".encode()]
