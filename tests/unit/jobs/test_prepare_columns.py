"""Preparing a job reads only the columns its templates render from (all of them for ``row``),
and still checks the whole input: every part of a directory, the id column. The output keeps
every column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.errors import InputError, TableError, TemplateError
from prefect_llm_batch.jobs.prepare import columns_read
from prefect_llm_batch.prompts import PromptTemplate
from prefect_llm_batch.providers import make_provider
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.spec import JobSpec, ProviderTarget, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

BASE = "https://x/v1"
TARGET = ProviderTarget(provider="openai", base_url=BASE, key_base_url=BASE)
OPENAI = OpenAIBatchProvider(api_key="unused", base_url=BASE)
KEY = "test-key-columns-0000"


def wide(n: int = 6) -> pa.Table:
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "title": [f"title {i}" for i in range(n)],
            "notes": [f"notes {i}" * 50 for i in range(n)],
            "stars": list(range(n)),
            "body": [f"body {i}" for i in range(n)],
        }
    )


@pytest.fixture
def columns_read_by_parquet(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ``columns`` argument a Parquet batch read is given."""
    asked: list[Any] = []
    real = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("columns"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    return asked


def prepare(tmp_path: Path, source: Path, prompt: str, id_column: str | None = None) -> jobs.JobRef:
    """Prepare a job over ``source`` offline (nothing is sent)."""
    spec = JobSpec(prompt=prompt, model="m", provider="openai", id_column=id_column)
    return jobs.prepare(str(source), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))


def written(tmp_path: Path, table: pa.Table | None = None) -> Path:
    """``table`` (default :func:`wide`) as a Parquet file."""
    path = tmp_path / "in.parquet"
    pq.write_table(wide() if table is None else table, path)
    return path


def prompts_of(ref: jobs.JobRef) -> list[str]:
    store = JobStore(ref.state_dir, ref.job_id)
    lines = store.read_chunk_input(0).splitlines()
    return [orjson.loads(line)["body"]["messages"][-1]["content"] for line in lines]


def test_columns_read_are_the_templates_and_the_id_column_in_table_order() -> None:
    names = ["id", "title", "notes", "stars", "body"]
    prompt = PromptTemplate("{{ body }} / {{ title }}")
    schema = wide().schema
    assert columns_read(schema, None, prompt, None) == ["title", "body"]
    assert columns_read(schema, "id", prompt, PromptTemplate("Rate {{ stars }}")) == [
        "id",
        "title",
        "stars",
        "body",
    ]
    assert columns_read(schema, None, PromptTemplate("{{ row['title'] }}")) == names
    assert columns_read(schema, None, PromptTemplate("Say hello")) == ["stars"]  # one, to count rows
    assert columns_read(pa.schema([("a", pa.string())]), None, PromptTemplate("Hi")) == ["a"]
    # a column shadowing a Jinja global the template calls is read too
    assert PromptTemplate("{{ range(2) | list }}").columns_read(["range", "x"]) == ["range"]


def test_prepare_reads_only_the_template_columns_and_the_output_keeps_all(
    tmp_path: Path, columns_read_by_parquet: list[Any]
) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(wide(), source)
    spec = JobSpec(prompt="{{ title }}: {{ body }}", model="gpt-4o-mini", provider="openai")
    out = tmp_path / "out.parquet"
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as server:
        target = ProviderTarget(provider="openai", base_url=server.base_url, key_base_url=server.base_url)
        with make_provider(target, api_key=KEY) as provider:
            ref = jobs.prepare(str(source), spec, provider, target, state_dir=str(tmp_path / "s"))
            assert columns_read_by_parquet == [["title", "body"]]
            assert prompts_of(ref) == [f"title {i}: body {i}" for i in range(6)]
            jobs.submit_chunk(ref, 0, provider)
            assert jobs.wait(ref, provider, RunOptions(poll_interval=0.02)) == []
            jobs.collect_chunk(ref, 0, provider)
    summary = jobs.assemble(ref, output=str(out))
    assert summary.ok_rows == 6
    table = pq.read_table(out)
    assert table.column_names[:5] == ["id", "title", "notes", "stars", "body"]
    assert table.select(["id", "title", "notes", "stars", "body"]).equals(wide())


