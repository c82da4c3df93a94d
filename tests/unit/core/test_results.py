"""Parsing answers and joining them back to rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from prefect_llm_batch.results import (
    OUTPUT_FIELDS,
    RowResult,
    error_kind_for_status,
    join_results,
    parse_chat_completion,
    results_to_table,
)
from prefect_llm_batch.spec import ErrorKind


def _body(content: str | None = "ok", finish: str = "stop", refusal: str | None = None) -> dict[str, object]:
    return {
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
    }


def test_success() -> None:
    r = parse_chat_completion("k", _body("positive"), "batch_1")
    assert (
        r.response,
        r.error_kind,
        r.input_tokens,
        r.output_tokens,
        r.finish_reason,
        r.model,
        r.batch_id,
    ) == (
        "positive",
        None,
        11,
        2,
        "stop",
        "gpt-4o-mini-2024-07-18",
        "batch_1",
    )


def test_refusal_length_and_filter_are_row_errors() -> None:
    assert parse_chat_completion("k", _body(None, refusal="no")).error_kind is ErrorKind.REFUSAL
    cut = parse_chat_completion("k", _body("half an ans", finish="length"))
    assert cut.error_kind is ErrorKind.LENGTH and cut.response == "half an ans"
    assert (
        parse_chat_completion("k", _body(None, finish="content_filter")).error_kind
        is ErrorKind.CONTENT_FILTER
    )
    assert parse_chat_completion("k", {"choices": []}).error_kind is ErrorKind.PARSE_ERROR


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, None, ErrorKind.INVALID_REQUEST),
        (404, None, ErrorKind.INVALID_REQUEST),
        (401, None, ErrorKind.AUTH),
        (403, None, ErrorKind.AUTH),
        (408, None, ErrorKind.SERVER_ERROR),
        (409, None, ErrorKind.SERVER_ERROR),
        (429, "rate_limit_exceeded", ErrorKind.RATE_LIMITED),
        (429, "insufficient_quota", ErrorKind.INSUFFICIENT_QUOTA),
        (500, None, ErrorKind.SERVER_ERROR),
        (503, None, ErrorKind.SERVER_ERROR),
    ],
)
def test_status_mapping(status: int, code: str | None, kind: ErrorKind) -> None:
    assert error_kind_for_status(status, code) is kind


def test_retryable_vocabulary() -> None:
    retryable = {k.value for k in ErrorKind if k.retryable}
    assert retryable == {
        "rate_limited",
        "server_error",
        "batch_expired",
        "batch_cancelled",
        "request_timeout",
        "missing",
        "conflicting_results",
    }


def test_join_maps_by_key_not_order_and_fans_out_duplicates() -> None:
    table = pa.table({"id": [1, 2, 3, 4], "q": ["a", "b", "a", "c"]})
    results = [
        RowResult("kc", error_kind=ErrorKind.SERVER_ERROR, error="HTTP 500: boom"),
        RowResult("ka", response="answer a", input_tokens=3, output_tokens=1),
        RowResult("kb", response="answer b", input_tokens=4, output_tokens=2),
    ]
    out = join_results(table, ["ka", "kb", "ka", "kc"], results)
    assert out.column("id").to_pylist() == [1, 2, 3, 4]
    assert out.column("response").to_pylist() == ["answer a", "answer b", "answer a", None]
    assert out.column("response_error_kind").to_pylist() == [None, None, None, "server_error"]
    assert out.column("response_input_tokens").to_pylist() == [3, 4, 3, None]


def test_schema_is_the_same_whatever_failed() -> None:
    table = pa.table({"n": pa.array([1, None], pa.int64()), "t": ["x", "y"]})
    ok = join_results(table, ["a", "b"], [RowResult("a", response="1"), RowResult("b", response="2")])
    mixed = join_results(table, ["a", "b"], [RowResult("a", response="1")])
    failed = join_results(table, ["a", "b"], [])
    assert ok.schema == mixed.schema == failed.schema
    assert ok.schema.names == ["n", "t", *[f.name for f in OUTPUT_FIELDS]]
    assert failed.column("response_error_kind").to_pylist() == ["missing", "missing"]
    assert ok.schema.field("n").type == pa.int64()


def test_empty_table_gets_the_full_schema() -> None:
    table = pa.table({"t": pa.array([], pa.string())})
    out = join_results(table, [], [])
    assert out.num_rows == 0
    assert out.schema.names == ["t", *[f.name for f in OUTPUT_FIELDS]]


def test_join_rejects_mismatched_ids_and_repeated_results() -> None:
    table = pa.table({"t": ["a"]})
    with pytest.raises(ValueError, match="row ids"):
        join_results(table, ["a", "b"], [])
    with pytest.raises(ValueError, match="more than one"):
        join_results(table, ["a"], results_to_table([RowResult("a"), RowResult("a")]))


def test_structured_answers_are_parsed_once_per_distinct_text_with_the_same_outcome() -> None:
    import json

    from prefect_llm_batch.results import parse_structured
    from prefect_llm_batch.schemas import ResponseSchema
    from prefect_llm_batch.spec import ErrorKind

    schema = ResponseSchema({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    calls: list[str] = []

    def parser(text: str) -> object:
        calls.append(text)
        return json.loads(text)

    answers = ['{"n": 1}', '{"n": "x"}', "oops", '{"n": 1}', None, '{"n": 2}', "oops"]
    rows = [RowResult(f"k{i}", response=a) for i, a in enumerate(answers)]
    rows.append(RowResult("failed", response='{"n": 3}', error_kind=ErrorKind.LENGTH, error="cut"))
    out = parse_structured(results_to_table(rows), schema, parser=parser)
    assert sorted(calls) == sorted({'{"n": 1}', '{"n": "x"}', "oops", '{"n": 2}'})  # each text once
    assert out["n"].to_pylist() == [1, None, None, 1, None, 2, None, None]
    kinds = out["response_error_kind"].to_pylist()
    assert kinds == [None, "schema_violation", "parse_error", None, None, None, "parse_error", "length"]
    errors = out["response_error"].to_pylist()
    assert errors[2] == errors[6] and errors[2].startswith("the answer is not valid JSON")
    assert errors[7] == "cut" and errors[0] is None
    only_errors = results_to_table([RowResult("a", error_kind=ErrorKind.AUTH, error="no")])
    nothing = parse_structured(only_errors, schema)
    assert nothing["n"].to_pylist() == [None] and nothing["response_error_kind"].to_pylist() == ["auth"]
