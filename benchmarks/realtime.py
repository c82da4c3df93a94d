"""Realtime throughput under an enforced rate limit: our RealtimeClient against a naive client.

Usage::

    python benchmarks/realtime.py                  # 2,000 requests, 600 requests/minute, 200 ms latency
    python benchmarks/realtime.py --quick          # 300 requests (~30 s)
    python benchmarks/realtime.py --requests 1000 --rpm 1200 --latency 0.1 --concurrency 32

The fake provider runs in a **separate process** (``prefect_llm_batch.testing.server.serve``) with
``realtime_rpm`` (a sliding 60 s window, 429 + ``retry-after`` + rate-limit headers) and
``realtime_latency_s``; each client gets a fresh server, so neither inherits the other's window.

* ``ours``: :class:`prefect_llm_batch.providers.realtime.RealtimeClient` with
  ``requests_per_minute`` set to the limit.
* ``naive``: ``asyncio.gather`` over every request behind a semaphore of the same concurrency, no
  limiter, no retry: a request answered 429 is lost.

Throughput is ``answered rows / elapsed minutes / limit`` (target for ``ours``: >= 0.95, with 0 lost
rows). The script exits 1 when ``ours`` loses a row or misses the target (never with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Any

import httpx

from prefect_llm_batch.providers.openai import OpenAIBatchProvider
from prefect_llm_batch.providers.realtime import RealtimeClient

KEY = "sk-bench"
MODEL = "gpt-4o-mini"
TARGET = 0.95


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(rpm: float, latency: float) -> tuple[subprocess.Popen[bytes], str]:
    """Start the fake provider in its own process; returns it and its base URL once it answers."""
    port = free_port()
    code = (
        "from prefect_llm_batch.testing.server import FakeServerConfig, serve; "
        f"serve({port}, FakeServerConfig(realtime_rpm={rpm!r}, realtime_latency_s={latency!r}), "
        "log_level='warning')"
    )
    process = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the fake provider did not start")


def lines_for(provider: OpenAIBatchProvider, n: int) -> list[dict[str, Any]]:
    return [
        provider.build_line(
            f"row-{i}", provider.build_body(MODEL, f"Sentiment of review {i}: great!", None, {})
        )
        for i in range(n)
    ]


def run_ours(base_url: str, lines: list[dict[str, Any]], rpm: float, concurrency: int) -> dict[str, Any]:
    with OpenAIBatchProvider(api_key=KEY, base_url=base_url) as provider:
        client = RealtimeClient(
            provider,
            api_key=KEY,
            base_url=base_url,
            wire="openai",
            max_concurrency=concurrency,
            requests_per_minute=rpm,
        )
        results = client.run(lines)
    ok = sum(r.ok for r in results)
    return {
        "ok": ok,
        "lost": len(lines) - ok,
        "429s": client.stats.responses_429,
        "sent": client.stats.requests_sent,
        "elapsed": client.stats.elapsed_s,
    }


async def naive(base_url: str, lines: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(
        headers=headers, timeout=120, limits=httpx.Limits(max_connections=concurrency)
    ) as c:

        async def one(line: dict[str, Any]) -> int:
            async with semaphore:
                try:
                    return (await c.post(f"{base_url}/chat/completions", json=line["body"])).status_code
                except httpx.TransportError:
                    return 0

        started = time.monotonic()
        statuses = await asyncio.gather(*(one(line) for line in lines))
        elapsed = time.monotonic() - started
    ok = statuses.count(200)
    return {
        "ok": ok,
        "lost": len(lines) - ok,
        "429s": statuses.count(429),
        "sent": len(lines),
        "elapsed": elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rpm", type=float, default=600.0)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="300 requests (about 30 s at 600 rpm)")
    args = parser.parse_args()
    n = 300 if args.quick else args.requests
    provider = OpenAIBatchProvider(api_key=KEY)
    lines = lines_for(provider, n)
    provider.close()
    rows: list[tuple[str, dict[str, Any]]] = []
    for name in ("ours", "naive"):
        process, base_url = start_server(args.rpm, args.latency)
        try:
            if name == "ours":
                stats = run_ours(base_url, lines, args.rpm, args.concurrency)
            else:
                stats = asyncio.run(naive(base_url, lines, args.concurrency))
        finally:
            process.terminate()
            process.wait(10)
        stats["fraction"] = stats["ok"] / (stats["elapsed"] / 60.0) / args.rpm
        rows.append((name, stats))
        print(f"{name} done in {stats['elapsed']:.1f} s", file=sys.stderr)

    print(
        f"\n{n} requests, limit {args.rpm:g} requests/minute (sliding 60 s window), "
        f"latency {args.latency * 1000:g} ms, concurrency {args.concurrency}\n"
    )
    print("| client | answered | lost rows | 429s | requests sent | elapsed | throughput / limit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s in rows:
        print(
            f"| {name} | {s['ok']:,} | {s['lost']:,} | {s['429s']:,} | {s['sent']:,} | "
            f"{s['elapsed']:.1f} s | {s['fraction']:.3f} |"
        )
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    ours = rows[0][1]
    met = ours["lost"] == 0 and ours["fraction"] >= TARGET
    print(f"target (ours >= {TARGET} of the limit, 0 lost rows): {'met' if met else 'NOT met'}")
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
