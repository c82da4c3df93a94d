"""Which filesystem a path is on, how a path is shown in messages, and conditional writes on
object stores.

:func:`filesystem` gives the fsspec filesystem of a local path or URL (object stores without a
listings cache); :func:`shown_path` quotes a path for a message with its credentials hidden;
:func:`object_store` tells object stores (:data:`OBJECT_STORE_PROTOCOLS`) from filesystems with
directories.

Conditional writes (object stores that support them: S3 through s3fs). Publishing without
overwrite (``overwrite=False`` in :func:`~prefect_llm_batch.files.write_parquet_atomic` and
:func:`~prefect_llm_batch.files.write_parquet_batches_atomic`) sends the one put with
``If-None-Match: *``, so an object that appears between the existence check and the put is never
replaced: the store refuses the put and the write fails as if the check had seen it.
:func:`read_versioned` and :func:`write_if_version` give a compare-and-swap on one object
(``If-None-Match: *`` to create, ``If-Match: <ETag>`` to replace a known version), which the job
lease uses. Where the store cannot (:func:`conditional_writes` is false: the local filesystem,
which has its own atomic link and rename; ``memory://``, GCS, Azure... through fsspec),
publishing without overwrite is today's check then put, and a file created between the two is
replaced. S3-compatible servers that ignore these headers (some older ones) give no protection
either; AWS S3, MinIO and moto honour them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import fsspec
import fsspec.core

from prefect_llm_batch.errors import TableError

__all__ = [
    "OBJECT_STORE_PROTOCOLS",
    "WriteConflict",
    "can_write_conditionally",
    "conditional_writes",
    "filesystem",
    "object_store",
    "precondition_failed",
    "read_versioned",
    "shown_path",
    "write_if_version",
]

_URL_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")

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


class WriteConflict(TableError):
    """A conditional write was refused: the object is not (or no longer) the version expected."""


def conditional_writes(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether the store of ``path`` refuses a put on a condition (``If-None-Match``, ``If-Match``):
    S3 through s3fs. See the module docstring for what happens elsewhere.

    Examples:
        >>> conditional_writes("memory://docs/x"), conditional_writes("/tmp/x")
        (False, False)
    """
    return can_write_conditionally(filesystem(path, storage_options)[0])


def object_store(fs: Any) -> bool:
    """Whether an fsspec filesystem is an object store (:data:`OBJECT_STORE_PROTOCOLS`)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(protocol in OBJECT_STORE_PROTOCOLS for protocol in protocols)


def can_write_conditionally(fs: Any) -> bool:
    """Whether an fsspec filesystem refuses a put on a condition (see :func:`conditional_writes`)."""
    return "s3" in fs.protocol and hasattr(fs, "call_s3")


def precondition_failed(exc: BaseException) -> bool:
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
        if precondition_failed(exc) or (version is not None and isinstance(exc, FileNotFoundError)):
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
    if not can_write_conditionally(fs):
        raise TableError(f"{shown_path(path)}: this store cannot do conditional writes")
    return fs, fs_path
