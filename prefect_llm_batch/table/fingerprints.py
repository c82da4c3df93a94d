"""Fingerprints of a table's stored bytes (a file, or a dataset's parts)."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.object_stores import filesystem, shown_path
from prefect_llm_batch.table.formats import path_part
from prefect_llm_batch.table.parquet_dataset import directory_parts

#: Bytes read at a time by :func:`fingerprint`.
FINGERPRINT_BLOCK_SIZE = 8 << 20


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
    parts = directory_parts(source, storage_options or {})
    if parts is not None:  # a partitioned table: its parts' names and contents, in order
        digest = hashlib.sha256(b"prefect-llm-batch parquet directory\n")
        root = len(path_part(source).rstrip("/"))
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
