"""Table formats through pyarrow and fsspec: reading CSV, Parquet, JSON Lines and datasets, scans,
fingerprints, Parquet encoding.

This is the only module of the package that reads table formats. Everything goes through
`fsspec <https://filesystem-spec.readthedocs.io>`_, so a source or destination may be a local
path or any fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://``, ``az://`` ...);
``storage_options`` are passed to the filesystem as given.

Formats are told by extension (see :func:`table_format`): CSV (``.csv``, optionally compressed:
``.csv.gz``, ``.csv.bz2``, ``.csv.xz``...), Parquet (``.parquet``, ``.pq``) and JSON Lines
(``.jsonl``, ``.ndjson``, optionally compressed). A **directory** (or object-store prefix) is a
partitioned Parquet table: its ``.parquet`` / ``.pq`` files, found recursively and taken in path
order, are its parts (files whose name starts with ``.`` or ``_``, such as ``_SUCCESS``, are
skipped; Hive-style ``key=value`` folder names are not turned into columns).

:func:`scan_table` streams a table in record batches: Parquet files and directories are read
one batch at a time, so memory is bounded by the batch, not the table; CSV and JSON Lines are
read whole first (their column types are inferred over the whole file), then sliced.

Tables are read with pyarrow's own readers (never pandas), so types survive:

* an integer column with nulls stays ``int64`` with nulls (no ``1.0``);
* ISO-8601 timestamps in CSV and JSON Lines become ``timestamp`` columns (values with a zone
  offset become ``timestamp[..., tz=UTC]`` in CSV; pyarrow's JSON reader converts them to UTC);
* Parquet keeps every type it stores;
* CSV cells may hold any Unicode and quoted newlines;
* a CSV column whose first rows look numeric but a later row does not becomes a wider type
  (``int64`` -> ``float64`` -> ``string``) instead of failing, and a JSON Lines field that
  mixes strings and numbers becomes a ``string`` column holding the JSON text of the
  non-string values;
* a CSV or JSON Lines column with no values at all (a header-only CSV) is a ``string`` column.

``columns_types`` forces a column's type: ``"string"``, ``"int64"``, ``"float64"``, ``"bool"``
or ``"timestamp"`` (timezone-naive, or UTC when the values carry zone offsets). A value that
does not fit a forced type is an error naming the column.

Every failure is raised as :class:`~prefect_llm_batch.errors.TableError` naming the path
(with any credentials in the URL and its query string hidden). The file primitives it writes and
reads with (atomic writes, directories, existence) live in :mod:`~prefect_llm_batch.files`.

Examples:
    >>> import pyarrow as pa
    >>> from prefect_llm_batch.files import write_parquet_atomic
    >>> write_parquet_atomic(pa.table({"id": [1, None]}), "memory://docs/ids.parquet", overwrite=True)
    >>> read_table("memory://docs/ids.parquet").column("id").to_pylist()
    [1, None]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import queue
import re
import threading
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal, TypeVar

import fsspec
import fsspec.core
import fsspec.utils
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.files import filesystem, shown_path
from prefect_llm_batch.shards import Shard, hive_partitions

__all__ = [
    "COLUMN_TYPES",
    "MAX_BLOCK_SIZE",
    "InvalidUTF8",
    "TableFormat",
    "TableScan",
    "dictionary_columns",
    "fingerprint",
    "parquet_bytes",
    "read_table",
    "scan_table",
    "table_format",
]

T = TypeVar("T")

#: The formats :func:`read_table` understands.
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
#: again with blocks four times as big, up to :data:`MAX_BLOCK_SIZE`.
CSV_BLOCK_SIZE = 1 << 20

#: Bytes per block handed to pyarrow's JSON reader first (its default); grows as for CSV.
JSON_BLOCK_SIZE = 1 << 20

#: The largest block the CSV and JSON Lines readers grow to: the longest row (CSV) or line
#: (JSON Lines) that can be read.
MAX_BLOCK_SIZE = 1 << 30

#: What to do with text that is not valid UTF-8 in a CSV or JSON Lines file: ``"error"`` (the
#: default: name the column and the first bad row) or ``"replace"`` (each invalid byte sequence
#: of a text column becomes U+FFFD).
InvalidUTF8 = Literal["error", "replace"]

#: Seconds to wait, after an Arrow reader returned, for its threads to let go of the Python file
#: it read (see :func:`_read_through_arrow`).
_RELEASE_SECONDS = 10.0

#: Bytes read at a time by :func:`fingerprint`.
FINGERPRINT_BLOCK_SIZE = 8 << 20

#: Rows per batch when reading the first rows of a Parquet file.
_PARQUET_BATCH_ROWS = 65_536

#: Rows per record batch of :func:`scan_table` (and so of a job's preparation and output).
SCAN_BATCH_ROWS = 65_536

#: Extensions of the parts of a partitioned (directory) Parquet table.
_PART_EXTENSIONS = (".parquet", ".pq")

_EXTENSIONS: Mapping[str, TableFormat] = {
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

_TIMESTAMP_UTC = pa.timestamp("us", tz="UTC")
_CSV_CONVERSION_ERROR = re.compile(
    r"In CSV column #(?P<index>\d+): .*?CSV conversion error to (?P<type>[^:]+): "
)
_STRADDLING = "straddling object straddles two block boundaries"
_JSON_TYPE_CHANGE = re.compile(r"Column\((?P<path>[^)]*)\) changed from (?P<old>\w+) to (?P<new>\w+)")


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
    name = _path_part(source).lower().rsplit("/", 1)[-1]
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
    fmt = _EXTENSIONS.get(ext)
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


def read_table(
    source: str,
    *,
    limit: int | None = None,
    columns_types: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
    invalid_utf8: InvalidUTF8 = "error",
) -> pa.Table:
    """Read a CSV, Parquet or JSON Lines table into Arrow, keeping its types.

    Args:
        source: A local path or fsspec URL; the format comes from the extension
            (see :func:`table_format`).
        limit: Read only the first ``limit`` rows (for trials). Streaming readers stop
            early, so the rest of the file is not read. Types are then inferred from the rows
            read only, and may be narrower than for the whole file.
        columns_types: Force column types, e.g. ``{"zip": "string"}``; names from
            :data:`COLUMN_TYPES`.
        storage_options: Passed to the fsspec filesystem (credentials, endpoint...).
        invalid_utf8: Text of a CSV or JSON Lines file that is not valid UTF-8 is an error
            naming the column and the first bad row (``"error"``), or has each bad byte
            sequence replaced by U+FFFD (``"replace"``; text columns only).

    Returns:
        The table. An empty file gives a table without columns; a header-only CSV gives an
        empty table whose columns are strings.

    Raises:
        TableError: The file is missing or unreadable, a forced type is unknown or does not
            fit the values, text is not valid UTF-8, or ``limit`` is negative.

    Examples:
        >>> from prefect_llm_batch.files import write_bytes_atomic
        >>> write_bytes_atomic("memory://docs/people.csv", b"name,age\\nAda,36\\nAlan,\\n")
        >>> table = read_table("memory://docs/people.csv")
        >>> table.schema.types
        [DataType(string), DataType(int64)]
        >>> table.column("age").to_pylist()
        [36, None]
        >>> read_table("memory://docs/people.csv", limit=1, columns_types={"age": "string"}).to_pylist()
        [{'name': 'Ada', 'age': '36'}]
    """
    shown = shown_path(source)
    if limit is not None and limit < 0:
        raise TableError(f"cannot read {shown}: limit must be >= 0, not {limit}")
    options = storage_options or {}
    parts = _directory_parts(source, options)
    if parts is not None:
        scan = scan_table(source, limit=limit, columns_types=columns_types, storage_options=storage_options)
        return pa.Table.from_batches(list(scan.batches), schema=scan.schema)
    fmt = table_format(source)
    forced = _parse_column_types(columns_types or {}, shown)
    try:
        if fmt == "csv":
            table = _read_csv(source, options, limit, forced, shown)
        elif fmt == "jsonl":
            table = _read_jsonl(source, options, limit, forced, shown)
        else:
            table = _read_parquet(source, options, limit)
    except FileNotFoundError as exc:
        raise TableError(f"cannot read {shown}: no such file") from exc
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TableError(f"cannot read {shown} as {_FORMAT_NAMES[fmt]}: {exc}") from exc
    if fmt != "parquet":
        table = _check_utf8(table, shown, invalid_utf8)
    _check_forced(forced, table.column_names, shown)
    if fmt == "parquet":
        for name, data_type in forced.items():
            table = _cast_column(table, name, data_type, shown)
    return table


@dataclass
class TableScan:
    """A table being read in record batches (see :func:`scan_table`).

    Attributes:
        schema: The schema every batch has.
        batches: The batches, in row order; iterate once.
        whole: The whole table, when the format had to be read whole (CSV, JSON Lines).
    """

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    whole: pa.Table | None = None


def scan_table(
    source: str,
    *,
    limit: int | None = None,
    batch_rows: int | None = None,
    columns: list[str] | None = None,
    columns_types: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
    invalid_utf8: InvalidUTF8 = "error",
    shard: Shard | None = None,
) -> TableScan:
    """Read a table as record batches of at most ``batch_rows`` rows, in row order.

    Parquet files and directories of Parquet parts are streamed: at most one batch (and the
    reader's buffers) is in memory at a time. CSV and JSON Lines are read whole first, so that
    their column types are inferred over the whole file, then sliced.

    Args:
        source: A local path or fsspec URL of a file, or of a directory of Parquet parts.
        limit: Read only the first ``limit`` rows.
        batch_rows: Most rows per batch (default :data:`SCAN_BATCH_ROWS`).
        columns: Read only these columns (Parquet only reads their bytes).
        columns_types: Force column types (see :func:`read_table`).
        storage_options: Passed to the fsspec filesystem.
        invalid_utf8: As :func:`read_table` (CSV and JSON Lines).
        shard: Read only this shard of ``source`` (see :mod:`prefect_llm_batch.shards`): its
            row groups, with the source's schema and the part's partition columns.

    Returns:
        The schema and the batches. A directory's hive partition values (``key=value`` folders)
        are string columns after the parts' own columns.

    Raises:
        TableError: As :func:`read_table`; for a directory, also when it holds no Parquet file
            or its parts do not share their columns (the message names the part).

    Examples:
        >>> import pyarrow as pa
        >>> from prefect_llm_batch.files import write_parquet_atomic
        >>> write_parquet_atomic(pa.table({"n": [1, 2]}), "memory://docs/parts/a.parquet", overwrite=True)
        >>> write_parquet_atomic(pa.table({"n": [3]}), "memory://docs/parts/b.parquet", overwrite=True)
        >>> scan = scan_table("memory://docs/parts", batch_rows=2)
        >>> [batch.column("n").to_pylist() for batch in scan.batches]
        [[1, 2], [3]]
        >>> read_table("memory://docs/parts", limit=2).column("n").to_pylist()
        [1, 2]
    """
    shown = shown_path(source)
    if limit is not None and limit < 0:
        raise TableError(f"cannot read {shown}: limit must be >= 0, not {limit}")
    batch_rows = SCAN_BATCH_ROWS if batch_rows is None else batch_rows
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")
    options = storage_options or {}
    forced = _parse_column_types(columns_types or {}, shown)
    parts = _directory_parts(source, options) if shard is None else [shard.part]
    if parts is None and table_format(source) != "parquet":
        table = read_table(
            source,
            limit=limit,
            columns_types=columns_types,
            storage_options=storage_options,
            invalid_utf8=invalid_utf8,
        )
        if columns is not None:
            table = table.select(columns)
        return TableScan(table.schema, iter(table.to_batches(max_chunksize=batch_rows)), whole=table)
    files = parts if parts is not None else [source]
    if shard is not None:
        partitions = [dict(shard.partitions)]
    elif parts is not None:
        partitions = [dict(hive_partitions(_below(part, source, options))) for part in parts]
    else:
        partitions = [{}]
    try:
        whole_schema = _parquet_schema(shard.schema_part if shard is not None else files[0], options)
    except FileNotFoundError as exc:
        raise TableError(f"cannot read {shown}: no such file") from exc
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TableError(f"cannot read {shown} as Parquet: {exc}") from exc
    keys = list(partitions[0])
    for part, values in zip(files, partitions, strict=True):
        if list(values) != keys:
            raise TableError(
                f"cannot read {shown}: part {shown_path(part)} has the partition folders "
                f"{', '.join(values) or '(none)'}, not {', '.join(keys) or '(none)'}"
            )
    clash = [name for name in keys if name in whole_schema.names]
    if clash:
        raise TableError(
            f"cannot read {shown}: the partition folder {clash[0]!r} has the name of a column of its parts"
        )
    full = whole_schema  # every column, with the forced types
    for name, data_type in forced.items():
        if name in full.names:
            full = full.set(full.get_field_index(name), full.field(name).with_type(data_type))
    for name in keys:
        full = full.append(pa.field(name, pa.string()))
    schema = full
    if columns is not None:
        schema = pa.schema([full.field(name) for name in columns]).with_metadata(full.metadata or {})
    _check_forced(forced, schema.names, shown)
    file_columns = None if columns is None else [c for c in columns if c not in keys]
    file_schema = _without(schema, keys)
    row_groups = (
        None
        if shard is None
        else list(range(shard.first_row_group, shard.first_row_group + shard.row_groups))
    )
    batches = _parquet_batches(
        files, options, file_schema, (whole_schema, _without(full, keys)), limit, batch_rows,
        file_columns, shown, row_groups, (partitions, schema) if keys else None,
    )  # fmt: skip
    return TableScan(schema, _rebatch(batches, schema, batch_rows) if len(files) > 1 else batches)


def _without(schema: pa.Schema, names: list[str]) -> pa.Schema:
    return pa.schema([f for f in schema if f.name not in names]).with_metadata(schema.metadata or {})


def parquet_parts(source: str, storage_options: dict[str, Any] | None = None) -> list[str] | None:
    """The Parquet parts of a directory source, in path order; None when ``source`` is a file.

    Hidden files and folders (``.x``, ``_x``) are skipped.

    Raises:
        TableError: The directory cannot be listed or holds no Parquet file.
    """
    return _directory_parts(source, storage_options or {})


def _below(part: str, root: str, options: Mapping[str, Any]) -> str:
    _, root_path = filesystem(root, dict(options))
    _, part_path = filesystem(part, dict(options))
    return str(part_path)[len(str(root_path).rstrip("/")) :]


def _with_partitions(batch: pa.RecordBatch, values: Mapping[str, str], schema: pa.Schema) -> pa.RecordBatch:
    """A part's batch with its partition values as columns (``schema``: the scan's)."""
    arrays = [
        pa.array([values[f.name]] * batch.num_rows, pa.string()) if f.name in values else batch.column(f.name)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _rebatch(batches: Iterator[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``rows`` rows (but the last), across the borders of the parts."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending, schema=schema).combine_chunks()
            yield from table.slice(0, rows).to_batches(max_chunksize=rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield from pa.Table.from_batches(pending, schema=schema).combine_chunks().to_batches()


def read_ahead(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    For pipelines whose producer spends its time outside the GIL (reading and decoding Parquet,
    Arrow compute): the next items are made while the caller works on this one. An exception of
    the producer is raised to the consumer at the item where it happened; leaving the loop early
    stops the producer.

    Examples:
        >>> list(read_ahead(iter(range(5))))
        [0, 1, 2, 3, 4]
    """
    done = object()
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((None, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((exc, None))
            return
        put((None, done))

    thread = threading.Thread(target=produce, name="prefect-llm-batch-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            error, item = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _directory_parts(source: str, options: Mapping[str, Any]) -> list[str] | None:
    """The Parquet parts of a directory source, in path order; None when ``source`` is a file."""
    name = _path_part(source).rstrip("/").rsplit("/", 1)[-1].lower()
    if not source.endswith("/") and os.path.splitext(name)[1] in (*_EXTENSIONS, ".json", ".gz"):
        return None  # a file name: no need to ask the filesystem
    try:
        fs, path = filesystem(source, options)
        if not fs.isdir(path):
            return None
        found = fs.find(path)
    except (OSError, ValueError) as exc:
        raise TableError(f"cannot read {shown_path(source)}: {exc}") from exc
    root = path.rstrip("/")
    parts = []
    for item in sorted(str(p) for p in found):
        relative = item[len(root) :].lstrip("/")
        if any(piece.startswith((".", "_")) for piece in relative.split("/")):
            continue
        if relative.lower().endswith(_PART_EXTENSIONS):
            parts.append(fs.unstrip_protocol(item) if "://" in source else item)
    if not parts:
        raise TableError(
            f"cannot read {shown_path(source)}: the directory holds no Parquet file (.parquet, .pq); "
            f"a directory is read as a partitioned Parquet table"
        )
    return parts


def _parquet_schema(path: str, options: Mapping[str, Any]) -> pa.Schema:
    with _open(path, options, compression=None) as file:
        return pq.ParquetFile(file).schema_arrow


def _parquet_batches(
    files: list[str],
    options: Mapping[str, Any],
    schema: pa.Schema,
    first: tuple[pa.Schema, pa.Schema],
    limit: int | None,
    batch_rows: int,
    columns: list[str] | None,
    shown: str,
    row_groups: list[int] | None = None,
    partitions: tuple[list[dict[str, str]], pa.Schema] | None = None,
) -> Iterator[pa.RecordBatch]:
    # ``first``: the first part's schema as written and with the forced types. Every part must
    # have its columns and types castable to it, even when only some ``columns`` are read:
    # preparing a job reads its templates' columns, and writing its output, once the batches
    # are paid for, reads them all.
    written, full = first
    remaining = limit
    for number, path in enumerate(files):
        if remaining is not None and remaining <= 0:
            return
        try:
            with _open(path, options, compression=None) as file:
                parquet = pq.ParquetFile(file)
                found = parquet.schema_arrow
                if found.names != written.names:
                    raise TableError(
                        f"cannot read {shown}: part {shown_path(path)} has columns "
                        f"{', '.join(found.names)}, not {', '.join(written.names)}"
                    )
                # A part of other types is read whole and cast (so that a column that does not
                # cast fails now, read or not), then only ``columns`` are kept.
                odd = columns is not None and found.types != written.types
                wanted = columns if columns is not None else found.names
                size = batch_rows if remaining is None else min(batch_rows, remaining)
                read = parquet.iter_batches(
                    batch_size=size, columns=None if odd else columns, row_groups=row_groups
                )
                for batch in read:
                    if remaining is not None:
                        if remaining <= 0:
                            break
                        batch = batch.slice(0, remaining)
                        remaining -= batch.num_rows
                    if odd:
                        batch = _cast_batch(batch, full, path).select(wanted)
                    elif batch.schema != schema:
                        batch = _cast_batch(batch, schema, path)
                    if partitions is not None:
                        batch = _with_partitions(batch, partitions[0][number], partitions[1])
                    yield batch
        except TableError:
            raise
        except FileNotFoundError as exc:
            raise TableError(f"cannot read {shown_path(path)}: no such file") from exc
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise TableError(f"cannot read {shown_path(path)} as Parquet: {exc}") from exc


def _cast_batch(batch: pa.RecordBatch, schema: pa.Schema, path: str) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_arrays(
            [batch.column(i).cast(field.type) for i, field in enumerate(schema)], schema=schema
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TableError(
            f"cannot read part {shown_path(path)}: its column types differ from the first part's ({exc})"
        ) from exc


def dictionary_columns(schema: pa.Schema, sample: pa.Table | None) -> list[str]:
    """The columns worth dictionary-encoding in a Parquet file: those that repeat values.

    Parquet tries a dictionary for every column by default and, for a column of mostly
    distinct values (ids, reviews, answers, timestamps), gives up after the work. Judged on a
    sample of at least 1,000 rows, a flat column with more distinct values than half the
    sample's rows is written plain (no bigger, and faster to write); nested columns (lists such
    as embeddings) are always written plain. Without a big enough sample, and for types Arrow
    cannot count distinct values of (categories, all-null columns, extension types), a flat
    column keeps Parquet's default.

    Args:
        schema: The file's schema.
        sample: The first rows to be written, or None.

    Returns:
        The names of the columns to write with a dictionary (``use_dictionary`` of
        ``pyarrow.parquet.ParquetWriter``).

    Examples:
        >>> import pyarrow as pa
        >>> sample = pa.table({"id": range(2000), "kind": ["a", "b"] * 1000})
        >>> dictionary_columns(sample.schema, sample)
        ['kind']
        >>> dictionary_columns(sample.schema, None)
        ['id', 'kind']
    """
    names = []
    judged = sample is not None and sample.num_rows >= 1000
    for field in schema:
        if pa.types.is_nested(field.type):
            continue
        if judged and sample is not None and field.name in sample.column_names:
            try:
                distinct = pc.count_distinct(sample.column(field.name)).as_py()
            except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
                distinct = 0  # no kernel for the type (categories, nulls, extensions): the default
            if distinct > sample.num_rows // 2:
                continue
        names.append(field.name)
    return names


def parquet_bytes(table: pa.Table) -> bytes:
    """Encode a table as Parquet bytes (the state's and the cache's results files).

    Examples:
        >>> import pyarrow as pa
        >>> parquet_bytes(pa.table({"custom_id": ["a"]}))[:4]
        b'PAR1'
    """
    sink = pa.BufferOutputStream()
    # Ids and answers are mostly distinct: written plain (see dictionary_columns), faster.
    options: dict[str, Any] = {"use_dictionary": dictionary_columns(table.schema, table.slice(0, 4096))}
    pq.write_table(table, sink, **options)  # (the stubs take only a bool)
    return bytes(sink.getvalue().to_pybytes())


def fingerprint(source: str, *, storage_options: dict[str, Any] | None = None) -> str:
    """Hash a file's bytes, reading it in blocks so that big files need little memory.

    The hash is of the stored bytes (a ``.csv.gz`` is hashed compressed), so it changes exactly
    when the file's content does. A directory's fingerprint hashes its parts' relative paths
    and contents, so adding, removing, renaming or changing a part changes it.

    Args:
        source: A local path or fsspec URL.
        storage_options: Passed to the fsspec filesystem.

    Returns:
        The SHA-256 of the content, as 64 hex digits.

    Raises:
        TableError: The file is missing or cannot be read.

    Examples:
        >>> from prefect_llm_batch.files import write_bytes_atomic
        >>> write_bytes_atomic("memory://docs/abc.txt", b"abc")
        >>> fingerprint("memory://docs/abc.txt")
        'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    parts = _directory_parts(source, storage_options or {})
    if parts is not None:  # a partitioned table: its parts' names and contents, in order
        digest = hashlib.sha256(b"prefect-llm-batch parquet directory\n")
        root = len(_path_part(source).rstrip("/"))
        for part in parts:
            digest.update(f"{part[root:]}\n{_file_sha256(part, storage_options)}\n".encode())
        return digest.hexdigest()
    return _file_sha256(source, storage_options)


def _file_sha256(source: str, storage_options: dict[str, Any] | None) -> str:
    shown = shown_path(source)
    digest = hashlib.sha256()
    try:
        fs, fs_path = filesystem(source, storage_options)
        with fs.open(fs_path, "rb") as file:
            while block := file.read(FINGERPRINT_BLOCK_SIZE):
                digest.update(block)
    except FileNotFoundError as exc:
        raise TableError(f"cannot read {shown}: no such file") from exc
    except (OSError, ValueError) as exc:
        raise TableError(f"cannot read {shown}: {exc}") from exc
    return digest.hexdigest()


# -- reading ---------------------------------------------------------------------------------

_FORMAT_NAMES: Mapping[TableFormat, str] = {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON Lines"}


def _check_forced(forced: Mapping[str, pa.DataType], names: list[str], shown: str) -> None:
    missing = [name for name in forced if name not in names]
    if missing:
        raise TableError(
            f"columns_types names column {missing[0]!r}, which {shown} does not have; "
            f"available columns: {', '.join(names)}"
        )


def _parse_column_types(columns_types: Mapping[str, str], shown: str) -> dict[str, pa.DataType]:
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


@contextlib.contextmanager
def _open(source: str, options: Mapping[str, Any], *, compression: str | None) -> Iterator[IO[bytes]]:
    with fsspec.open(source, mode="rb", compression=compression, **options) as file:
        yield file


class _HandedFile:
    """A Python file handed to an Arrow reader, whose release by Arrow can be waited for.

    Only Arrow holds it (no Python frame keeps it), so it dies exactly when Arrow lets go.
    """

    __slots__ = ("__weakref__", "_file")

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _read_through_arrow(file: IO[bytes], read: Callable[[Any], T]) -> T:
    """``read(file)`` with an Arrow reader, returning only once Arrow's threads let go of ``file``.

    Arrow's threaded CSV and JSON readers keep the Python file they read until their last
    callback ends, on one of Arrow's own threads, which may be after the reader returned. When
    that callback drops the file while the interpreter exits, the thread cannot take the GIL
    and the process aborts ("terminate called without an active exception", exit 134): a
    command that failed right after reading a table died so about one run in ten. Waiting here
    (a few microseconds normally) keeps every Python object out of Arrow's threads once the
    read is over, whether it returned or raised.

    ``read`` must not keep its argument in a Python frame (pass a Cython function, maybe
    through :func:`functools.partial`, or :func:`_first_rows_of`).
    """
    released = threading.Event()
    handle = _HandedFile(file)
    watch = weakref.ref(handle, lambda _: released.set())
    try:
        return read(handle)
    finally:
        del handle
        released.wait(_RELEASE_SECONDS)
        del watch


def _first_rows_of(open_reader: Callable[[Any], Any], limit: int, file: Any) -> pa.Table:
    """The first ``limit`` rows of the streaming reader ``open_reader(file)``, which is closed after."""
    reader = open_reader(file)
    del file  # only the reader holds it now (see _read_through_arrow)
    try:
        batches: list[pa.RecordBatch] = []
        rows = 0
        while rows < limit:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            batches.append(batch)
            rows += batch.num_rows
        return pa.Table.from_batches(batches, schema=reader.schema).slice(0, limit)
    finally:
        del reader


def _grown(block_size: int, exc: Exception) -> int | None:
    """The next block size after ``exc``, when it says a row did not fit a block (else None)."""
    if _STRADDLING not in str(exc) or block_size >= MAX_BLOCK_SIZE:
        return None
    return min(block_size * 4, MAX_BLOCK_SIZE)


def _too_long(shown: str, block_size: int) -> TableError:
    return TableError(
        f"cannot read {shown}: a row is too long to read, even in blocks of {block_size >> 20} MB "
        "(MAX_BLOCK_SIZE)"
    )


def _read_csv(
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
            if _STRADDLING in str(exc):
                grown = _grown(block_size, exc)
                if grown is None:
                    raise _too_long(shown, block_size) from exc
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
                    user[name] = _TIMESTAMP_UTC
                    continue
                raise TableError(
                    f"cannot read {shown}: column {name!r} was forced to {user[name]} but holds a value "
                    f"that is not one: {_conversion_detail(str(exc))}"
                ) from exc
            if widened.get(name) == pa.string():
                raise
            widened[name] = pa.float64() if _widens_to_float(match["type"], str(exc)) else pa.string()
    return _nulls_to_strings(table)


def _read_csv_once(
    source: str,
    options: Mapping[str, Any],
    limit: int | None,
    column_types: Mapping[str, pa.DataType],
    block_size: int = CSV_BLOCK_SIZE,
) -> pa.Table:
    parse_options = pa_csv.ParseOptions(newlines_in_values=True)
    # Text is checked for UTF-8 once the table is read (:func:`_check_utf8`), naming the row,
    # instead of Arrow turning a column with a bad byte into binary.
    convert_options = pa_csv.ConvertOptions(column_types=dict(column_types), check_utf8=False)
    with _open(source, options, compression="infer") as file:
        if limit is None:
            read_options = pa_csv.ReadOptions(block_size=block_size, use_threads=True)
            return _read_through_arrow(
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
        return _read_through_arrow(file, functools.partial(_first_rows_of, open_reader, limit))


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
    with _open(source, options, compression="infer") as file:
        return list(_read_through_arrow(file, functools.partial(_first_rows_of, open_reader, 0)).column_names)


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


def _read_jsonl(
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
            if _STRADDLING in str(exc):
                grown = _grown(block_size, exc)
                if grown is None:
                    raise _too_long(shown, block_size) from exc
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
            table = _cast_column(table, name, data_type, shown)
    return _nulls_to_strings(table)


def _read_jsonl_once(
    source: str,
    options: Mapping[str, Any],
    limit: int | None,
    strings: set[str],
    block_size: int = JSON_BLOCK_SIZE,
) -> pa.Table:
    parse_options = _json_parse_options(strings)
    with _open(source, options, compression="infer") as file:
        if limit is None:
            read_options = pa_json.ReadOptions(block_size=block_size, use_threads=True)
            return _read_through_arrow(
                file,
                functools.partial(pa_json.read_json, read_options=read_options, parse_options=parse_options),
            )
        read_options = pa_json.ReadOptions(block_size=block_size, use_threads=False)
        open_reader = functools.partial(
            pa_json.open_json, read_options=read_options, parse_options=parse_options
        )
        return _read_through_arrow(file, functools.partial(_first_rows_of, open_reader, limit))


def _read_jsonl_rewritten(
    source: str,
    options: Mapping[str, Any],
    limit: int | None,
    strings: set[str],
    stringified: set[str],
    shown: str,
    block_size: int = JSON_BLOCK_SIZE,
) -> pa.Table:
    with _open(source, options, compression="infer") as file:
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
    return _read_through_arrow(
        data,
        functools.partial(
            pa_json.read_json,
            read_options=read_options,
            parse_options=_json_parse_options(strings | stringified),
        ),
    )


def _check_utf8(table: pa.Table, shown: str, invalid_utf8: InvalidUTF8) -> pa.Table:
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


def _json_parse_options(strings: set[str]) -> pa_json.ParseOptions:
    if not strings:
        return pa_json.ParseOptions(newlines_in_values=False)
    schema = pa.schema([(name, pa.string()) for name in sorted(strings)])
    return pa_json.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="infer", newlines_in_values=False
    )


def _read_parquet(source: str, options: Mapping[str, Any], limit: int | None) -> pa.Table:
    with _open(source, options, compression=None) as file:
        parquet = pq.ParquetFile(file)
        if limit is None:
            return parquet.read()
        batches: list[pa.RecordBatch] = []
        rows = 0
        if limit > 0:
            for batch in parquet.iter_batches(batch_size=min(limit, _PARQUET_BATCH_ROWS)):
                batches.append(batch)
                rows += batch.num_rows
                if rows >= limit:
                    break
        return pa.Table.from_batches(batches, schema=parquet.schema_arrow).slice(0, limit)


def _cast_column(table: pa.Table, name: str, data_type: pa.DataType, shown: str) -> pa.Table:
    index = table.schema.get_field_index(name)
    column = table.column(index)
    try:
        try:
            cast = column.cast(data_type)
        except pa.ArrowInvalid:
            if data_type != COLUMN_TYPES["timestamp"] or not pa.types.is_string(column.type):
                raise
            cast = column.cast(_TIMESTAMP_UTC)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TableError(
            f"cannot read {shown}: column {name!r} cannot be read as {data_type}: {exc}"
        ) from exc
    return table.set_column(index, table.schema.field(index).with_type(cast.type), cast)


def _nulls_to_strings(table: pa.Table) -> pa.Table:
    for index, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(
                index, field.with_type(pa.string()), table.column(index).cast(pa.string())
            )
    return table


# -- writing ---------------------------------------------------------------------------------


# -- paths -----------------------------------------------------------------------------------


def _path_part(source: str) -> str:
    """Drop an HTTP(S) URL's query and fragment, which are not part of the file name."""
    if source.lower().startswith(("http://", "https://")):
        return re.split(r"[?#]", source, maxsplit=1)[0]
    return source
