"""Trust under faults, row by row: one unreadable result line spoils one row (never a batch),
conflicting answers are never joined silently nor cached, and big result files are downloaded
and parsed in slices. Over real HTTP to the fake server, with real jobs and Parquet read back."""

from __future__ import annotations

import gc
import gzip
import io
import logging
import traceback
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest

from prefect_llm_batch.cache import ResponseCache
from prefect_llm_batch.cli import print_summary
from prefect_llm_batch.errors import ProviderUnavailable
from prefect_llm_batch.jobs import JobSummary
from prefect_llm_batch.jobs.collect import select_results
from prefect_llm_batch.providers import base
from prefect_llm_batch.providers.anthropic import AnthropicBatchProvider
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.results import RowResult, results_to_table
from prefect_llm_batch.spec import ErrorKind, JobSpec, ProviderTarget
from prefect_llm_batch.store import JobStore
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig

from .test_durable import FAST, Runner, spec, texts, write_source

ROWS = 10


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeServerConfig(seed=5)) as srv:
        yield srv


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


def where(server: FakeProviderServer, provider: str) -> ProviderTarget:
    base_url = server.anthropic_base_url if provider == "anthropic" else server.base_url
    return ProviderTarget(provider=provider, base_url=base_url, key_base_url=base_url)


def job_for(provider: str) -> JobSpec:
    if provider == "anthropic":
        return spec(provider="anthropic", model="claude-3-5-haiku-latest", params={"max_tokens": 64})
    return spec()


def kinds(table: pa.Table) -> list[str | None]:
    return table.column("response_error_kind").to_pylist()


def cached_answers(state: Path) -> int:
    return ResponseCache(str(state)).stats()[1]


