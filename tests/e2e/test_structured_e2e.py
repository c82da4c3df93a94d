"""Structured answers as typed columns, end to end through the flow and the fake server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from prefect_llm_batch.errors import InputError
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig, default_answer
from prefect_llm_batch.testing.answers import last_user_text
from tests.unit.core.test_schemas import EXPECTED_TYPES, JSON_SCHEMA, Review

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "test-key-structured"


def answer(body: dict[str, Any]) -> str:
    text = last_user_text(body)
    if "BROKEN" in text:
        return '{"sentiment": "positive", '
    if "WRONG" in text:
        value = json.loads(default_answer(body))
        value["sentiment"] = 5
        return json.dumps(value)
    return default_answer(body)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(answer=answer)) as srv:
        yield srv


def source(tmp_path: Path, texts: list[str]) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path)
    return str(path)


def run(server: Any, src: str, out: Path, schema: Any, **kwargs: Any) -> Any:
    return enrich_table(
        source=src,
        output=str(out),
        prompt="Sentiment of: {{ text }}",
        model="gpt-4o-mini",
        response_format=schema,
        provider="openai",
        base_url=server.base_url,
        state_dir=str(out.parent / "state"),
        poll_interval=0.05,
        retry_backoff=0,
        max_error_rate=1.0,
        **kwargs,
    )


@pytest.mark.parametrize("schema", [Review, json.dumps(JSON_SCHEMA)], ids=["pydantic", "json-schema-text"])
def test_typed_columns_read_back_with_their_arrow_types(server: Any, tmp_path: Path, schema: Any) -> None:
    out = tmp_path / "out.parquet"
    run(server, source(tmp_path, ["great product, love it", "awful and slow"]), out, schema)
    table = pq.read_table(out)
    for name, data_type in EXPECTED_TYPES.items():
        assert table.schema.field(name).type == data_type, name
    assert table.column("sentiment").to_pylist() == ["positive", "negative"]
    assert table.column("response_error_kind").null_count == 2
    assert isinstance(table.column("aspects")[0].as_py()[0]["score"], float)
    sent = next(iter(server.batches.values()))
    assert sent is not None


def test_row_failures_are_values_and_counted(server: Any, tmp_path: Path) -> None:
    texts = [
        "good",
        "BROKEN json please",
        "WRONG type",
        "no [[fake:refusal]]",
        "long [[fake:length]]",
        "fine",
    ]
    out = tmp_path / "out.parquet"
    summary = run(server, source(tmp_path, texts), out, Review)
    table = pq.read_table(out)
    kinds = table.column("response_error_kind").to_pylist()
    assert kinds == [None, "parse_error", "schema_violation", "refusal", "length", None]
    assert table.column("sentiment").to_pylist()[1:5] == [None] * 4
    assert table.column("response")[1].as_py() == '{"sentiment": "positive", '  # raw text kept
    assert "$.sentiment: 5 is not one of" in table.column("response_error")[2].as_py()
    assert summary.errors_by_kind == {"length": 1, "parse_error": 1, "refusal": 1, "schema_violation": 1}


def test_one_schema_whether_none_some_or_all_rows_failed(server: Any, tmp_path: Path) -> None:
    schemas = []
    for name, texts in {
        "ok": ["good", "bad"],
        "mixed": ["good", "BROKEN"],
        "failed": ["x [[fake:400]]", "y [[fake:500]]"],
    }.items():
        out = tmp_path / name / "out.parquet"
        out.parent.mkdir()
        run(server, source(out.parent, texts), out, Review)
        schemas.append(pq.read_schema(out).remove_metadata())
    assert schemas[0] == schemas[1] == schemas[2]


def test_column_prefix_and_custom_parser(server: Any, tmp_path: Path) -> None:
    class Label(BaseModel):
        label: str

    def parser(text: str) -> dict[str, Any]:
        return {"label": text.upper()}

    out = tmp_path / "out.parquet"
    enrich_table(
        source=source(tmp_path, ["good"]),
        output=str(out),
        prompt="Sentiment of: {{ text }}",
        model="m",
        response_format=Label,
        column_prefix="ai_",
        parser=parser,
        provider="openai",
        base_url=server.base_url,
        state_dir=str(tmp_path / "state"),
        poll_interval=0.05,
        retry_backoff=0,
    )
    table = pq.read_table(out)
    assert table.column("ai_label").to_pylist() == [json.dumps({"label": "positive"}).upper()]


def test_name_clash_fails_before_any_request(server: Any, tmp_path: Path) -> None:
    class Clash(BaseModel):
        text: str

    with pytest.raises(InputError, match="'text'"):
        run(server, source(tmp_path, ["a"]), tmp_path / "out.parquet", Clash)
    assert sum(server.stats.calls.values()) == 0
