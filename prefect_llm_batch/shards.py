"""Shards: a big Parquet source cut into file and row-group ranges that run on their own.

A source that is one Parquet file, or a directory (dataset) of Parquet parts, hive-partitioned
(``year=2024/month=05/part-0.parquet``) or not, is planned as shards: each shard is a range of
consecutive row groups of one part, at least ``rows_per_shard`` rows where the row groups allow
(a shard never spans two parts, and a row group is never split). The plan depends only on the
source's files and their Parquet footers: the same source gives the same shards, in the order
the single-process reader reads the rows (parts in path order, row groups in file order).

Hive partition values (the ``key=value`` folders between the dataset's root and a part) are
kept as string columns after the part's own columns, for every reader of the dataset (sharded
or not), so templates can use them and the output keeps them.

Nothing here sends a request or writes a file: reading a shard's rows is
:func:`~prefect_llm_batch.table.scan_table` with ``shard=``.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from .errors import TableError
from .object_stores import filesystem, shown_path

#: Rows per shard unless told otherwise: enough that a shard's fixed costs (a task, a few state
#: files, its own batches) are small beside its work, few enough that a worker holds a shard's
#: keys and slices comfortably.
DEFAULT_SHARD_ROWS = 1_000_000


class Shard(BaseModel):
    """One shard of a source: row groups ``[first_row_group, first_row_group + row_groups)`` of one part.

    Attributes:
        index: Its place in the plan (0, 1, ...): shards are numbered in row order.
        source: The source it was planned from (a file, or the dataset's directory).
        part: The Parquet file it reads (a path or fsspec URL).
        first_row_group: The first row group it reads.
        row_groups: How many row groups it reads.
        rows: How many rows those row groups hold.
        partitions: Hive partition values of the part, ``(name, value)`` from the root down.
        schema_part: The source's first part, whose schema every part is read as (as the
            single-process reader does).

    Examples:
        >>> s = Shard(index=3, source="d", part="d/x=1/p.parquet", first_row_group=0, row_groups=2,
        ...           rows=10, partitions=(("x", "1"),))
        >>> s.name
        'shard-00003'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    source: str
    part: str
    first_row_group: int
    row_groups: int
    rows: int
    partitions: tuple[tuple[str, str], ...] = ()
    schema_part: str = ""

    @property
    def row_group_list(self) -> list[int]:
        """The numbers of the row groups it reads."""
        return list(range(self.first_row_group, self.first_row_group + self.row_groups))

    @property
    def name(self) -> str:
        """``shard-NNNNN``: how files and tasks of the shard are named."""
        return f"shard-{self.index:05d}"

    def describe(self) -> str:
        """The shard for messages: its part and row groups.

        Examples:
            >>> Shard(index=0, source="d", part="d/p.parquet", first_row_group=2, row_groups=3,
            ...       rows=9).describe()
            "shard 0 ('d/p.parquet', row groups 2-4)"
        """
        last = self.first_row_group + self.row_groups - 1
        return f"shard {self.index} ({shown_path(self.part)}, row groups {self.first_row_group}-{last})"


