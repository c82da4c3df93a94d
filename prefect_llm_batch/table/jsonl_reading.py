"""Reading JSON Lines with pyarrow; a field mixing strings and other JSON values becomes a string column."""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Mapping
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.json as pa_json

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.table.arrow_files import (
    STRADDLING,
    first_rows_of,
    grown_block_size,
    open_source,
    read_through_arrow,
    row_too_long,
)
from prefect_llm_batch.table.formats import cast_column, nulls_to_strings

#: Bytes per block handed to pyarrow's JSON reader first (its default); grows as for CSV.
JSON_BLOCK_SIZE = 1 << 20

_JSON_TYPE_CHANGE = re.compile(r"Column\((?P<path>[^)]*)\) changed from (?P<old>\w+) to (?P<new>\w+)")


def read_jsonl(
    source: str,
    options: Mapping[str, Any],
    limit: int | None,
    forced: Mapping[str, pa.DataType],
    shown: str,
) -> pa.Table:
    """Read JSON Lines; fields mixing strings and numbers (or objects...) become strings.

    pyarrow's JSON reader refuses a field whose JSON type changes ("Column(/a) changed from
    number to string in row 20000") even when asked for a string column. Such fields are
    rewritten as JSON strings (``7`` -> ``"7"``) line by line in Python, then read again. A
    line longer than a block is read again with bigger blocks.
    """
    strings = {name for name, data_type in forced.items() if data_type == pa.string()}
    stringified: set[str] = set()
    block_size = JSON_BLOCK_SIZE
    while True:
        try:
            if stringified:
                table = _read_jsonl_rewritten(source, options, limit, strings, stringified, shown, block_size)
            else:
                table = _read_jsonl_once(source, options, limit, strings, block_size)
            break
        except pa.ArrowInvalid as exc:
            if str(exc).startswith(("Empty JSON file", "Empty JSON stream")):
                return pa.table({})
            if STRADDLING in str(exc):
                grown = grown_block_size(block_size, exc)
                if grown is None:
                    raise row_too_long(shown, block_size) from exc
                block_size = grown
                continue
            match = _JSON_TYPE_CHANGE.search(str(exc))
            if match is None:
                raise
            path = match["path"]
            name = path[1:].split("/", 1)[0] if path.startswith("/") else ""
            if not name:
                raise TableError(f"cannot read {shown}: each line must hold one JSON object ({exc})") from exc
            if name in stringified or (name in forced and name not in strings):
                raise
            stringified.add(name)
    for name, data_type in forced.items():
        if data_type != pa.string():
            table = cast_column(table, name, data_type, shown)
    return nulls_to_strings(table)


def _read_jsonl_once(
    source: str,
    options: Mapping[str, Any],
    limit: int | None,
    strings: set[str],
    block_size: int = JSON_BLOCK_SIZE,
) -> pa.Table:
    parse_options = _json_parse_options(strings)
    with open_source(source, options, compression="infer") as file:
        if limit is None:
            read_options = pa_json.ReadOptions(block_size=block_size, use_threads=True)
            return read_through_arrow(
                file,
                functools.partial(pa_json.read_json, read_options=read_options, parse_options=parse_options),
            )
        read_options = pa_json.ReadOptions(block_size=block_size, use_threads=False)
        open_reader = functools.partial(
            pa_json.open_json, read_options=read_options, parse_options=parse_options
        )
        return read_through_arrow(file, functools.partial(first_rows_of, open_reader, limit))


def _read_jsonl_rewritten(
    source: str,
    options: Mapping[str, Any],
    limit: int | None,
    strings: set[str],
    stringified: set[str],
    shown: str,
    block_size: int = JSON_BLOCK_SIZE,
) -> pa.Table:
    with open_source(source, options, compression="infer") as file:
        lines: list[bytes] = []
        for number, line in enumerate(file, start=1):
            if limit is not None and len(lines) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise TableError(f"cannot read {shown}: line {number} is not valid JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise TableError(f"cannot read {shown}: line {number} is not a JSON object")
            for name in stringified:
                value = record.get(name)
                if value is not None and not isinstance(value, str):
                    record[name] = orjson.dumps(value).decode()
            lines.append(orjson.dumps(record))
    if not lines:
        return pa.table({})
    data = io.BytesIO(b"\n".join(lines) + b"\n")
    read_options = pa_json.ReadOptions(block_size=block_size, use_threads=True)
    return read_through_arrow(
        data,
        functools.partial(
            pa_json.read_json,
            read_options=read_options,
            parse_options=_json_parse_options(strings | stringified),
        ),
    )


def _json_parse_options(strings: set[str]) -> pa_json.ParseOptions:
    if not strings:
        return pa_json.ParseOptions(newlines_in_values=False)
    schema = pa.schema([(name, pa.string()) for name in sorted(strings)])
    return pa_json.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="infer", newlines_in_values=False
    )
