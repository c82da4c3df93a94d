"""Wall time of the command line a new user meets, with no Prefect server configured.

Usage::

    python benchmarks/cli.py            # 3 repeats each, the median printed
    python benchmarks/cli.py --repeat 5

Each command runs in a fresh interpreter (as a user types it), against baselines measured in the
same run on the same machine: ``python -c pass`` (the interpreter) and ``python -c "import
prefect"`` (what any Prefect-based command pays before its first line of work). Measured:
``--help``, ``status`` and ``cache info`` on an empty state directory, and ``run`` of 20 rows of
``examples/reviews.csv`` against the bundled simulator (fresh state directory and output each
time, so nothing comes from the cache). Targets (issue 21): the quick commands under 1.5 s, the
run at most 6 s. Bytecode is cached (``PYTHONPYCACHEPREFIX`` under the temporary directory,
``PYTHONDONTWRITEBYTECODE`` dropped) and each command runs once unmeasured first, as an installed
package runs (this machine sets ``PYTHONDONTWRITEBYTECODE``, so without this every command compiles
pandas, pyarrow and httpx from source); ``--no-bytecode-cache`` keeps the environment's setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REVIEWS = ROOT / "examples" / "reviews.csv"


def _timed(args: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    """Print the median wall time of each command and baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-bytecode-cache", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as set"
    )
    args = parser.parse_args()
    repeat = args.repeat
    with tempfile.TemporaryDirectory() as scratch:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env["PREFECT_HOME"] = str(Path(scratch) / "prefect-home")  # no profile names a server
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if not args.no_bytecode_cache:  # as an installed package runs: imports read cached bytecode
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(scratch) / "pycache")
        state = str(Path(scratch) / "state")
        cli = [sys.executable, "-m", "prefect_llm_batch.cli"]
        cases: list[tuple[str, float | None, object]] = [
            ("python -c pass (baseline)", None, lambda i: [sys.executable, "-c", "pass"]),
            (
                'python -c "import prefect" (baseline)',
                None,
                lambda i: [sys.executable, "-c", "import prefect"],
            ),
            ("prefect-llm-batch --help", 1.5, lambda i: [*cli, "--help"]),
            ("prefect-llm-batch status", 1.5, lambda i: [*cli, "status", "--state-dir", state]),
            ("prefect-llm-batch cache info", 1.5, lambda i: [*cli, "cache", "info", "--state-dir", state]),
            (
                "prefect-llm-batch run (20 rows, simulator)",
                6.0,
                lambda i: [
                    *cli,
                    "run",
                    str(REVIEWS),
                    str(Path(scratch) / f"out{i}.parquet"),
                    "--prompt",
                    "Sentiment of: {{ review }}",
                    "--model",
                    "gpt-4o-mini",
                    "--limit",
                    "20",
                    "--state-dir",
                    str(Path(scratch) / f"state{i}"),
                ],
            ),
        ]
        print(f"{'command':<45} {'median s':>9} {'min s':>7} {'target':>7}")
        for name, target, make in cases:
            _timed(make(repeat), env, scratch)  # type: ignore[operator]  # (unmeasured: warms the bytecode cache)
            times = [_timed(make(i), env, scratch) for i in range(repeat)]  # type: ignore[operator]
            shown = f"{target:.1f}" if target is not None else "-"
            print(f"{name:<45} {statistics.median(times):>9.2f} {min(times):>7.2f} {shown:>7}")


if __name__ == "__main__":
    main()
