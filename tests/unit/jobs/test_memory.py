"""prefer_small_pages: Arrow's pool and numpy's huge-page advice, in fresh processes; its callers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from prefect_llm_batch import cli, memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are a Linux matter")

_REPORT = """
import json, numpy, pyarrow as pa
from prefect_llm_batch.memory import prefer_small_pages
before = pa.default_memory_pool().backend_name
changed = prefer_small_pages()
again = prefer_small_pages()
from numpy._core.multiarray import _set_madvise_hugepage
numpy_huge = _set_madvise_hugepage(False)  # returns the setting it replaces
table = pa.array(range(100_000))  # allocated after the call: from the new default pool
print(json.dumps({"before": before, "after": pa.default_memory_pool().backend_name, "changed": changed,
                  "again": again, "numpy_huge": numpy_huge,
                  "pool_bytes": pa.default_memory_pool().bytes_allocated()}))
"""


def report(**env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if k not in {*env, *_OVERRIDES}}
    done = subprocess.run(
        [sys.executable, "-c", _REPORT], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


_OVERRIDES = ("ARROW_DEFAULT_MEMORY_POOL", "NUMPY_MADVISE_HUGEPAGE", memory.SMALL_PAGES_ENV)


def test_switches_arrow_from_mimalloc_and_numpy_off_huge_pages_once() -> None:
    got = report()
    assert got["before"] == "mimalloc"
    assert got["after"] in ("jemalloc", "system")
    assert got["changed"] == {"arrow_pool": got["after"], "numpy_hugepage": "off"}
    assert got["again"] == {}
    assert got["numpy_huge"] is False
    assert got["pool_bytes"] >= 100_000 * 8  # the array after the call lives in the new pool


def test_the_setting_0_keeps_the_libraries_defaults() -> None:
    got = report(**{memory.SMALL_PAGES_ENV: "0"})
    assert got["changed"] == {}
    assert got["after"] == "mimalloc"
    assert got["numpy_huge"] is True


def test_an_explicit_arrow_pool_or_numpy_setting_wins() -> None:
    got = report(ARROW_DEFAULT_MEMORY_POOL="system")
    assert got["before"] == got["after"] == "system"
    assert got["changed"] == {"numpy_hugepage": "off"}
    got = report(NUMPY_MADVISE_HUGEPAGE="1")
    assert got["changed"] == {"arrow_pool": got["after"]}
    assert got["numpy_huge"] is True


_FLOW_POOLS = """
import json, os, sys, pyarrow as pa
from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.memory import SMALL_PAGES_ENV
run = json.loads(sys.argv[1])
pools = [pa.default_memory_pool().backend_name]
enrich_table(**run)
pools.append(pa.default_memory_pool().backend_name)
os.environ[SMALL_PAGES_ENV] = "1"  # what a deployment's environment does to opt in
enrich_table(**run)
pools.append(pa.default_memory_pool().backend_name)
print(json.dumps(pools))
"""


def test_the_command_switches_to_small_pages_for_work_not_for_help(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(memory, "prefer_small_pages", lambda: calls.append("switched") or {})
    source = tmp_path / "in.csv"
    pa_csv.write_csv(pa.table({"text": ["a", "b"]}), str(source))
    for argv, switched in (
        (["--help"], []),  # a quick command loads no table: nothing to switch
        (["estimate", str(source), "--prompt", "{{ text }}", "--model", "gpt-4o-mini",
          "--state-dir", str(tmp_path / "state")], ["switched"]),
    ):  # fmt: skip
        calls.clear()
        monkeypatch.setattr(sys, "argv", ["prefect-llm-batch", *argv])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == 0
        assert calls == switched  # the command owns its process


def test_the_flow_leaves_the_workers_pages_alone_unless_the_environment_asks(
    tmp_path: Path, prefect_harness: Any
) -> None:
    from prefect.settings import PREFECT_API_URL

    source = tmp_path / "in.csv"
    pa_csv.write_csv(pa.table({"text": ["a", "b"]}), str(source))
    run = {
        "source": str(source), "output": str(tmp_path / "out.parquet"), "prompt": "{{ text }}",
        "model": "gpt-4o-mini", "state_dir": str(tmp_path / "state"), "dry_run": True,
    }  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    env = {**clean, "PREFECT_API_URL": str(PREFECT_API_URL.value())}  # the test server: no new one
    done = subprocess.run(
        [sys.executable, "-c", _FLOW_POOLS, json.dumps(run)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after_a_run, after_opting_in = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == after_a_run == "mimalloc"  # a flow run changed nothing in its worker
    assert after_opting_in in ("jemalloc", "system")
