"""Writing a local file atomically and durably: a temporary file beside it renamed over it,
fsync of the file and its directory, owner-only permissions, and page-cache drop-behind.

:func:`write_local` is the local half of :mod:`~prefect_llm_batch.files`' atomic writes: the
bytes go to a hidden temporary file next to the destination (:func:`makedirs_local` creates the
directories, exactly 0700 for a private write), which is synced and then renamed over it, or
linked to it when an existing file must not be replaced.

Page-cache drop-behind for big files written or read once (:func:`drop_behind`, off by default):
a file written with ``drop_cache`` syncs every :data:`DROP_BEHIND_BYTES` and lets the kernel
drop those pages as it grows.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Callable
from typing import Any

from prefect_llm_batch.errors import TableError

__all__ = [
    "CAN_DROP",
    "DROP_BEHIND_BYTES",
    "DROP_BEHIND_ENV",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "WRITE_BUFFER_BYTES",
    "drop_behind",
    "drop_cached_pages",
    "exists_error",
    "makedirs_local",
    "write_local",
]

#: Permissions of a private file, and of a directory a private write creates (local filesystems).
PRIVATE_FILE_MODE, PRIVATE_DIR_MODE = 0o600, 0o700

#: The buffer of a local file being written (pieces smaller than this are gathered first).
WRITE_BUFFER_BYTES = 1 << 20
#: Bytes a file written with ``drop_cache`` grows by between two write-behind syncs.
DROP_BEHIND_BYTES = 32 << 20
#: Whether this platform can drop a file's pages from the page cache (``posix_fadvise``).
CAN_DROP = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")
#: Set to ``1`` to turn page-cache drop-behind on (see :func:`drop_behind`); off by default.
DROP_BEHIND_ENV = "PREFECT_LLM_BATCH_DROP_BEHIND"


def drop_behind() -> bool:
    """Whether the job files read once later (batch files, row ids, stored results) leave the page
    cache as they are written and read: ``PREFECT_LLM_BATCH_DROP_BEHIND=1``. Off by default.

    It pays where the page cache costs memory the machine must first take (virtual machines whose
    host reclaims freed memory): the next file reuses the pages the last one gave back. Elsewhere
    it only makes writes sync sooner. ``python benchmarks/run.py`` measures both on a machine.
    """
    return os.environ.get(DROP_BEHIND_ENV, "").strip() == "1"


def drop_cached_pages(descriptor: int) -> None:
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
            drop_cached_pages(self.fileno())
            self._pending = 0
        return written or 0


def write_local(
    path: str,
    write: Callable[[Any], None],
    *,
    overwrite: bool,
    shown: str,
    drop_cache: bool = False,
    durable: bool = True,
    private: bool = False,
) -> None:
    """Write a local file through ``write`` into a temporary file beside it, then rename it over
    ``path`` (or link it there when ``overwrite`` is false), so that readers never see it partial.

    Args:
        path: The local destination.
        write: Writes the whole content to the binary file it is given.
        overwrite: Replace an existing file. Without it an existing ``path`` is an error, even
            one that appears while the file is being written.
        shown: ``path`` as messages quote it.
        drop_cache: The file's pages leave the page cache as it grows (see :func:`drop_behind`).
        durable: Sync the file and its directory before returning.
        private: The file is exactly 0600 and the directories created exactly 0700.

    Raises:
        TableError: ``path`` exists and ``overwrite`` is false (the temporary file is removed).
        OSError: The write failed (the temporary file is removed).
    """
    directory = os.path.dirname(path) or "."
    makedirs_local(directory, private)
    if not overwrite and os.path.lexists(path):
        raise exists_error(shown)
    temporary = _temporary_name(path)
    # 0o666 lets the umask decide the final permissions, as for any newly created file; a private
    # file is owner-only from its creation on (and exactly 0600, whatever the umask).
    descriptor = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE if private else 0o666
    )
    drop = drop_cache and CAN_DROP
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
                drop_cached_pages(file.fileno())
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


def makedirs_local(directory: str, private: bool) -> None:
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
        raise exists_error(shown) from None
    except OSError:  # hard links unsupported here: fall back to a checked rename
        if os.path.lexists(path):
            raise exists_error(shown) from None
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


def exists_error(shown: str) -> TableError:
    """The error of a write that must not replace the file ``shown`` (already quoted) that exists."""
    return TableError(
        f"{shown} already exists; pass overwrite=True (--overwrite on the command line) to replace it"
    )
