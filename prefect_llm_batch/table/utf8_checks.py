"""Finding (or replacing) text that is not valid UTF-8 in a table read from CSV or JSON Lines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.table.formats import InvalidUTF8


def check_utf8(table: pa.Table, shown: str, invalid_utf8: InvalidUTF8) -> pa.Table:
    """Fail on (or replace) text that is not valid UTF-8, naming the column and the first bad row.

    pyarrow's JSON reader keeps such bytes in ``string`` columns as they are (which then fail
    wherever they are used) and its CSV reader is asked not to check (so a bad byte does not
    make its column ``binary``): this checks every value once, with Arrow's own validation.
    """
    try:
        table.validate(full=True)
        return table
    except pa.ArrowInvalid:
        pass
    for index, field in enumerate(table.schema):
        column = table.column(index)
        bad = _invalid_utf8_rows(column, first_only=invalid_utf8 == "error")
        if not bad:
            continue
        flat = pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
        if invalid_utf8 == "error" or not flat:
            how = (
                "pass invalid_utf8='replace' (--invalid-utf8 replace) to replace the bad bytes with U+FFFD"
                if flat
                else "fix the file: bad bytes can be replaced only in text columns, not in nested values"
            )
            raise TableError(
                f"cannot read {shown}: column {field.name!r} holds text that is not valid UTF-8, "
                f"first in row {bad[0]}; {how}"
            )
        table = table.set_column(index, field, _replace_invalid_utf8(column, bad))
    return table


def _invalid_utf8_rows(column: pa.ChunkedArray[Any], *, first_only: bool) -> list[int]:
    """The rows of a column holding invalid UTF-8 (only the first with ``first_only``), found by
    validating halves of the chunks that fail (about twice the column's bytes for the first)."""
    found: list[int] = []
    offset = 0
    for chunk in column.chunks:
        pending = [(0, len(chunk))]
        while pending:
            start, length = pending.pop()
            if not length:
                continue
            try:
                chunk.slice(start, length).validate(full=True)
                continue
            except pa.ArrowInvalid:
                pass
            if length == 1:
                found.append(offset + start)
                if first_only:
                    return found
                continue
            half = length // 2
            pending.append((start + half, length - half))  # the first half is looked at first
            pending.append((start, half))
        offset += len(chunk)
    return found


def _replace_invalid_utf8(column: pa.ChunkedArray[Any], rows: list[int]) -> pa.ChunkedArray[Any]:
    """``column`` with the values of ``rows`` decoded as UTF-8, bad bytes replaced by U+FFFD."""
    data = column.combine_chunks()
    binary = data.view(pa.large_binary() if pa.types.is_large_string(data.type) else pa.binary())
    taken: list[Any] = binary.take(pa.array(rows, pa.int64())).to_pylist()  # never null: those are valid
    fixed = pa.array([value.decode("utf-8", errors="replace") for value in taken], data.type)
    mask = np.zeros(len(data), bool)
    mask[rows] = True
    return pa.chunked_array([pc.replace_with_mask(data, pa.array(mask), fixed)], data.type)
