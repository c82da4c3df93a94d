"""Reading a table whole (:func:`read_table`) or in record batches (:func:`scan_table`), whatever its
format, and reading ahead in a background thread (:func:`read_ahead`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.object_stores import shown_path
from prefect_llm_batch.shards import Shard
from prefect_llm_batch.table.csv_reading import read_csv
from prefect_llm_batch.table.formats import (
    InvalidUTF8,
    TableFormat,
    cast_column,
    check_forced,
    parse_column_types,
    table_format,
)
from prefect_llm_batch.table.jsonl_reading import read_jsonl
from prefect_llm_batch.table.parquet_dataset import (
    directory_parts,
    partition_values,
    read_parquet,
    scan_parquet,
)
from prefect_llm_batch.table.utf8_checks import check_utf8

T = TypeVar("T")

#: Rows per record batch of :func:`scan_table` (and so of a job's preparation and output).
SCAN_BATCH_ROWS = 65_536

_FORMAT_NAMES: Mapping[TableFormat, str] = {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON Lines"}


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
    parts = directory_parts(source, options)
    if parts is not None:
        scan = scan_table(source, limit=limit, columns_types=columns_types, storage_options=storage_options)
        return pa.Table.from_batches(list(scan.batches), schema=scan.schema)
    fmt = table_format(source)
    forced = parse_column_types(columns_types or {}, shown)
    try:
        if fmt == "csv":
            table = read_csv(source, options, limit, forced, shown)
        elif fmt == "jsonl":
            table = read_jsonl(source, options, limit, forced, shown)
        else:
            table = read_parquet(source, options, limit)
    except FileNotFoundError as exc:
        raise TableError(f"cannot read {shown}: no such file") from exc
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TableError(f"cannot read {shown} as {_FORMAT_NAMES[fmt]}: {exc}") from exc
    if fmt != "parquet":
        table = check_utf8(table, shown, invalid_utf8)
    check_forced(forced, table.column_names, shown)
    if fmt == "parquet":
        for name, data_type in forced.items():
            table = cast_column(table, name, data_type, shown)
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
    forced = parse_column_types(columns_types or {}, shown)
    parts = directory_parts(source, options) if shard is None else [shard.part]
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
    partitions: list[dict[str, str]] | None = None
    row_groups: list[int] | None = None
    schema_file: str | None = None
    if shard is not None:
        partitions, row_groups, schema_file = (
            [dict(shard.partitions)],
            shard.row_group_list,
            shard.schema_part,
        )
    elif parts is not None:
        partitions = partition_values(parts, source, options)
    schema, batches = scan_parquet(
        files, options, forced=forced, columns=columns, limit=limit, batch_rows=batch_rows, shown=shown,
        partitions=partitions, row_groups=row_groups, schema_file=schema_file,
    )  # fmt: skip
    return TableScan(schema, batches)


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
