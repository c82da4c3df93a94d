"""Table formats through pyarrow and fsspec: reading CSV, Parquet, JSON Lines and datasets, scans,
fingerprints, Parquet encoding.

This is the only package that reads table formats. Everything goes through
`fsspec <https://filesystem-spec.readthedocs.io>`_, so a source or destination may be a local
path or any fsspec URL (``file://``, ``memory://``, ``s3://``, ``gs://``, ``az://`` ...);
``storage_options`` are passed to the filesystem as given.

Formats are told by extension (see :func:`table_format`): CSV (``.csv``, optionally compressed:
``.csv.gz``, ``.csv.bz2``, ``.csv.xz``...), Parquet (``.parquet``, ``.pq``) and JSON Lines
(``.jsonl``, ``.ndjson``, optionally compressed). A **directory** (or object-store prefix) is a
partitioned Parquet table: its ``.parquet`` / ``.pq`` files, found recursively and taken in path
order, are its parts (files whose name starts with ``.`` or ``_``, such as ``_SUCCESS``, are
skipped; Hive-style ``key=value`` folder names are not turned into columns).

:func:`scan_table` streams a table in record batches: Parquet files and directories are read
one batch at a time, so memory is bounded by the batch, not the table; CSV and JSON Lines are
read whole first (their column types are inferred over the whole file), then sliced.

Tables are read with pyarrow's own readers (never pandas), so types survive:

* an integer column with nulls stays ``int64`` with nulls (no ``1.0``);
* ISO-8601 timestamps in CSV and JSON Lines become ``timestamp`` columns (values with a zone
  offset become ``timestamp[..., tz=UTC]`` in CSV; pyarrow's JSON reader converts them to UTC);
* Parquet keeps every type it stores;
* CSV cells may hold any Unicode and quoted newlines;
* a CSV column whose first rows look numeric but a later row does not becomes a wider type
  (``int64`` -> ``float64`` -> ``string``) instead of failing, and a JSON Lines field that
  mixes strings and numbers becomes a ``string`` column holding the JSON text of the
  non-string values;
* a CSV or JSON Lines column with no values at all (a header-only CSV) is a ``string`` column.

``columns_types`` forces a column's type: ``"string"``, ``"int64"``, ``"float64"``, ``"bool"``
or ``"timestamp"`` (timezone-naive, or UTC when the values carry zone offsets). A value that
does not fit a forced type is an error naming the column.

Every failure is raised as :class:`~prefect_llm_batch.errors.TableError` naming the path
(with any credentials in the URL and its query string hidden). The file primitives it writes and
reads with (atomic writes, directories, existence) live in :mod:`~prefect_llm_batch.files`.

Modules:

* :mod:`~prefect_llm_batch.table.formats`: formats told by file name, forced column types;
* :mod:`~prefect_llm_batch.table.reading`: :func:`read_table`, :func:`scan_table`, :func:`read_ahead`;
* :mod:`~prefect_llm_batch.table.csv_reading`, :mod:`~prefect_llm_batch.table.jsonl_reading`: the
  CSV and JSON Lines readers (type widening, growing blocks);
* :mod:`~prefect_llm_batch.table.parquet_dataset`: Parquet files and datasets (directory parts,
  scans in record batches);
* :mod:`~prefect_llm_batch.table.utf8_checks`: text that is not valid UTF-8;
* :mod:`~prefect_llm_batch.table.arrow_files`: opening sources and handing them to Arrow's readers;
* :mod:`~prefect_llm_batch.table.fingerprints`: :func:`fingerprint`;
* :mod:`~prefect_llm_batch.table.parquet_writing`: :func:`parquet_bytes`, :func:`dictionary_columns`.

Examples:
    >>> import pyarrow as pa
    >>> from prefect_llm_batch.files import write_parquet_atomic
    >>> write_parquet_atomic(pa.table({"id": [1, None]}), "memory://docs/ids.parquet", overwrite=True)
    >>> read_table("memory://docs/ids.parquet").column("id").to_pylist()
    [1, None]
"""

from __future__ import annotations

from prefect_llm_batch.table.arrow_files import MAX_BLOCK_SIZE
from prefect_llm_batch.table.fingerprints import fingerprint
from prefect_llm_batch.table.formats import COLUMN_TYPES, InvalidUTF8, TableFormat, table_format
from prefect_llm_batch.table.parquet_writing import dictionary_columns, parquet_bytes
from prefect_llm_batch.table.reading import SCAN_BATCH_ROWS, TableScan, read_ahead, read_table, scan_table

__all__ = [
    "COLUMN_TYPES",
    "MAX_BLOCK_SIZE",
    "SCAN_BATCH_ROWS",
    "InvalidUTF8",
    "TableFormat",
    "TableScan",
    "dictionary_columns",
    "fingerprint",
    "parquet_bytes",
    "read_ahead",
    "read_table",
    "scan_table",
    "table_format",
]
