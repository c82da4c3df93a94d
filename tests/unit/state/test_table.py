"""Tests for prefect_llm_batch.table: reading and writing tables through pyarrow and fsspec."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import local_files
from prefect_llm_batch.errors import InputError, TableError
from prefect_llm_batch.files import (
    exists,
    read_bytes,
    write_bytes_atomic,
    write_parquet_atomic,
    write_parquet_batches_atomic,
)
from prefect_llm_batch.table import (
    csv_reading,
    dictionary_columns,
    fingerprint,
    fingerprints,
    jsonl_reading,
    read_ahead,
    read_table,
    scan_table,
    table_format,
)


@pytest.fixture
def mem() -> Iterator[str]:
    """A fresh ``memory://`` folder, removed afterwards."""
    root = f"memory://test-table-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root.removeprefix("memory://")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", "csv"),
        ("A.CSV", "csv"),
        ("s3://bucket/dir/a.csv.gz", "csv"),
        ("a.csv.bz2", "csv"),
        ("a.csv.xz", "csv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
        ("memory://x/a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.jsonl.gz", "jsonl"),
        ("https://host/a.csv?X-Amz-Signature=abc", "csv"),
    ],
)
def test_table_format_by_extension(name: str, expected: str) -> None:
    assert table_format(name) == expected


def test_json_is_refused_with_a_hint() -> None:
    with pytest.raises(TableError, match=r"'data\.json'.*rename it to \.jsonl"):
        table_format("data.json")


def test_unknown_extension_names_path_and_supported_extensions() -> None:
    with pytest.raises(TableError) as info:
        table_format("/data/table.xlsx")
    message = str(info.value)
    assert "/data/table.xlsx" in message
    for ext in (".csv", ".parquet", ".jsonl", ".gz"):
        assert ext in message
    assert isinstance(info.value, InputError)


def test_compressed_parquet_is_refused() -> None:
    with pytest.raises(TableError, match="compressed internally"):
        table_format("a.parquet.gz")


def test_missing_compression_package_is_named() -> None:
    with pytest.raises(TableError, match="zstandard"):
        table_format("a.csv.zst")


def test_messages_hide_url_credentials_and_query() -> None:
    with pytest.raises(TableError) as info:
        table_format("https://user:hunter2@host/data.xlsx?sig=topsecret")
    assert "hunter2" not in str(info.value)
    assert "topsecret" not in str(info.value)
    assert "host/data.xlsx" in str(info.value)


# -- CSV -------------------------------------------------------------------------------------


def test_csv_keeps_types(tmp_path: Path) -> None:
    source = _write(
        tmp_path / "t.csv",
        "id,score,flag,when,day,text\n"
        "1,1.5,true,2024-01-02T03:04:05,2024-01-02,plain\n"
        ',,false,2024-01-02 03:04:06,2024-01-03,"multi\nline, with comma and ""quotes"""\n'
        "3,0.1,,,,Ünïcödé ✓ 日本\n",
    )
    table = read_table(source)
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == [1, None, 3]
    assert table.schema.field("score").type == pa.float64()
    assert table.schema.field("flag").type == pa.bool_()
    assert pa.types.is_timestamp(table.schema.field("when").type)
    assert table.column("when").to_pylist()[:2] == [
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        datetime.datetime(2024, 1, 2, 3, 4, 6),
    ]
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("text").type == pa.string()
    assert table.column("text").to_pylist() == [
        "plain",
        'multi\nline, with comma and "quotes"',
        "Ünïcödé ✓ 日本",
    ]


def test_csv_timestamps_with_offsets_become_utc(tmp_path: Path) -> None:
    source = _write(tmp_path / "t.csv", "at\n2024-01-02T03:04:05+01:00\n2024-01-02T03:04:05Z\n")
    column = read_table(source).column("at")
    assert column.type == pa.timestamp("s", tz="UTC")
    assert column.to_pylist()[0] == datetime.datetime(2024, 1, 2, 2, 4, 5, tzinfo=datetime.timezone.utc)


def test_csv_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffa,b\r\n1,x\r\n".encode())
    assert read_table(str(path)).to_pylist() == [{"a": 1, "b": "x"}]


