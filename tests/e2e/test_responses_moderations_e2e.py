"""The Responses and moderations endpoints through the same job machinery, over real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.moderations import MODERATION_CATEGORIES
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "fake-key-responses"
SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "mixed"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "score"],
}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig()) as srv:
        yield srv


def run(server: Any, tmp_path: Path, texts: list[str], name: str, **kwargs: Any) -> pa.Table:
    src = tmp_path / f"{name}.parquet"
    if not src.exists():
        pq.write_table(pa.table({"text": texts}), src)
    out = tmp_path / f"{name}-{kwargs.get('endpoint', 'chat')}-out.parquet"
    options: dict[str, Any] = {"state_dir": str(tmp_path / "state"), "max_error_rate": 1.0, "max_attempts": 1}
    options.update(kwargs)
    enrich_table(
        source=str(src), output=str(out), prompt="{{ text }}", provider="openai", base_url=server.base_url,
        poll_interval=0.05, retry_backoff=0, **options,
    )  # fmt: skip
    return pq.read_table(out)


def sent_lines(server: Any) -> list[tuple[str, dict[str, Any]]]:
    """(batch endpoint, input line) of every batch the fake was sent, oldest first."""
    return [
        (batch.endpoint, orjson.loads(raw))
        for batch in server.batches.values()
        for raw in batch.input_data.splitlines()
        if raw.strip()
    ]


def test_a_responses_job_with_a_schema_sends_input_instructions_and_text_format(
    server: Any, tmp_path: Path
) -> None:
    texts = ["Great food, I loved it", "cut short [[fake:length]]", "no [[fake:refusal]]", "[[fake:500]] x"]
    table = run(server, tmp_path, texts, "reviews", model="gpt-4o-mini", endpoint="responses",
                system="Classify the sentiment.", response_format=SCHEMA,
                params={"max_output_tokens": 60})  # fmt: skip

    lines = sent_lines(server)
    assert {endpoint for endpoint, _ in lines} == {"/v1/responses"}
    assert {line["url"] for _, line in lines} == {"/v1/responses"}
    body = next(line["body"] for _, line in lines if line["body"]["input"] == texts[0])
    assert set(body) == {"model", "input", "instructions", "max_output_tokens", "text"}
    assert body["instructions"] == "Classify the sentiment."
    fmt = body["text"]["format"]
    assert (fmt["type"], fmt["strict"], set(fmt)) == (
        "json_schema",
        True,
        {"type", "name", "schema", "strict"},
    )
    assert fmt["schema"]["additionalProperties"] is False

    assert table.schema.field("sentiment").type == pa.string()
    assert table.schema.field("score").type == pa.int64()
    assert table.column("sentiment")[0].as_py() == "positive"
    assert 1 <= table.column("score")[0].as_py() <= 5
    assert table.column("response_error_kind").to_pylist() == [None, "length", "refusal", "server_error"]
    assert table.column("response_finish_reason").to_pylist()[:2] == ["stop", "length"]
    assert table.column("response_input_tokens")[0].as_py() > 0
    assert table.column("response_output_tokens")[0].as_py() > 0
    assert table.column("response_model")[0].as_py() == "gpt-4o-mini"
    assert table.column("sentiment").to_pylist()[1:] == [None, None, None]


def test_a_responses_job_runs_in_realtime_too(server: Any, tmp_path: Path) -> None:
    table = run(server, tmp_path, ["Sentiment: awful and slow"], "live", model="gpt-4o-mini",
                endpoint="responses", mode="realtime", cache="off")  # fmt: skip
    assert table.column("response").to_pylist() == ["negative"]
    assert server.stats.calls["POST /v1/responses"] == 1
    assert not server.batches


def test_a_moderations_job_gives_flagged_and_one_float_column_per_category(
    server: Any, tmp_path: Path
) -> None:
    texts = ["a calm sentence", "I will kill the lights", "x [[fake:500]]"]
    table = run(server, tmp_path, texts, "posts", model="omni-moderation-latest", endpoint="moderations")

    lines = sent_lines(server)
    assert {(endpoint, line["url"]) for endpoint, line in lines} == {("/v1/moderations", "/v1/moderations")}
    assert all(set(line["body"]) == {"model", "input"} for _, line in lines)
    assert table.schema.field("flagged").type == pa.bool_()
    for category in MODERATION_CATEGORIES:
        assert table.schema.field(category).type == pa.float64()
    assert table.column("flagged").to_pylist() == [False, True, None]
    assert table.column("violence").to_pylist()[1:] == [0.9, None]
    assert table.column("violence")[0].as_py() < 0.01
    assert table.column("response_error_kind").to_pylist() == [None, None, "server_error"]
    assert table.column("response_model")[0].as_py() == "omni-moderation-latest"

    failed = run(server, tmp_path, ["[[fake:500]] all bad"], "failed", model="omni-moderation-latest",
                 endpoint="moderations")  # fmt: skip
    assert failed.schema.remove_metadata() == table.schema.remove_metadata()


def test_the_same_prompt_is_a_new_request_on_each_endpoint(server: Any, tmp_path: Path) -> None:
    texts = ["hello there"]
    answers = {}
    for endpoint in ("chat/completions", "responses", "moderations"):
        answers[endpoint] = run(server, tmp_path, texts, "same", model="m", endpoint=endpoint)
        assert answers[endpoint].column("response_cached").to_pylist() == [False], endpoint
    lines = sent_lines(server)
    assert [endpoint for endpoint, _ in lines] == ["/v1/chat/completions", "/v1/responses", "/v1/moderations"]
    assert [set(line["body"]) for _, line in lines] == [
        {"model", "messages"},
        {"model", "input"},
        {"model", "input"},
    ]
    assert lines[1][1]["body"] == lines[2][1]["body"]  # same body: only the endpoint tells them apart
    assert len({line["custom_id"] for _, line in lines}) == 3
    assert answers["responses"].column("response").to_pylist() == ["[simulated] hello there"]
    assert "flagged" in answers["moderations"].column_names
