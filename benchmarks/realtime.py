"""Realtime mode's own cost: ``run --mode realtime`` against a rate-limited fake provider, with a floor.

Usage::

    python benchmarks/realtime.py                  # 2,000 requests, 600 requests/minute, 200 ms latency
    python benchmarks/realtime.py --quick          # 300 requests (~30 s per case)
    python benchmarks/realtime.py --requests 1000 --rpm 1200 --latency 0.1 --concurrency 32
    python benchmarks/realtime.py --cases floor,cli   # a subset (floor, client, cli, cli-prefect)

Every case sends the same requests (one per row of a generated CSV, all prompts distinct) to a
**fresh** fake provider (``prefect_llm_batch.testing.FakeProviderServer`` in its own process, with
``realtime_rpm`` enforced over a sliding 60 s window - 429 + ``retry-after`` - and
``realtime_latency_s``), so no case inherits another's window. Cases, each in its own process:

* ``floor``: a plain ``httpx.AsyncClient`` paced by an ``aiolimiter`` leaky bucket at the limit,
  ``concurrency`` requests in flight, a 429 retried after its ``retry-after``: the least any
  client pays to send these requests at this rate (interpreter and ``httpx`` import included).
* ``client``: :class:`prefect_llm_batch.providers.realtime.RealtimeClient` alone, on lines built
  by the OpenAI provider (the library's HTTP path without the job around it).
* ``cli``: ``prefect-llm-batch run --mode realtime`` with no Prefect server configured.
* ``cli-prefect``: the same with ``PREFECT_API_URL`` pointing at a Prefect server this script
  starts (``prefect server start`` in a temporary ``PREFECT_HOME``): an ``enrich-table`` flow run.

Each case is preceded by an unmeasured run of :data:`WARM_UP` other rows (so imports are compiled
and a Prefect server has seen the flow). Bytecode is cached (``PYTHONPYCACHEPREFIX`` under the
temporary directory, ``PYTHONDONTWRITEBYTECODE`` dropped), as in an installed package; pass
``--no-bytecode-cache`` to keep the environment's setting.

Measured per case: wall time; CPU seconds (user + system) of the case's process tree
(``resource.getrusage(RUSAGE_CHILDREN)`` around it); for ``cli-prefect`` also the Prefect
server's CPU during the run (psutil, its process tree, with its idle CPU per second measured
before the run and shown apart); rows lost (not answered: must be 0, read back from the output
Parquet for the CLI); the achieved rate (answered requests per minute between the fake provider's
first and last realtime call, sampled every 0.25 s) as a fraction of the limit. The script exits 1
when a case loses a row (never with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "fake-key-realtime-bench"
MODEL = "gpt-4o-mini"
PROMPT = "Sentiment of this review, one word: {{ review }}"
CASES = ("floor", "client", "cli", "cli-prefect")
#: Rows of the unmeasured run before each case (it compiles and caches what the case imports).
WARM_UP = 10

# ---- the fake provider, in its own process ---------------------------------------------------

_SERVER = """
import sys, time
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig
config = FakeServerConfig(realtime_rpm={rpm!r}, realtime_latency_s={latency!r})
with FakeProviderServer(config) as server:
    print(server.base_url, flush=True)
    for line in sys.stdin:
        stats = server.stats
        print(stats.calls["POST /v1/chat/completions"], stats.realtime_429, time.monotonic(), flush=True)
