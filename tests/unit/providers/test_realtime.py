"""The realtime path (RealtimeClient, has_batch_api) over real HTTP against the fake provider."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prefect_llm_batch.errors import ProviderRejected, ProviderUnavailable
from prefect_llm_batch.providers.anthropic import AnthropicBatchProvider
from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.providers.realtime import (
    RealtimeClient,
    estimate_tokens,
    has_batch_api,
    parse_duration,
)
from prefect_llm_batch.spec import EMBEDDINGS_ENDPOINT, ErrorKind
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig
from prefect_llm_batch.testing.answers import default_answer
from prefect_llm_batch.testing.server import openai_duration

KEY = "sk-test"
MODEL = "gpt-4o-mini"


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeServerConfig(api_key=KEY)) as fake:
        yield fake


@pytest.fixture
def provider() -> Iterator[OpenAIBatchProvider]:
    p = OpenAIBatchProvider(api_key=KEY)
    yield p
    p.close()


def openai_lines(provider: OpenAIBatchProvider, n: int, prefix: str = "Sentiment") -> list[dict[str, Any]]:
    return [
        provider.build_line(f"row-{i}", provider.build_body(MODEL, f"{prefix} {i}: great!", None, {}))
        for i in range(n)
    ]


def client_for(server: FakeProviderServer, provider: OpenAIBatchProvider, **kwargs: Any) -> RealtimeClient:
    return RealtimeClient(provider, api_key=KEY, base_url=server.base_url, wire="openai", **kwargs)


class ShuffledLatency(httpx.AsyncBaseTransport):
    """Real HTTP, each request delayed by a random time first (answers come back out of order)."""

    def __init__(self, seed: int = 7) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._random = random.Random(seed)
        self.completed: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self._random.uniform(0.0, 0.15))
        response = await self._inner.handle_async_request(request)
        self.completed.append(request.content.decode())
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


# ---- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("2s81ms", 2.081),
        ("6m0s", 360.0),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("250us", 0.00025),
        ("7", 7.0),
        ("0.25", 0.25),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "2x", "s", "1m x", "ms20"])
def test_parse_duration_rejects(text: str | None) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("seconds", [0.0, 0.02, 0.999, 1.0, 2.081, 59.5, 360.0, 3723.25])
def test_server_durations_round_trip(seconds: float) -> None:
    assert parse_duration(openai_duration(seconds)) == pytest.approx(seconds, abs=1e-3)


def test_estimate_tokens_counts_max_tokens() -> None:
    assert estimate_tokens({"max_tokens": 100}) - estimate_tokens({}) >= 100
    assert estimate_tokens({"max_completion_tokens": 50}) >= 50


# ---- OpenAI wire ----------------------------------------------------------------------------


def test_results_keep_input_order_with_shuffled_latencies(
    server: FakeProviderServer, provider: OpenAIBatchProvider
) -> None:
    lines = openai_lines(provider, 40)
    transport = ShuffledLatency()
    client = client_for(server, provider, max_concurrency=8, transport=transport)
    results = client.run(lines)
    assert [r.custom_id for r in results] == [line["custom_id"] for line in lines]
    assert all(r.ok and r.batch_id is None and r.attempts == 1 for r in results)
    assert [r.response for r in results] == [default_answer(line["body"]) for line in lines]
    # Answers really did come back in another order.
    assert transport.completed != sorted(
        transport.completed, key=lambda b: int(b.split("Sentiment ")[1][:2].strip(":"))
    )
    assert client.stats.requests_sent == 40 and client.stats.retries == 0


def test_realtime_parses_like_batch(server: FakeProviderServer, provider: OpenAIBatchProvider) -> None:
    lines = [
        provider.build_line("ok", provider.build_body(MODEL, "Sentiment: great", None, {})),
        provider.build_line("bad", provider.build_body(MODEL, "x [[fake:400]]", None, {})),
        provider.build_line("cut", provider.build_body(MODEL, "x [[fake:length]]", None, {})),
        provider.build_line("no", provider.build_body(MODEL, "x [[fake:refusal]]", None, {})),
    ]
    results = client_for(server, provider).run(lines)
    kinds = [r.error_kind for r in results]
    assert kinds == [None, ErrorKind.INVALID_REQUEST, ErrorKind.LENGTH, ErrorKind.REFUSAL]
    assert results[0].input_tokens and results[0].model == MODEL
    assert results[1].error is not None and results[1].error.startswith("HTTP 400")
    assert results[1].attempts == 1  # a 400 is not retried


def test_embeddings_lines(server: FakeProviderServer) -> None:
    with OpenAIBatchProvider(api_key=KEY, endpoint=EMBEDDINGS_ENDPOINT) as p:
        lines = [
            p.build_line(f"e{i}", p.build_body("text-embedding-3-small", f"t{i}", None, {})) for i in range(3)
        ]
        results = RealtimeClient(p, api_key=KEY, base_url=server.base_url, wire="openai").run(lines)
    assert all(r.ok and r.embedding and len(r.embedding) == 1536 for r in results)


def test_tight_rpm_finishes_every_row_with_bounded_429s(provider: OpenAIBatchProvider) -> None:
    # 600 rpm over a 1 s window: at most 10 requests per second.
    config = FakeServerConfig(api_key=KEY, realtime_rpm=600, realtime_window_s=1.0)
    with FakeProviderServer(config) as server:
        client = client_for(server, provider, requests_per_minute=600)
        results = client.run(openai_lines(provider, 40))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert client.stats.responses_429 == server.stats.realtime_429 <= 8
        assert server.stats.calls["POST /v1/chat/completions"] == 40 + server.stats.realtime_429
    assert 2.5 <= client.stats.elapsed_s <= 8.0  # paced, not a burst


def test_no_client_limit_adapts_to_headers_and_retry_after(provider: OpenAIBatchProvider) -> None:
    config = FakeServerConfig(api_key=KEY, realtime_rpm=1200, realtime_window_s=0.5)
    with FakeProviderServer(config) as server:
        client = client_for(server, provider, max_concurrency=8)
        results = client.run(openai_lines(provider, 40))
        assert all(r.ok for r in results)
        assert server.stats.realtime_429 == client.stats.responses_429
    # The headers pause every worker: far fewer 429s than rows, and nobody gave up.
    assert client.stats.responses_429 <= 30
    assert client.stats.elapsed_s >= 1.5


def test_token_limit_paces_requests(provider: OpenAIBatchProvider) -> None:
    lines = openai_lines(provider, 12)
    cost = estimate_tokens(lines[0]["body"])
    tpm = cost * 4 * 60  # about 4 requests per second
    config = FakeServerConfig(api_key=KEY, realtime_tpm=tpm, realtime_window_s=1.0)
    with FakeProviderServer(config) as server:
        client = client_for(server, provider, tokens_per_minute=tpm)
        results = client.run(lines)
        assert all(r.ok for r in results)
        assert server.stats.realtime_429 <= 6
    assert client.stats.elapsed_s >= 1.0


def test_rate_limit_headers_and_429_envelope(provider: OpenAIBatchProvider) -> None:
    config = FakeServerConfig(api_key=KEY, realtime_rpm=120, realtime_window_s=1.0)  # 2 per second
    body = provider.build_body(MODEL, "hi", None, {})
    with (
        FakeProviderServer(config) as server,
        httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as http,
    ):
        first = http.post(f"{server.base_url}/chat/completions", json=body)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "120"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert 0.9 <= (parse_duration(first.headers["x-ratelimit-reset-requests"]) or 0) <= 1.0
        assert http.post(f"{server.base_url}/chat/completions", json=body).status_code == 200
        refused = http.post(f"{server.base_url}/chat/completions", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 0 < float(refused.headers["retry-after"]) <= 1.0
        assert 0 < int(refused.headers["retry-after-ms"]) <= 1000
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert server.stats.realtime_429 == 1


def test_retry_after_is_honoured(server: FakeProviderServer, provider: OpenAIBatchProvider) -> None:
    server.fail_next("POST", "/v1/chat/completions", status=429, retry_after=0.6)
    client = client_for(server, provider)
    started = time.monotonic()
    [result] = client.run(openai_lines(provider, 1))
    assert time.monotonic() - started >= 0.6
    assert result.ok and result.attempts == 2
    assert (client.stats.responses_429, client.stats.retries, client.stats.requests_sent) == (1, 1, 2)


def test_server_errors_back_off_then_give_up_on_one_row_only(
    server: FakeProviderServer, provider: OpenAIBatchProvider
) -> None:
    server.fail_next("POST", "/v1/chat/completions", status=503, times=3, retry_after=0.01)
    client = client_for(server, provider, max_concurrency=1, max_retries=2)
    results = client.run(openai_lines(provider, 3))
    assert results[0].error_kind is ErrorKind.SERVER_ERROR and results[0].attempts == 3
    assert [r.ok for r in results[1:]] == [True, True]
    server.fail_next("POST", "/v1/chat/completions", status=500)  # no retry-after: backoff
    [retried] = client.run(openai_lines(provider, 1))
    assert retried.ok and retried.attempts == 2 and client.stats.elapsed_s >= 0.35


def test_network_errors_become_row_errors(provider: OpenAIBatchProvider) -> None:
    client = RealtimeClient(
        provider, api_key=KEY, base_url="http://127.0.0.1:9/v1", wire="openai", max_retries=1
    )
    results = client.run(openai_lines(provider, 2))
    assert all(r.error_kind is ErrorKind.SERVER_ERROR and r.attempts == 2 for r in results)
    assert client.stats.retries == 2


def test_insufficient_quota_stops_fast(server: FakeProviderServer, provider: OpenAIBatchProvider) -> None:
    server.fail_next(
        "POST", "/v1/chat/completions", status=429, code="insufficient_quota", message="No credit."
    )
    client = client_for(server, provider, max_concurrency=1)
    results = client.run(openai_lines(provider, 30))
    assert client.stats.elapsed_s < 2.0
    assert server.stats.calls["POST /v1/chat/completions"] == 1
    assert [r.error_kind for r in results] == [ErrorKind.INSUFFICIENT_QUOTA] * 30
    assert results[0].attempts == 1 and "No credit." in (results[0].error or "")
    assert all("not sent" in (r.error or "") and "No credit." in (r.error or "") for r in results[1:])
    assert all(r.attempts is None for r in results[1:])


def test_insufficient_quota_wakes_waiting_workers(
    server: FakeProviderServer, provider: OpenAIBatchProvider
) -> None:
    # 6 rpm: after the first request, every worker waits ~10 s for the limiter; quota must end that.
    server.fail_next("POST", "/v1/chat/completions", status=429, code="insufficient_quota")
    client = client_for(server, provider, max_concurrency=4, requests_per_minute=6)
    results = client.run(openai_lines(provider, 10))
    assert client.stats.elapsed_s < 2.0
    assert server.stats.calls["POST /v1/chat/completions"] == 1
    assert all(r.error_kind is ErrorKind.INSUFFICIENT_QUOTA for r in results)


def test_run_inside_a_running_event_loop(server: FakeProviderServer, provider: OpenAIBatchProvider) -> None:
    client = client_for(server, provider)

    async def notebook_cell() -> list[Any]:
        return client.run(openai_lines(provider, 5))  # synchronous call with a loop running

    results = asyncio.run(notebook_cell())
    assert [r.custom_id for r in results] == [f"row-{i}" for i in range(5)]
    assert all(r.ok for r in results)


def test_arun_from_async_code(server: FakeProviderServer, provider: OpenAIBatchProvider) -> None:
    results = asyncio.run(client_for(server, provider).arun(openai_lines(provider, 3)))
    assert all(r.ok for r in results)


def test_empty_input(server: FakeProviderServer, provider: OpenAIBatchProvider) -> None:
    assert client_for(server, provider).run([]) == []


# ---- Anthropic wire -------------------------------------------------------------------------


def test_anthropic_wire() -> None:
    config = FakeServerConfig(api_key=KEY, realtime_rpm=600, realtime_window_s=1.0)
    with (
        FakeProviderServer(config) as server,
        AnthropicBatchProvider(api_key=KEY, base_url=server.anthropic_base_url) as provider,
    ):
        lines = [
            provider.build_line(
                f"a{i}", provider.build_body("claude-x", f"Sentiment {i}: great", "Be brief.", {})
            )
            for i in range(20)
        ]
        lines.append(provider.build_line("bad", provider.build_body("claude-x", "[[fake:400]]", None, {})))
        client = RealtimeClient(
            provider,
            api_key=KEY,
            base_url=server.anthropic_base_url,
            wire="anthropic",
            requests_per_minute=600,
        )
        results = client.run(lines)
        assert [r.custom_id for r in results] == [line["custom_id"] for line in lines]
        assert all(r.ok and r.response and r.input_tokens for r in results[:-1])
        assert results[-1].error_kind is ErrorKind.INVALID_REQUEST
        assert (results[-1].error or "").startswith("invalid_request_error")
        assert server.stats.realtime_429 <= 5


def test_anthropic_rate_limit_headers_and_overload() -> None:
    config = FakeServerConfig(api_key=KEY, realtime_rpm=60, realtime_window_s=1.0)  # 1 per second
    with (
        FakeProviderServer(config) as server,
        AnthropicBatchProvider(api_key=KEY, base_url=server.anthropic_base_url) as provider,
    ):
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        body = provider.build_body("claude-x", "hi", None, {})
        first = httpx.post(f"{server.anthropic_base_url}/v1/messages", json=body, headers=headers)
        assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert first.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        refused = httpx.post(f"{server.anthropic_base_url}/v1/messages", json=body, headers=headers)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        assert float(refused.headers["retry-after"]) > 0
        server.fail_next("POST", "/v1/messages", status=529)
        client = RealtimeClient(provider, api_key=KEY, base_url=server.anthropic_base_url, wire="anthropic")
        results = client.run([provider.build_line("x", body), provider.build_line("y", body)])
        assert all(r.ok for r in results)
        assert client.stats.retries >= 1


# ---- batch API detection --------------------------------------------------------------------


def test_has_batch_api(server: FakeProviderServer) -> None:
    assert has_batch_api(server.base_url, KEY) is True


def test_has_no_batch_api() -> None:
    with FakeProviderServer(FakeServerConfig(batch_api=False)) as server:
        assert has_batch_api(server.base_url, KEY) is False
        assert httpx.get(f"{server.base_url}/files", headers={"Authorization": "Bearer x"}).status_code == 404
        ok = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer x"},
        )
        assert ok.status_code == 200


def test_has_batch_api_errors(server: FakeProviderServer) -> None:
    with pytest.raises(ProviderRejected):
        has_batch_api(server.base_url, "wrong-key")
    with pytest.raises(ProviderUnavailable):
        has_batch_api("http://127.0.0.1:9/v1", KEY)
    catch_all = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>hello</html>"))
    assert has_batch_api("http://x/v1", KEY, transport=catch_all) is False


def test_runs_of_one_client_load_the_tls_trust_store_once(
    server: FakeProviderServer, provider: OpenAIBatchProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A realtime chunk runs the client once per slice; each run used to build a new TLS context
    # (loading the CA bundle: tens of milliseconds of CPU) for its new httpx client.
    made: list[ssl.SSLContext] = []
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    client = client_for(server, provider)
    for start in range(3):
        results = client.run(openai_lines(provider, 2, prefix=f"Slice {start}"))
        assert all(r.ok for r in results)
    assert len(made) == 1