# ----- 5. one bad line spoils one row --------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", ["garble", "cut"])
def test_an_unreadable_line_spoils_its_row_only_and_the_next_round_answers_it(
    fault: str, provider: str, server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    server.spoil_next_result_line(fault, line=3)  # type: ignore[arg-type]
    src = write_source(tmp_path / "in.parquet", texts(ROWS))
    ref, summary, table = runner.run(src, tmp_path / "state", where(server, provider), job=job_for(provider))
    first_round = JobStore(ref.state_dir, ref.job_id).read_results(0)
    assert kinds(first_round).count("missing") == 1  # that row only; the rest of the batch answered
    assert kinds(first_round).count(None) == ROWS - 1
    assert summary.unreadable_lines == 1
    assert kinds(table) == [None] * ROWS  # round 2 sent the row again and it was answered
    assert sorted(table.column("response_attempts").to_pylist()) == [1] * (ROWS - 1) + [2]
    assert server.stats.requests_received == ROWS + 1
    assert summary.rounds == 2 and summary.error_rows == 0


def test_the_cli_summary_shows_unreadable_lines(capsys: pytest.CaptureFixture[str]) -> None:
    fields: dict[str, Any] = {"job_id": "j", "output": "o", "state_dir": "s", "provider": "openai"}
    summary = JobSummary(**fields, model="m", rows=3, unique_requests=3, ok_rows=3, error_rows=0)
    print_summary(summary)
    assert "unreadable" not in capsys.readouterr().out
    print_summary(summary.model_copy(update={"unreadable_lines": 2}))
    assert "unreadable result lines" in capsys.readouterr().out


def test_a_cut_last_line_and_lines_without_custom_id_are_counted_not_fatal() -> None:
    good = [chat_line(f"k{i}", f"answer {i}") for i in range(4)]
    data = b"\n".join([good[0], b'{"no_id": true}', good[1], b"[1, 2]", good[2], good[3][:40]])
    with mock_provider({"file-o": data}) as p:
        read = p.read_results(ended("file-o"))
    assert read.table.column("custom_id").to_pylist() == ["k0", "k1", "k2"]
    assert read.unreadable == 3
    assert read.examples == [
        "line 2 of the output file of batch batch_1",
        "line 4 of the output file of batch batch_1",
        "line 6 of the output file of batch batch_1",
    ]


# ----- 6. conflicting answers are never joined silently -------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_conflicting_lines_give_conflicting_results_and_stay_out_of_the_cache(
    provider: str, server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    server.spoil_next_result_line("conflict", line=4)
    values = texts(ROWS)
    state = tmp_path / "state"
    once = FAST.model_copy(update={"max_attempts": 1})
    target, job = where(server, provider), job_for(provider)
    _, summary, table = runner.run(write_source(tmp_path / "in.parquet", values), state, target, job, once)
    assert kinds(table).count("conflicting_results") == 1 and kinds(table).count(None) == ROWS - 1
    bad = kinds(table).index("conflicting_results")
    assert table.column("response")[bad].as_py() is None
    assert "2 different answers" in table.column("response_error")[bad].as_py()
    assert summary.errors_by_kind == {"conflicting_results": 1}
    assert cached_answers(state) == ROWS - 1  # nothing conflicting went into the cache
    # A later job with the cache in use takes the other rows from the cache and sends that row again.
    received = server.stats.requests_received
    src = write_source(tmp_path / "more.parquet", [*values, "text new"])
    _, later, table = runner.run(src, state, target, job, once)
    assert server.stats.requests_received - received == 2  # the conflicting row and the new one
    assert later.cached_requests == ROWS - 1
    assert kinds(table) == [None] * (ROWS + 1)
    assert table.column("response_cached")[bad].as_py() is False


def test_a_conflict_is_retried_in_the_next_round(
    server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    server.spoil_next_result_line("conflict", line=0)
    state = tmp_path / "state"
    ref, summary, table = runner.run(
        write_source(tmp_path / "in.parquet", texts(ROWS)), state, where(server, "openai")
    )
    assert kinds(JobStore(ref.state_dir, ref.job_id).read_results(0)).count("conflicting_results") == 1
    assert kinds(table) == [None] * ROWS
    assert server.stats.requests_received == ROWS + 1 and summary.rounds == 2
    assert "(a different answer)" not in "".join(table.column("response").to_pylist())
    assert cached_answers(state) == ROWS


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_identical_duplicate_lines_are_one_answer(
    provider: str, server: FakeProviderServer, runner: Runner, tmp_path: Path
) -> None:
    server.spoil_next_result_line("duplicate", line=2)
    state = tmp_path / "state"
    _, summary, table = runner.run(
        write_source(tmp_path / "in.parquet", texts(ROWS)), state, where(server, provider), job_for(provider)
    )
    assert kinds(table) == [None] * ROWS
    assert server.stats.requests_received == ROWS and summary.rounds == 1
    assert cached_answers(state) == ROWS


def test_an_answer_beside_error_lines_is_kept_and_two_equal_answers_with_other_tokens_agree() -> None:
    server_error = ErrorKind.SERVER_ERROR
    lines = [
        RowResult("a", error_kind=server_error, error="failed first"),
        RowResult("a", response="yes", input_tokens=3),
        RowResult("b", response="same", input_tokens=3),
        RowResult("b", response="same", input_tokens=4),
        RowResult("c", response="one"),
        RowResult("c", error_kind=server_error, error="and an error"),
        RowResult("c", response="two"),
    ]
    got = select_results(results_to_table(lines), ["a", "b", "c"], "batch_1")
    assert got.column("response").to_pylist() == ["yes", "same", None]
    assert kinds(got) == [None, None, "conflicting_results"]
    assert got.column("response_input_tokens").to_pylist()[:2] == [3, 3]


def test_conflicting_embeddings_are_conflicting_results() -> None:
    lines = [RowResult("a", embedding=[1.0, 2.0]), RowResult("a", embedding=[1.0, 2.5])]
    lines += [RowResult("b", embedding=[0.5]), RowResult("b", embedding=[0.5])]
    got = select_results(results_to_table(lines, embeddings=True), ["a", "b"], "batch_1")
    assert kinds(got) == ["conflicting_results", None]
    assert got.column("response_embedding").to_pylist() == [None, [0.5]]


# ----- 11. big result files are streamed --------------------------------------------------


def test_a_big_result_file_is_downloaded_and_parsed_in_slices(
    runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_answer = "word " * 400  # ~2 KB per line: 300 lines are ~0.7 MB
    slice_bytes = 64 * 1024
    monkeypatch.setattr(base, "RESULT_SLICE_BYTES", slice_bytes)
    fed: list[int] = []
    parse = OpenAIBatchProvider.parse_results

    def spy(self: OpenAIBatchProvider, data: bytes, *args: Any, **kwargs: Any) -> pa.Table:
        fed.append(len(data))
        return parse(self, data, *args, **kwargs)

    monkeypatch.setattr(OpenAIBatchProvider, "parse_results", spy)
    with FakeProviderServer(FakeServerConfig(answer=lambda body: long_answer)) as server:
        server.spoil_next_result_line("garble", line=150)  # a bad line in a middle slice
        _, summary, table = runner.run(
            write_source(tmp_path / "in.parquet", texts(300)), tmp_path / "state", where(server, "openai")
        )
    assert sum(fed) > 10 * slice_bytes and len(fed) > 10  # the first round's file, in slices
    assert max(fed) <= slice_bytes
    assert kinds(table) == [None] * 300 and summary.unreadable_lines == 1
    assert set(table.column("response").to_pylist()) == {long_answer}


def test_download_memory_is_a_slice_of_raw_bytes_plus_the_parsed_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both allocators are measured: Python's (tracemalloc: the raw bytes of the file and its
    # slices) and Arrow's (its own memory pool, which tracemalloc cannot see: the parsed table).
    # The bound: one slice of raw bytes, plus the parsed results of the batch, plus one slice's
    # parsing; never the file's bytes, in either allocator.
    lines, line = 12_000, chat_line("k" * 43, "x" * 1800)
    file_bytes = lines * (len(line) + 1)  # ~24 MB

    def pieces() -> Iterator[bytes]:  # the server side holds one piece at a time
        for _ in range(lines // 100):
            yield b"".join(line + b"\n" for _ in range(100))

    slice_bytes = 1 << 20
    monkeypatch.setattr(base, "RESULT_SLICE_BYTES", slice_bytes)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=pieces()))

    def download() -> tuple[int, int, int, int]:
        """Rows, unreadable lines, Python's peak and the parsed table's Arrow bytes (plain ints:
        no Arrow object outlives the call)."""
        with OpenAIBatchProvider(
            api_key="fake-key-FAKE-rows", base_url="https://fake.example/v1", transport=transport
        ) as p:
            tracemalloc.start()
            try:
                read = p.read_results(ended("file-o"))
                python_peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        return read.table.num_rows, read.unreadable, python_peak, read.table.get_total_buffer_size()

    default_pool = pa.default_memory_pool()
    measured = pa.proxy_memory_pool(default_pool)  # counts what Arrow allocates while it is the default
    pa.set_memory_pool(measured)
    try:
        rows, unreadable, python_peak, table_bytes = download()
    finally:
        pa.set_memory_pool(default_pool)
        measured_pools.append(measured)  # kept alive: no buffer may outlive the pool it came from
    gc.collect()
    assert measured.bytes_allocated() == 0  # nothing parsed is still alive: the peak is the call's
    arrow_peak = measured.max_memory()
    assert rows == lines and unreadable == 0
    assert file_bytes > 20 * slice_bytes
    assert python_peak < 3 * slice_bytes  # Python: the slice being parsed, not the file
    assert arrow_peak <= table_bytes + 2 * slice_bytes  # Arrow: the results, and one slice's parsing


#: Memory pools a test measured with; kept alive for the session (an Arrow buffer must not outlive
#: the pool it came from).
measured_pools: list[pa.MemoryPool] = []


def test_sliced_parsing_equals_parsing_the_whole_file(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [chat_line(f"k{i:03d}", f"answer {i} ✓" * (i % 7 + 1)) for i in range(200)]
    lines[17] = orjson.dumps({"custom_id": "k017", "response": None, "error": {"code": "batch_expired"}})
    data = b"\n".join(lines) + b"\n"
    monkeypatch.setattr(base, "RESULT_SLICE_BYTES", 997)  # slices end at line ends, whatever the size
    with mock_provider({"file-o": data}) as p:
        got = p.read_results(ended("file-o")).table
        assert got.equals(p.parse_results(data, "batch_1"))
    with AnthropicBatchProvider(api_key="fake-key-FAKE-rows") as a:
        message = {"content": [{"type": "text", "text": "hi"}], "usage": {}, "stop_reason": "end_turn"}
        raw = [{"custom_id": f"m{i}", "result": {"type": "succeeded", "message": message}} for i in range(50)]
        whole = b"".join(orjson.dumps(r) + b"\n" for r in raw)
        sliced = a.parse_result_file(io.BytesIO(whole), "msgbatch_1", where="the results").table
        assert sliced.equals(a.parse_results(whole, "msgbatch_1"))


def test_a_flood_of_unknown_ids_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    lines = [RowResult(f"stranger-{i}", response="not ours") for i in range(500)]
    lines.append(RowResult("ours", response="yes"))
    with caplog.at_level(logging.WARNING, logger="prefect_llm_batch"):
        got = select_results(results_to_table(lines), ["ours"], "batch_1", chunk_id=4)
    assert got.column("response").to_pylist() == ["yes"]
    warnings = [r.getMessage() for r in caplog.records if "unknown" in r.getMessage()]
    assert len(warnings) == 1
    assert "500" in warnings[0] and "stranger-0" in warnings[0] and "stranger-499" not in warnings[0]


# ----- helpers ------------------------------------------------------------------------------


def chat_line(custom_id: str, text: str) -> bytes:
    body = {
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
    }
    line = {"id": "batch_req_1", "custom_id": custom_id, "response": {"status_code": 200, "body": body}}
    return orjson.dumps({**line, "error": None})


def ended(output_file_id: str) -> Any:
    return OpenAIBatchProvider.batch_info(
        {"id": "batch_1", "status": "completed", "output_file_id": output_file_id, "error_file_id": None}
    )


def mock_provider(files: dict[str, bytes]) -> OpenAIBatchProvider:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=files[request.url.path.split("/")[-2]])

    return OpenAIBatchProvider(
        api_key="fake-key-FAKE-rows",
        base_url="https://fake.example/v1",
        transport=httpx.MockTransport(handler),
    )


# ----- 12. a download that breaks off mid-body is retried, its error redacted ----------------

DOWNLOAD_KEY = "fake-key-FAKE-download-0123456789"


class BreaksOff(httpx.SyncByteStream):
    """A response body that sends ``good`` and then fails with ``error`` (a dropped connection,
    a proxy cutting in): what the client sees while it streams the body."""

    def __init__(self, good: bytes, error: Exception) -> None:
        self.good, self.error = good, error

    def __iter__(self) -> Iterator[bytes]:
        yield self.good
        raise self.error


def broken_answer(how: str, data: bytes) -> httpx.Response:
    """A 200 whose body breaks halfway, as ``how`` says; the errors quote the key, as proxies do."""
    half = data[: len(data) // 2]
    quoting = f"while sending Authorization: Bearer {DOWNLOAD_KEY}"
    if how == "decoding":  # a gzip body whose second half is damaged: httpx.DecodingError
        body = gzip.compress(data)
        spoiled = body[: len(body) // 2] + b"\x00not gzip any more\x00" * 64
        return httpx.Response(200, headers={"content-encoding": "gzip"}, stream=httpx.ByteStream(spoiled))
    errors: dict[str, Exception] = {
        "read": httpx.ReadError(f"connection reset {quoting}"),
        "protocol": httpx.RemoteProtocolError(f"peer closed connection {quoting}"),
        "proxy": httpx.ProxyError(f"proxy dropped the tunnel {quoting}"),
    }
    return httpx.Response(200, stream=BreaksOff(half, errors[how]))


BREAKS = ["decoding", "read", "protocol", "proxy"]


@pytest.mark.parametrize("how", BREAKS)
def test_a_download_that_breaks_off_mid_body_is_downloaded_again(how: str) -> None:
    data = b"".join(chat_line(f"k{i:03d}", f"answer {i}") + b"\n" for i in range(200))
    answers = iter([broken_answer(how, data), httpx.Response(200, content=data)])
    with OpenAIBatchProvider(
        api_key=DOWNLOAD_KEY,
        base_url="https://fake.example/v1",
        transport=httpx.MockTransport(lambda request: next(answers)),
        sleep=lambda seconds: None,
    ) as p:
        read = p.read_results(ended("file-o"))
    assert read.table.num_rows == 200 and read.unreadable == 0  # the second, whole download
    assert read.table.column("response").to_pylist()[199] == "answer 199"


@pytest.mark.parametrize("how", BREAKS)
def test_a_download_that_keeps_breaking_is_provider_unavailable_and_redacted(how: str) -> None:
    data = b"".join(chat_line(f"k{i:03d}", f"answer {i}") + b"\n" for i in range(200))
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return broken_answer(how, data)

    with (
        OpenAIBatchProvider(
            api_key=DOWNLOAD_KEY,
            base_url="https://fake.example/v1",
            transport=httpx.MockTransport(answer),
            max_retries=3,
            sleep=lambda seconds: None,
        ) as p,
        pytest.raises(ProviderUnavailable, match="broke off") as raised,
    ):
        p.read_results(ended("file-o"))
    assert len(calls) == 3  # retried like every idempotent call
    rendered = "".join(traceback.format_exception(raised.value)) + repr(raised.value.__cause__)
    assert "file-o" in rendered and DOWNLOAD_KEY not in rendered and "FAKE-download" not in rendered
