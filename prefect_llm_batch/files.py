"""File primitives on any fsspec URL: atomic writes, directories, reads, existence.

Writes are atomic: readers never see a half-written file. On the local filesystem the bytes go
to a temporary file next to the destination, which is then renamed over it; on any other
filesystem (object stores) the file is built in a local temporary file and sent with one put.

Private writes (``private=True``, for the job state: it holds prompts and answers): on a local
filesystem the file is created owner-only (0600) and the directories the write creates are 0700,
whatever the umask; directories that already exist are left as they are. Other writes let the
umask decide, as for any new file. Object stores have no such permissions: ``private`` does
nothing there.

Conditional writes (object stores that support them: S3 through s3fs). Publishing without
overwrite (``overwrite=False`` in :func:`write_parquet_atomic` and
:func:`write_parquet_batches_atomic`) sends the one put with ``If-None-Match: *``, so an object
that appears between the existence check and the put is never replaced: the store refuses the
put and the write fails as if the check had seen it. :func:`read_versioned` and
:func:`write_if_version` give a compare-and-swap on one object (``If-None-Match: *`` to create,
``If-Match: <ETag>`` to replace a known version), which the job lease uses. Where the store
cannot (:func:`conditional_writes` is false: the local filesystem, which has its own atomic
link and rename; ``memory://``, GCS, Azure... through fsspec), publishing without overwrite is
today's check then put, and a file created between the two is replaced. S3-compatible servers
that ignore these headers (some older ones) give no protection either; AWS S3, MinIO and moto
honour them.

Page-cache drop-behind for big files written or read once (:func:`drop_behind`, off by default)
and the quoting of paths in messages with their credentials hidden (:func:`shown_path`) live here
too. Every failure is raised as :class:`~prefect_llm_batch.errors.TableError` naming the path.
Table formats (CSV, Parquet, JSON Lines) are read in :mod:`~prefect_llm_batch.table`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import fsspec
import fsspec.core
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from prefect_llm_batch.errors import TableError

__all__ = [
    "DROP_BEHIND_ENV",
    "OBJECT_STORE_PROTOCOLS",
    "WriteConflict",
    "bytes_freed_by_removing",
    "conditional_writes",
    "drop_behind",
    "exists",
    "filesystem",
    "make_dirs",
    "modified_time",
    "object_store",
    "read_bytes",
    "read_versioned",
    "shown_path",
    "write_bytes_atomic",
    "write_if_version",
    "write_parquet_atomic",
    "write_parquet_batches_atomic",
]

#: Permissions of a private file, and of a directory a private write creates (local filesystems).
PRIVATE_FILE_MODE, PRIVATE_DIR_MODE = 0o600, 0o700

_URL_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")
#: The buffer of a local file being written (pieces smaller than this are gathered first).
WRITE_BUFFER_BYTES = 1 << 20
#: Bytes a file written with ``drop_cache`` grows by between two write-behind syncs.
DROP_BEHIND_BYTES = 32 << 20
_CAN_DROP = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")
#: Set to ``1`` to turn page-cache drop-behind on (see :func:`drop_behind`); off by default.
DROP_BEHIND_ENV = "PREFECT_LLM_BATCH_DROP_BEHIND"


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
        >>> import pyarrow.parquet as pq
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
            _makedirs_local(local, private)
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
        if drop_cache and _CAN_DROP and isinstance(fs, LocalFileSystem):
            with open(fs_path, "rb") as file:
                data = file.read()
                _drop_cached_pages(file.fileno())
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
            _write_local(
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
            raise _exists_error(shown)
        # Without overwrite, the put itself refuses an existing object where the store can.
        put_options = {} if overwrite or not _conditional(fs) else {"mode": "create"}
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
                if put_options and _precondition_failed(exc):
                    raise _exists_error(shown) from None
                raise
    except TableError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise TableError(f"cannot write {shown}: {exc}") from exc


class WriteConflict(TableError):
    """A conditional write was refused: the object is not (or no longer) the version expected."""


def conditional_writes(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether the store of ``path`` refuses a put on a condition (``If-None-Match``, ``If-Match``):
    S3 through s3fs. See the module docstring for what happens elsewhere.

    Examples:
        >>> conditional_writes("memory://docs/x"), conditional_writes("/tmp/x")
        (False, False)
    """
    return _conditional(filesystem(path, storage_options)[0])