def test_a_template_over_row_sees_every_column(tmp_path: Path, columns_read_by_parquet: list[Any]) -> None:
    source = written(tmp_path)
    ref = prepare(tmp_path, source, "{{ row | length }} columns; {{ title }}")
    assert columns_read_by_parquet == [None]
    assert prompts_of(ref) == [f"5 columns; title {i}" for i in range(6)]


def test_the_id_column_is_read_for_error_messages(tmp_path: Path, columns_read_by_parquet: list[Any]) -> None:
    source = written(tmp_path, wide().set_column(3, "stars", pa.array([1, 1, 1, 0, 1, 1])))
    with pytest.raises(TemplateError, match=r"row 3 \(id 'r3'\)"):
        prepare(tmp_path, source, "{{ 10 // stars }}", id_column="id")
    assert columns_read_by_parquet == [["id"], ["id", "stars"]]  # the id check, then the rows


def test_a_part_without_an_unused_column_still_fails_prepare(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(wide(), parts / "a.parquet")
    pq.write_table(wide().drop_columns(["notes"]), parts / "b.parquet")
    spec = JobSpec(prompt="{{ title }}", model="m", provider="openai")
    with pytest.raises(
        TableError, match=r"part .*b\.parquet' has columns id, title, stars, body, not id, title"
    ):
        jobs.prepare(str(parts), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))
    assert not list((tmp_path / "s").glob("jobs/*/job.json"))


def test_a_missing_column_is_still_named_before_anything_is_read(tmp_path: Path) -> None:
    source = written(tmp_path)
    with pytest.raises(InputError, match="did you mean 'title'"):
        prepare(tmp_path, source, "{{ titel }}")


def test_a_part_whose_unused_column_does_not_cast_still_fails_prepare(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(wide(), parts / "a.parquet")
    odd = wide().set_column(3, "stars", pa.array([f"{i} stars" for i in range(6)]))
    pq.write_table(odd, parts / "b.parquet")
    spec = JobSpec(prompt="{{ title }}", model="m", provider="openai")
    with pytest.raises(
        TableError, match=r"part .*b\.parquet'?: its column types differ from the first part's"
    ):
        jobs.prepare(str(parts), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))
    assert not list((tmp_path / "s").glob("jobs/*/job.json"))


def test_a_part_whose_unused_column_casts_is_read_whole_cast_and_narrowed(
    tmp_path: Path, columns_read_by_parquet: list[Any]
) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(wide(), parts / "a.parquet")
    pq.write_table(wide().set_column(3, "stars", pa.array(range(6), pa.int32())), parts / "b.parquet")
    ref = prepare(tmp_path, parts, "{{ title }}")
    assert columns_read_by_parquet == [["title"], None]  # part b: read whole, cast, then narrowed
    assert ref.rows == 12 and ref.unique_requests == 6  # part b repeats part a's requests
    assert prompts_of(ref) == [f"title {i}" for i in range(6)]


def row_ids(ref: jobs.JobRef) -> list[str]:
    store = JobStore(ref.state_dir, ref.job_id)
    return [cid for ids in store.iter_row_ids() for cid in ids.to_pylist()]


def test_request_keys_do_not_depend_on_the_columns_left_out(tmp_path: Path) -> None:
    spec = JobSpec(prompt="{{ title }}: {{ body }}", model="m", provider="openai")
    pq.write_table(wide(), tmp_path / "wide.parquet")
    pq.write_table(wide().select(["title", "body"]), tmp_path / "narrow.parquet")
    pa.csv.write_csv(wide(), tmp_path / "wide.csv")  # read whole: every column
    refs = [
        jobs.prepare(str(tmp_path / name), spec, OPENAI, TARGET, state_dir=str(tmp_path / "s"))
        for name in ("wide.parquet", "narrow.parquet", "wide.csv")
    ]
    assert len({ref.job_id for ref in refs}) == 3  # three sources, three jobs
    assert row_ids(refs[0]) == row_ids(refs[1]) == row_ids(refs[2])
    assert prompts_of(refs[2]) == [f"title {i}: body {i}" for i in range(6)]


def test_a_template_without_columns_counts_rows_with_a_fixed_width_column(
    tmp_path: Path, columns_read_by_parquet: list[Any]
) -> None:
    source = written(tmp_path)
    ref = prepare(tmp_path, source, "Say hello")
    assert columns_read_by_parquet == [["stars"]]  # not the text columns before it
    assert ref.rows == 6 and ref.unique_requests == 1
