"""File primitives on any fsspec URL: atomic writes, directories, reads, existence.

Writes are atomic: readers never see a half-written file. On the local filesystem the bytes go
to a temporary file next to the destination, which is then renamed over it
(:mod:`~prefect_llm_batch.local_files`); on any other filesystem (object stores) the file is
built in a local temporary file and sent with one put, conditional where the store can
(:mod:`~prefect_llm_batch.object_stores`).

Private writes (``private=True``, for the job state: it holds prompts and answers): on a local
filesystem the file is created owner-only (0600) and the directories the write creates are 0700,
whatever the umask; directories that already exist are left as they are. Other writes let the
umask decide, as for any new file. Object stores have no such permissions: ``private`` does
nothing there.

Every failure is raised as :class:`~prefect_llm_batch.errors.TableError` naming the path.
Table formats (CSV, Parquet, JSON Lines) are read in :mod:`~prefect_llm_batch.table`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.local_files import (
    CAN_DROP,
    WRITE_BUFFER_BYTES,
    drop_cached_pages,
    exists_error,
    makedirs_local,
    write_local,
)
from prefect_llm_batch.object_stores import (
    can_write_conditionally,
    filesystem,
    object_store,
    precondition_failed,
    shown_path,
)

__all__ = [
    "bytes_freed_by_removing",
    "exists",
    "make_dirs",
    "modified_time",
    "read_bytes",
    "write_bytes_atomic",
    "write_parquet_atomic",
    "write_parquet_batches_atomic",
]


def write_parquet_batches_atomic(
    batches: Iterable[pa.RecordBatch | pa.Table],
    destination: str,
    *,
    schema: pa.Schema,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
    writer_options: dict[str, Any] | None = None,
    drop_cache: bool = False,
    private: bool = False,
) -> int:
    """Write batches to one Parquet file as they come, so that readers never see a partial file.

    Memory holds one batch at a time: locally the file grows as a temporary file that is renamed
    over the destination at the end; on other filesystems it grows in a local temporary file
    that is then sent with one put. If ``batches`` raises, nothing is published.

    Args:
        batches: Record batches (or tables) of ``schema``, in order; each becomes a row group.
        destination: A local path or fsspec URL.
        schema: The schema of the file.
        overwrite: Replace an existing file.
        metadata: Key-value pairs stored in the Parquet schema metadata.
        storage_options: Passed to the fsspec filesystem.
        writer_options: Passed to ``pyarrow.parquet.ParquetWriter`` (``use_dictionary``...).
        drop_cache: A local file's written pages leave the page cache as it grows (synced every
            :data:`DROP_BEHIND_BYTES`): for big files read once later, if at all.
        private: Owner-only permissions (see the module docstring).

    Returns:
        The number of rows written.

    Raises:
        TableError: As :func:`write_parquet_atomic`.

    Examples:
        >>> import pyarrow as pa
        >>> parts = (pa.record_batch({"a": [i, i + 1]}) for i in (0, 2))
        >>> write_parquet_batches_atomic(parts, "memory://docs/stream.parquet",
        ...                              schema=pa.schema([("a", pa.int64())]), overwrite=True)
        4
        >>> from prefect_llm_batch.table import read_table
        >>> read_table("memory://docs/stream.parquet").column("a").to_pylist()
        [0, 1, 2, 3]
    """
    shown = shown_path(destination)
    if metadata:
        merged = dict(schema.metadata or {})
        merged.update({key.encode(): value.encode() for key, value in metadata.items()})
        schema = schema.with_metadata(merged)
    rows = 0

    def write(sink: Any) -> None:
        nonlocal rows
        with pq.ParquetWriter(sink, schema, **(writer_options or {})) as writer:
            for batch in batches:
                table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                if table.schema != schema:
                    table = table.cast(schema)
                writer.write_table(table)
                rows += table.num_rows

    _write_atomic(
        destination,
        write,
        overwrite=overwrite,
        storage_options=storage_options,
        shown=shown,
        drop_cache=drop_cache,
        private=private,
    )
    return rows


def write_parquet_atomic(
    table: pa.Table,
    destination: str,
    *,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
    private: bool = False,
) -> None:
    """Write a table to Parquet so that readers never see a partial file.

    Locally the file is written to a temporary file in the destination's directory and renamed
    over the destination; on other filesystems it is built in memory and sent with one put.
    Parent directories are created as needed.

    Args:
        table: The table to write.
        destination: A local path or fsspec URL.
        overwrite: Replace an existing file. Without it an existing destination is an error.
        metadata: Key-value pairs stored in the Parquet schema metadata, merged over the
            table's own (such as pandas' ``pandas`` entry).
        storage_options: Passed to the fsspec filesystem.
        private: Owner-only permissions (see the module docstring).

    Raises:
        TableError: The destination exists and ``overwrite`` is false, or the write failed
            (no temporary file is left behind).

    Examples:
        >>> import pyarrow as pa
        >>> write_parquet_atomic(pa.table({"a": [1]}), "memory://docs/a.parquet", overwrite=True,
        ...                      metadata={"job_id": "j1"})
        >>> import io, pyarrow.parquet as pq
        >>> pq.read_schema(io.BytesIO(read_bytes("memory://docs/a.parquet"))).metadata[b"job_id"]
        b'j1'
        >>> write_parquet_atomic(pa.table({"a": [2]}), "memory://docs/a.parquet")
        Traceback (most recent call last):
        ...
        prefect_llm_batch.errors.TableError: 'memory://docs/a.parquet' already exists; pass overwrite=True ...
    """
    shown = shown_path(destination)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({key.encode(): value.encode() for key, value in metadata.items()})
        table = table.replace_schema_metadata(merged)

    def write(sink: Any) -> None:
        pq.write_table(table, sink)

    _write_atomic(
        destination, write, overwrite=overwrite, storage_options=storage_options, shown=shown, private=private
    )


def write_bytes_atomic(
    destination: str,
    data: bytes | bytearray | memoryview | Sequence[bytes | memoryview],
    *,
    storage_options: dict[str, Any] | None = None,
    drop_cache: bool = False,
    durable: bool = True,
    private: bool = False,
) -> None:
    """Write bytes to a file so that readers see either the old or the new content, never a mix.

    An existing file is replaced. Parent directories are created as needed.

    Args:
        destination: A local path or fsspec URL.
        data: The whole new content, or its pieces in order (any buffers: written one after
            the other, never joined in memory).
        storage_options: Passed to the fsspec filesystem.
        drop_cache: A local file's pages leave the page cache once written and synced (see
            :func:`write_parquet_batches_atomic`).
        durable: Sync a local file and its directory before returning. Without it a crash may
            leave the file missing or short: for files that can be rebuilt, checked when read.
        private: Owner-only permissions (see the module docstring).

    Raises:
        TableError: The write failed (no temporary file is left behind).

    Examples:
        >>> write_bytes_atomic("memory://docs/state/manifest.json", b'{"chunks": []}')
        >>> read_bytes("memory://docs/state/manifest.json")
        b'{"chunks": []}'
    """

    pieces = [data] if isinstance(data, bytes | bytearray | memoryview) else data

    def write(sink: Any) -> None:
        for piece in pieces:
            sink.write(piece)

    _write_atomic(
        destination,
        write,
        overwrite=True,
        storage_options=storage_options,
        shown=shown_path(destination),
        drop_cache=drop_cache,
        durable=durable,
        private=private,
    )


def make_dirs(path: str, *, private: bool = False, storage_options: dict[str, Any] | None = None) -> None:
    """Create a directory and its missing parents (nothing happens if it exists).

    Args:
        path: A local path or fsspec URL.
        private: Local directories created are owner-only (0700), whatever the umask; existing
            ones are left as they are.
        storage_options: Passed to the fsspec filesystem.

    Raises:
        TableError: The directory cannot be created.

    Examples:
        >>> import os, tempfile
        >>> where = os.path.join(tempfile.mkdtemp(), "state", "jobs")
        >>> make_dirs(where, private=True)
        >>> oct(os.stat(where).st_mode & 0o777), oct(os.stat(os.path.dirname(where)).st_mode & 0o777)
        ('0o700', '0o700')
    """
    try:
        fs, local = filesystem(path, storage_options)
        if isinstance(fs, LocalFileSystem):
            makedirs_local(local, private)
        else:
            fs.makedirs(local, exist_ok=True)
    except OSError as exc:
        raise TableError(f"cannot create {shown_path(path)}: {exc}") from exc


def read_bytes(
    path: str, *, storage_options: dict[str, Any] | None = None, drop_cache: bool = False
) -> bytes:
    """Read a whole file.

    Args:
        path: A local path or fsspec URL.
        storage_options: Passed to the fsspec filesystem.
        drop_cache: A local file's pages leave the page cache once read (a file read once).

    Returns:
        The file's content.

    Raises:
        TableError: The file is missing or cannot be read.

    Examples:
        >>> write_bytes_atomic("memory://docs/hello.txt", b"hello")
        >>> read_bytes("memory://docs/hello.txt")
        b'hello'
    """
    shown = shown_path(path)
    try:
        fs, fs_path = filesystem(path, storage_options)
        if drop_cache and CAN_DROP and isinstance(fs, LocalFileSystem):
            with open(fs_path, "rb") as file:
                data = file.read()
                drop_cached_pages(file.fileno())
        else:
            data = fs.cat_file(fs_path)
    except FileNotFoundError as exc:
        raise TableError(f"cannot read {shown}: no such file") from exc
    except (OSError, ValueError) as exc:
        raise TableError(f"cannot read {shown}: {exc}") from exc
    return bytes(data)


def exists(path: str, *, storage_options: dict[str, Any] | None = None) -> bool:
    """Tell whether a file (or directory) exists.

    Args:
        path: A local path or fsspec URL.
        storage_options: Passed to the fsspec filesystem.

    Returns:
        True when something exists at ``path``.

    Raises:
        TableError: The filesystem cannot be asked (credentials, network...).

    Examples:
        >>> write_bytes_atomic("memory://docs/here.txt", b"")
        >>> exists("memory://docs/here.txt"), exists("memory://docs/nowhere.txt")
        (True, False)
    """
    try:
        fs, fs_path = filesystem(path, storage_options)
        return bool(fs.exists(fs_path))
    except (OSError, ValueError) as exc:
        raise TableError(f"cannot tell whether {shown_path(path)} exists: {exc}") from exc


def modified_time(fs: Any, path: str, default: float) -> float:
    """A file's modification time (seconds since the epoch), or ``default`` when unknown."""
    info = fs.info(path)
    modified = info.get("mtime") or info.get("created") or info.get("LastModified")
    return modified.timestamp() if hasattr(modified, "timestamp") else float(modified or default)