def object_store(fs: Any) -> bool:
    """Whether an fsspec filesystem is an object store (:data:`OBJECT_STORE_PROTOCOLS`)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(protocol in OBJECT_STORE_PROTOCOLS for protocol in protocols)


def _conditional(fs: Any) -> bool:
    return "s3" in fs.protocol and hasattr(fs, "call_s3")


def _precondition_failed(exc: BaseException) -> bool:
    """Whether a store error says a condition of the put did not hold (412, or S3's 409 for a
    conditional put racing another on the same key)."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"PreconditionFailed", "ConditionalRequestConflict", "412"} or status == 412


def read_versioned(
    path: str, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[bytes, str] | None:
    """Read an object and the version (ETag) a later :func:`write_if_version` must find.

    The version is asked first and the content second: if the object changes in between, the
    content may be newer than the version, and a write on that version is then refused (never
    a write over a version that was not read). Only on stores with :func:`conditional_writes`.

    Args:
        path: An fsspec URL.
        storage_options: Passed to the fsspec filesystem.

    Returns:
        The content and its version, or None when the object does not exist.

    Raises:
        TableError: The store cannot do conditional writes, or the read failed.
    """
    fs, fs_path = _conditional_fs(path, storage_options)
    try:
        fs.invalidate_cache(fs_path)  # never a version from a listing made earlier
        version = str(fs.info(fs_path)["ETag"])
        data = bytes(fs.cat_file(fs_path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        raise TableError(f"cannot read {shown_path(path)}: {exc}") from exc
    return data, version


def write_if_version(
    path: str, data: bytes, *, version: str | None, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write an object only if it is still at ``version`` (compare-and-swap), in one put.

    Args:
        path: An fsspec URL on a store with :func:`conditional_writes`.
        data: The whole new content (small: one put).
        version: The ETag the object must have (``If-Match``), or None: it must not exist
            (``If-None-Match: *``).
        storage_options: Passed to the fsspec filesystem.

    Returns:
        The new version (ETag).

    Raises:
        WriteConflict: The object is not at ``version`` (or exists, for None); nothing written.
        TableError: The store cannot do conditional writes, or the write failed.
    """
    fs, fs_path = _conditional_fs(path, storage_options)
    condition = {"mode": "create"} if version is None else {"IfMatch": version}
    try:
        answer = fs.pipe_file(fs_path, data, **condition)
    except (FileExistsError, FileNotFoundError, OSError) as exc:
        if _precondition_failed(exc) or (version is not None and isinstance(exc, FileNotFoundError)):
            expected = "absent" if version is None else f"at version {version}"
            raise WriteConflict(f"{shown_path(path)} is no longer {expected}; not written") from None
        raise TableError(f"cannot write {shown_path(path)}: {exc}") from exc
    finally:
        fs.invalidate_cache(fs_path)
    if isinstance(answer, dict) and answer.get("ETag"):
        return str(answer["ETag"])
    return str(fs.info(fs_path)["ETag"])


def _conditional_fs(path: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, fs_path = filesystem(path, storage_options)
    if not _conditional(fs):
        raise TableError(f"{shown_path(path)}: this store cannot do conditional writes")
    return fs, fs_path


def drop_behind() -> bool:
    """Whether the job files read once later (batch files, row ids, stored results) leave the page
    cache as they are written and read: ``PREFECT_LLM_BATCH_DROP_BEHIND=1``. Off by default.

    It pays where the page cache costs memory the machine must first take (virtual machines whose
    host reclaims freed memory): the next file reuses the pages the last one gave back. Elsewhere
    it only makes writes sync sooner. ``python benchmarks/run.py`` measures both on a machine.
    """
    return os.environ.get(DROP_BEHIND_ENV, "").strip() == "1"


def _drop_cached_pages(descriptor: int) -> None:
    """Tell the kernel it may drop the file's pages from the page cache (clean pages only)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)


class _DropBehindFile(io.FileIO):
    """A file being written that every :data:`DROP_BEHIND_BYTES` syncs what it holds and lets the
    kernel drop those pages, so that writing a big file holds that much page cache, not the file
    (see :func:`drop_behind`).
    """

    _pending = 0

    def write(self, data: Any) -> int:
        written = super().write(data)
        self._pending += written or 0
        if self._pending >= DROP_BEHIND_BYTES:
            os.fsync(self.fileno())
            _drop_cached_pages(self.fileno())
            self._pending = 0
        return written or 0


def _write_local(
    path: str,
    write: Callable[[Any], None],
    *,
    overwrite: bool,
    shown: str,
    drop_cache: bool = False,
    durable: bool = True,
    private: bool = False,
) -> None:
    directory = os.path.dirname(path) or "."
    _makedirs_local(directory, private)
    if not overwrite and os.path.lexists(path):
        raise _exists_error(shown)
    temporary = _temporary_name(path)
    # 0o666 lets the umask decide the final permissions, as for any newly created file; a private
    # file is owner-only from its creation on (and exactly 0600, whatever the umask).
    descriptor = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE if private else 0o666
    )
    drop = drop_cache and _CAN_DROP
    try:
        if private:
            os.chmod(temporary, PRIVATE_FILE_MODE)
        raw = _DropBehindFile(descriptor, "wb") if drop else io.FileIO(descriptor, "wb")
        # A large buffer: pieces written one after the other (views of the lines of a batch
        # file, say) reach the kernel in few system calls, not one each.
        # (Never more than a drop-behind step, so that a file still drops as it grows.)
        buffer = min(WRITE_BUFFER_BYTES, DROP_BEHIND_BYTES) if drop else WRITE_BUFFER_BYTES
        with io.BufferedWriter(raw, buffer_size=buffer) as file:
            write(file)
            file.flush()
            if durable or drop:
                os.fsync(file.fileno())
            if drop:
                _drop_cached_pages(file.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            _publish_without_overwrite(temporary, path, shown)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if durable:
        _fsync_directory(directory)


def _makedirs_local(directory: str, private: bool) -> None:
    """``os.makedirs(directory, exist_ok=True)``; private: each directory created is exactly 0700."""
    if not private:
        os.makedirs(directory, exist_ok=True)
        return
    missing = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by another writer (or a file: the write fails next)
            continue
        os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is cut by the umask


def _temporary_name(path: str) -> str:
    """A hidden, unique name beside ``path`` for a file that becomes ``path`` when renamed."""
    directory = os.path.dirname(path) or "."
    return os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")


def _publish_without_overwrite(temporary: str, path: str, shown: str) -> None:
    """Move ``temporary`` to ``path`` unless something appeared there since the check."""
    try:
        os.link(temporary, path)  # fails if ``path`` exists, unlike a rename
    except FileExistsError:
        raise _exists_error(shown) from None
    except OSError:  # hard links unsupported here: fall back to a checked rename
        if os.path.lexists(path):
            raise _exists_error(shown) from None
        os.replace(temporary, path)
    else:
        os.unlink(temporary)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _exists_error(shown: str) -> TableError:
    return TableError(
        f"{shown} already exists; pass overwrite=True (--overwrite on the command line) to replace it"
    )


#: Object stores: no directories (a missing bucket is never created by a write: it is an error),
#: and fsspec filesystems that keep directory listings for the life of the process.
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})


def filesystem(path: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``path`` and the path on it, with ``storage_options`` as given.

    On object stores (:data:`OBJECT_STORE_PROTOCOLS`) listings are not cached unless the
    options say otherwise (``use_listings_cache``): fsspec keeps one filesystem per set of
    options for the whole process, and a listing kept there would hide from a long-lived process
    (a notebook, a worker) the state that other processes and machines write meanwhile, and
    answer ``exists`` from it.

    Examples:
        >>> fs, where = filesystem("memory://docs/state/jobs")
        >>> where
        '/docs/state/jobs'
    """
    options = dict(storage_options or {})
    if fsspec.core.split_protocol(path)[0] in OBJECT_STORE_PROTOCOLS:
        options.setdefault("use_listings_cache", False)
    fs, fs_path = fsspec.core.url_to_fs(path, **options)
    return fs, fs_path


def shown_path(source: str) -> str:
    """Quote a path for a message, hiding URL credentials and query strings (signed URLs).

    Examples:
        >>> shown_path("s3://key:secret@bucket/in.csv")
        "'s3://***@bucket/in.csv'"
    """
    shown = _URL_USERINFO.sub(r"\g<scheme>***@", source)
    if shown.lower().startswith(("http://", "https://")) and "?" in shown:
        shown = shown.split("?", 1)[0] + "?***"
    return repr(shown)