class ShardPlan(BaseModel):
    """The shards of a source, in row order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    rows_per_shard: int
    shards: tuple[Shard, ...]

    @property
    def rows(self) -> int:
        """Rows of every shard together."""
        return sum(s.rows for s in self.shards)

    def digest(self) -> str:
        """A hash of the plan (parts, row-group ranges, partitions): equal plans, equal digests."""
        text = "\n".join(
            f"{s.part}|{s.first_row_group}|{s.row_groups}|{s.rows}|{s.partitions}" for s in self.shards
        )
        return hashlib.sha256(f"{self.rows_per_shard}\n{text}".encode()).hexdigest()


def hive_partitions(relative: str) -> tuple[tuple[str, str], ...]:
    """The ``key=value`` folders of a part's path relative to its dataset's root, URL-decoded.

    Args:
        relative: The part's path below the root (``"year=2024/month=05/part-0.parquet"``).

    Examples:
        >>> hive_partitions("year=2024/city=New%20York/part-0.parquet")
        (('year', '2024'), ('city', 'New York'))
        >>> hive_partitions("part-0.parquet")
        ()
    """
    found: list[tuple[str, str]] = []
    for folder in relative.strip("/").split("/")[:-1]:
        name, equals, value = folder.partition("=")
        if equals and name:
            found.append((urllib.parse.unquote(name), urllib.parse.unquote(value)))
    return tuple(found)


def row_group_sizes(part: str, storage_options: dict[str, Any] | None = None) -> list[int]:
    """The number of rows of each row group of a Parquet file (its footer only is read).

    Raises:
        TableError: The file is missing or is not Parquet.
    """
    try:
        fs, path = filesystem(part, storage_options)
        with fs.open(path, "rb") as file:
            meta = pq.ParquetFile(file).metadata
            return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except FileNotFoundError as exc:
        raise TableError(f"cannot read {shown_path(part)}: no such file") from exc
    except (OSError, ValueError) as exc:
        raise TableError(f"cannot read {shown_path(part)} as Parquet: {exc}") from exc


def shard_fingerprint(shard: Shard, storage_options: dict[str, Any] | None = None) -> str:
    """The SHA-256 of a shard's content: its row groups' bytes, their row counts and the part's schema.

    Reads only the shard's byte range of its part (and the footer), so fingerprinting every shard
    of a source reads the source once, however it is cut; a change to the rows a shard reads
    changes its fingerprint.

    Raises:
        TableError: The part is missing, is not Parquet, or no longer has the shard's row groups.
    """
    shown = shown_path(shard.part)
    digest = hashlib.sha256(b"prefect-llm-batch shard\n")
    try:
        fs, path = filesystem(shard.part, storage_options)
        with fs.open(path, "rb") as file:
            meta = pq.ParquetFile(file).metadata
            last = shard.first_row_group + shard.row_groups
            if last > meta.num_row_groups:
                raise TableError(f"{shown} has {meta.num_row_groups} row groups, not {last}: it changed")
            digest.update(f"{shard.partitions}\n{meta.schema.to_arrow_schema()}".encode())
            starts, ends = [], []
            for index in range(shard.first_row_group, last):
                group = meta.row_group(index)
                digest.update(f"\n{group.num_rows}".encode())
                for column in range(group.num_columns):
                    chunk = group.column(column)
                    start = chunk.data_page_offset
                    if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                        start = min(start, chunk.dictionary_page_offset)
                    starts.append(start)
                    ends.append(start + chunk.total_compressed_size)
            if starts:
                file.seek(min(starts))
                remaining = max(ends) - min(starts)
                while remaining > 0:
                    block = file.read(min(remaining, 8 << 20))
                    if not block:
                        raise TableError(f"{shown} ends before its row groups do: it changed")
                    digest.update(block)
                    remaining -= len(block)
    except FileNotFoundError as exc:
        raise TableError(f"cannot read {shown}: no such file") from exc
    except (OSError, ValueError) as exc:
        raise TableError(f"cannot read {shown} as Parquet: {exc}") from exc
    return digest.hexdigest()


def group_row_groups(sizes: list[int], rows_per_shard: int) -> list[tuple[int, int, int]]:
    """Cut a part's row groups into consecutive ranges of at least ``rows_per_shard`` rows.

    The last range of a part may be smaller; a row group bigger than ``rows_per_shard`` is a
    range of its own. Row groups without rows join their neighbours; a part with no rows at
    all gives one empty range (its schema still counts).

    Returns:
        ``(first_row_group, row_groups, rows)`` per range.

    Examples:
        >>> group_row_groups([4, 4, 4, 4, 1], 8)
        [(0, 2, 8), (2, 2, 8), (4, 1, 1)]
        >>> group_row_groups([20, 1], 8)
        [(0, 1, 20), (1, 1, 1)]
        >>> group_row_groups([], 8)
        [(0, 0, 0)]
    """
    ranges: list[tuple[int, int, int]] = []
    first, rows = 0, 0
    for index, size in enumerate(sizes):
        rows += size
        if rows >= rows_per_shard:
            ranges.append((first, index + 1 - first, rows))
            first, rows = index + 1, 0
    if first < len(sizes) or not ranges:
        ranges.append((first, len(sizes) - first, rows))
    return ranges


def plan_shards(
    source: str,
    *,
    rows_per_shard: int = DEFAULT_SHARD_ROWS,
    storage_options: dict[str, Any] | None = None,
) -> ShardPlan:
    """Plan a Parquet source as shards (see the module's docstring).

    Args:
        source: One Parquet file, or a directory of Parquet parts (a path or fsspec URL).
        rows_per_shard: The rows a shard aims for (row groups are never split).
        storage_options: Passed to the fsspec filesystem.

    Raises:
        TableError: The source is not Parquet, or a part cannot be read.
        ValueError: ``rows_per_shard`` is below 1.

    Examples:
        >>> import pyarrow as pa, pyarrow.parquet as pq
        >>> from prefect_llm_batch.object_stores import filesystem
        >>> fs, _ = filesystem("memory://", None)
        >>> for year in (2023, 2024):
        ...     with fs.open(f"/shards-doc/year={year}/part-0.parquet", "wb") as f:
        ...         pq.write_table(pa.table({"a": list(range(10))}), f, row_group_size=4)
        >>> plan = plan_shards("memory://shards-doc", rows_per_shard=5)
        >>> [(s.first_row_group, s.rows, dict(s.partitions)["year"]) for s in plan.shards]
        [(0, 8, '2023'), (2, 2, '2023'), (0, 8, '2024'), (2, 2, '2024')]
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, not {rows_per_shard}")
    from .table import table_format
    from .table.parquet_dataset import directory_parts

    parts = directory_parts(source, storage_options or {})
    if parts is None:
        if table_format(source) != "parquet":
            raise TableError(
                f"cannot shard {shown_path(source)}: sharding reads Parquet (one file, or a directory of "
                "parts); convert the table to Parquet, or run it without shards"
            )
        parts, root = [source], None
    else:
        root = source.rstrip("/")
    shards: list[Shard] = []
    for part in parts:
        partitions = hive_partitions(_relative(part, root, storage_options)) if root is not None else ()
        for first, count, rows in group_row_groups(row_group_sizes(part, storage_options), rows_per_shard):
            shards.append(
                Shard(
                    index=len(shards),
                    source=source,
                    part=part,
                    first_row_group=first,
                    row_groups=count,
                    rows=rows,
                    partitions=partitions,
                    schema_part=parts[0],
                )
            )
    return ShardPlan(source=source, rows_per_shard=rows_per_shard, shards=tuple(shards))


def _relative(part: str, root: str, storage_options: dict[str, Any] | None) -> str:
    """``part``'s path below ``root`` (as :func:`~prefect_llm_batch.table.parquet_dataset.directory_parts`
    and the user spell them)."""
    _, root_path = filesystem(root, storage_options)
    _, part_path = filesystem(part, storage_options)
    return str(part_path)[len(str(root_path).rstrip("/")) :].lstrip("/")