def test_gzipped_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b"a,b\n1,x\n2,y\n"))
    assert read_table(str(path)).to_pylist() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert read_table(str(path), limit=1).num_rows == 1


def _late_text_csv(rows: int, late: str) -> bytes:
    body = "".join(f"{i},r{i}\n" for i in range(rows))
    return f"n,label\n{body}{late},late\n".encode()


@pytest.mark.parametrize("limit", [None, 200_000])
def test_csv_late_text_in_numeric_column_becomes_string(mem: str, limit: int | None) -> None:
    # 100k numbers (~1.2 MB, more than one default 1 MiB block), then text.
    source = f"{mem}/late.csv"
    write_bytes_atomic(source, _late_text_csv(100_000, "abc"))
    table = read_table(source, limit=limit)
    assert table.schema.field("n").type == pa.string()
    assert table.num_rows == 100_001
    assert table.column("n")[0].as_py() == "0"
    assert table.column("n")[100_000].as_py() == "abc"


@pytest.mark.parametrize("limit", [None, 10_000])
def test_csv_late_text_with_small_blocks(
    mem: str, limit: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_reading, "CSV_BLOCK_SIZE", 4096)
    source = f"{mem}/late.csv"
    write_bytes_atomic(source, _late_text_csv(5_000, "not a number"))
    table = read_table(source, limit=limit)
    assert table.schema.field("n").type == pa.string()
    assert table.column("n").to_pylist()[-1] == "not a number"


def test_csv_late_float_in_int_column_becomes_float(mem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_reading, "CSV_BLOCK_SIZE", 4096)
    source = f"{mem}/late.csv"
    write_bytes_atomic(source, _late_text_csv(5_000, "2.5"))
    for limit in (None, 10_000):
        column = read_table(source, limit=limit).column("n")
        assert column.type == pa.float64()
        assert column.to_pylist()[-2:] == [4999.0, 2.5]


def test_csv_limit_types_come_from_rows_read(mem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_reading, "CSV_BLOCK_SIZE", 4096)
    source = f"{mem}/late.csv"
    write_bytes_atomic(source, _late_text_csv(5_000, "abc"))
    table = read_table(source, limit=3)
    assert table.column("n").to_pylist() == [0, 1, 2]


def test_csv_limit_does_not_read_past_the_rows_asked_for(mem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_reading, "CSV_BLOCK_SIZE", 4096)
    rows = "".join(f"{i},x\n" for i in range(5_000))
    source = f"{mem}/broken_tail.csv"
    write_bytes_atomic(source, f"a,b\n{rows}1,2,3,4\n".encode())  # a malformed last row
    assert read_table(source, limit=5).column("a").to_pylist() == [0, 1, 2, 3, 4]
    with pytest.raises(TableError, match=r"broken_tail\.csv"):
        read_table(source)


def test_columns_types_force_types(tmp_path: Path) -> None:
    source = _write(tmp_path / "t.csv", "zip,n,f,ok,at\n007,1,2,1,2024-01-02\n010,,3,0,2024-01-03T04:05:06\n")
    table = read_table(
        source,
        columns_types={"zip": "string", "n": "float64", "f": "int64", "ok": "bool", "at": "timestamp"},
    )
    assert table.column("zip").to_pylist() == ["007", "010"]
    assert table.schema.field("n").type == pa.float64()
    assert table.schema.field("f").type == pa.int64()
    assert table.column("ok").to_pylist() == [True, False]
    assert table.schema.field("at").type == pa.timestamp("us")
    assert table.column("at").to_pylist() == [
        datetime.datetime(2024, 1, 2),
        datetime.datetime(2024, 1, 3, 4, 5, 6),
    ]


def test_forced_timestamp_with_offsets_is_utc(tmp_path: Path) -> None:
    source = _write(tmp_path / "t.csv", "at\n2024-01-02T03:04:05+01:00\n")
    column = read_table(source, columns_types={"at": "timestamp"}).column("at")
    assert column.type == pa.timestamp("us", tz="UTC")


