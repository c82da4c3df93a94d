"""How values print in a prompt: :func:`render_value`, and a column's values as Jinja sees them.

Rendered prompts feed request keys (hashes), so these rules are part of the contract; the table
of rules is in the docstring of :mod:`prefect_llm_batch.prompts`.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["python_values", "render_value"]


def render_value(value: Any) -> str:
    """Turn one value into the text ``{{ value }}`` prints in a prompt.

    See :mod:`prefect_llm_batch.prompts` for the table of rules.

    Args:
        value: A Python value as Arrow's ``to_pylist()`` gives it (or any value a template
            computes).

    Returns:
        The text.

    Examples:
        >>> import datetime
        >>> [render_value(v) for v in (None, float("nan"), "x", 3, 3.0, 0.1, True)]
        ['', '', 'x', '3', '3.0', '0.1', 'True']
        >>> render_value(datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc))
        '2024-01-02T03:04:05+00:00'
        >>> render_value({"tags": ["é", None], "at": datetime.date(2024, 1, 2)})
        '{"tags": ["é", null], "at": "2024-01-02"}'
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(float(value))
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, ensure_ascii=False, default=render_value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def python_values(column: pa.ChunkedArray[Any]) -> list[Any]:
    """A column's values as Python objects, NaN turned into None, float32 at its shortest."""
    data_type = column.type
    if pa.types.is_floating(data_type):
        if data_type != pa.float64():
            # float32 0.1 is 0.10000000149011612 as a double; its own shortest text is "0.1".
            column = pc.cast(pc.cast(column, pa.string()), pa.float64())
        nan = pc.is_nan(column)
        if pc.any(nan).as_py():
            column = pc.if_else(nan, pa.scalar(None, pa.float64()), column)
    return column.to_pylist()
