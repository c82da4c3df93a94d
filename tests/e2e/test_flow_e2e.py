"""The enrich_table flow end to end: real HTTP to the fake server, real Parquet read back."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch.errors import BatchFailed, ErrorRateExceeded, TableError, TemplateError
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.providers.openai import chat_body
from prefect_llm_batch.results import OUTPUT_COLUMNS
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig, default_answer

pytestmark = pytest.mark.usefixtures("prefect_harness")

API_KEY = "test-key-e2e-0000"
PROMPT = "Classify the sentiment of this review: {{ text }}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with FakeProviderServer(FakeServerConfig(api_key=API_KEY, seed=7)) as srv:
        yield srv


def write_csv(path: Path, rows: list[dict[str, Any]]) -> str:
    pa_csv.write_csv(pa.Table.from_pylist(rows), str(path))
    return str(path)


def reviews(n: int) -> list[dict[str, Any]]:
    words = ["great", "terrible", "fine but slow", "love it", "broken on arrival", "ok"]
    return [{"id": i, "text": f"review {i}: {words[i % len(words)]}"} for i in range(n)]


def run(server: Any, source: str, output: str, state_dir: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "prompt": PROMPT,
        "model": "gpt-4o-mini",
        "provider": "openai",
        "base_url": server.base_url,
        "state_dir": state_dir,
        "poll_interval": 0.05,
        "retry_backoff": 0,
        **kwargs,
    }
    return enrich_table(source=source, output=output, **options)


def expected_answer(text: str, prompt: str = PROMPT) -> str:
    return default_answer(chat_body("gpt-4o-mini", prompt.replace("{{ text }}", text)))


def test_three_batches_shuffled_answers_land_on_their_rows(
    server: Any, tmp_path: Path, state_dir: str
) -> None:
    rows = reviews(25)
    source = write_csv(tmp_path / "in.csv", rows)
    out = str(tmp_path / "out.parquet")
    summary = run(server, source, out, state_dir, max_requests_per_batch=9, id_column="id")

    assert server.stats.creates == 3 and len(summary.batch_ids) == 3
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", *OUTPUT_COLUMNS]
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == list(range(25))
    answers = table.column("response").to_pylist()
    assert answers == [expected_answer(r["text"]) for r in rows]
    assert set(answers) >= {"positive", "negative"}
    assert table.column("response_error_kind").null_count == 25
    assert all(t and t > 0 for t in table.column("response_input_tokens").to_pylist())
    meta = json.loads(table.schema.metadata[b"prefect_llm_batch"])
    assert meta["model"] == "gpt-4o-mini" and sorted(meta["batch_ids"]) == sorted(summary.batch_ids)
    assert meta["job_id"] == summary.job_id


def test_three_submit_tasks_show_in_prefect(server: Any, tmp_path: Path, state_dir: str) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    source = write_csv(tmp_path / "in.csv", reviews(6))
    state = enrich_table(
        source=source,
        output=str(tmp_path / "o.parquet"),
        prompt=PROMPT,
        model="gpt-4o-mini",
        provider="openai",
        base_url=server.base_url,
        state_dir=state_dir,
        poll_interval=0.05,
        max_requests_per_batch=2,
        return_state=True,
    )
    flow_run_id = state.state_details.flow_run_id

    async def task_names() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return sorted(r.name for r in runs)

    names = asyncio.run(task_names())
    assert [n for n in names if n.startswith("submit-batch")] == [
        "submit-batch-0",
        "submit-batch-1",
        "submit-batch-2",
    ]
    assert len([n for n in names if n.startswith("collect-batch")]) == 3


def test_error_file_lines_become_row_errors_and_the_rest_succeed(
    server: Any, tmp_path: Path, state_dir: str
) -> None:
    rows = reviews(20)
    rows[3]["text"] = "bad one [[fake:400]]"
    rows[11]["text"] = "flaky [[fake:500]]"
    rows[15]["text"] = "vanishes [[fake:drop]]"
    source = write_csv(tmp_path / "in.csv", rows)
    out = str(tmp_path / "out.parquet")
    summary = run(server, source, out, state_dir, max_error_rate=0.5)
    table = pq.read_table(out)
    kinds = table.column("response_error_kind").to_pylist()
    assert kinds[3] == "invalid_request" and kinds[11] == "server_error" and kinds[15] == "missing"
    assert sum(k is not None for k in kinds) == 3
    assert "HTTP 400" in table.column("response_error")[3].as_py()
    assert summary.errors_by_kind == {"invalid_request": 1, "missing": 1, "server_error": 1}


def test_too_many_failed_rows_fail_the_run_after_writing(server: Any, tmp_path: Path, state_dir: str) -> None:
    rows = [{"id": i, "text": f"t{i} [[fake:400]]" if i % 2 else f"t{i}"} for i in range(10)]
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    with pytest.raises(ErrorRateExceeded, match="5 of 10 rows failed"):
        run(server, source, str(out), state_dir, max_error_rate=0.1)
    assert pq.read_table(out).num_rows == 10


def test_429_on_create_then_success(server: Any, tmp_path: Path, state_dir: str) -> None:
    server.fail_next("POST", "/v1/batches", status=429, times=1, retry_after=0.05)
    source = write_csv(tmp_path / "in.csv", reviews(5))
    summary = run(server, source, str(tmp_path / "out.parquet"), state_dir)
    assert server.stats.creates == 1
    assert server.stats.calls["POST /v1/batches"] == 2
    assert summary.ok_rows == 5


def test_500_on_download_then_success(server: Any, tmp_path: Path, state_dir: str) -> None:
    server.fail_next("GET", "/v1/files/{id}/content", status=500, times=1)
    source = write_csv(tmp_path / "in.csv", reviews(5))
    summary = run(server, source, str(tmp_path / "out.parquet"), state_dir)
    assert summary.ok_rows == 5
    assert server.stats.calls["GET /v1/files/{id}/content"] == 2


def test_validation_failure_is_a_clear_terminal_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    config = FakeServerConfig(validation_error="model_mismatch")
    source = write_csv(tmp_path / "in.csv", reviews(4))
    out = tmp_path / "out.parquet"
    with FakeProviderServer(config) as srv, pytest.raises(BatchFailed, match="model_mismatch"):
        run(srv, source, str(out), state_dir)
    table = pq.read_table(out)
    assert table.column("response_error_kind").to_pylist() == ["invalid_request"] * 4


def test_expired_batch_keeps_finished_rows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    source = write_csv(tmp_path / "in.csv", reviews(10))
    out = tmp_path / "out.parquet"
    with FakeProviderServer(FakeServerConfig(expire_after_requests=6)) as srv:
        summary = run(srv, source, str(out), state_dir, max_error_rate=1.0, max_attempts=1)
    kinds = pq.read_table(out).column("response_error_kind").to_pylist()
    assert kinds.count(None) == 6 and kinds.count("batch_expired") == 4
    assert summary.errors_by_kind == {"batch_expired": 4}


def test_expired_rows_are_retried_and_finished_rows_are_not_sent_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    source = write_csv(tmp_path / "in.csv", reviews(10))
    out = tmp_path / "out.parquet"
    with FakeProviderServer(FakeServerConfig(expire_after_requests=6)) as srv:
        summary = run(srv, source, str(out), state_dir)
        assert srv.stats.creates == 2 and srv.stats.requests_received == 14  # 10, then the 4 expired
    table = pq.read_table(out)
    assert table.column("response_error_kind").null_count == 10
    assert sorted(table.column("response_attempts").to_pylist()) == [1] * 6 + [2] * 4
    assert summary.rounds == 2 and len(summary.batch_ids) == 2


def test_missing_template_column_fails_before_any_request(
    server: Any, tmp_path: Path, state_dir: str
) -> None:
    source = write_csv(tmp_path / "in.csv", reviews(3))
    with pytest.raises(TemplateError, match=r"'txt'.*available columns: id, text"):
        run(server, source, str(tmp_path / "out.parquet"), state_dir, prompt="Sentiment: {{ txt }}")
    assert sum(server.stats.calls.values()) == 0


def test_duplicate_rows_are_one_request(server: Any, tmp_path: Path, state_dir: str) -> None:
    rows = [{"id": i, "text": "same words" if i % 2 else f"unique {i}"} for i in range(10)]
    source = write_csv(tmp_path / "in.csv", rows)
    out = str(tmp_path / "out.parquet")
    summary = run(server, source, out, state_dir)
    assert server.stats.requests_received == 6 and summary.unique_requests == 6
    answers = pq.read_table(out).column("response").to_pylist()
    assert len({answers[i] for i in (1, 3, 5, 7, 9)}) == 1 and answers[1] is not None


def test_empty_input_gives_empty_output_with_full_schema(server: Any, tmp_path: Path, state_dir: str) -> None:
    source = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), source)
    out = str(tmp_path / "out.parquet")
    summary = run(server, str(source), out, state_dir)
    table = pq.read_table(out)
    assert table.num_rows == 0 and summary.rows == 0
    assert table.column_names == ["id", "text", *OUTPUT_COLUMNS]
    assert table.schema.field("response_input_tokens").type == pa.int64()
    assert server.stats.creates == 0


def test_unicode_and_multiline_cells_round_trip(server: Any, tmp_path: Path, state_dir: str) -> None:
    texts = ["Très bien, j'adore ✓", 'line one\nline two, "quoted"', "日本語のレビュー 👍", "tab\there"]
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    out = str(tmp_path / "out.parquet")
    run(server, str(source), out, state_dir, prompt="Summarise: {{ text }}")
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == texts
    assert table.column("response").to_pylist() == [
        default_answer(chat_body("gpt-4o-mini", f"Summarise: {t}")) for t in texts
    ]


def test_existing_output_needs_overwrite_before_anything_is_sent(
    server: Any, tmp_path: Path, state_dir: str
) -> None:
    source = write_csv(tmp_path / "in.csv", reviews(3))
    out = tmp_path / "out.parquet"
    out.write_bytes(b"not yet")
    with pytest.raises(TableError, match="overwrite"):
        run(server, source, str(out), state_dir)
    assert sum(server.stats.calls.values()) == 0
    run(server, source, str(out), state_dir, overwrite=True)
    assert pq.read_table(out).num_rows == 3


def test_rerun_of_a_finished_job_sends_nothing_new(server: Any, tmp_path: Path, state_dir: str) -> None:
    source = write_csv(tmp_path / "in.csv", reviews(8))
    first = run(server, source, str(tmp_path / "a.parquet"), state_dir, max_requests_per_batch=3)
    creates, uploads = server.stats.creates, server.stats.uploads
    second = run(server, source, str(tmp_path / "b.parquet"), state_dir, max_requests_per_batch=3)
    assert (server.stats.creates, server.stats.uploads) == (creates, uploads)
    assert first.job_id == second.job_id
    assert pq.read_table(tmp_path / "a.parquet").equals(
        pq.read_table(tmp_path / "b.parquet").replace_schema_metadata(
            pq.read_table(tmp_path / "a.parquet").schema.metadata
        )
    )


def test_api_key_never_reaches_logs_state_or_output(
    server: Any,
    tmp_path: Path,
    state_dir: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    rows = reviews(6)
    rows[2]["text"] = "x [[fake:400]]"
    source = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.parquet"
    run(server, source, str(out), state_dir, max_error_rate=1.0)
    captured = capfd.readouterr()
    assert API_KEY not in caplog.text + captured.out + captured.err
    files = [p for p in Path(state_dir).rglob("*") if p.is_file()] + [out]
    assert len(files) > 5
    for path in files:
        assert API_KEY.encode() not in path.read_bytes(), path