def bytes_freed_by_removing(fs: Any, path: str) -> int:
    """The bytes deleting a file frees: its size; locally, none while another link to it lives."""
    if "file" in fs.protocol:
        stat = os.stat(path)
        return int(stat.st_size) if stat.st_nlink <= 1 else 0
    return int(fs.info(path).get("size") or 0)


def _write_atomic(
    destination: str,
    write: Callable[[Any], None],
    *,
    overwrite: bool,
    storage_options: Mapping[str, Any] | None,
    shown: str,
    drop_cache: bool = False,
    durable: bool = True,
    private: bool = False,
) -> None:
    try:
        fs, path = filesystem(destination, storage_options)
        if isinstance(fs, LocalFileSystem):
            write_local(
                path,
                write,
                overwrite=overwrite,
                shown=shown,
                drop_cache=drop_cache,
                durable=durable,
                private=private,
            )
            return
        if not overwrite and fs.exists(path):
            raise exists_error(shown)
        # Without overwrite, the put itself refuses an existing object where the store can.
        put_options = {} if overwrite or not can_write_conditionally(fs) else {"mode": "create"}
        # Built in a local temporary file (not in memory: outputs may be big), then one put.
        with tempfile.TemporaryDirectory(prefix="prefect-llm-batch-") as scratch:
            local = os.path.join(scratch, "upload")
            with open(local, "wb", buffering=WRITE_BUFFER_BYTES) as file:
                write(file)
            try:
                try:
                    fs.put_file(local, path, **put_options)
                except FileNotFoundError:
                    # Object stores have no directories: a missing bucket stays an error (making
                    # "directories" there would create a bucket from a typo). Other filesystems may
                    # need the parents first.
                    if object_store(fs):
                        raise
                    fs.makedirs(fs._parent(path), exist_ok=True)
                    fs.put_file(local, path, **put_options)
            except OSError as exc:  # FileExistsError included
                if put_options and precondition_failed(exc):
                    raise exists_error(shown) from None
                raise
    except TableError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TableError(f"cannot write {shown}: {exc}") from exc
