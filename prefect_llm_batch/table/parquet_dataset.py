"""Parquet files and datasets (a directory or object-store prefix of Parquet parts): finding the parts,
and reading them as record batches under one schema.

A dataset's parts are its ``.parquet`` / ``.pq`` files, found recursively and taken in path order
(names starting with ``.`` or ``_`` skipped). :func:`scan_parquet` streams them one batch at a time;
:func:`read_parquet` reads one file (or its first rows).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.object_stores import filesystem, shown_path
from prefect_llm_batch.shards import hive_partitions
from prefect_llm_batch.table.arrow_files import open_source
from prefect_llm_batch.table.formats import EXTENSIONS, check_forced, path_part

#: Rows per batch when reading the first rows of a Parquet file.
_PARQUET_BATCH_ROWS = 65_536

#: Extensions of the parts of a partitioned (directory) Parquet table.
_PART_EXTENSIONS = (".parquet", ".pq")


def scan_parquet(
    files: list[str],
    options: Mapping[str, Any],
    *,
    forced: Mapping[str, pa.DataType],
    columns: list[str] | None,
    limit: int | None,
    batch_rows: int,
    shown: str,
    partitions: list[dict[str, str]] | None = None,
    row_groups: list[int] | None = None,
    schema_file: str | None = None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Read Parquet files (a file, or a dataset's parts in order) as one stream of record batches.

    The first file's schema, with the ``forced`` types, is the schema of every batch; each later
    part must have the same columns, of types that cast to it. Batches are read lazily, one at a
    time; across several files they are cut again to ``batch_rows`` rows (see :func:`rebatch`).

    Args:
        files: The files, in row order (see :func:`directory_parts`).
        options: Passed to the fsspec filesystem.
        forced: Column types to cast to (see :func:`~prefect_llm_batch.table.formats.parse_column_types`).
        columns: Read only these columns, or None for all.
        limit: Read only the first ``limit`` rows, or None for all.
        batch_rows: Most rows per batch.
        shown: The source as shown in messages (credentials hidden).
        partitions: Each file's hive partition values (see :func:`partition_values`): string
            columns after the files' own, every file having the same names.
        row_groups: Read only these row groups (of a single file: a shard).
        schema_file: The file whose schema the batches have (default: the first of ``files``).

    Returns:
        The schema and the batches.

    Raises:
        TableError: The first file is missing or unreadable, or a forced column is not in it;
            when iterating, a part does not match the first.

    Examples:
        >>> import pyarrow as pa
        >>> from prefect_llm_batch.files import write_parquet_atomic
        >>> write_parquet_atomic(pa.table({"n": [1, 2, 3]}), "memory://docs/scan.parquet", overwrite=True)
        >>> schema, batches = scan_parquet(["memory://docs/scan.parquet"], {}, forced={}, columns=None,
        ...     limit=None, batch_rows=2, shown="scan.parquet")
        >>> schema.names, [batch.num_rows for batch in batches]
        (['n'], [2, 1])
    """
    try:
        whole_schema = parquet_schema(schema_file or files[0], options)
    except FileNotFoundError as exc:
        raise TableError(f"cannot read {shown}: no such file") from exc
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TableError(f"cannot read {shown} as Parquet: {exc}") from exc
    keys = _partition_keys(files, partitions or [{} for _ in files], whole_schema, shown)
    full = whole_schema  # every column, with the forced types
    for name, data_type in forced.items():
        if name in full.names:
            full = full.set(full.get_field_index(name), full.field(name).with_type(data_type))
    file_full = full
    for name in keys:
        full = full.append(pa.field(name, pa.string()))
    schema = full
    if columns is not None:
        schema = pa.schema([full.field(name) for name in columns]).with_metadata(full.metadata or {})
    check_forced(forced, schema.names, shown)
    file_columns = None if columns is None else [c for c in columns if c not in keys]
    file_schema = pa.schema([f for f in schema if f.name not in keys]).with_metadata(schema.metadata or {})
    batches = parquet_batches(
        files, options, file_schema, (whole_schema, file_full), limit, batch_rows, file_columns, shown,
        row_groups, (partitions or [], schema) if keys else None,
    )  # fmt: skip
    return schema, rebatch(batches, schema, batch_rows) if len(files) > 1 else batches


