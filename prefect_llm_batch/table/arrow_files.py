"""Opening a source through fsspec and handing it to pyarrow's readers safely; growing a reader's
blocks when a row does not fit one.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TypeVar

import fsspec
import pyarrow as pa

from prefect_llm_batch.errors import TableError

T = TypeVar("T")


#: The largest block the CSV and JSON Lines readers grow to: the longest row (CSV) or line
#: (JSON Lines) that can be read.
MAX_BLOCK_SIZE = 1 << 30

#: Seconds to wait, after an Arrow reader returned, for its threads to let go of the Python file
#: it read (see :func:`read_through_arrow`).
_RELEASE_SECONDS = 10.0

STRADDLING = "straddling object straddles two block boundaries"


@contextlib.contextmanager
def open_source(source: str, options: Mapping[str, Any], *, compression: str | None) -> Iterator[IO[bytes]]:
    """Open ``source`` for reading bytes through fsspec (``compression``: ``"infer"`` or None)."""
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


def read_through_arrow(file: IO[bytes], read: Callable[[Any], T]) -> T:
    """``read(file)`` with an Arrow reader, returning only once Arrow's threads let go of ``file``.

    Arrow's threaded CSV and JSON readers keep the Python file they read until their last
    callback ends, on one of Arrow's own threads, which may be after the reader returned. When
    that callback drops the file while the interpreter exits, the thread cannot take the GIL
    and the process aborts ("terminate called without an active exception", exit 134): a
    command that failed right after reading a table died so about one run in ten. Waiting here
    (a few microseconds normally) keeps every Python object out of Arrow's threads once the
    read is over, whether it returned or raised.

    ``read`` must not keep its argument in a Python frame (pass a Cython function, maybe
    through :func:`functools.partial`, or :func:`first_rows_of`).
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


def first_rows_of(open_reader: Callable[[Any], Any], limit: int, file: Any) -> pa.Table:
    """The first ``limit`` rows of the streaming reader ``open_reader(file)``, which is closed after."""
    reader = open_reader(file)
    del file  # only the reader holds it now (see read_through_arrow)
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


def grown_block_size(block_size: int, exc: Exception) -> int | None:
    """The next block size after ``exc``, when it says a row did not fit a block (else None)."""
    if STRADDLING not in str(exc) or block_size >= MAX_BLOCK_SIZE:
        return None
    return min(block_size * 4, MAX_BLOCK_SIZE)


def row_too_long(shown: str, block_size: int) -> TableError:
    """The error for a row (CSV) or line (JSON Lines) longer than the biggest block tried."""
    return TableError(
        f"cannot read {shown}: a row is too long to read, even in blocks of {block_size >> 20} MB "
        "(MAX_BLOCK_SIZE)"
    )
