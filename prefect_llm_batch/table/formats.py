"""Table formats told by file name, the column types a user may force, and the column rules every
reader shares (forced types, all-null columns).

Examples:
    >>> table_format("s3://bucket/reviews.csv.gz")
    'csv'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal

import fsspec.utils
import pyarrow as pa

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.object_stores import shown_path

#: The formats :func:`~prefect_llm_batch.table.reading.read_table` understands.
TableFormat = Literal["csv", "parquet", "jsonl"]

#: Type names accepted by ``columns_types``.
COLUMN_TYPES: Mapping[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us"),
}

#: Bytes per block handed to pyarrow's CSV reader first (its default). Tests lower it to exercise
#: type inference across blocks without writing huge files. A row longer than a block is read
#: default: name the column and the first bad row) or ``"replace"`` (each invalid byte sequence
#: of a text column becomes U+FFFD).
InvalidUTF8 = Literal["error", "replace"]


EXTENSIONS: Mapping[str, TableFormat] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_SUPPORTED = (
    ".csv, .parquet, .pq, .jsonl, .ndjson (CSV and JSON Lines may be compressed: "
    + ", ".join(f".{ext}" for ext in sorted(fsspec.utils.compressions))
    + ")"
)
#: Compression suffixes fsspec knows of but cannot decode without an extra package.
_OPTIONAL_COMPRESSIONS = {".zst": "zstandard", ".lz4": "lz4", ".snappy": "python-snappy"}

TIMESTAMP_UTC = pa.timestamp("us", tz="UTC")


def table_format(source: str) -> TableFormat:
    """Tell a table's format from its file name.

    Args:
        source: A path or fsspec URL. A compression suffix after the format's own
            (``data.csv.gz``) is allowed for CSV and JSON Lines.

    Returns:
        ``"csv"``, ``"parquet"`` or ``"jsonl"``.

    Raises:
        TableError: The extension is unknown, is ``.json`` (only JSON Lines are supported),
            or is a compressed Parquet file.

    Examples:
        >>> table_format("s3://bucket/reviews.csv.gz"), table_format("out.pq"), table_format("x.ndjson")
        ('csv', 'parquet', 'jsonl')
        >>> table_format("data.json")
        Traceback (most recent call last):
        ...
        prefect_llm_batch.errors.TableError: cannot read 'data.json': .json files are not supported; ...
    """
    shown = shown_path(source)
    name = path_part(source).lower().rsplit("/", 1)[-1]
    base, ext = os.path.splitext(name)
    compression = fsspec.utils.infer_compression(name)
    if compression is not None:
        base, ext = os.path.splitext(base)
    elif ext in _OPTIONAL_COMPRESSIONS:
        raise TableError(
            f"cannot read {shown}: {ext} compression needs the {_OPTIONAL_COMPRESSIONS[ext]} package; "
            "install it or decompress the file"
        )
    if ext == ".json":
        raise TableError(
            f"cannot read {shown}: .json files are not supported; if the file holds one JSON object "
            "per line (JSON Lines), rename it to .jsonl; otherwise convert it to JSON Lines, CSV or Parquet"
        )
    fmt = EXTENSIONS.get(ext)
    if fmt is None:
        raise TableError(
            f"cannot tell the format of {shown} from its extension; supported extensions: {_SUPPORTED}"
        )
    if fmt == "parquet" and compression is not None:
        raise TableError(
            f"cannot read {shown}: Parquet files are compressed internally and cannot be read "
            f"through {compression}; decompress the file first"
        )
    return fmt


def check_forced(forced: Mapping[str, pa.DataType], names: list[str], shown: str) -> None:
    """Fail, naming the column, when ``columns_types`` names a column the table does not have."""
    missing = [name for name in forced if name not in names]
    if missing:
        raise TableError(
            f"columns_types names column {missing[0]!r}, which {shown} does not have; "
            f"available columns: {', '.join(names)}"
        )


def parse_column_types(columns_types: Mapping[str, str], shown: str) -> dict[str, pa.DataType]:
    """The Arrow types of ``columns_types`` (names from :data:`COLUMN_TYPES`); an unknown name fails."""
    parsed: dict[str, pa.DataType] = {}
    for name, type_name in columns_types.items():
        data_type = COLUMN_TYPES.get(type_name)
        if data_type is None:
            raise TableError(
                f"columns_types gives column {name!r} of {shown} the unknown type {type_name!r}; "
                f"known types: {', '.join(COLUMN_TYPES)}"
            )
        parsed[name] = data_type
    return parsed


def cast_column(table: pa.Table, name: str, data_type: pa.DataType, shown: str) -> pa.Table:
    """``table`` with column ``name`` cast to a forced type (a timestamp with zone offsets to UTC)."""
    index = table.schema.get_field_index(name)
    column = table.column(index)
    try:
        try:
            cast = column.cast(data_type)
        except pa.ArrowInvalid:
            if data_type != COLUMN_TYPES["timestamp"] or not pa.types.is_string(column.type):
                raise
            cast = column.cast(TIMESTAMP_UTC)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TableError(
            f"cannot read {shown}: column {name!r} cannot be read as {data_type}: {exc}"
        ) from exc
    return table.set_column(index, table.schema.field(index).with_type(cast.type), cast)


def nulls_to_strings(table: pa.Table) -> pa.Table:
    """``table`` with its columns of type null (no value at all) made string columns."""
    for index, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(
                index, field.with_type(pa.string()), table.column(index).cast(pa.string())
            )
    return table


def path_part(source: str) -> str:
    """Drop an HTTP(S) URL's query and fragment, which are not part of the file name."""
    if source.lower().startswith(("http://", "https://")):
        return re.split(r"[?#]", source, maxsplit=1)[0]
    return source
