"""Reading CSV with pyarrow, widening a column whose later rows do not fit the type inferred first."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.table.arrow_files import (
    STRADDLING,
    first_rows_of,
    grown_block_size,
    open_source,
    read_through_arrow,
    row_too_long,
)
from prefect_llm_batch.table.formats import COLUMN_TYPES, TIMESTAMP_UTC, nulls_to_strings

#: Bytes per block handed to pyarrow's CSV reader first (its default). Tests lower it to exercise
#: type inference across blocks without writing huge files. A row longer than a block is read
#: again with blocks four times as big, up to
#: :data:`~prefect_llm_batch.table.arrow_files.MAX_BLOCK_SIZE`.
CSV_BLOCK_SIZE = 1 << 20

_CSV_CONVERSION_ERROR = re.compile(
    r"In CSV column #(?P<index>\d+): .*?CSV conversion error to (?P<type>[^:]+): "
)


def read_csv(
    source: str,
    options: Mapping[str, Any],
    limit: int | None,
    forced: Mapping[str, pa.DataType],
    shown: str,
) -> pa.Table:
    """Read a CSV, widening columns whose later blocks do not fit the type inferred first.

    pyarrow's streaming reader infers types from the first block only and fails on a later
    block that does not fit ("In CSV column #3: CSV conversion error to int64: invalid value
    'abc'"). Each such failure widens that column (int64 -> float64 when the value is a number,
    anything else -> string) and reads again. A row longer than a block is read again with
    bigger blocks. Columns the user forced are never widened: a value that does not fit them is
    an error.
    """
    user = dict(forced)
    widened: dict[str, pa.DataType] = {}
    names: list[str] | None = None
    block_size = CSV_BLOCK_SIZE
    while True:
        try:
            table = _read_csv_once(source, options, limit, {**widened, **user}, block_size)
            break
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return pa.table({})
            if STRADDLING in str(exc):
                grown = grown_block_size(block_size, exc)
                if grown is None:
                    raise row_too_long(shown, block_size) from exc
                block_size = grown
                continue
            match = _CSV_CONVERSION_ERROR.search(str(exc))
            if match is None:
                raise
            if names is None:
                names = _csv_column_names(source, options, block_size)
            index = int(match["index"])
            if index >= len(names):
                raise
            name = names[index]
            if name in user:
                if user[name] == COLUMN_TYPES["timestamp"] and "expected no zone offset" in str(exc):
                    user[name] = TIMESTAMP_UTC
                    continue
                raise TableError(
                    f"cannot read {shown}: column {name!r} was forced to {user[name]} but holds a value "
                    f"that is not one: {_conversion_detail(str(exc))}"
                ) from exc
            if widened.get(name) == pa.string():
                raise
            widened[name] = pa.float64() if _widens_to_float(match["type"], str(exc)) else pa.string()
    return nulls_to_strings(table)


def _read_csv_once(
    source: str,
    options: Mapping[str, Any],
    limit: int | None,
    column_types: Mapping[str, pa.DataType],
    block_size: int = CSV_BLOCK_SIZE,
) -> pa.Table:
    parse_options = pa_csv.ParseOptions(newlines_in_values=True)
    # Text is checked for UTF-8 once the table is read (``utf8_checks.check_utf8``, naming the row),
    # instead of Arrow turning a column with a bad byte into binary.
    convert_options = pa_csv.ConvertOptions(column_types=dict(column_types), check_utf8=False)
    with open_source(source, options, compression="infer") as file:
        if limit is None:
            read_options = pa_csv.ReadOptions(block_size=block_size, use_threads=True)
            return read_through_arrow(
                file,
                functools.partial(
                    pa_csv.read_csv,
                    read_options=read_options,
                    parse_options=parse_options,
                    convert_options=convert_options,
                ),
            )
        # Single-threaded, so nothing beyond the rows asked for is read ahead.
        read_options = pa_csv.ReadOptions(block_size=block_size, use_threads=False)
        open_reader = functools.partial(
            pa_csv.open_csv,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
        return read_through_arrow(file, functools.partial(first_rows_of, open_reader, limit))


def _csv_column_names(source: str, options: Mapping[str, Any], block_size: int = CSV_BLOCK_SIZE) -> list[str]:
    read_options = pa_csv.ReadOptions(block_size=block_size, use_threads=False)
    parse_options = pa_csv.ParseOptions(newlines_in_values=True)
    convert_options = pa_csv.ConvertOptions(check_utf8=False)
    open_reader = functools.partial(
        pa_csv.open_csv,
        read_options=read_options,
        parse_options=parse_options,
        convert_options=convert_options,
    )
    with open_source(source, options, compression="infer") as file:
        return list(read_through_arrow(file, functools.partial(first_rows_of, open_reader, 0)).column_names)


def _widens_to_float(failed_type: str, message: str) -> bool:
    """Whether an int64 column that failed on a value may hold it as float64 (``1.5``, ``1e3``)."""
    value = re.search(r"invalid value '(.*)'", message)
    if failed_type != "int64" or value is None:
        return False
    try:
        float(value.group(1))
    except ValueError:
        return False
    return True


def _conversion_detail(message: str) -> str:
    found = re.search(r"CSV conversion error to .*", message)
    return found.group(0) if found else message