def test_forced_type_that_does_not_fit_names_the_column(tmp_path: Path) -> None:
    source = _write(tmp_path / "t.csv", "a,b\n1,x\nabc,y\n")
    with pytest.raises(TableError, match=r"column 'a' was forced to int64.*'abc'"):
        read_table(source, columns_types={"a": "int64"})


def test_unknown_forced_type_or_column(tmp_path: Path) -> None:
    source = _write(tmp_path / "t.csv", "a,b\n1,x\n")
    with pytest.raises(TableError, match=r"unknown type 'integer'; known types: string, int64"):
        read_table(source, columns_types={"a": "integer"})
    with pytest.raises(TableError, match=r"column 'zz'.*available columns: a, b"):
        read_table(source, columns_types={"zz": "string"})


def test_header_only_csv_gives_empty_string_columns(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path / "t.csv", "a,b\n"))
    assert table.num_rows == 0
    assert table.schema == pa.schema([("a", pa.string()), ("b", pa.string())])


def test_empty_column_is_string(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path / "t.csv", "a,b\n1,\n2,\n"))
    assert table.schema.field("b").type == pa.string()
    assert table.column("b").to_pylist() == [None, None]


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl"])
def test_empty_file_gives_empty_table(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    assert read_table(str(tmp_path / name)).num_columns == 0
    assert read_table(str(tmp_path / name), limit=5).num_rows == 0


@pytest.mark.parametrize("source", ["missing.csv", "missing.parquet", "missing.jsonl"])
def test_missing_file_names_the_path(tmp_path: Path, source: str) -> None:
    path = str(tmp_path / source)
    with pytest.raises(TableError, match=f"{source}': no such file"):
        read_table(path)


def test_missing_memory_file(mem: str) -> None:
    with pytest.raises(TableError, match="no such file"):
        read_table(f"{mem}/nope.csv")


def test_negative_limit(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="limit must be >= 0"):
        read_table(_write(tmp_path / "t.csv", "a\n1\n"), limit=-1)


def test_file_url(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "a\n1\n")
    assert read_table(Path(path).as_uri()).to_pylist() == [{"a": 1}]


def test_storage_options_reach_the_filesystem(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "a\n1\n")
    assert read_table(f"file://{path}", storage_options={"auto_mkdir": False}).num_rows == 1


# -- JSON Lines ------------------------------------------------------------------------------


def test_jsonl_keeps_types(mem: str) -> None:
    source = f"{mem}/t.jsonl"
    write_bytes_atomic(
        source,
        b'{"id": 1, "text": "h\\u00e9llo\\nworld", "at": "2024-01-02T03:04:05", "tags": ["a"]}\n'
        b"\n"
        b'{"id": null, "text": null, "at": "2024-01-03 00:00:00", "tags": []}\n',
    )
    table = read_table(source)
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == [1, None]
    assert table.column("text").to_pylist() == ["héllo\nworld", None]
    assert pa.types.is_timestamp(table.schema.field("at").type)
    assert table.column("tags").to_pylist() == [["a"], []]


def test_jsonl_mixed_types_become_strings(mem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl_reading, "JSON_BLOCK_SIZE", 4096)
    lines = [f'{{"code": {i}, "x": 1}}' for i in range(2_000)]
    lines += ['{"code": "A-1", "x": 2}', '{"code": true, "x": 3}', '{"code": {"k": 1}, "x": 4}']
    source = f"{mem}/mixed.jsonl"
    write_bytes_atomic(source, "\n".join(lines).encode())
    for limit in (None, 5_000):
        table = read_table(source, limit=limit)
        assert table.schema.field("code").type == pa.string()
        assert table.schema.field("x").type == pa.int64()
        assert table.column("code").to_pylist()[-4:] == ["1999", "A-1", "true", '{"k":1}']
    assert read_table(source, limit=2).column("code").to_pylist() == [0, 1]


def test_jsonl_forced_string(mem: str) -> None:
    source = f"{mem}/t.jsonl"
    write_bytes_atomic(source, b'{"zip": 7, "n": "3"}\n{"zip": 10, "n": "4"}\n')
    table = read_table(source, columns_types={"zip": "string", "n": "int64"})
    assert table.column("zip").to_pylist() == ["7", "10"]
    assert table.column("n").to_pylist() == [3, 4]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2]\n", "one JSON object"),
        (b'{"a": 1}\n{bad\n', "JSON Lines"),
    ],
)
def test_jsonl_errors(mem: str, content: bytes, message: str) -> None:
    source = f"{mem}/bad.jsonl"
    write_bytes_atomic(source, content)
    with pytest.raises(TableError, match=message):
        read_table(source)