"""


class FakeProvider:
    """The fake provider in a child process; :meth:`sample` asks it for its realtime counters."""

    def __init__(self, rpm: float, latency: float, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER.format(rpm=rpm, latency=latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError("the fake provider did not start")
        self.samples: list[tuple[float, int]] = []
        self.rejected = 0

    def sample(self) -> None:
        assert self.process.stdout is not None and self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        calls, rejected, _ = self.process.stdout.readline().split()
        self.samples.append((time.monotonic(), int(calls)))
        self.rejected = int(rejected)

    def rate(self) -> float:
        """Accepted realtime calls per minute between the first and the last sampled change."""
        moving = [(t, n) for t, n in self.samples if n > 0]
        if not moving:
            return 0.0
        total = moving[-1][1]
        first = next(t for t, n in moving)
        last = next(t for t, n in moving if n == total)
        # the first sample already counts calls made since the previous (empty) sample
        span = max(last - first, 1e-9)
        return (total - self.rejected - moving[0][1]) / span * 60.0

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(15)


# ---- the floor and the client, run in a child process by this script ------------------------


async def _floor(base_url: str, n: int, rpm: float, concurrency: int) -> int:
    import httpx
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(max(1.0, rpm * 0.1 / 60.0), max(0.1, 60.0 / rpm))
    pending = iter(range(n))
    answered = 0
    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
        limits=httpx.Limits(max_connections=concurrency),
    ) as client:

        async def worker() -> None:
            nonlocal answered
            for i in pending:
                body = {"model": MODEL, "messages": [{"role": "user", "content": review(i)}]}
                for _attempt in range(8):
                    await limiter.acquire()
                    response = await client.post(f"{base_url}/chat/completions", json=body)
                    if response.status_code != 429:
                        break
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                if response.status_code == 200 and response.json()["choices"][0]["message"]["content"]:
                    answered += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answered


def _client(base_url: str, n: int, rpm: float, concurrency: int) -> int:
    from prefect_llm_batch.providers.openai import OpenAIBatchProvider
    from prefect_llm_batch.providers.realtime import RealtimeClient

    with OpenAIBatchProvider(api_key=KEY, base_url=base_url) as provider:
        lines = [
            provider.build_line(f"row-{i}", provider.build_body(MODEL, review(i), None, {})) for i in range(n)
        ]
        client = RealtimeClient(
            provider, api_key=KEY, base_url=base_url, wire="openai",
            max_concurrency=concurrency, requests_per_minute=rpm,
        )  # fmt: skip
        return sum(r.ok for r in client.run(lines))


def review(i: int) -> str:
    """Row ``i``'s review text (distinct per row: no request is deduplicated)."""
    return f"Review {i}: the product arrived {'on time' if i % 3 else 'late'} and works {i % 7} days in."


# ---- the cases ------------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_cpu(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with _gone():
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        return total
    except psutil.NoSuchProcess:
        return 0.0


class _gone:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        import psutil

        return kind is not None and issubclass(kind, psutil.NoSuchProcess)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_prefect(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``prefect server start`` on a free port in a temporary ``PREFECT_HOME``; waits for its health."""
    import httpx

    port = _free_port()
    server_env = {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    process = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the Prefect server did not start")


def run_case(
    name: str, args: argparse.Namespace, n: int, source: Path, scratch: Path, env: dict[str, str],
    prefect_url: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Run one case against a fresh fake provider; wall, CPU, answered rows and the achieved rate."""
    provider = FakeProvider(args.rpm, args.latency, env)
    output = scratch / f"{name}-{n}.parquet"
    case_env = dict(env)
    if name in ("floor", "client"):
        command = [sys.executable, __file__, f"--{name}-child", provider.base_url, str(n),
                   str(args.rpm), str(args.concurrency)]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "prefect_llm_batch.cli", "run", str(source), str(output),
            "--prompt", PROMPT, "--model", MODEL, "--provider", "openai", "--base-url", provider.base_url,
            "--mode", "realtime", "--realtime-rpm", f"{args.rpm:g}", "--realtime-concurrency",
            str(args.concurrency), "--state-dir", str(scratch / f"state-{name}-{n}"),
        ]  # fmt: skip
        case_env["OPENAI_API_KEY"] = KEY
        if prefect_url is not None:
            case_env["PREFECT_API_URL"] = prefect_url
    cpu_before = _children_cpu()
    started = time.monotonic()
    log = open(scratch / f"{name}.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, env=case_env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=scratch
    )
    while process.poll() is None:
        provider.sample()
        time.sleep(0.25)
    provider.sample()
    stdout = process.stdout.read() if process.stdout is not None else ""
    wall = time.monotonic() - started
    cpu = _children_cpu() - cpu_before
    log.close()
    provider.close()
    if process.returncode != 0:
        tail = (scratch / f"{name}.log").read_text()[-3000:]
        raise SystemExit(f"{name} failed ({process.returncode}):\n{stdout[-2000:]}\n{tail}")
    if name in ("floor", "client"):
        answered = int(stdout.strip().splitlines()[-1])
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(output, columns=["response"])
        answered = table.num_rows - table.column("response").null_count
    return {
        "wall": wall,
        "cpu": cpu,
        "answered": answered,
        "lost": n - answered,
        "429s": provider.rejected,
        "rate": provider.rate() / args.rpm,
    }