def _partition_keys(
    files: list[str], partitions: list[dict[str, str]], schema: pa.Schema, shown: str
) -> list[str]:
    """The partition columns every file shares (an error names a part that differs, or a clash)."""
    keys = list(partitions[0]) if partitions else []
    for path, values in zip(files, partitions, strict=True):
        if list(values) != keys:
            raise TableError(
                f"cannot read {shown}: part {shown_path(path)} has the partition folders "
                f"{', '.join(values) or '(none)'}, not {', '.join(keys) or '(none)'}"
            )
    clash = [name for name in keys if name in schema.names]
    if clash:
        raise TableError(
            f"cannot read {shown}: the partition folder {clash[0]!r} is also a column of its parts"
        )
    return keys


def _with_partitions(batch: pa.RecordBatch, values: Mapping[str, str], schema: pa.Schema) -> pa.RecordBatch:
    """A file's batch with its partition values as columns of ``schema``."""
    arrays = [
        pa.array([values[f.name]] * batch.num_rows, pa.string()) if f.name in values else batch.column(f.name)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def partition_values(parts: list[str], source: str, options: Mapping[str, Any]) -> list[dict[str, str]]:
    """The hive partition values (``key=value`` folders below ``source``) of each of its parts.

    Examples:
        >>> partition_values(["/d/year=2024/m=1/p.parquet"], "/d", {})
        [{'year': '2024', 'm': '1'}]
    """
    _, root = filesystem(source, dict(options))
    found = []
    for part in parts:
        _, path = filesystem(part, dict(options))
        found.append(dict(hive_partitions(str(path)[len(str(root).rstrip("/")) :])))
    return found


def directory_parts(source: str, options: Mapping[str, Any]) -> list[str] | None:
    """The Parquet parts of a directory source, in path order; None when ``source`` is a file.

    Args:
        source: A local path or fsspec URL.
        options: Passed to the fsspec filesystem.

    Returns:
        The parts' paths (URLs when ``source`` is one), or None for a file.

    Raises:
        TableError: The directory cannot be listed, or holds no Parquet file.

    Examples:
        >>> import pyarrow as pa
        >>> from prefect_llm_batch.files import write_parquet_atomic
        >>> for name in ("b.parquet", "a.pq", "_SUCCESS.parquet"):
        ...     write_parquet_atomic(pa.table({"n": [1]}), f"memory://docs/ds/{name}", overwrite=True)
        >>> [part.rsplit("/", 1)[-1] for part in directory_parts("memory://docs/ds", {})]
        ['a.pq', 'b.parquet']
        >>> directory_parts("memory://docs/ds/a.pq", {}) is None
        True
    """
    name = path_part(source).rstrip("/").rsplit("/", 1)[-1].lower()
    if not source.endswith("/") and os.path.splitext(name)[1] in (*EXTENSIONS, ".json", ".gz"):
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


def parquet_schema(path: str, options: Mapping[str, Any]) -> pa.Schema:
    """The Arrow schema of a Parquet file (read from its footer)."""
    with open_source(path, options, compression=None) as file:
        return pq.ParquetFile(file).schema_arrow


def parquet_batches(
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
    """Read Parquet files in order as record batches of ``schema`` (see :func:`scan_parquet`).

    Args:
        files: The files, in row order.
        options: Passed to the fsspec filesystem.
        schema: The schema of the batches (``columns`` of ``first``'s second schema).
        first: The first file's schema as written, and with the forced types.
        limit: Stop after this many rows, or None.
        batch_rows: Most rows per batch (per file: batches do not cross files).
        columns: Read only these columns, or None for all.
        shown: The source as shown in messages.
        row_groups: Read only these row groups (of a single file).
        partitions: Each file's partition values and the schema with their columns: the
            batches then have that schema.

    Raises:
        TableError: A part's columns or types do not match the first's, or it cannot be read.
    """
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
            with open_source(path, options, compression=None) as file:
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


def rebatch(batches: Iterator[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.RecordBatch]:
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


def read_parquet(source: str, options: Mapping[str, Any], limit: int | None) -> pa.Table:
    """Read a Parquet file whole, or only its first ``limit`` rows (reading no further)."""
    with open_source(source, options, compression=None) as file:
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