def test_jsonl_limit(mem: str) -> None:
    source = f"{mem}/t.jsonl"
    write_bytes_atomic(source, b"".join(b'{"a": %d}\n' % i for i in range(100)))
    assert read_table(source, limit=3).column("a").to_pylist() == [0, 1, 2]
    assert read_table(source, limit=0).num_rows == 0


# -- Parquet ---------------------------------------------------------------------------------


def _typed_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, None, 3], pa.int64()),
            "text": ["a", None, "ü\nv"],
            "at": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5), None, None], pa.timestamp("ms", "UTC")),
            "f32": pa.array([0.5, None, 1.0], pa.float32()),
        }
    )


def test_parquet_round_trip_keeps_types(mem: str, tmp_path: Path) -> None:
    for destination in (f"{mem}/out/t.parquet", str(tmp_path / "a" / "b" / "t.parquet")):
        write_parquet_atomic(_typed_table(), destination)
        assert read_table(destination).equals(_typed_table())


def test_parquet_limit_and_cast(mem: str) -> None:
    destination = f"{mem}/t.pq"
    big = pa.table({"n": list(range(200_000))})
    write_parquet_atomic(big, destination)
    assert read_table(destination, limit=70_000).num_rows == 70_000
    assert read_table(destination, limit=0).schema == big.schema
    head = read_table(destination, limit=2, columns_types={"n": "string"})
    assert head.column("n").to_pylist() == ["0", "1"]
    write_parquet_atomic(pa.table({"s": ["1", "x"]}), f"{mem}/s.parquet")
    with pytest.raises(TableError, match="column 's' cannot be read as int64"):
        read_table(f"{mem}/s.parquet", columns_types={"s": "int64"})


