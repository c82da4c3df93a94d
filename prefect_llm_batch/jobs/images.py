"""Loading the images of a job's rows (``image_columns``) while it is prepared: before anything is
sent, so a missing, unreadable, unknown or too large image is an error naming its row, column and
path.

A cell of an image column is one of:

* an ``http://`` / ``https://`` URL: passed to the provider as it is, never fetched (Gemini takes
  no image URLs here: an error);
* a ``data:<type>;base64,...`` URL: its bytes;
* a local path or an fsspec URL (``s3://``, ``file://``, ``memory://``...): the file's bytes. A
  relative local path is relative to the directory of the source table (a local directory
  source: that directory), so a table and its image folder move together;
* bytes (a binary column, e.g. images stored in Parquet);
* null: an error naming the row, unless ``allow_missing_images`` (then the row has no image from
  that column).

Bytes must be PNG, JPEG, GIF or WEBP (read from their magic number) and at most the provider's
:attr:`~prefect_llm_batch.providers.base.BatchProvider.max_image_bytes`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ..errors import InputError, TableError
from ..files import modified_time, read_bytes
from ..images import Image, is_public_url
from ..object_stores import filesystem, shown_path
from ..shards import Shard
from ..table import scan_table
from ..table.formats import EXTENSIONS, path_part

#: Rows whose images are read at once while a job is prepared (a slice's images are in memory).
IMAGE_SLICE_ROWS = 256


def image_base(source: str, storage_options: dict[str, Any] | None = None) -> str:
    """The directory relative image paths of ``source``'s table are read from: the directory of
    a file source, a directory source itself (a dataset of parts, local or an fsspec URL: its
    root, whichever part a row is in).

    Args:
        source: The source the user gave.
        storage_options: fsspec options (to ask an object store whether ``source`` is a
            directory; a name with a table file's extension is taken for a file unasked).

    Examples:
        >>> image_base("s3://bucket/tables/reviews.parquet")
        's3://bucket/tables'
        >>> image_base("reviews.csv")
        '.'
    """
    if "://" not in source:
        return source if os.path.isdir(source) else os.path.dirname(source) or "."
    trimmed = path_part(source).rstrip("/")
    name = trimmed.rsplit("/", 1)[-1].lower()
    if not is_public_url(trimmed) and os.path.splitext(name)[1] not in (*EXTENSIONS, ".gz"):
        try:
            fs, path = filesystem(trimmed, storage_options)
            if fs.isdir(path):
                return trimmed
        except (OSError, ValueError):
            pass  # reading the table names the error
    return posixpath.dirname(trimmed) or "."


def check_image_columns(columns: Sequence[str], names: Sequence[str]) -> None:
    """Every image column is in the table.

    Raises:
        InputError: Naming the missing column and the table's columns.
    """
    for column in columns:
        if column not in names:
            raise InputError(
                f"image column {column!r} is not in the table; available columns: {', '.join(names)}"
            )


class ImageLoader:
    """Reads the images of a slice of rows, one list of :class:`~prefect_llm_batch.images.Image`
    per row (one per image column that has one, in the order of the columns).

    Args:
        columns: The image columns.
        source: The source table (relative paths are relative to its directory).
        allow_missing: A null cell means no image from that column (else it is an error).
        max_image_bytes: The provider's largest image in bytes (None: no limit).
        accepts_urls: Whether the provider takes ``http(s)`` image URLs (else they are an error).
        provider: The provider's name, for messages.
        id_column: The id column, named in messages with each row.
        storage_options: fsspec options for the image files (as for the source).
    """

    def __init__(
        self,
        columns: Sequence[str],
        source: str,
        *,
        allow_missing: bool = False,
        max_image_bytes: int | None = None,
        accepts_urls: bool = True,
        provider: str = "",
        id_column: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.columns = list(columns)
        self.base = image_base(source, storage_options)
        self.allow_missing = allow_missing
        self.max_image_bytes = max_image_bytes
        self.accepts_urls = accepts_urls
        self.provider = provider
        self.id_column = id_column
        self.storage_options = storage_options

    def load(self, table: pa.Table, first_row: int) -> list[list[Image]]:
        """The images of every row of ``table`` (rows ``first_row`` on in the job).

        Raises:
            InputError: A cell is null (without ``allow_missing``), of a type that is not text or
                bytes, a file that is missing or unreadable, bytes that are not PNG, JPEG, GIF or
                WEBP, an image over the provider's limit, or a URL the provider does not take;
                the message names the row (and its id), the column and the path.
        """
        images: list[list[Image]] = [[] for _ in range(table.num_rows)]
        for column in self.columns:
            values = table.column(column)
            kind = values.type
            if not (
                pa.types.is_string(kind)
                or pa.types.is_large_string(kind)
                or pa.types.is_binary(kind)
                or pa.types.is_large_binary(kind)
                or pa.types.is_fixed_size_binary(kind)
                or pa.types.is_null(kind)
            ):
                raise InputError(
                    f"image column {column!r} is of type {kind}; it must hold text (URLs or paths) or bytes"
                )
            for position, cell in enumerate(values.to_pylist()):
                image = self._image(cell, column, table, first_row, position)
                if image is not None:
                    images[position].append(image)
        return images

    def _row(self, table: pa.Table, first_row: int, position: int) -> str:
        name = f"row {first_row + position}"
        if self.id_column is not None:
            name += f" (id {table.column(self.id_column)[position].as_py()!r})"
        return name

    def _image(self, cell: Any, column: str, table: pa.Table, first_row: int, position: int) -> Image | None:
        where = f"{self._row(table, first_row, position)}, image column {column!r}"
        if cell is None:
            if self.allow_missing:
                return None
            raise InputError(
                f"{where} is null: no image; fix the data, or pass allow_missing_images=True "
                "(--allow-missing-images) to send such rows without that image"
            )
        path: str | None = None
        try:
            if isinstance(cell, bytes):
                image = Image.from_bytes(cell)
            elif not isinstance(cell, str) or not cell.strip():
                raise ValueError("an empty text is neither a URL nor a path")
            elif is_public_url(cell):
                if not self.accepts_urls:
                    raise ValueError(
                        f"provider {self.provider!r} takes no image URLs in batch requests here; "
                        "give a local path, an fsspec URL or the bytes"
                    )
                return Image(url=cell)
            elif cell.startswith("data:"):
                image = Image.from_data_url(cell)
            else:
                path = image_path(cell, self.base)
                assert path is not None
                image = Image.from_bytes(read_bytes(path, storage_options=self.storage_options))
        except (ValueError, TableError) as exc:
            shown = f" ({shown_path(path)})" if path is not None else ""
            message = exc.message if isinstance(exc, TableError) else str(exc)
            raise InputError(f"{where}{shown}: {message}") from None
        if self.max_image_bytes is not None and image.size > self.max_image_bytes:
            shown = f" ({shown_path(path)})" if path is not None else ""
            raise InputError(
                f"{where}{shown}: the image is {image.size} bytes, more than provider "
                f"{self.provider!r} takes ({self.max_image_bytes} bytes per image); make it smaller"
            )
        return image


def image_path(cell: str, base: str) -> str | None:
    """The file a text cell of an image column names (relative to ``base``), or None for a URL or
    a ``data:`` URL (their text is the image's identity).

    Examples:
        >>> image_path("imgs/a.png", "/data"), image_path("https://x/a.png", "/data")
        ('/data/imgs/a.png', None)
    """
    if not cell.strip() or is_public_url(cell) or cell.startswith("data:"):
        return None
    return cell if "://" in cell or os.path.isabs(cell) else posixpath.join(base, cell)


def images_fingerprint(
    source: str,
    columns: Sequence[str],
    *,
    limit: int | None = None,
    storage_options: dict[str, Any] | None = None,
    invalid_utf8: Any = "error",
    shard: Shard | None = None,
) -> str | None:
    """A digest of the image files a table's image columns name: each file's path, size and
    modification time (not its bytes). Part of the job's identity, so a job whose image files
    changed in place is a new job (planned again, its changed images sent under new keys), not
    the old plan resumed. Bytes and URL cells are covered by the table's own fingerprint.

    Args:
        source: The source the user gave (relative paths are read from :func:`image_base`).
        columns: The image columns.
        limit: Only the first ``limit`` rows.
        storage_options: fsspec options of the source and the image files.
        invalid_utf8: As the job's.
        shard: Only this shard of ``source`` (a sharded job's shard: see
            :func:`~prefect_llm_batch.jobs.sharded.shard_content_fingerprint`).

    Returns:
        None when the table has no such column (preparing the job names the error).
    """
    scan = scan_table(
        source, limit=limit, storage_options=storage_options, invalid_utf8=invalid_utf8, shard=shard
    )
    if any(column not in scan.schema.names for column in columns):
        return None
    if scan.whole is None:
        scan = scan_table(
            source,
            limit=limit,
            columns=list(columns),
            storage_options=storage_options,
            invalid_utf8=invalid_utf8,
            shard=shard,
        )
    base = image_base(source, storage_options)
    paths: set[str] = set()
    for batch in scan.batches:
        for column in columns:
            values = batch.column(batch.schema.get_field_index(column))
            if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                paths.update(p for cell in values.to_pylist() if cell and (p := image_path(cell, base)))
    digest = hashlib.sha256(b"prefect-llm-batch images\n")
    for path in sorted(paths):
        try:
            fs, where = filesystem(path, storage_options)
            stamp = f"{fs.size(where)} {modified_time(fs, where, 0.0)}"
        except (OSError, ValueError):
            stamp = "unreadable"  # preparing the job names the error
        digest.update(f"{path}\t{stamp}\n".encode())
    return digest.hexdigest()
