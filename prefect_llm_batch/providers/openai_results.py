"""Reading OpenAI batch result files fast: the lines of a file parsed by Arrow's JSON reader into
columns at once, with :meth:`~prefect_llm_batch.providers.openai.OpenAIBatchProvider.parse_line`
as the plain reference for every line the fast path cannot take (tests compare the two).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ..results import (
    RESULT_SCHEMA,
    RowResult,
    results_to_table,
)

_STR, _INT = pa.string(), pa.int64()
#: The fields of a result line that :func:`parse_chat_results` reads; the JSON reader skips the rest.
RESULT_LINE_SCHEMA = pa.schema(
    [
        ("custom_id", _STR),
        (
            "response",
            pa.struct(
                [
                    ("status_code", _INT),
                    (
                        "body",
                        pa.struct(
                            [
                                ("model", _STR),
                                (
                                    "choices",
                                    pa.list_(
                                        pa.struct(
                                            [
                                                (
                                                    "message",
                                                    pa.struct([("content", _STR), ("refusal", _STR)]),
                                                ),
                                                ("finish_reason", _STR),
                                            ]
                                        )
                                    ),
                                ),
                                (
                                    "usage",
                                    pa.struct(
                                        [
                                            ("prompt_tokens", _INT),
                                            ("completion_tokens", _INT),
                                            ("prompt_tokens_details", pa.struct([("cached_tokens", _INT)])),
                                        ]
                                    ),
                                ),
                            ]
                        ),
                    ),
                ]
            ),
        ),
    ]
)
#: Bytes per block of the JSON reader (blocks are parsed in parallel; a line must fit in one).
READ_BLOCK_BYTES = 16 << 20


@functools.cache
def _error_finish_reasons() -> pa.Array[Any]:
    """Finish reasons that make an answer an error (see
    :func:`~prefect_llm_batch.results.parse_chat_completion`), made on first use: pyarrow imports
    pandas to build an array, which the quick commands that import this module never need."""
    return pa.array(["length", "content_filter"])


_SCAN_BYTES = 1 << 22
_OPEN_BRACE, _CLOSE_BRACE = ord("{"), ord("}")

LineParser = Callable[[dict[str, Any], "str | None"], RowResult]


def _line_bounds(data: bytes) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
    """Start and end offsets of the lines of a JSONL file, or None unless every line is
    exactly one ``{...}`` (no blank lines, no ``\\r``, no surrounding whitespace, no BOM)."""
    if not data or b"\r" in data:
        return None
    raw = np.frombuffer(data, np.uint8)
    newlines = np.concatenate(
        [np.flatnonzero(raw[i : i + _SCAN_BYTES] == 10) + i for i in range(0, len(raw), _SCAN_BYTES)]
    ).astype(np.int64)
    ends = newlines if data.endswith(b"\n") else np.append(newlines, np.int64(len(raw)))
    starts = np.concatenate((np.zeros(1, np.int64), newlines[: len(ends) - 1] + 1))
    if (
        np.any(ends - starts < 2)
        or np.any(raw[starts] != _OPEN_BRACE)
        or np.any(raw[ends - 1] != _CLOSE_BRACE)
    ):
        return None
    return starts, ends


def _valid_utf8(data: bytes) -> bool:
    """True when ``data`` is valid UTF-8 (checked by Arrow without a copy)."""
    offsets = pa.py_buffer(np.array([0, len(data)], np.int64).tobytes())
    try:
        pa.LargeStringArray.from_buffers(1, offsets, pa.py_buffer(data)).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def parse_chat_results(data: bytes, batch_id: str | None, parse_line: LineParser) -> pa.Table | None:
    """Parse a chat-completions result file (JSONL) into a table of
    :data:`~prefect_llm_batch.results.RESULT_SCHEMA`, vectorised.

    The file is read by Arrow's JSON reader (in parallel, only the fields of
    :data:`RESULT_LINE_SCHEMA`). Plain successes (HTTP 200 with a text answer, no refusal,
    finish reason neither ``length`` nor ``content_filter``) become rows with vectorised
    compute; every other line (errors, refusals, cut or filtered answers, odd shapes) is decoded
    with orjson and given to ``parse_line``, so the table equals
    ``results_to_table(parse_line(orjson.loads(line), batch_id) for line in lines)``.

    Args:
        data: The file's bytes.
        batch_id: Written into ``response_batch_id``.
        parse_line: The per-line parser for the lines that are not plain successes.

    Returns:
        The table (rows in file order), or None when the file is irregular in any way the
        fast path does not handle exactly (blank lines, ``\\r``, invalid UTF-8, a field of an
        unexpected type, a line without ``custom_id``...): the caller then parses line by line.
        Known gaps: ``NaN``/``Infinity`` literals and nesting deeper than 1024 in fields that
        are not read are accepted here where orjson rejects the line.

    Examples:
        >>> from prefect_llm_batch.providers.openai import OpenAIBatchProvider
        >>> p = OpenAIBatchProvider(api_key="test-key")
        >>> ok = (b'{"custom_id":"a","response":{"status_code":200,"body":{"model":"m",'
        ...       b'"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}},"error":null}')
        >>> gone = b'{"custom_id":"b","response":null,"error":{"code":"batch_expired","message":"late"}}'
        >>> table = parse_chat_results(ok + b"\\n" + gone + b"\\n", "batch_1", p.parse_line)
        >>> table["response"].to_pylist(), table["response_error_kind"].to_pylist()
        (['hi', None], [None, 'batch_expired'])
        >>> parse_chat_results(ok + b"\\n\\n" + gone, "batch_1", p.parse_line) is None  # blank line
        True
        >>> p.close()
    """
    bounds = _line_bounds(data)
    if bounds is None or not _valid_utf8(data):
        return None
    starts, ends = bounds
    source: Any = pa.BufferReader(data)  # zero-copy (the stubs want a file)
    try:
        lines = pj.read_json(
            source,
            read_options=pj.ReadOptions(block_size=READ_BLOCK_BYTES),
            parse_options=pj.ParseOptions(
                explicit_schema=RESULT_LINE_SCHEMA, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    ids = lines.column("custom_id")
    if lines.num_rows != len(starts) or ids.null_count:
        return None
    response = lines.column("response")
    body = pc.struct_field(response, "body")
    first = _first_elements(pc.struct_field(body, "choices"))
    message = pc.struct_field(first, "message")
    content = pc.struct_field(message, "content")
    finish = pc.struct_field(first, "finish_reason")
    conditions = (
        pc.fill_null(pc.equal(pc.struct_field(response, "status_code"), pa.scalar(200)), False),
        pc.is_valid(content),
        pc.is_null(pc.struct_field(message, "refusal")),
        pc.invert(pc.is_in(finish, value_set=_error_finish_reasons())),
    )
    plain = conditions[0]
    for condition in conditions[1:]:
        plain = pc.and_(plain, condition)
    irregular = np.invert(np.asarray(plain))
    others = np.flatnonzero(irregular)
    results: list[RowResult] = []
    for i in others.tolist():
        try:
            line = orjson.loads(data[starts[i] : ends[i]])
        except orjson.JSONDecodeError:
            return None
        if not isinstance(line, dict) or "custom_id" not in line:
            return None
        results.append(parse_line(line, batch_id))
    if len(results) == lines.num_rows:
        return results_to_table(results)
    usage = pc.struct_field(body, "usage")
    n = lines.num_rows
    columns: dict[str, Any] = {
        "custom_id": ids,
        "response": content,
        "response_error_kind": pa.nulls(n, _STR),
        "response_error": pa.nulls(n, _STR),
        "response_input_tokens": pc.struct_field(usage, "prompt_tokens"),
        "response_output_tokens": pc.struct_field(usage, "completion_tokens"),
        "response_finish_reason": finish,
        "response_model": pc.struct_field(body, "model"),
        "response_batch_id": pa.repeat(pa.scalar(batch_id, _STR), n),
        "response_cached": pa.repeat(pa.scalar(False), n),
        "response_attempts": pa.nulls(n, _INT),
        "response_cache_read_tokens": pc.struct_field(
            pc.struct_field(usage, "prompt_tokens_details"), "cached_tokens"
        ),
        "response_cache_write_tokens": pa.nulls(n, _INT),
    }
    arrays = [columns[f.name] for f in RESULT_SCHEMA]
    if results:  # put the per-line results into their rows
        replacements = results_to_table(results)
        arrays[1:] = [_scatter(arrays[i], irregular, replacements.column(i)) for i in range(1, len(arrays))]
    return pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)


def _first_elements(lists: pa.ChunkedArray[Any]) -> pa.ChunkedArray[Any]:
    """The first element of each list (null for a null or empty list)."""
    chunks = []
    for chunk in lists.chunks:
        if (
            chunk.null_count == 0
            and pc.all(pc.equal(pc.list_value_length(chunk), pa.scalar(1, pa.int32()))).as_py()
        ):
            chunks.append(cast("pa.ListArray[Any]", chunk).flatten())  # one element each (n=1): no copy
        else:
            chunks.append(pc.list_element(pc.list_slice(chunk, 0, 1, return_fixed_size_list=True), 0))
    return pa.chunked_array(chunks, lists.type.value_type)


def _scatter(
    values: pa.Array[Any] | pa.ChunkedArray[Any],
    mask: npt.NDArray[np.bool_],
    replacements: pa.ChunkedArray[Any],
) -> pa.Array[Any] | pa.ChunkedArray[Any]:
    """``values`` with the positions of ``mask`` replaced, in order, by ``replacements``."""
    filler = replacements.combine_chunks()
    if isinstance(values, pa.Array):
        replaced: pa.Array[Any] = pc.replace_with_mask(values, pa.array(mask), filler)
        return replaced
    chunks, start, used = [], 0, 0
    for chunk in values.chunks:
        part = mask[start : start + len(chunk)]
        count = int(np.count_nonzero(part))
        chunks.append(
            pc.replace_with_mask(chunk, pa.array(part), filler.slice(used, count)) if count else chunk
        )
        start, used = start + len(chunk), used + count
    return pa.chunked_array(chunks, values.type)
