"""A model per row (``model_column``): one job compares several models on one table, one batch per
model, over real HTTP to the fake server, with the Parquet output read back (issue 19, item 5)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prefect_llm_batch import jobs
from prefect_llm_batch.cli import app
from prefect_llm_batch.costs import estimate_cost
from prefect_llm_batch.errors import InputError
from prefect_llm_batch.local import run_table
from prefect_llm_batch.providers import make_provider, target_for
from prefect_llm_batch.spec import JobSpec, RunOptions
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-models-0000"
FAST: dict[str, Any] = {"poll_interval": 0.02, "retry_backoff": 0}
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano"]


@pytest.fixture
def server() -> Any:
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=7)) as srv:
        yield srv


def comparison_table(tmp_path: Path, models: list[str], items: int = 4, name: str = "in.parquet") -> str:
    """One row per (item, model): the cross join the README shows."""
    df = pd.DataFrame({"id": range(items), "text": [f"review number {i}" for i in range(items)]})
    rows = df.merge(pd.DataFrame({"model": models}), how="cross")
    path = tmp_path / name
    rows.to_parquet(path, index=False)
    return str(path)


def spec(server: FakeProviderServer, **extra: Any) -> JobSpec:
    return JobSpec(
        prompt="Summarise {{ text }}",
        model_column="model",
        provider="openai",
        base_url=server.base_url,
        **extra,
    )


def run(server: FakeProviderServer, src: str, tmp_path: Path, **options: Any) -> Any:
    job, max_error_rate = spec(server, **options.pop("spec", {})), options.pop("max_error_rate", 0.1)
    return run_table(
        src, str(tmp_path / "out.parquet"), job, RunOptions(**FAST, keep_input_files=True, **options),
        state_dir=str(tmp_path / "state"), api_key=KEY, overwrite=True, max_error_rate=max_error_rate,
    )  # fmt: skip


def input_lines(server: FakeProviderServer, batch_id: str) -> list[dict[str, Any]]:
    data = server.files[server.batches[batch_id].input_file_id].data
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def test_three_models_on_one_table_are_one_job_with_one_batch_per_model_and_one_output(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    src = comparison_table(tmp_path, MODELS)  # rows alternate models: item 0 x 3 models, item 1 x 3...
    summary = run(server, src, tmp_path)
    assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 12

    batches = server.batches
    assert sorted(b.model or "" for b in batches.values()) == sorted(MODELS)  # counted at the server
    assert all(b.status == "completed" for b in batches.values())
    assert server.stats.requests_received == 12  # the same prompt for 3 models: 3 requests
    for batch_id, batch in batches.items():
        lines = input_lines(server, batch_id)
        assert {line["body"]["model"] for line in lines} == {batch.model}
    # the job's cost prices each batch's reported usage by that batch's model
    usage = [server.batch(batch_id)["usage"] for batch_id in batches]
    billed = [
        estimate_cost(b.model or "", u["input_tokens"], u["output_tokens"])
        for b, u in zip(batches.values(), usage, strict=True)
    ]
    assert summary.cost_usd == pytest.approx(sum(c or 0.0 for c in billed))
    assert summary.cost_usd != pytest.approx(
        estimate_cost(MODELS[0], summary.input_tokens, summary.output_tokens)
    )

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("model").to_pylist() == table.column("response_model").to_pylist()
    assert table.column("id").to_pylist() == [i for i in range(4) for _ in MODELS]  # input order kept
    # each row's answer came from the batch of its own model
    batch_models = [batches[b].model for b in table.column("response_batch_id").to_pylist()]
    assert batch_models == table.column("model").to_pylist()
    ids = table.column("custom_id").to_pylist() if "custom_id" in table.column_names else None
    assert ids is None or len(set(ids)) == 12


def test_small_batches_still_never_hold_two_models(server: FakeProviderServer, tmp_path: Path) -> None:
    src = comparison_table(tmp_path, MODELS, items=5)
    summary = run(server, src, tmp_path, spec={"limits": {"max_requests_per_batch": 2}})
    assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 15
    batches = server.batches
    assert Counter(b.model for b in batches.values()) == {m: 3 for m in MODELS}  # 5 rows: 2 + 2 + 1
    for batch_id, batch in batches.items():
        assert batch.status == "completed", batch.errors
        assert {line["body"]["model"] for line in input_lines(server, batch_id)} == {batch.model}


def test_a_retry_round_keeps_each_model_in_its_own_batches(tmp_path: Path) -> None:
    failed_once: set[str] = set()

    def flaky(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        key = f"{body['model']}|{prompt}"
        if "number 1" in prompt and key not in failed_once:
            failed_once.add(key)
            raise RuntimeError("fails once")  # a 500 line: server_error, retried
        return "fine"

    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=7, answer=flaky)) as server:
        # a spend cap: the retry round is priced per model (one price for "the job's model" would
        # find none, and not send it)
        summary = run(
            server, comparison_table(tmp_path, MODELS), tmp_path, max_attempts=2, max_cost_usd=100.0
        )
        assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 12
        batches = server.batches
        assert len(batches) == 6  # round 1: one per model; round 2: item 1 of each model, one per model
        for batch_id, batch in batches.items():
            assert batch.status == "completed", batch.errors
            assert {line["body"]["model"] for line in input_lines(server, batch_id)} == {batch.model}
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("response_model").to_pylist() == table.column("model").to_pylist()
    retried = [
        a
        for a, i in zip(
            table.column("response_attempts").to_pylist(), table.column("id").to_pylist(), strict=True
        )
        if i == 1
    ]
    assert retried == [2, 2, 2]


def test_keys_resume_and_cache_are_separate_per_model(server: FakeProviderServer, tmp_path: Path) -> None:
    first = run(server, comparison_table(tmp_path, MODELS[:2]), tmp_path)
    assert isinstance(first, jobs.JobSummary) and server.stats.creates == 2

    again = run(server, comparison_table(tmp_path, MODELS[:2]), tmp_path)  # the same job: resumed
    assert isinstance(again, jobs.JobSummary) and again.job_id == first.job_id
    assert server.stats.creates == 2 and server.stats.requests_received == 8

    # A third model on the same items: another job; the first two models' answers come from the
    # cache, only the new model's rows are sent.
    third = run(server, comparison_table(tmp_path, MODELS, name="three.parquet"), tmp_path)
    assert isinstance(third, jobs.JobSummary) and third.job_id != first.job_id
    assert server.stats.creates == 3 and server.stats.requests_received == 12
    (new,) = [b for b in server.batches.values() if b.model == MODELS[2]]
    assert new.request_counts["total"] == 4
    table = pq.read_table(tmp_path / "out.parquet")
    cached = dict(
        zip(table.column("model").to_pylist(), table.column("response_cached").to_pylist(), strict=False)
    )
    assert cached == {MODELS[0]: True, MODELS[1]: True, MODELS[2]: False}
    assert table.column("response_model").to_pylist() == table.column("model").to_pylist()


@pytest.mark.parametrize(("cell", "what"), [(None, "null"), ("  ", "empty")])
def test_a_row_without_a_model_is_an_error_naming_row_and_column_before_any_request(
    server: FakeProviderServer, tmp_path: Path, cell: str | None, what: str
) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"id": [10, 11, 12], "text": ["a", "b", "c"], "llm": ["gpt-4o", cell, "gpt-4o-mini"]}), path
    )
    job = JobSpec(
        prompt="{{ text }}", model_column="llm", id_column="id", provider="openai", base_url=server.base_url
    )
    with pytest.raises(InputError) as caught:
        run_table(
            str(path), str(tmp_path / "out.parquet"), job, RunOptions(**FAST),
            state_dir=str(tmp_path / "state"), api_key=KEY,
        )  # fmt: skip
    message = str(caught.value)
    assert f"model column 'llm' is {what} in row 1 (id 11)" in message
    assert server.stats.uploads == 0 and server.stats.creates == 0 and sum(server.stats.calls.values()) == 0


def test_model_and_model_column_are_one_or_the_other() -> None:
    with pytest.raises(ValueError, match="not both"):
        JobSpec(prompt="{{ a }}", model="gpt-4o", model_column="m")
    with pytest.raises(ValueError, match="a model is needed"):
        JobSpec(prompt="{{ a }}")


def test_the_estimate_prices_each_row_by_its_own_model(tmp_path: Path) -> None:
    src = comparison_table(tmp_path, MODELS, items=6)
    job = JobSpec(
        prompt="Summarise {{ text }}", model_column="model", provider="openai", params={"max_tokens": 50}
    )
    target = target_for("openai", "https://api.example.test/v1")
    with make_provider(
        target, api_key="fake-key-not-used", limits=job.limits, endpoint=job.endpoint
    ) as client:
        ref = jobs.prepare(src, job, client, target, state_dir=str(tmp_path / "state"))
    record = JobStore(ref.state_dir, ref.job_id).read_job()
    assert {c.model for c in record.chunks} == set(MODELS) and len(record.chunks) == 3
    planned = jobs.estimate(ref, job.params)
    expected = sum(estimate_cost(str(c.model), c.est_tokens, c.requests * 50) or 0.0 for c in record.chunks)
    assert planned.cost_usd == pytest.approx(expected)
    one_price = estimate_cost(MODELS[0], planned.input_tokens, planned.output_tokens)
    assert one_price is not None and planned.cost_usd != pytest.approx(one_price)
    assert planned.requests_to_send == 18 and planned.batches == 3


def test_a_model_without_a_price_makes_the_estimate_unknown_as_for_one_model(tmp_path: Path) -> None:
    src = comparison_table(tmp_path, ["gpt-4o-mini", "my-own-model"])
    result = CliRunner().invoke(
        app,
        ["estimate", src, "--prompt", "Summarise {{ text }}", "--model-column", "model",
         "--provider", "openai", "--state-dir", str(tmp_path / "state")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cost unknown for model" in result.output and "my-own-model" in result.output
    assert "8 to send in 2 batch(es)" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_the_cli_runs_a_comparison_with_model_column(
    server: FakeProviderServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src = comparison_table(tmp_path, MODELS[:2], items=3)
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        app,
        ["run", src, str(out), "--prompt", "Summarise {{ text }}", "--model-column", "model",
         "--provider", "openai", "--base-url", server.base_url, "--state-dir", str(tmp_path / "state"),
         "--poll-interval", "0.05"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(b.model or "" for b in server.batches.values()) == sorted(MODELS[:2])
    table = pq.read_table(out)
    assert table.column("response_model").to_pylist() == table.column("model").to_pylist()


def test_gemini_creates_one_batch_per_model_in_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = ["gemini-2.5-flash", "gemini-2.5-pro"]
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=7)) as server:
        job = JobSpec(
            prompt="Summarise {{ text }}", model_column="model", provider="gemini",
            base_url=server.gemini_base_url,
        )  # fmt: skip
        summary = run_table(
            comparison_table(tmp_path, models), str(tmp_path / "out.parquet"), job, RunOptions(**FAST),
            state_dir=str(tmp_path / "state"), api_key=KEY,
        )  # fmt: skip
        assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 8
        listed = httpx.get(
            f"{server.gemini_base_url}/v1beta/batches", headers={"x-goog-api-key": KEY}
        ).json()["operations"]
    url_model = {op["name"]: op["metadata"]["model"].removeprefix("models/") for op in listed}
    assert sorted(url_model.values()) == models  # one batch per model, the model in its create URL
    table = pq.read_table(tmp_path / "out.parquet")
    rows = zip(table.column("response_batch_id").to_pylist(), table.column("model").to_pylist(), strict=True)
    assert all(url_model[batch] == model for batch, model in rows)
    assert table.column("response_model").to_pylist() == table.column("model").to_pylist()


def test_the_spend_cap_prices_each_models_batches_by_that_model(tmp_path: Path) -> None:
    def fails_item_1_always(body: dict[str, Any]) -> str:
        if "number 1" in str(body["messages"][-1]["content"]):
            raise RuntimeError("always fails")  # server_error: a retry round would send it again
        return "fine"

    # one model free, one dear: what round 1 cost is only right when each batch has its own price
    prices = {"cheap-model": (0.0, 0.0), "dear-model": (1000.0, 1000.0)}
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=7, answer=fails_item_1_always)) as server:
        summary = run(
            server, comparison_table(tmp_path, ["cheap-model", "dear-model"]), tmp_path,
            max_attempts=2, max_cost_usd=0.01, prices=prices, max_error_rate=1.0,
        )  # fmt: skip
        assert isinstance(summary, jobs.JobSummary)
        assert server.stats.creates == 2  # round 2 was not sent: dear-model's tokens are over the cap
    record = JobStore(str(tmp_path / "state"), summary.job_id).read_job()
    assert record.stopped is not None and "round 2" in record.stopped


def test_embeddings_of_two_models_keep_each_models_width(server: FakeProviderServer, tmp_path: Path) -> None:
    models = ["text-embedding-3-large", "text-embedding-3-small"]
    summary = run(
        server, comparison_table(tmp_path, models, items=2), tmp_path, spec={"endpoint": "/v1/embeddings"}
    )
    assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 4
    table = pq.read_table(tmp_path / "out.parquet")
    widths = [len(v) for v in table.column("response_embedding").to_pylist()]
    assert widths == [3072, 1536, 3072, 1536]


def test_realtime_mode_sends_each_row_to_its_model(server: FakeProviderServer, tmp_path: Path) -> None:
    src = comparison_table(tmp_path, MODELS[:2], items=3)
    summary = run_table(
        src, str(tmp_path / "out.parquet"), spec(server), RunOptions(**FAST),
        state_dir=str(tmp_path / "state"), api_key=KEY, mode="realtime",
    )  # fmt: skip
    assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 6 and summary.mode == "realtime"
    assert server.stats.creates == 0 and server.stats.calls["POST /v1/chat/completions"] == 6
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("response_model").to_pylist() == table.column("model").to_pylist()


def test_enrich_takes_a_model_column_for_a_dataframe(tmp_path: Path) -> None:
    from prefect_llm_batch.notebook import enrich

    items = pd.DataFrame({"text": ["I love it", "awful"]})
    rows = items.merge(pd.DataFrame({"model": ["gpt-4o-mini", "gpt-4o"]}), how="cross")
    out = enrich(
        rows, "Sentiment of: {{ text }}", model_column="model", state_dir=str(tmp_path), progress=False
    )
    assert out["response_model"].tolist() == rows["model"].tolist()
    assert out["response"].notna().all()


def test_a_cost_cap_with_an_unpriced_model_in_the_column_sends_nothing(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    from prefect_llm_batch.errors import CostLimitExceeded

    src = comparison_table(tmp_path, ["gpt-4o-mini", "my-own-model"])
    with pytest.raises(CostLimitExceeded, match="my-own-model"):
        run_table(
            src, str(tmp_path / "out.parquet"), spec(server), RunOptions(**FAST),
            state_dir=str(tmp_path / "state"), api_key=KEY, max_cost_usd=5.0,
        )  # fmt: skip
    assert server.stats.uploads == 0 and server.stats.creates == 0
