"""Request keys, custom_ids, de-duplication, JSONL and chunk planning."""

from __future__ import annotations

import hashlib
import re

import orjson
import pytest

from prefect_llm_batch.batchfile import build_request_set, encode_line, plan_chunks
from prefect_llm_batch.errors import InputError
from prefect_llm_batch.keys import (
    canonical_json,
    custom_id,
    custom_id_from_digest,
    request_digest,
)
from prefect_llm_batch.providers.openai import chat_body
from prefect_llm_batch.spec import KEY_VERSION, BatchLimits, normalise_base_url

CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "héllo\nworld"}], "temperature": 0}


def test_request_key_is_sha256_of_canonical_json() -> None:
    expected = hashlib.sha256(
        orjson.dumps(
            {
                "key_version": KEY_VERSION,
                "provider": "openai",
                "base_url": "https://api.openai.com/v1",
                "endpoint": "/v1/chat/completions",
                "body": BODY,
            },
            option=orjson.OPT_SORT_KEYS,
        )
    ).digest()
    assert request_digest("openai", "https://api.openai.com/v1/", "/v1/chat/completions", BODY) == expected


def test_canonical_json_ignores_key_order_and_has_no_whitespace() -> None:
    assert canonical_json({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'


@pytest.mark.parametrize(
    "changed",
    [
        {"provider": "simulator"},
        {"base_url": "https://other.example/v1"},
        {"endpoint": "/v1/completions"},
        {"body": {**BODY, "temperature": 1}},
        {"body": {**BODY, "model": "gpt-4o"}},
    ],
)
def test_every_part_of_the_key_changes_it(changed: dict[str, object]) -> None:
    base = {"provider": "openai", "base_url": "https://api.openai.com/v1", "endpoint": "/v1/chat/completions"}
    args = {**base, "body": BODY, **changed}
    assert custom_id(**args) != custom_id(**base, body=BODY)  # type: ignore[arg-type]


def test_custom_id_is_fixed_length_and_valid_everywhere() -> None:
    for i in range(200):
        cid = custom_id("openai", "https://x/v1", "/v1/chat/completions", {"i": i, "s": "ü" * i})
        assert len(cid) == 43
        assert CUSTOM_ID.match(cid)
    assert custom_id_from_digest(b"\xff" * 32) == "_" * 42 + "8"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("HTTPS://API.OPENAI.COM:443/v1", "https://api.openai.com/v1"),
        ("http://127.0.0.1:8080/v1//", "http://127.0.0.1:8080/v1"),
        ("https://user:secret@gw.example/v1?x=1", "https://gw.example/v1"),
    ],
)
def test_normalise_base_url(raw: str, normal: str) -> None:
    assert normalise_base_url(raw) == normal


def test_duplicates_are_sent_once_and_fanned_out() -> None:
    rs = build_request_set(
        provider="openai",
        base_url="https://x/v1",
        endpoint="/v1/chat/completions",
        prompts=["a", "b", "a", "c", "b"],
        systems=["s", "s", "s", "s", "t"],
        build_body=lambda prompt, system: chat_body("m", prompt, system),
    )
    assert len(rs.row_ids) == 5
    assert rs.row_ids[0] == rs.row_ids[2]
    assert rs.row_ids[1] != rs.row_ids[4]  # same prompt, other system prompt: another request
    assert len(rs.unique_ids) == 4
    assert rs.first_row == [0, 1, 3, 4]
    assert rs.bodies[0]["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]


def test_chat_body_passes_params_through() -> None:
    body = chat_body("m", "p", None, {"max_tokens": 5, "response_format": {"type": "json_object"}})
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "p"}],
        "max_tokens": 5,
        "response_format": {"type": "json_object"},
    }


def test_encode_line_is_one_json_line_even_with_newlines_in_text() -> None:
    line = encode_line({"custom_id": "a", "body": {"text": "two\nlines ✓"}})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert orjson.loads(line)["body"]["text"] == "two\nlines ✓"


def test_plan_chunks_respects_count_and_bytes() -> None:
    sizes = [100] * 10
    assert [(c.start, c.stop) for c in plan_chunks(sizes, BatchLimits(max_requests_per_batch=4))] == [
        (0, 4),
        (4, 8),
        (8, 10),
    ]
    chunks = plan_chunks(sizes, BatchLimits(max_batch_bytes=1024))
    assert all(c.n_bytes <= 1024 for c in chunks)
    assert sum(c.size for c in chunks) == 10
    assert [c.size for c in chunks] == [10]
    chunks = plan_chunks([400] * 5, BatchLimits(max_batch_bytes=1024))
    assert [c.size for c in chunks] == [2, 2, 1]
    assert plan_chunks([], BatchLimits()) == []


def test_a_single_line_over_the_byte_limit_names_the_row() -> None:
    with pytest.raises(InputError, match="row 7"):
        plan_chunks([10, 5000], BatchLimits(max_batch_bytes=1024), first_row=[0, 7])


def test_packing_many_lines_at_once_equals_one_at_a_time() -> None:
    import random

    from prefect_llm_batch.batchfile import ChunkPacker

    rng = random.Random(11)
    for _ in range(300):
        limits = BatchLimits(
            max_requests_per_batch=rng.randint(1, 12), max_batch_bytes=rng.randint(1024, 3000)
        )
        one, many = ChunkPacker(limits), ChunkPacker(limits)
        for _ in range(rng.randint(1, 4)):  # several calls: the open batch carries over
            sizes = [rng.randint(1, 1024) for _ in range(rng.randint(0, 40))]
            expected = [i for i, size in enumerate(sizes) if one.add(size, i)]
            assert many.add_many(sizes) == expected
            assert (many.count, many.used) == (one.count, one.used)
    with pytest.raises(InputError, match="row 7 is 5000 bytes"):
        ChunkPacker(BatchLimits(max_batch_bytes=1024)).add_many([10, 5000], where=[3, 7])
