"""Writing Parquet: which columns are worth a dictionary, and a table as Parquet bytes."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def dictionary_columns(schema: pa.Schema, sample: pa.Table | None) -> list[str]:
    """The columns worth dictionary-encoding in a Parquet file: those that repeat values.

    Parquet tries a dictionary for every column by default and, for a column of mostly
    distinct values (ids, reviews, answers, timestamps), gives up after the work. Judged on a
    sample of at least 1,000 rows, a flat column with more distinct values than half the
    sample's rows is written plain (no bigger, and faster to write); nested columns (lists such
    as embeddings) are always written plain. Without a big enough sample, and for types Arrow
    cannot count distinct values of (categories, all-null columns, extension types), a flat
    column keeps Parquet's default.

    Args:
        schema: The file's schema.
        sample: The first rows to be written, or None.

    Returns:
        The names of the columns to write with a dictionary (``use_dictionary`` of
        ``pyarrow.parquet.ParquetWriter``).

    Examples:
        >>> import pyarrow as pa
        >>> sample = pa.table({"id": range(2000), "kind": ["a", "b"] * 1000})
        >>> dictionary_columns(sample.schema, sample)
        ['kind']
        >>> dictionary_columns(sample.schema, None)
        ['id', 'kind']
    """
    names = []
    judged = sample is not None and sample.num_rows >= 1000
    for field in schema:
        if pa.types.is_nested(field.type):
            continue
        if judged and sample is not None and field.name in sample.column_names:
            try:
                distinct = pc.count_distinct(sample.column(field.name)).as_py()
            except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
                distinct = 0  # no kernel for the type (categories, nulls, extensions): the default
            if distinct > sample.num_rows // 2:
                continue
        names.append(field.name)
    return names


def parquet_bytes(table: pa.Table) -> bytes:
    """Encode a table as Parquet bytes (the state's and the cache's results files).

    Examples:
        >>> import pyarrow as pa
        >>> parquet_bytes(pa.table({"custom_id": ["a"]}))[:4]
        b'PAR1'
    """
    sink = pa.BufferOutputStream()
    # Ids and answers are mostly distinct: written plain (see dictionary_columns), faster.
    options: dict[str, Any] = {"use_dictionary": dictionary_columns(table.schema, table.slice(0, 4096))}
    pq.write_table(table, sink, **options)  # (the stubs take only a bool)
    return bytes(sink.getvalue().to_pybytes())
