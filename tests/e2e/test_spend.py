"""Remote files that do not pile up, budgets that count what is in flight, and Anthropic prompt
caching in batches: real HTTP to the fake server, real Parquet read back (issue 19, items 3, 4, 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefect_llm_batch import jobs
from prefect_llm_batch.local import run_table
from prefect_llm_batch.spec import JobSpec, RunOptions
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

KEY = "fake-key-spend-0000"
FAST: dict[str, Any] = {"poll_interval": 0.02, "retry_backoff": 0}


@pytest.fixture
def server() -> Any:
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=3)) as srv:
        yield srv


def source(tmp_path: Path, n: int = 6) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(n)), "text": [f"text {i:03d}" for i in range(n)]}), path)
    return str(path)


def openai_spec(server: FakeProviderServer, **extra: Any) -> JobSpec:
    return JobSpec(
        prompt="Summarise {{ text }}",
        model="gpt-4o-mini",
        provider="openai",
        base_url=server.base_url,
        **extra,
    )


# ---- 3. remote files expire --------------------------------------------------------------------


def test_uploaded_inputs_and_batch_outputs_expire_after_the_configured_seconds(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    options = RunOptions(**FAST, keep_input_files=True, input_file_expiry=7200, output_expiry=86400)
    summary = run_table(
        source(tmp_path), str(tmp_path / "out.parquet"), openai_spec(server), options,
        state_dir=str(tmp_path / "state"), api_key=KEY,
    )  # fmt: skip
    assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 6
    (batch,) = server.batches.values()
    assert batch.output_expires_after == 86400
    assert server.stats.file_expiries[batch.input_file_id] == 7200
    files = server.files
    assert files[batch.input_file_id].expires_at == files[batch.input_file_id].created_at + 7200
    assert batch.output_file_id is not None
    output_file = files[batch.output_file_id]
    assert output_file.expires_at == output_file.created_at + 86400


def test_by_default_inputs_expire_in_7_days_outputs_in_30_and_inputs_are_still_deleted(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    summary = run_table(
        source(tmp_path), str(tmp_path / "out.parquet"), openai_spec(server), RunOptions(**FAST),
        state_dir=str(tmp_path / "state"), api_key=KEY,
    )  # fmt: skip
    assert isinstance(summary, jobs.JobSummary)
    (batch,) = server.batches.values()
    assert batch.output_expires_after == 30 * 24 * 3600
    assert server.stats.file_expiries[batch.input_file_id] == 7 * 24 * 3600
    assert batch.input_file_id not in server.files  # deleted once collected, as before


@pytest.mark.parametrize("seconds", [3599, 2_592_001])
def test_out_of_range_expiry_is_refused_by_the_options_before_anything_is_sent(seconds: int) -> None:
    for field in ("input_file_expiry", "output_expiry"):
        with pytest.raises(ValueError, match=rf"{field}\n\s+Input should be (greater|less) than"):
            RunOptions(**{field: seconds})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"anchor": "created_at", "seconds": 60}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 2_592_001}, "output_expires_after.seconds"),
        ({"anchor": "last_accessed", "seconds": 7200}, "output_expires_after.anchor"),
    ],
)
def test_fake_server_rejects_an_out_of_range_output_expiry_as_openai_does(
    server: FakeProviderServer, body: dict[str, Any], param: str
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as client:
        line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
        uploaded = client.post("/files", files={"file": ("in.jsonl", line)}, data={"purpose": "batch"})
        bad_upload = client.post(
            "/files",
            files={"file": ("in.jsonl", line)},
            data={"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
        )
        created = client.post(
            "/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "output_expires_after": body,
            },
        )
    assert bad_upload.status_code == 400
    assert bad_upload.json()["error"]["param"] == "expires_after.seconds"
    assert created.status_code == 400
    assert created.json()["error"]["param"] == param
    assert server.stats.creates == 0


def test_cli_expiry_defaults_equal_the_run_options_defaults() -> None:
    from prefect_llm_batch import spec
    from prefect_llm_batch.cli import options as cli_options

    assert (
        cli_options.DEFAULT_INPUT_FILE_EXPIRY
        == spec.DEFAULT_INPUT_FILE_EXPIRY
        == RunOptions().input_file_expiry
    )
    assert cli_options.DEFAULT_OUTPUT_EXPIRY == spec.DEFAULT_OUTPUT_EXPIRY == RunOptions().output_expiry


# ---- 4. budgets count what is in flight ----------------------------------------------------------


def long_answer(body: dict[str, Any]) -> str:
    return "a long answer " * 150  # ~2,100 characters: far more output tokens than the estimate's 100


def test_a_retry_round_that_would_cross_max_cost_usd_is_not_sent_and_the_summary_says_why(
    tmp_path: Path,
) -> None:
    config = FakeServerConfig(api_key=KEY, seed=3, expire_after_requests=3, answer=long_answer)
    with FakeProviderServer(config) as server:
        spec = openai_spec(server)
        # the estimate of all 6 requests (~100 output tokens each) is under the cap; round 1 alone,
        # billed at its long answers, is over it: round 2 must not be sent
        summary = run_table(
            source(tmp_path), str(tmp_path / "out.parquet"), spec, RunOptions(**FAST),
            state_dir=str(tmp_path / "state"), api_key=KEY, max_cost_usd=0.0003, max_error_rate=1.0,
        )  # fmt: skip
        assert isinstance(summary, jobs.JobSummary)
        assert summary.estimated_cost_usd is not None and summary.estimated_cost_usd < 0.0003
        assert len(server.batches) == 1 and server.stats.creates == 1  # no round 2
        assert summary.rounds == 1
        assert summary.errors_by_kind == {"batch_expired": 3}
        assert "round 2 (3 request(s)" in summary.stopped and "max_cost_usd=$0.0003" in summary.stopped
        assert summary.cost_usd is not None and summary.cost_usd > 0.0003
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("response_error_kind").to_pylist().count("batch_expired") == 3


def test_a_retry_round_within_max_cost_usd_is_sent(tmp_path: Path) -> None:
    config = FakeServerConfig(api_key=KEY, seed=3, expire_after_requests=3)
    with FakeProviderServer(config) as server:
        summary = run_table(
            source(tmp_path), str(tmp_path / "out.parquet"), openai_spec(server), RunOptions(**FAST),
            state_dir=str(tmp_path / "state"), api_key=KEY, max_cost_usd=1.0, max_error_rate=1.0,
        )  # fmt: skip
        assert isinstance(summary, jobs.JobSummary)
        assert server.stats.creates == 2 and summary.stopped == ""
        assert summary.ok_rows == 6


def test_cost_comes_from_the_batch_usage_when_the_lines_carry_none(tmp_path: Path) -> None:
    config = FakeServerConfig(api_key=KEY, seed=3, line_usage=False)
    with FakeProviderServer(config) as server:
        summary = run_table(
            source(tmp_path), str(tmp_path / "out.parquet"), openai_spec(server), RunOptions(**FAST),
            state_dir=str(tmp_path / "state"), api_key=KEY,
        )  # fmt: skip
        (batch_id,) = server.batches
        usage = server.batch(batch_id)["usage"]
    assert isinstance(summary, jobs.JobSummary)
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    expected = (usage["input_tokens"] * 0.075 + usage["output_tokens"] * 0.30) / 1e6
    assert summary.cost_usd == pytest.approx(expected)


# ---- 7. Anthropic prompt caching in batches -----------------------------------------------------

SYSTEM = "You summarise customer reviews in one short sentence, plainly. " * 20


def test_cache_system_prompt_marks_the_system_block_and_counts_cache_tokens_as_input(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    spec = JobSpec(
        prompt="Summarise {{ text }}", system=SYSTEM, model="claude-3-5-haiku", provider="anthropic",
        base_url=server.anthropic_base_url, cache_system_prompt=True,
    )  # fmt: skip
    summary = run_table(
        source(tmp_path), str(tmp_path / "out.parquet"), spec, RunOptions(**FAST),
        state_dir=str(tmp_path / "state"), api_key=KEY,
    )  # fmt: skip
    assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 6
    (batch_id,) = server.message_batches
    results_url = server.message_batch(batch_id)["results_url"]
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    lines = [orjson.loads(line) for line in httpx.get(results_url, headers=headers).content.splitlines()]
    usages = [line["result"]["message"]["usage"] for line in lines]
    system_tokens = usages[0]["cache_creation_input_tokens"] + usages[0]["cache_read_input_tokens"]
    assert system_tokens > 100
    assert sum(u["cache_creation_input_tokens"] for u in usages) == system_tokens  # written once
    assert sum(u["cache_read_input_tokens"] > 0 for u in usages) == 5  # then read
    table = pq.read_table(tmp_path / "out.parquet")
    by_id = {line["custom_id"]: line["result"]["message"]["usage"] for line in lines}
    expected = sorted(u["input_tokens"] + system_tokens for u in by_id.values())
    assert sorted(table.column("response_input_tokens").to_pylist()) == expected


def test_cache_system_prompt_is_refused_for_a_provider_without_prompt_caching(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    spec = openai_spec(server, system="Be brief.", cache_system_prompt=True)
    with pytest.raises(Exception, match="cache_system_prompt: provider 'openai'"):
        run_table(
            source(tmp_path), str(tmp_path / "out.parquet"), spec, RunOptions(**FAST),
            state_dir=str(tmp_path / "state"), api_key=KEY,
        )  # fmt: skip
    assert server.stats.uploads == 0 and server.stats.creates == 0


def _anthropic_job(tmp_path: Path, name: str, cache: bool) -> tuple[jobs.JobSummary, list[Any], pa.Table]:
    """One Anthropic job of 6 rows sharing SYSTEM, on a fresh fake server: its summary, the
    usage of each result line as the server sent it, and the output read back."""
    with FakeProviderServer(FakeServerConfig(api_key=KEY, seed=3)) as server:
        spec = JobSpec(
            prompt="Summarise {{ text }}", system=SYSTEM, model="claude-3-5-haiku", provider="anthropic",
            base_url=server.anthropic_base_url, cache_system_prompt=cache,
        )  # fmt: skip
        summary = run_table(
            source(tmp_path), str(tmp_path / f"{name}.parquet"), spec, RunOptions(**FAST),
            state_dir=str(tmp_path / f"state-{name}"), api_key=KEY,
        )  # fmt: skip
        (batch_id,) = server.message_batches
        results_url = server.message_batch(batch_id)["results_url"]
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        lines = [orjson.loads(line) for line in httpx.get(results_url, headers=headers).content.splitlines()]
    assert isinstance(summary, jobs.JobSummary) and summary.ok_rows == 6
    return summary, lines, pq.read_table(tmp_path / f"{name}.parquet")


def test_cache_reads_and_writes_are_in_their_columns_and_priced_at_0_1x_and_1_25x_input(
    tmp_path: Path,
) -> None:
    plain, plain_lines, plain_table = _anthropic_job(tmp_path, "plain", cache=False)
    cached, lines, table = _anthropic_job(tmp_path, "cached", cache=True)
    usages = {line["custom_id"]: line["result"]["message"]["usage"] for line in lines}
    # the columns hold each row's reads and writes, as the provider reported them
    got = sorted(
        zip(
            table.column("response_cache_read_tokens").to_pylist(),
            table.column("response_cache_write_tokens").to_pylist(),
            strict=True,
        )
    )
    assert got == sorted(
        (u["cache_read_input_tokens"], u["cache_creation_input_tokens"]) for u in usages.values()
    )
    assert sum(r for r, _ in got) > 0 and sum(w for _, w in got) > 0
    # the cost: claude-3-5-haiku at batch prices $0.40 / $2.00 per 1M; reads 0.1x, writes 1.25x input
    read = sum(u["cache_read_input_tokens"] for u in usages.values())
    write = sum(u["cache_creation_input_tokens"] for u in usages.values())
    rest = sum(u["input_tokens"] for u in usages.values())
    out = sum(u["output_tokens"] for u in usages.values())
    expected = (rest * 0.40 + read * 0.40 * 0.1 + write * 0.40 * 1.25 + out * 2.00) / 1e6
    assert cached.cost_usd == pytest.approx(expected)
    assert cached.input_tokens == rest + read + write
    # without caching every prompt token is priced at the input rate, and the columns are zero
    plain_usages = [line["result"]["message"]["usage"] for line in plain_lines]
    plain_in = sum(u["input_tokens"] for u in plain_usages)
    assert plain.cost_usd == pytest.approx((plain_in * 0.40 + out * 2.00) / 1e6)
    assert plain_in == rest + read + write  # the same prompts
    assert set(plain_table.column("response_cache_read_tokens").to_pylist()) == {0}
    assert plain.cost_usd is not None and cached.cost_usd < plain.cost_usd
    saved = (read * 0.9 - write * 0.25) * 0.40 / 1e6
    assert plain.cost_usd - cached.cost_usd == pytest.approx(saved)


def test_a_cache_written_before_the_cache_token_columns_still_answers_with_null_counts(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    spec = openai_spec(server)
    run_table(source(tmp_path), str(tmp_path / "first.parquet"), spec, RunOptions(**FAST),
              state_dir=str(state), api_key=KEY)  # fmt: skip
    segments = sorted((state / "cache").rglob("*.parquet"))
    assert segments
    for path in segments:  # as versions before the columns wrote them
        old = pq.read_table(path)
        pq.write_table(old.drop_columns(["response_cache_read_tokens", "response_cache_write_tokens"]), path)
    other = tmp_path / "other.parquet"  # the same prompts in another table: another job, same requests
    pq.write_table(pq.read_table(source(tmp_path)).append_column("x", pa.array([1] * 6)), other)
    summary = run_table(str(other), str(tmp_path / "second.parquet"), spec, RunOptions(**FAST),
                        state_dir=str(state), api_key=KEY)  # fmt: skip
    assert isinstance(summary, jobs.JobSummary)
    assert summary.cached_requests == 6 and summary.ok_rows == 6 and server.stats.creates == 1
    table = pq.read_table(tmp_path / "second.parquet")
    assert table.column("response_cache_read_tokens").to_pylist() == [None] * 6
    assert table.column("response_cached").to_pylist() == [True] * 6
