"""The vectorised collect path: whole-file parsing equals the per-line path, and falls back to it.

Every test compares against the reference, ``results_to_table([parse_line(orjson.loads(l)) ...])``:
the fast path must give the same table (same rows, order, values and schema), never a
near-equivalent.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.batchfile import fixed_width_ids
from prefect_llm_batch.errors import ProviderUnavailable
from prefect_llm_batch.jobs.chunks import chunk_custom_ids
from prefect_llm_batch.jobs.collect import select_results
from prefect_llm_batch.keys import split_fixed_width
from prefect_llm_batch.providers import openai_results as openai_module
from prefect_llm_batch.providers.anthropic import AnthropicBatchProvider
from prefect_llm_batch.providers.base import BatchProvider
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.providers.openai_results import parse_chat_results
from prefect_llm_batch.results import RowResult, result_schema, results_to_table
from prefect_llm_batch.spec import EMBEDDINGS_ENDPOINT, ID_HEAD, ErrorKind

BATCH = "batch_fast"


@pytest.fixture()
def chat() -> Any:
    with OpenAIBatchProvider(api_key="test-key-not-real") as p:
        yield p


def ok(cid: str, content: Any = "yes", finish: Any = "stop", **message: Any) -> dict[str, Any]:
    return {
        "id": "batch_req_1",
        "custom_id": cid,
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None, **message},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                "system_fingerprint": "fp_1",
            },
        },
        "error": None,
    }


def with_body(line: dict[str, Any], **changes: Any) -> dict[str, Any]:
    line["response"]["body"].update(changes)
    return line


def http_error(cid: str, status: int, code: str | None, message: str = "went wrong") -> dict[str, Any]:
    envelope = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return {
        "id": "batch_req_2",
        "custom_id": cid,
        "response": {"status_code": status, "request_id": "req_2", "body": envelope},
        "error": None,
    }


def never_ran(cid: str, code: str) -> dict[str, Any]:
    return {"id": "batch_req_3", "custom_id": cid, "response": None, "error": {"code": code, "message": "no"}}


def varied_lines() -> list[dict[str, Any]]:
    """Every shape the fast path must get right, successes spread between the others."""
    two_choices = ok("n2", "first")
    two_choices["response"]["body"]["choices"].append(
        {"index": 1, "message": {"content": "second"}, "finish_reason": "stop"}
    )
    no_message = ok("no-message")
    no_message["response"]["body"]["choices"][0]["message"] = None
    null_choice = ok("null-choice")
    null_choice["response"]["body"]["choices"] = [None]
    lines = [
        ok("s1"),
        ok("unicode", 'héllo wörld ✓ 日本語 \U0001f600 "quoted" \\ back\nslash \u0000 nul'),
        ok("refusal", None, refusal="I can't help with that"),
        ok("refusal-with-text", "partial", refusal="no"),
        ok("empty-refusal", "fine", refusal=""),
        ok("length", "cut he", finish="length"),
        ok("filter", "", finish="content_filter"),
        ok("no-finish", "plain", finish=None),
        ok("odd-finish", "plain", finish="tool_calls"),
        ok("content-null", None),
        with_body(ok("no-choices"), choices=[]),
        with_body(ok("choices-null"), choices=None),
        no_message,
        null_choice,
        two_choices,
        with_body(ok("no-usage"), usage=None),
        with_body(ok("no-model"), model=None),
        with_body(ok("usage-partial"), usage={"prompt_tokens": 5}),
        ok("s2", "second success", extra={"nested": [1, {"deep": ["x"]}]}),
        http_error("e400", 400, "string_above_max_length"),
        http_error("e429", 429, "rate_limit_exceeded"),
        http_error("quota", 429, "insufficient_quota"),
        http_error("e500", 500, None, "  server   exploded\n  twice "),
        http_error("e401", 401, "invalid_api_key"),
        {"custom_id": "e502", "response": {"status_code": 502, "body": None}, "error": None},
        {"custom_id": "e503", "response": {"status_code": 503}, "error": None},
        {"custom_id": "200-no-body", "response": {"status_code": 200, "body": None}, "error": None},
        never_ran("expired", "batch_expired"),
        never_ran("cancelled", "batch_cancelled"),
        never_ran("timeout", "request_timeout"),
        never_ran("strange-code", "teleported"),
        {"custom_id": "unknown-shape", "response": None, "error": None},
        {"custom_id": "bare"},
        ok("s1", "duplicate of s1"),
        http_error("s2", 500, None),
        ok("s3", "x" * 5000),
    ]
    return lines


def encode(lines: list[dict[str, Any]], end: bytes = b"\n") -> bytes:
    return b"".join(orjson.dumps(line) + end for line in lines)


def reference(p: BatchProvider, data: bytes, *, embeddings: bool = False) -> pa.Table:
    """The per-line path: decode each non-blank line and call parse_line."""
    results = [p.parse_line(orjson.loads(raw), BATCH) for raw in data.splitlines() if raw.strip()]
    return results_to_table(results, embeddings=embeddings)


def assert_same(got: pa.Table, want: pa.Table) -> None:
    assert got.schema == want.schema
    assert got.to_pylist() == want.to_pylist()
    assert got.equals(want)


def test_varied_lines_take_the_fast_path_and_equal_the_per_line_path(chat: OpenAIBatchProvider) -> None:
    data = encode(varied_lines())
    fast = parse_chat_results(data, BATCH, chat.parse_line)
    assert fast is not None, "the fast path gave up on regular input"
    want = reference(chat, data)
    assert_same(fast, want)
    assert_same(chat.parse_results(data, BATCH), want)
    kinds = dict(zip(want["custom_id"].to_pylist(), want["response_error_kind"].to_pylist(), strict=False))
    assert (
        kinds["refusal"] == "refusal"
        and kinds["length"] == "length"
        and kinds["quota"] == "insufficient_quota"
    )
    assert kinds["expired"] == "batch_expired" and kinds["unknown-shape"] == "parse_error"


def test_a_file_of_plain_successes_only(chat: OpenAIBatchProvider) -> None:
    data = encode([ok(f"k{i}", f"answer {i}") for i in range(50)])[:-1]  # no final newline
    fast = parse_chat_results(data, BATCH, chat.parse_line)
    assert fast is not None
    assert_same(fast, reference(chat, data))
    assert fast["response_batch_id"].to_pylist() == [BATCH] * 50


def test_a_file_of_errors_only(chat: OpenAIBatchProvider) -> None:
    data = encode([http_error("a", 400, None), never_ran("b", "batch_expired")])
    assert_same(
        chat.parse_results(data, None),
        results_to_table([chat.parse_line(orjson.loads(raw), None) for raw in data.splitlines()]),
    )


def test_many_read_blocks_keep_rows_in_their_place(
    chat: OpenAIBatchProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_module, "READ_BLOCK_BYTES", 8192)
    lines = [line for _ in range(20) for line in varied_lines() if line["custom_id"] != "s3"]
    data = encode(lines)
    fast = parse_chat_results(data, BATCH, chat.parse_line)
    assert fast is not None and fast["response"].num_chunks > 1
    assert_same(fast, reference(chat, data))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode([ok("a"), ok("b")]).replace(b"\n", b"\n\n", 1), id="blank line"),
        pytest.param(b"\n" + encode([ok("a")]), id="leading blank line"),
        pytest.param(encode([ok("a"), ok("b")]) + b"   \n", id="whitespace line"),
        pytest.param(encode([ok("a"), ok("b")], b"\r\n"), id="CRLF"),
        pytest.param(b"  " + encode([ok("a")]), id="leading spaces"),
        pytest.param(encode([ok("a"), ok("b", 42)]), id="content is a number"),
        pytest.param(encode([ok("a"), with_body(ok("b"), model=7)]), id="model is a number"),
        pytest.param(encode([ok("a"), with_body(ok("b"), usage={"prompt_tokens": 1.0})]), id="float tokens"),
        pytest.param(encode([ok("a"), with_body(ok("b"), usage={"prompt_tokens": True})]), id="bool tokens"),
        pytest.param(
            encode([ok("a"), {"custom_id": "b", "response": {"status_code": 502, "body": "Bad gateway"}}]),
            id="body is a string",
        ),
        pytest.param(
            encode([ok("a"), {"custom_id": "b", "response": {"status_code": "200"}}]), id="status is a string"
        ),
        pytest.param(encode([ok("a"), {"custom_id": 12, "response": None, "error": None}]), id="numeric id"),
        pytest.param(encode([ok("a"), {"custom_id": None, "response": None, "error": None}]), id="null id"),
        pytest.param(encode([with_body(ok("a"), choices=["text"])]), id="choice is a string"),
        pytest.param(encode([ok("a")]) + b"", id="sanity: regular file"),
    ],
)
def test_irregular_files_equal_the_per_line_path(chat: OpenAIBatchProvider, data: bytes) -> None:
    assert_same(chat.parse_results(data, BATCH), reference(chat, data))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode([ok("a"), ok("b")]).replace(b"\n", b"\n\n", 1), id="blank line"),
        pytest.param(encode([ok("a"), ok("b")], b"\r\n"), id="CRLF"),
        pytest.param(encode([ok("a"), ok("b", 42)]), id="content is a number"),
        pytest.param(encode([ok("a"), {"custom_id": None, "response": None}]), id="null id"),
        pytest.param(b"", id="empty file"),
    ],
)
def test_the_fast_path_declines_irregular_files(chat: OpenAIBatchProvider, data: bytes) -> None:
    assert parse_chat_results(data, BATCH, chat.parse_line) is None


@pytest.mark.parametrize(
    ("data", "line"),
    [
        pytest.param(encode([ok("a")]) + b"not json\n", 2, id="not JSON"),
        pytest.param(encode([ok("a")]) + b'{"response": null}\n', 2, id="no custom_id"),
        pytest.param(encode([ok("a")]) + b"[1, 2]\n", 2, id="not an object"),
        pytest.param(
            encode([ok("a")]).replace(b"\n", b" ") + encode([ok("b")]), 1, id="two objects on a line"
        ),
        pytest.param(encode([ok("a", "café")]).replace(b"\xc3\xa9", b"\xe9"), 1, id="invalid UTF-8"),
        pytest.param(encode([with_body(ok("a"), x=1)]).replace(b'"x":1', b'"x":\xff"'), 1, id="bad byte"),
        pytest.param(b"\xef\xbb\xbf" + encode([ok("a")]), 1, id="byte order mark"),
    ],
)
def test_undecodable_lines_raise_as_before(chat: OpenAIBatchProvider, data: bytes, line: int) -> None:
    with pytest.raises(ProviderUnavailable, match=f"line {line} of the output file"):
        chat.parse_results(data, BATCH, where="the output file")


def test_an_empty_or_blank_file_gives_an_empty_table(chat: OpenAIBatchProvider) -> None:
    for data in (b"", b"\n", b"\n\n  \n"):
        assert_same(chat.parse_results(data, BATCH), results_to_table([]))
    empty = chat.parse_results(b"", BATCH, embeddings=True)
    assert empty.schema == result_schema(embeddings=True) and empty.num_rows == 0


def test_chat_results_with_the_embedding_column(chat: OpenAIBatchProvider) -> None:
    data = encode(varied_lines())
    assert_same(chat.parse_results(data, BATCH, embeddings=True), reference(chat, data, embeddings=True))


def test_embeddings_endpoint_parses_line_by_line() -> None:
    def embedding(cid: str, vector: Any) -> dict[str, Any]:
        body = {"model": "e", "data": [{"index": 0, "embedding": vector}], "usage": {"prompt_tokens": 2}}
        return {"custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None}

    lines = [embedding("a", [0.5, -1.0]), embedding("b", None), never_ran("c", "batch_expired")]
    data = encode(lines)
    with OpenAIBatchProvider(api_key="test-key-not-real", endpoint=EMBEDDINGS_ENDPOINT) as p:
        got = p.parse_results(data, BATCH, embeddings=True)
        assert_same(got, reference(p, data, embeddings=True))
    assert got["response_embedding"].to_pylist()[0] == [0.5, -1.0]


def test_the_base_class_default_serves_anthropic() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    lines = [
        {"custom_id": "a", "result": {"type": "succeeded", "message": message}},
        {"custom_id": "b", "result": {"type": "expired"}},
    ]
    data = encode(lines) + b"\n"
    with AnthropicBatchProvider(api_key="test-key-not-real") as p:
        got = p.parse_results(data, BATCH)
        assert_same(got, reference(p, data))
        with pytest.raises(ProviderUnavailable, match="line 4 of the results"):
            p.parse_results(data + b"oops\n", BATCH, where="the results")
    assert got["response"].to_pylist() == ["hi", None]


def test_download_results_reads_both_files_like_iter_results() -> None:
    files = {
        "file-o": encode(
            [
                line
                for line in varied_lines()
                if line.get("response") and line["response"].get("status_code") == 200
            ]
        ),
        "file-e": encode(
            [line for line in varied_lines() if (line.get("response") or {}).get("status_code") != 200]
        ),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=files[request.url.path.split("/")[-2]])

    raw = {"id": "batch_1", "status": "completed", "output_file_id": "file-o", "error_file_id": "file-e"}
    info = OpenAIBatchProvider.batch_info(raw)
    with OpenAIBatchProvider(
        api_key="test-key-not-real",
        base_url="https://fake.example/v1",
        transport=httpx.MockTransport(handler),
    ) as p:
        got = p.download_results(info)
        assert_same(got, results_to_table(p.iter_results(info)))
        nothing = OpenAIBatchProvider.batch_info({**raw, "output_file_id": None, "error_file_id": ""})
        assert p.download_results(nothing, embeddings=True).schema == result_schema(embeddings=True)


def reference_select(results: list[RowResult], expected: list[str]) -> list[dict[str, Any]]:
    """What collect_chunk did with one RowResult per line (before the vectorised path): the
    first success, else the first line; successes with different answers are a conflict."""
    picked: dict[str, RowResult] = {}
    answers: dict[str, set[str]] = {}
    for result in results:
        if result.custom_id not in expected:
            continue
        if result.ok:
            answers.setdefault(result.custom_id, set()).add(repr((result.response, result.embedding)))
        previous = picked.get(result.custom_id)
        if previous is None or (not previous.ok and result.ok):
            picked[result.custom_id] = result
    for cid, different in answers.items():
        if len(different) > 1:
            picked[cid] = dataclasses.replace(
                picked[cid],
                response=None,
                embedding=None,
                error_kind=ErrorKind.CONFLICTING_RESULTS,
                error=f"the provider returned {len(different)} different answers for this request; "
                "none is used",
            )
    for cid in expected:
        picked.setdefault(
            cid,
            RowResult(
                cid,
                error_kind=ErrorKind.MISSING,
                error="the provider returned no result line",
                batch_id=BATCH,
            ),
        )
    return results_to_table([picked[cid] for cid in expected]).to_pylist()


def test_select_results_dedups_ignores_unknown_and_fills_missing(caplog: pytest.LogCaptureFixture) -> None:
    server, rate, quota = ErrorKind.SERVER_ERROR, ErrorKind.RATE_LIMITED, ErrorKind.INSUFFICIENT_QUOTA
    results = [
        RowResult("a", error_kind=server, error="first failure", batch_id=BATCH),
        RowResult("a", response="late success", batch_id=BATCH, input_tokens=1),
        RowResult("a", response="late success", batch_id=BATCH, input_tokens=2),  # the same answer
        RowResult("f", response="one answer", batch_id=BATCH),
        RowResult("f", response="another answer", batch_id=BATCH),
        RowResult("b", response="b ok", batch_id=BATCH),
        RowResult("b", error_kind=server, error="b failure after success", batch_id=BATCH),
        RowResult("c", error_kind=rate, error="c first", batch_id=BATCH),
        RowResult("c", error_kind=quota, error="c second", batch_id=BATCH),
        RowResult("stranger", response="not ours", batch_id=BATCH),
        RowResult("e", response="e", batch_id=BATCH, cached=False),
    ]
    expected = ["e", "d", "c", "b", "a", "f"]
    with caplog.at_level(logging.WARNING, logger="prefect_llm_batch"):
        got = select_results(results_to_table(results), expected, BATCH, chunk_id=3)
    assert got.to_pylist() == reference_select(results, expected)
    assert got["response"].to_pylist() == ["e", None, None, "b ok", "late success", None]
    assert got["response_input_tokens"].to_pylist()[4] == 1
    assert got["response_error"].to_pylist()[2] == "c first"
    assert got["response_error_kind"].to_pylist()[5] == "conflicting_results"
    assert (
        "unknown custom_ids (ignored), e.g. stranger" in caplog.text
        and "no line for 1 request" in caplog.text
    )


def test_select_results_without_duplicates_or_gaps_keeps_expected_order() -> None:
    results = [RowResult(f"k{i}", response=str(i), batch_id=BATCH) for i in range(10)]
    expected = [f"k{i}" for i in (3, 1, 4, 0, 5, 9, 2, 6, 8, 7)]
    got = select_results(results_to_table(results), expected, BATCH)
    assert got.to_pylist() == reference_select(results, expected)


class FakeStore:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_chunk_input(self, chunk_id: int) -> bytes:
        return self.data

    def read_chunk_ids(self, chunk_id: int) -> list[str] | None:
        return None  # as for state written before the ids files


def test_chunk_custom_ids_fast_path_and_fallback() -> None:
    lines = [
        b'{"custom_id":"' + b"A" * 43 + b'","method":"POST","body":{"x":"\\"custom_id\\":\\"no\\""}}',
        b'{"custom_id":"short_id-1","body":{}}',
        b'{"method":"POST","custom_id":"key-second","body":{}}',
        b'{"custom_id": "spaced", "body": {}}',
        b'{"custom_id":"esc\\u0061ped","body":{}}',
        b'{"custom_id":"caf\xc3\xa9","body":{}}',
        b"",
    ]
    data = b"\n".join(lines) + b"\n"
    want = [str(orjson.loads(line)["custom_id"]) for line in data.splitlines() if line]
    got = chunk_custom_ids(FakeStore(data), 0)  # type: ignore[arg-type]
    assert got == want == ["A" * 43, "short_id-1", "key-second", "spaced", "escaped", "café"]
    assert ID_HEAD == b'{"custom_id":"'


def test_chunk_custom_ids_of_a_real_batch_file_take_the_fixed_width_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_llm_batch.keys import custom_id

    ids = [
        custom_id("openai", "https://api.openai.com/v1", "/v1/chat/completions", {"n": i}) for i in range(500)
    ]
    data = b"".join(
        orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": {"n": i}})
        + b"\n"
        for i, cid in enumerate(ids)
    )
    matrix = fixed_width_ids(data)
    assert matrix is not None and matrix.shape == (500, 43)
    assert split_fixed_width(matrix.tobytes(), matrix.shape[1]) == ids
    assert chunk_custom_ids(FakeStore(data), 0) == ids  # type: ignore[arg-type]
    # anything else goes line by line, with the same answer
    for odd in (
        data[:-1],  # no final newline
        data.replace(b"\n", b"\r\n", 1),
        data + b"\n",  # a blank line
        data + b'{"custom_id":"' + b"x" * 42 + b'","body":{}}\n',  # another width
        data + b'{"custom_id":"' + b"x" * 41 + b'\\"","body":{}}\n',  # an escape, same width
        data + b'{"method":"POST","custom_id":"' + b"y" * 43 + b'"}\n',
    ):
        assert fixed_width_ids(odd) is None
        want = [str(orjson.loads(line)["custom_id"]) for line in odd.splitlines() if line.strip()]
        assert chunk_custom_ids(FakeStore(odd), 0) == want  # type: ignore[arg-type]


def test_prepare_writes_each_batch_files_ids_and_collecting_reads_them_not_the_batch_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch import jobs
    from prefect_llm_batch.providers.openai import OpenAIBatchProvider
    from prefect_llm_batch.spec import BatchLimits, JobSpec, ProviderTarget
    from prefect_llm_batch.store import JobStore

    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"row {i % 700}" for i in range(1000)]}), source)
    spec = JobSpec(
        prompt="{{ text }}",
        model="gpt-4o-mini",
        provider="openai",
        limits=BatchLimits(max_requests_per_batch=300),
    )
    target = ProviderTarget(
        provider="openai", base_url="https://api.openai.com/v1", key_base_url="https://api.openai.com/v1"
    )
    provider = OpenAIBatchProvider(api_key="test-key-ids", base_url="https://api.openai.com/v1")
    ref = jobs.prepare(str(source), spec, provider, target, state_dir=str(tmp_path / "state"))
    provider.close()
    store = JobStore(ref.state_dir, ref.job_id)
    assert ref.chunks == 3
    for chunk_id in range(ref.chunks):
        from_file = [
            str(orjson.loads(line)["custom_id"]) for line in store.read_chunk_input(chunk_id).splitlines()
        ]
        assert store.read_chunk_ids(chunk_id) == from_file
        assert len(from_file) == (300 if chunk_id < 2 else 100)

    def no_batch_file(chunk_id: int) -> bytes:
        raise AssertionError("the batch file was read")

    monkeypatch.setattr(store, "read_chunk_input", no_batch_file)
    assert chunk_custom_ids(store, 1) == store.read_chunk_ids(1)
    monkeypatch.undo()
    folder = tmp_path / "state" / "jobs" / ref.job_id / "requests"
    whole = folder / "chunk-00001.ids.parquet"
    assert not list(folder.glob("*.ids"))  # no file of the packed format any more
    want = store.read_chunk_ids(1)
    assert want is not None
    for damaged in (whole.read_bytes()[:-5], b"", b"PAR1", b"x y\n" + b"a" * 43):
        whole.write_bytes(damaged)  # as a crash may leave it (the file is not synced)
        assert store.read_chunk_ids(1) is None
        assert chunk_custom_ids(store, 1) == want  # from the batch file
    whole.unlink()
    assert store.read_chunk_ids(1) is None
    assert chunk_custom_ids(store, 1) == want
    # any ids are written as they are (several widths, non-ASCII), and a slice is its own ids
    store.write_chunk_ids(1, pa.array(["a" * 43, "b" * 42, "café"]))
    assert store.read_chunk_ids(1) == ["a" * 43, "b" * 42, "café"]
    store.write_chunk_ids(1, pa.array(want).slice(10, 5))
    assert store.read_chunk_ids(1) == want[10:15]


def packed_ids(ids: list[str]) -> bytes:
    """An ids file as the package wrote it before they were Parquet: "count width\\n", then the
    ids (ASCII, one width) end to end."""
    return f"{len(ids)} {len(ids[0])}\n".encode() + "".join(ids).encode("ascii")


def test_the_packed_ids_files_of_older_state_are_still_read(tmp_path: Path) -> None:
    from prefect_llm_batch.store import JobStore

    store = JobStore(str(tmp_path / "state"), "job-1")
    ids = [f"{i:043d}" for i in range(300)]
    data = b"".join(orjson.dumps({"custom_id": cid, "body": {}}) + b"\n" for cid in ids)
    store.write_chunk_input(0, data)
    old = tmp_path / "state" / "jobs" / "job-1" / "requests" / "chunk-00000.ids"
    old.write_bytes(packed_ids(ids[::-1]))  # reversed: proves these, not the batch file's, are read
    assert store.read_chunk_ids(0) == ids[::-1]
    assert chunk_custom_ids(store, 0) == ids[::-1]
    for damaged in (packed_ids(ids)[:-5], b"", b"300 43\n", b"x y\n" + b"a" * 43):
        old.write_bytes(damaged)  # as a crash may have left it (it was not synced)
        assert store.read_chunk_ids(0) is None
        assert chunk_custom_ids(store, 0) == ids  # from the batch file
    old.write_bytes(packed_ids(ids[::-1]))
    store.write_chunk_ids(0, pa.array(ids))  # a Parquet file wins over an older packed one
    assert store.read_chunk_ids(0) == ids