def test_metadata_is_merged_with_pandas_metadata(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    table = pa.Table.from_pandas(pd.DataFrame({"a": [1, 2]}), preserve_index=False)
    destination = str(tmp_path / "t.parquet")
    write_parquet_atomic(table, destination, metadata={"prefect_llm_batch.job_id": "abc"})
    metadata = pq.read_schema(destination).metadata
    assert metadata[b"prefect_llm_batch.job_id"] == b"abc"
    assert b"pandas" in metadata
    assert read_table(destination).to_pandas()["a"].tolist() == [1, 2]


def test_corrupt_parquet(mem: str) -> None:
    source = f"{mem}/bad.parquet"
    write_bytes_atomic(source, b"not parquet at all")
    with pytest.raises(TableError, match=r"bad.parquet' as Parquet"):
        read_table(source)


# -- atomic writes ---------------------------------------------------------------------------


def test_existing_destination_needs_overwrite(mem: str, tmp_path: Path) -> None:
    for destination in (f"{mem}/t.parquet", str(tmp_path / "t.parquet")):
        write_parquet_atomic(pa.table({"a": [1]}), destination)
        with pytest.raises(TableError, match=r"already exists; pass overwrite=True \(--overwrite"):
            write_parquet_atomic(pa.table({"a": [2]}), destination)
        write_parquet_atomic(pa.table({"a": [3]}), destination, overwrite=True)
        assert read_table(destination).column("a").to_pylist() == [3]


def test_local_write_respects_umask(tmp_path: Path) -> None:
    destination = tmp_path / "t.parquet"
    write_parquet_atomic(pa.table({"a": [1]}), str(destination))
    umask = os.umask(0)
    os.umask(umask)
    assert destination.stat().st_mode & 0o777 == 0o666 & ~umask


def _failing_write(table: pa.Table, where: Any, **kwargs: Any) -> None:
    where.write(b"PAR1 half a file")
    raise OSError("disk full")


def test_failed_local_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    destination = tmp_path / "out" / "t.parquet"
    write_parquet_atomic(pa.table({"a": [1]}), str(destination))
    before = destination.read_bytes()
    monkeypatch.setattr(pq, "write_table", _failing_write)
    with pytest.raises(TableError, match="disk full"):
        write_parquet_atomic(pa.table({"a": [2]}), str(destination), overwrite=True)
    with pytest.raises(TableError, match="disk full"):
        write_parquet_atomic(pa.table({"a": [2]}), str(tmp_path / "out" / "new.parquet"))
    assert sorted(os.listdir(tmp_path / "out")) == ["t.parquet"]
    assert destination.read_bytes() == before


def test_failed_object_store_write_leaves_nothing_behind(mem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pq, "write_table", _failing_write)
    with pytest.raises(TableError, match="disk full"):
        write_parquet_atomic(pa.table({"a": [2]}), f"{mem}/t.parquet")
    assert not exists(f"{mem}/t.parquet")


def test_object_store_write_is_one_put(mem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = fsspec.filesystem("memory")
    calls: list[str] = []
    original = type(fs).put_file

    def put_file(self: Any, local: str, path: str, **kwargs: Any) -> Any:
        calls.append(path)
        return original(self, local, path, **kwargs)

    def no_pipe(self: Any, path: str, value: bytes, **kwargs: Any) -> Any:
        raise AssertionError("a table is not sent from memory")

    monkeypatch.setattr(type(fs), "put_file", put_file)
    monkeypatch.setattr(type(fs), "pipe_file", no_pipe)
    write_parquet_atomic(pa.table({"a": [1]}), f"{mem}/deep/dir/t.parquet")
    assert calls == [f"{mem}/deep/dir/t.parquet".removeprefix("memory:/")]
    assert fs.ls(f"{mem}/deep/dir", detail=False) == calls
    assert read_table(f"{mem}/deep/dir/t.parquet").num_rows == 1


def test_partitioned_directory_reads_parts_in_path_order(mem: str, tmp_path: Path) -> None:
    for where in (f"{mem}/parts", str(tmp_path / "parts")):
        write_parquet_atomic(pa.table({"n": [3], "s": ["c"]}), f"{where}/b/part-1.parquet")
        write_parquet_atomic(pa.table({"n": [1, 2], "s": ["a", "b"]}), f"{where}/a.parquet")
        write_bytes_atomic(f"{where}/_SUCCESS", b"")
        write_bytes_atomic(f"{where}/.hidden.parquet", b"not parquet")
        assert read_table(where).to_pydict() == {"n": [1, 2, 3], "s": ["a", "b", "c"]}
        assert read_table(where, limit=2).column("n").to_pylist() == [1, 2]
        scan = scan_table(where, batch_rows=1, columns=["s"])
        assert scan.schema.names == ["s"]
        assert [b.column("s").to_pylist() for b in scan.batches] == [["a"], ["b"], ["c"]]
        before = fingerprint(where)
        write_parquet_atomic(pa.table({"n": [4], "s": ["d"]}), f"{where}/c.parquet")
        assert fingerprint(where) != before
        assert read_table(where).num_rows == 4


def test_partitioned_directory_errors_name_the_part(mem: str) -> None:
    with pytest.raises(TableError, match="holds no Parquet file"):
        write_bytes_atomic(f"{mem}/empty/readme.txt", b"")
        read_table(f"{mem}/empty")
    write_parquet_atomic(pa.table({"n": [1]}), f"{mem}/bad/a.parquet")
    write_parquet_atomic(pa.table({"m": [1]}), f"{mem}/bad/b.parquet")
    with pytest.raises(TableError, match=r"part .*b\.parquet.* has columns m, not n"):
        read_table(f"{mem}/bad")


def test_scan_streams_a_parquet_file_in_batches(tmp_path: Path) -> None:
    path = str(tmp_path / "t.parquet")
    write_parquet_atomic(pa.table({"n": list(range(10))}), path)
    scan = scan_table(path, batch_rows=4, limit=9)
    assert [b.num_rows for b in scan.batches] == [4, 4, 1]
    csv = _write(tmp_path / "t.csv", "a\n1\n2\n3\n")
    assert [b.num_rows for b in scan_table(csv, batch_rows=2).batches] == [2, 1]


def test_streamed_write_publishes_nothing_when_the_batches_fail(tmp_path: Path, mem: str) -> None:
    def batches() -> Any:
        yield pa.record_batch({"a": [1]})
        raise RuntimeError("source broke")

    for where in (str(tmp_path / "s.parquet"), f"{mem}/s.parquet"):
        with pytest.raises(RuntimeError, match="source broke"):
            write_parquet_batches_atomic(
                batches(), where, schema=pa.schema([("a", pa.int64())]), overwrite=True
            )
        assert not exists(where)
    assert list(tmp_path.iterdir()) == []


def test_local_write_keeps_other_process_file_when_it_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = tmp_path / "t.parquet"
    real_write = pq.write_table

    def write_and_race(table: pa.Table, where: Any, **kwargs: Any) -> None:
        destination.write_bytes(b"someone else's")
        real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_and_race)
    with pytest.raises(TableError, match="already exists"):
        write_parquet_atomic(pa.table({"a": [1]}), str(destination))
    assert destination.read_bytes() == b"someone else's"
    assert os.listdir(tmp_path) == ["t.parquet"]


def test_write_bytes_atomic_replaces(mem: str, tmp_path: Path) -> None:
    for destination in (f"{mem}/state/m.json", str(tmp_path / "state" / "m.json")):
        write_bytes_atomic(destination, b"one")
        write_bytes_atomic(destination, b"two")
        assert read_bytes(destination) == b"two"
        assert exists(destination)
    assert os.listdir(tmp_path / "state") == ["m.json"]


def test_write_into_a_directory_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(TableError, match="cannot write"):
        write_bytes_atomic(str(tmp_path / "d"), b"x")
    assert os.listdir(tmp_path) == ["d"]
    assert os.listdir(tmp_path / "d") == []


# -- bytes, existence, fingerprints ----------------------------------------------------------


def test_read_bytes_missing(mem: str) -> None:
    with pytest.raises(TableError, match="no such file"):
        read_bytes(f"{mem}/nope")
    assert not exists(f"{mem}/nope")


def test_fingerprint_is_sha256_streamed(mem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(100_000)
    monkeypatch.setattr(fingerprints, "FINGERPRINT_BLOCK_SIZE", 4096)
    for path in (f"{mem}/blob.bin", str(tmp_path / "blob.bin")):
        write_bytes_atomic(path, data)
        assert fingerprint(path) == hashlib.sha256(data).hexdigest()
    write_bytes_atomic(f"{mem}/blob.bin", data + b"!")
    assert fingerprint(f"{mem}/blob.bin") != hashlib.sha256(data).hexdigest()


def test_fingerprint_reads_in_blocks(mem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_bytes_atomic(f"{mem}/blob.bin", b"x" * 10_000)
    monkeypatch.setattr(fingerprints, "FINGERPRINT_BLOCK_SIZE", 1_000)
    sizes: list[int] = []
    real_open = fsspec.filesystem("memory").open

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __enter__(self) -> Spy:
            self.inner.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.__exit__(*exc)

        def read(self, size: int) -> bytes:
            sizes.append(size)
            data: bytes = self.inner.read(size)
            return data

    fs = fsspec.filesystem("memory")
    monkeypatch.setattr(fs, "open", lambda *a, **k: Spy(real_open(*a, **k)))
    fingerprint(f"{mem}/blob.bin")
    assert set(sizes) == {1_000}
    assert len(sizes) == 11


def test_fingerprint_missing(mem: str) -> None:
    with pytest.raises(TableError, match=r"nope\.csv': no such file"):
        fingerprint(f"{mem}/nope.csv")


def test_read_ahead_keeps_order_raises_where_it_failed_and_stops_early() -> None:
    import threading

    assert list(read_ahead(iter(range(100)), depth=3)) == list(range(100))

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("part 3 is broken")

    seen = []
    with pytest.raises(ValueError, match="part 3 is broken"):
        for item in read_ahead(failing()):
            seen.append(item)
    assert seen == [1, 2]

    produced = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    for item in read_ahead(endless(), depth=2):
        if item == 5:
            break
    assert len(produced) <= 5 + 1 + 3  # the producer stopped a few items ahead, not forever
    assert not any(t.name == "prefect-llm-batch-read-ahead" for t in threading.enumerate())


# -- dropping written pages from the page cache ---------------------------------------------


@pytest.fixture
def dropped(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every ``posix_fadvise(DONTNEED)`` made, as (bytes synced so far, bytes in the file)."""
    if not local_files.CAN_DROP:
        pytest.skip("this platform has no posix_fadvise")
    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            calls.append((offset, os.fstat(fd).st_size))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    monkeypatch.setattr(local_files, "DROP_BEHIND_BYTES", 1 << 16)
    return calls


def test_a_parquet_file_written_with_drop_cache_is_dropped_as_it_grows(
    tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    destination = str(tmp_path / "big.parquet")
    schema = pa.schema([("text", pa.string())])
    batches = (
        pa.record_batch([pa.array([f"{i}-{j}-" * 20 for j in range(2000)])], schema=schema) for i in range(8)
    )
    rows = write_parquet_batches_atomic(batches, destination, schema=schema, drop_cache=True)
    assert rows == 16_000
    assert read_table(destination).column("text").to_pylist()[:2] == ["0-0-" * 20, "0-1-" * 20]
    size = os.path.getsize(destination)
    # every 64 KB written while it grew (not only at the end), and the whole file once synced
    assert len(dropped) >= 2
    assert dropped[0][1] < size
    assert dropped[-1][1] == size
    assert os.listdir(tmp_path) == ["big.parquet"]


def test_drop_cache_is_only_where_asked_and_reads_can_drop_too(
    tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    plain = str(tmp_path / "plain.jsonl")
    write_bytes_atomic(plain, b"x" * 200_000)
    assert dropped == []  # state files that are read often stay cached
    batch_file = str(tmp_path / "chunk.jsonl")
    write_bytes_atomic(batch_file, b"y" * 200_000, drop_cache=True)
    assert dropped and dropped[-1][1] == 200_000
    count = len(dropped)
    assert read_bytes(batch_file, drop_cache=True) == b"y" * 200_000
    assert len(dropped) == count + 1
    assert read_bytes(plain) == b"x" * 200_000
    assert len(dropped) == count + 1


def write_job_files(state_dir: Path) -> None:
    """A chunk's batch file (written, read back), the row ids and a chunk's stored results."""
    from prefect_llm_batch.results import RowResult, results_to_table
    from prefect_llm_batch.store import JobStore

    store = JobStore(str(state_dir), "job1")
    store.write_chunk_input(0, b'{"custom_id":"a"}\n' * 10_000)
    store.read_chunk_input(0)
    store.write_row_ids(["a"] * 10_000)
    store.write_results(0, results_to_table([RowResult("a", response="yes")]))


def test_a_job_keeps_its_files_in_the_page_cache_by_default(
    tmp_path: Path, dropped: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(local_files.DROP_BEHIND_ENV, raising=False)
    assert not local_files.drop_behind()
    write_job_files(tmp_path / "state")
    assert dropped == []
    for value, on in (("1", True), (" 1\n", True), ("0", False), ("", False), ("yes", False)):
        monkeypatch.setenv(local_files.DROP_BEHIND_ENV, value)
        assert local_files.drop_behind() is on


def test_with_drop_behind_on_a_job_drops_its_batch_files_row_ids_and_results_but_not_its_output(
    tmp_path: Path, dropped: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_llm_batch.jobs.output import TableAnswers, write_joined
    from prefect_llm_batch.results import RowResult, result_positions, results_to_table
    from prefect_llm_batch.store import JobStore

    monkeypatch.setenv(local_files.DROP_BEHIND_ENV, "1")
    store = JobStore(str(tmp_path / "state"), "job1")
    store.write_chunk_input(0, b'{"custom_id":"a"}\n' * 10_000)
    store.write_row_ids(["a"] * 10_000)
    store.write_results(0, results_to_table([RowResult("a", response="yes")]))
    assert len(dropped) >= 3
    count = len(dropped)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [os.urandom(40).hex() for _ in range(10_000)]}), source)
    results = results_to_table([RowResult("a", response="yes")])
    positions = result_positions(pa.array(["a"] * 10_000), results)
    output = str(tmp_path / "out.parquet")
    rows, _ = write_joined(scan_table(str(source)), TableAnswers(results, positions), output)
    assert rows == 10_000 and os.path.getsize(output) > 1 << 16
    assert len(dropped) == count  # the output is what the user reads next: it stays cached


# ----- which columns get a dictionary ------------------------------------


def test_dictionary_columns_leave_out_mostly_distinct_and_nested_columns() -> None:
    n = 4000
    sample = pa.table(
        {
            "id": pa.array(range(n)),
            "text": pa.array([f"review {i}" for i in range(n)]),
            "kind": pa.array(["a", "b", None, "c"] * (n // 4)),
            "half": pa.array([i // 2 for i in range(n)]),  # exactly half distinct: still repeats
            "embedding": pa.array([[float(i)] for i in range(n)], pa.list_(pa.float32())),
            "flag": pa.array([True, False] * (n // 2)),
        }
    )
    assert dictionary_columns(sample.schema, sample) == ["kind", "half", "flag"]
    assert dictionary_columns(sample.schema, sample.slice(0, 999)) == ["id", "text", "kind", "half", "flag"]
    assert dictionary_columns(sample.schema, None) == ["id", "text", "kind", "half", "flag"]
    path = pa.BufferOutputStream()
    pq.write_table(sample, path, use_dictionary=dictionary_columns(sample.schema, sample))
    meta = pq.ParquetFile(pa.BufferReader(path.getvalue())).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert "RLE_DICTIONARY" not in encodings["text"] and "RLE_DICTIONARY" in encodings["kind"]


def test_dictionary_columns_keep_the_default_for_types_without_a_distinct_count(tmp_path: Path) -> None:
    from prefect_llm_batch.jobs.output import TableAnswers, write_joined
    from prefect_llm_batch.results import RowResult, result_positions, results_to_table

    n = 2000
    table = pa.table(
        {
            "text": pa.array([f"review {i}" for i in range(n)]),
            "category": pa.array(["a", "b"] * (n // 2)).dictionary_encode(),  # a pandas Categorical
            "nothing": pa.nulls(n),  # an all-None pandas column
            "uid": pa.ExtensionArray.from_storage(
                pa.uuid(), pa.array([uuid.UUID(int=i).bytes for i in range(n)], pa.binary(16))
            ),
        }
    )
    assert dictionary_columns(table.schema, table) == ["category", "nothing", "uid"]
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    results = results_to_table([RowResult("k", response="yes")])
    positions = result_positions(pa.array(["k"] * n), results)
    output = str(tmp_path / "out.parquet")
    rows, _ = write_joined(scan_table(str(source)), TableAnswers(results, positions), output)
    written = pq.read_table(output)
    assert rows == n and written.column("category").to_pylist() == table.column("category").to_pylist()
    assert written.column("nothing").null_count == n and written.column("response").to_pylist() == ["yes"] * n


def test_write_bytes_atomic_writes_pieces_in_order(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # over the write buffer: pieces of every size
    view = memoryview(data)
    pieces = [view[:10], view[10:5_000], b"", view[5_000:2_000_000], view[2_000_000:]]
    destination = str(tmp_path / "pieces.bin")
    write_bytes_atomic(destination, pieces, drop_cache=True)
    assert read_bytes(destination) == data
    write_bytes_atomic("memory://pieces/x.bin", pieces)
    assert read_bytes("memory://pieces/x.bin") == data


def test_write_bytes_atomic_takes_one_buffer_of_any_kind(tmp_path: Path) -> None:
    for number, data in enumerate([bytearray(b"abc"), memoryview(b"defg"), b"hij"]):
        destination = str(tmp_path / f"{number}.bin")
        write_bytes_atomic(destination, data)
        assert read_bytes(destination) == bytes(data)
