"""Shards of a Parquet source: planned deterministically by file and row-group ranges, read with
the source's schema and partition columns, fingerprinted by the bytes they read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import TableError
from prefect_llm_batch.shards import group_row_groups, plan_shards, shard_fingerprint
from prefect_llm_batch.table import read_table, scan_table


def dataset(root: Path, sizes: dict[str, int], row_group_size: int = 4) -> str:
    for name, rows in sizes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({"n": list(range(rows)), "text": [f"{name}-{i}" for i in range(rows)]})
        pq.write_table(table, folder / "part-0.parquet", row_group_size=row_group_size)
    return str(root)


def rows_of(source: str, shard: object = None) -> pa.Table:
    scan = scan_table(source, shard=shard)  # type: ignore[arg-type]
    return pa.Table.from_batches(list(scan.batches), schema=scan.schema)


def test_the_same_source_gives_the_same_shards_and_they_cover_every_row_in_order(tmp_path: Path) -> None:
    source = dataset(tmp_path / "d", {"year=2023": 10, "year=2024": 7})
    first, again = plan_shards(source, rows_per_shard=5), plan_shards(source, rows_per_shard=5)
    assert first == again and first.digest() == again.digest()
    assert [s.index for s in first.shards] == list(range(len(first.shards)))
    whole = read_table(source)
    assert pa.concat_tables([rows_of(source, s) for s in first.shards]).equals(whole)
    assert sum(s.rows for s in first.shards) == whole.num_rows == 17


def test_hive_partition_folders_become_string_columns_for_every_reader(tmp_path: Path) -> None:
    source = dataset(tmp_path / "d", {"year=2023/city=Oslo": 2, "year=2024/city=Rome": 1})
    table = read_table(source)
    assert table.schema.names == ["n", "text", "year", "city"]
    assert table.column("year").to_pylist() == ["2023", "2023", "2024"]
    assert table.column("city").type == pa.string()
    shard = plan_shards(source, rows_per_shard=1).shards[-1]
    assert rows_of(source, shard).to_pylist() == [
        {"n": 0, "text": "year=2024/city=Rome-0", "year": "2024", "city": "Rome"}
    ]


def test_parts_with_other_partition_folders_are_refused_naming_the_part(tmp_path: Path) -> None:
    source = dataset(tmp_path / "d", {"year=2023": 2, "other": 1})
    with pytest.raises(
        TableError, match=r"part .*part-0.parquet. has the partition folders year, not \(none\)"
    ):
        read_table(source)


def test_a_partition_folder_named_as_a_column_is_refused(tmp_path: Path) -> None:
    source = dataset(tmp_path / "d", {"text=x": 2})
    with pytest.raises(TableError, match="'text' is also a column"):
        read_table(source)


def test_one_big_file_is_cut_by_row_groups_never_inside_one(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"n": list(range(25))}), path, row_group_size=10)
    plan = plan_shards(str(path), rows_per_shard=4)
    assert [(s.first_row_group, s.row_groups, s.rows) for s in plan.shards] == [
        (0, 1, 10),
        (1, 1, 10),
        (2, 1, 5),
    ]
    assert rows_of(str(path), plan.shards[1]).column("n").to_pylist() == list(range(10, 20))


def test_row_groups_are_grouped_up_to_the_target_and_empty_parts_keep_a_shard() -> None:
    assert group_row_groups([3, 3, 3, 3], 6) == [(0, 2, 6), (2, 2, 6)]
    assert group_row_groups([0], 6) == [(0, 1, 0)]


def test_a_shard_fingerprint_changes_with_its_rows_and_not_with_other_shards(tmp_path: Path) -> None:
    source = dataset(tmp_path / "d", {"a": 8, "b": 8})
    before = [shard_fingerprint(s) for s in plan_shards(source, rows_per_shard=8).shards]
    table = pa.table({"n": list(range(8)), "text": [f"changed-{i}" for i in range(8)]})
    pq.write_table(table, tmp_path / "d" / "b" / "part-0.parquet", row_group_size=4)
    after = [shard_fingerprint(s) for s in plan_shards(source, rows_per_shard=8).shards]
    assert before[0] == after[0] and before[1] != after[1]


def test_csv_cannot_be_sharded_and_the_message_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a\n1\n")
    with pytest.raises(TableError, match="convert the table to Parquet"):
        plan_shards(str(tmp_path / "t.csv"))