def write_source(path: Path, n: int, start: int = 0) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review"])
        for i in range(start, start + n):
            writer.writerow([i, review(i)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rpm", type=float, default=600.0)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="300 requests (about 30 s per case at 600 rpm)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds of Prefect server idle CPU measured"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as set (by default bytecode is cached under the temp directory)",
    )
    parser.add_argument("--floor-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--client-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag, child in (("floor_child", "floor"), ("client_child", "client")):
        if getattr(args, flag):
            url, count, rpm, concurrency = getattr(args, flag)
            if child == "floor":
                done = asyncio.run(_floor(url, int(count), float(rpm), int(concurrency)))
            else:
                done = _client(url, int(count), float(rpm), int(concurrency))
            print(done)
            return 0
    n = 300 if args.quick else args.requests
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env["PREFECT_HOME"] = str(scratch / "prefect-home-cli")  # no profile names a server
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if not args.no_bytecode_cache:  # as an installed package runs: imports read cached bytecode
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "prefect-llm-batch-bench-pycache")
        source = scratch / "reviews.csv"
        write_source(source, n)
        warm = scratch / "warm.csv"
        write_source(warm, WARM_UP, start=n)  # other prompts: nothing the measured run sends is cached
        for name in cases:
            server: subprocess.Popen[bytes] | None = None
            url = None
            try:
                if name == "cli-prefect":
                    server, url = start_prefect(scratch / "prefect-home-server", env)
                    idle_before = _tree_cpu(server.pid)
                    time.sleep(args.idle)
                    idle = (_tree_cpu(server.pid) - idle_before) / args.idle
                    server_before = _tree_cpu(server.pid)
                run_case(name, args, WARM_UP, warm, scratch, env, url)  # imports compiled, server warm
                stats = run_case(name, args, n, source, scratch, env, url)
                if server is not None:
                    stats["server_cpu"] = _tree_cpu(server.pid) - server_before
                    stats["server_idle"] = idle * stats["wall"]
            finally:
                if server is not None:
                    os.killpg(server.pid, 15)
                    server.wait(30)
            rows.append((name, stats))
            print(f"{name}: {stats['wall']:.1f} s wall, {stats['cpu']:.1f} s CPU", file=sys.stderr)
        shutil.rmtree(scratch / "prefect-home-server", ignore_errors=True)

    print(
        f"\n{n:,} requests, limit {args.rpm:g} requests/minute (sliding 60 s window), "
        f"latency {args.latency * 1000:g} ms, concurrency {args.concurrency}\n"
    )
    print("| case | wall | CPU (its processes) | Prefect server CPU (idle share) | total CPU | "
          "answered | lost rows | 429s | rate / limit |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in rows:
        server_cpu = s.get("server_cpu")
        shown = f"{server_cpu:.1f} s ({s['server_idle']:.1f} s)" if server_cpu is not None else ""
        total = s["cpu"] + (server_cpu or 0.0)
        print(
            f"| {name} | {s['wall']:.1f} s | {s['cpu']:.1f} s | {shown} | {total:.1f} s | "
            f"{s['answered']:,} | {s['lost']:,} | {s['429s']:,} | {s['rate']:.3f} |"
        )
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(json.dumps({name: s for name, s in rows}), file=sys.stderr)
    lost = any(s["lost"] for _, s in rows)
    return 1 if lost and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
