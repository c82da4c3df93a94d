"""The benchmark suite: our prepare and collect against a naive baseline and a floor, in one run.

Usage::

    python benchmarks/run.py                 # 1,000,000 rows, end to end at 100,000 rows
    python benchmarks/run.py --rows 200000   # smaller
    python benchmarks/run.py --quick         # 20,000 rows, seconds (what CI runs; never fails on targets)
    python benchmarks/run.py --profile       # also cProfile prepare, collect and end to end

Every stage runs in its own Python process, so its peak memory is its own: wall time covers the
stage's work only (not interpreter start-up nor imports), peak RSS is the process' high-water
mark (``VmHWM``, imports included; the ``base`` column is the RSS before the work started), CPU
is user + system time of the process (all its threads) over the same span.

Stages and variants (the workload of issue 7: prompts of ~400 bytes from a template substituting
two string columns, request keys and de-duplication included, text answers):

* **prepare** -- ``ours``: :func:`prefect_llm_batch.jobs.prepare` itself (fingerprint, read the
  Parquet table, render, key and de-duplicate, encode the JSONL lines, plan chunks, write the chunk
  files, row ids and plan to a state directory on local disk) with an ``OpenAIBatchProvider``;
  ``ours, by step``: the same work slice by slice in one thread, each kind timed (the breakdown);
  ``naive``: pandas ``read_parquet``, ``df.apply`` rendering a compiled Jinja2 template per row,
  ``json.dumps`` per body for the key and per line, a dict for de-duplication, files of 50,000
  lines; ``floor``: writing the JSONL bytes ``ours`` produced, already in memory.
* **collect** -- ``ours``: read the output and error files, ``OpenAIBatchProvider.parse_results``
  per file (vectorised), one result per request picked as ``jobs.collect_chunk`` does
  (``select_results``), then ``jobs.output.write_joined`` as ``assemble`` does: the input table
  read in slices, joined through the rows' ``custom_id`` s and written to Parquet as it goes,
  the answers held in one table (``TableAnswers``); ``ours, as a job``: what a job runs on the
  same lines, cut into one output and one error file per batch (untimed, after an untimed
  ``jobs.prepare``): per batch what ``jobs.collect_chunk`` does after the download (its request
  ids, ``parse_results``, ``select_results``, the stored results and the response cache), then
  ``jobs.assemble`` (rows matched by key, each batch's stored answers read when first needed; its
  peak RSS includes the set-up's ~0.8 GB of lines and ids, so it is not a target);
  ``naive``: ``json.loads`` per line, a dict per result, a dict lookup per row, ``pd.DataFrame``
  and ``to_parquet``; ``floor``: ``orjson.loads`` of every line and nothing else.
* **end to end** -- ``jobs.prepare -> submit_chunk -> wait(poll_interval=0) -> collect_chunk ->
  assemble`` against the fake provider (instant batches) running in a *separate* process, so the
  CPU milliseconds per row are ours only; the server's CPU is reported beside it.
* **partitioned job** -- ``jobs.prepare`` and ``jobs.assemble`` of a job over a directory of
  Parquet parts of 62,500 rows, at ``--rows`` and at 4x as many (``--parts-rows``), with the peak
  RSS of each side: memory that grows with the batch, not with the rows.

Targets (issue 7) are checked at the end; outside ``--quick`` a missed target exits with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import io
import json
import os
import pstats
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import DATA_DIR, MODEL, TEMPLATE, ensure_results, ensure_table, results_dir, table_path

#: Where the suite writes state directories and outputs (removed afterwards).
WORK_ROOT = DATA_DIR / "work"
#: Profiles written by ``--profile``.
PROFILE_DIR = DATA_DIR / "profiles"
#: Endpoint of every request.
ENDPOINT = "/v1/chat/completions"
#: Base URL in the request keys of the prepare and collect stages (no HTTP is made there).
KEY_BASE_URL = "https://api.openai.com/v1"
#: Requests per chunk file of the naive baseline (OpenAI's per-batch limit).
NAIVE_CHUNK = 50_000

# Targets of issue 7.
TARGET_PREPARE_VS_NAIVE = 10.0
TARGET_PREPARE_VS_FLOOR = 3.0
TARGET_COLLECT_VS_FLOOR = 2.0
TARGET_PEAK_RSS_MB = 2500.0
TARGET_E2E_MS_PER_ROW = 0.07
#: Peak memory of a partitioned job with 4x the rows (same part and batch sizes) over the smaller
#: one's: memory that grows with the batch, not the rows, stays well under 4x.
TARGET_PARTS_GROWTH = 1.5

Stage = Callable[["StageContext"], dict[str, Any]]


# -- measuring, inside a stage's process ------------------------------------------------------


def _status_mb(field_name: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in MB (0 where there is no /proc)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_STEPS_LOCK = threading.Lock()


@dataclass
class StageContext:
    """What a stage's process is given (from the command line)."""

    rows: int
    seed: int
    work: Path
    server_url: str | None = None
    steps: dict[str, float] = field(default_factory=dict)
    #: (wall, CPU) the stage's measurement starts from, when it has an untimed set-up first.
    clock: tuple[float, float] | None = None

    def restart_clock(self) -> None:
        """Measure the stage from now on: its set-up so far is not counted (wall, CPU, peak RSS)."""
        _reset_peak_rss()
        self.steps.clear()
        self.clock = (time.perf_counter(), _cpu_seconds())

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one step of the stage (wall seconds, accumulated under ``name``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            with _STEPS_LOCK:  # steps may run in several threads (collect_job's batches)
                self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - start


def warm_up() -> tuple[float, float]:
    """Import what every stage uses, before any timing; returns the wall and CPU seconds it took.

    pyarrow imports pandas on its first array (about a second when no bytecode is cached), so a
    first tiny array is made here too: stages measure steady-state work, not imports.
    """
    cpu = _cpu_seconds()
    start = time.perf_counter()
    try:
        from prefect_llm_batch.memory import prefer_small_pages
    except ImportError:  # measuring a version from before it (PYTHONPATH=<older tree>)
        pass
    else:
        # What the flows and the command do when they start (every variant alike: naive and
        # floor too); ``--default-pages`` sets PREFECT_LLM_BATCH_SMALL_PAGES=0 (libraries' own).
        prefer_small_pages()
    # Page-cache drop-behind (off by default in the package): on, as measured since issue 7.
    os.environ.setdefault("PREFECT_LLM_BATCH_DROP_BEHIND", "1")
    import jinja2  # noqa: F401
    import orjson  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow as pa
    import pyarrow.compute
    import pyarrow.parquet

    import prefect_llm_batch.jobs
    import prefect_llm_batch.providers.openai

    pa.array(["warm-up"]).to_pylist()
    # The first HTTP client of a process loads the TLS machinery and certificates (~0.2 s): a
    # flow pays it once, not per stage.
    prefect_llm_batch.providers.openai.OpenAIBatchProvider(api_key="bench-key").close()
    return time.perf_counter() - start, _cpu_seconds() - cpu


def run_stage(name: str, context: StageContext, profile_to: Path | None) -> dict[str, Any]:
    """Run one stage in this process and measure it (after :func:`warm_up`)."""
    stage = STAGES[name]
    import_wall, import_cpu = warm_up()
    base_rss = _status_mb("VmRSS")
    profiler = cProfile.Profile() if profile_to is not None else None
    cpu = _cpu_seconds()
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    extra = stage(context)
    if profiler is not None:
        profiler.disable()
    setup_cpu = 0.0
    if context.clock is not None:
        setup_cpu = context.clock[1] - cpu
        start, cpu = context.clock
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    if profiler is not None and profile_to is not None:
        profile_to.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(profile_to))
    import pyarrow as pa

    return {
        "stage": name,
        "arrow_pool": pa.default_memory_pool().backend_name,
        "wall_s": wall,
        "cpu_s": cpu,
        "base_rss_mb": base_rss,
        "import_wall_s": import_wall,
        "import_cpu_s": import_cpu,
        "setup_cpu_s": setup_cpu,
        "peak_rss_mb": _status_mb("VmHWM"),
        "steps": context.steps,
        **extra,
    }


# -- the stages ---------------------------------------------------------------------------


def _spec_and_target(base_url: str) -> tuple[Any, Any]:
    from prefect_llm_batch.spec import JobSpec, ProviderTarget

    spec = JobSpec(prompt=TEMPLATE, model=MODEL, provider="openai", base_url=base_url)
    return spec, ProviderTarget(provider="openai", base_url=base_url, key_base_url=base_url)


def _dir_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def prepare_ours(context: StageContext) -> dict[str, Any]:
    """``jobs.prepare`` itself, into a fresh state directory on local disk."""
    from prefect_llm_batch import jobs
    from prefect_llm_batch.providers.openai import OpenAIBatchProvider

    source = str(ensure_table(context.rows, context.seed))
    spec, target = _spec_and_target(KEY_BASE_URL)
    provider = OpenAIBatchProvider(api_key="bench-key", base_url=KEY_BASE_URL)
    state = context.work / "prepare-ours"
    shutil.rmtree(state, ignore_errors=True)
    ref = jobs.prepare(source, spec, provider, target, state_dir=str(state))
    requests = state / "jobs" / ref.job_id / "requests"
    return {
        "rows": ref.rows,
        "unique": ref.unique_requests,
        "chunks": ref.chunks,
        "jsonl_bytes": _dir_bytes(requests),
        "requests_dir": str(requests),
    }


def prepare_steps(context: StageContext) -> dict[str, Any]:
    """The work of ``jobs.prepare``, slice by slice, each kind timed (the breakdown of ``prepare_ours``).

    One thread, no read-ahead: the steps add up to the sequential cost, which ``jobs.prepare``
    spreads over threads (reading and rendering the next slice; joining and packing lines; writing files).
    """
    import numpy as np
    import pyarrow as pa

    from prefect_llm_batch.batchfile import RequestEncoder
    from prefect_llm_batch.jobs.chunks import ChunkWriter
    from prefect_llm_batch.jobs.prepare import render_slice
    from prefect_llm_batch.keys import DigestSet
    from prefect_llm_batch.prompts import PromptTemplate
    from prefect_llm_batch.providers.openai import OpenAIBatchProvider
    from prefect_llm_batch.store import JobStore
    from prefect_llm_batch.table import fingerprint, scan_table

    source = str(ensure_table(context.rows, context.seed))
    provider = OpenAIBatchProvider(api_key="bench-key", base_url=KEY_BASE_URL)
    state = context.work / "prepare-steps"
    shutil.rmtree(state, ignore_errors=True)
    store = JobStore(str(state), "bench")
    template = PromptTemplate(TEMPLATE)
    encoder = RequestEncoder(
        provider="openai",
        base_url=KEY_BASE_URL,
        endpoint=ENDPOINT,
        build_body=lambda prompt, system: provider.build_body(MODEL, prompt, system, {}),
        build_line=provider.build_line,
    )
    writer = ChunkWriter(store, provider.limits, 0, 1)
    seen = DigestSet()
    rows = unique = 0
    ids: list[pa.Array] = []
    with context.step("fingerprint"):
        fingerprint(source)
    with context.step("read table"):
        scan = scan_table(source)
        batches = iter(scan.batches)
    while True:
        with context.step("read table"):
            batch = next(batches, None)
        if batch is None:
            break
        with context.step("render"):
            prompts, _blank = render_slice(template, pa.Table.from_batches([batch]), None, rows)
        with context.step("keys"):
            encoded = encoder.encode(prompts)
        with context.step("dedup"):
            new = seen.add(encoded.digests).tolist()
            unique += len(new)
        with context.step("encode lines"):
            lines = encoded.lines_array(new)
        with context.step("plan + write chunks"):
            writer.add(lines, np.asarray(new, np.int64) + rows)
        ids.append(encoded.custom_id_array)
        rows += batch.num_rows
    with context.step("plan + write chunks"):
        chunks = writer.close()
    with context.step("write row ids"):
        store.write_row_ids(iter(ids))
    return {"rows": rows, "unique": unique, "chunks": len(chunks)}


def prepare_naive(context: StageContext) -> dict[str, Any]:
    """What a user would write: pandas, ``df.apply`` with Jinja2, ``json.dumps`` per line."""
    import hashlib

    import jinja2
    import pandas as pd

    source = ensure_table(context.rows, context.seed)
    out = context.work / "prepare-naive"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with context.step("read table"):
        df = pd.read_parquet(source)
    with context.step("render"):
        template = jinja2.Template(TEMPLATE)
        prompts = df.apply(lambda row: template.render(**row), axis=1)
    with context.step("keys+dedup+encode"):
        row_keys: list[str] = []
        seen: set[str] = set()
        lines: list[str] = []
        for prompt in prompts:
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
            key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            row_keys.append(key)
            if key in seen:
                continue
            seen.add(key)
            line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}
            lines.append(json.dumps(line) + "\n")
    with context.step("write chunks"):
        for index, start in enumerate(range(0, len(lines), NAIVE_CHUNK)):
            with open(out / f"chunk-{index:05d}.jsonl", "w", encoding="utf-8") as file:
                file.writelines(lines[start : start + NAIVE_CHUNK])
    with context.step("write row ids"):
        pd.DataFrame({"custom_id": row_keys}).to_parquet(out / "rows.parquet")
    return {"rows": len(df), "unique": len(lines)}


def prepare_floor(context: StageContext) -> dict[str, Any]:
    """Write the JSONL bytes ``prepare_ours`` made (read into memory first, untimed)."""
    requests = Path(os.environ["BENCH_REQUESTS_DIR"])
    chunks = [path.read_bytes() for path in sorted(requests.glob("*.jsonl"))]
    out = context.work / "prepare-floor"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    context.steps.clear()
    start = time.perf_counter()
    for index, data in enumerate(chunks):
        with open(out / f"chunk-{index:05d}.jsonl", "wb") as file:
            file.write(data)
    context.steps["write"] = time.perf_counter() - start
    return {"rows": context.rows, "jsonl_bytes": sum(map(len, chunks))}


def collect_ours(context: StageContext) -> dict[str, Any]:
    """What collecting and assembling do: ``parse_results``, ``select_results``, then ``write_joined``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from prefect_llm_batch.jobs.collect import select_results
    from prefect_llm_batch.jobs.output import TableAnswers, write_joined
    from prefect_llm_batch.providers.openai import OpenAIBatchProvider
    from prefect_llm_batch.results import result_positions
    from prefect_llm_batch.table import scan_table

    files = ensure_results(context.rows, context.seed)
    source = str(ensure_table(context.rows, context.seed))
    provider = OpenAIBatchProvider(api_key="bench-key", base_url=KEY_BASE_URL)
    output = context.work / "collect-ours" / "out.parquet"
    batch_id = "batch_bench"
    tables = []
    for path, what in ((files.output, "output"), (files.error, "error")):
        with context.step("read files"):
            data = path.read_bytes()
        with context.step("parse lines"):
            tables.append(provider.parse_results(data, batch_id, where=f"the {what} file"))
        del data
    lines = sum(t.num_rows for t in tables)
    with context.step("row ids"):
        row_ids = pq.read_table(files.row_ids).column("custom_id").combine_chunks()
    with context.step("select_results"):
        result_table = select_results(pa.concat_tables(tables), pc.unique(row_ids), batch_id)
    del tables
    with context.step("read table + join + write parquet (streamed)"):
        positions = result_positions(row_ids, result_table, check_unique=False)
        rows, errors = write_joined(
            scan_table(source),
            TableAnswers(result_table, positions),
            str(output),
            overwrite=True,
            metadata={"job": "bench"},
        )
    return {"rows": rows, "lines": lines, "ok_rows": rows - sum(errors.values())}


def collect_naive(context: StageContext) -> dict[str, Any]:
    """What a user would write: ``json.loads`` and a dict per line, a lookup per row, pandas."""
    import pandas as pd

    files = ensure_results(context.rows, context.seed)
    source = ensure_table(context.rows, context.seed)
    output = context.work / "collect-naive" / "out.parquet"
    output.parent.mkdir(parents=True, exist_ok=True)
    by_id: dict[str, dict[str, Any]] = {}
    lines = 0
    with context.step("parse lines"):
        for path in (files.output, files.error):
            with open(path, encoding="utf-8") as file:
                for raw in file:
                    line = json.loads(raw)
                    lines += 1
                    response = line.get("response") or {}
                    body = response.get("body") or {}
                    if response.get("status_code") == 200:
                        choice = body["choices"][0]
                        usage = body.get("usage") or {}
                        record = {
                            "response": choice["message"].get("content"),
                            "response_error_kind": None,
                            "response_error": None,
                            "response_input_tokens": usage.get("prompt_tokens"),
                            "response_output_tokens": usage.get("completion_tokens"),
                            "response_finish_reason": choice.get("finish_reason"),
                            "response_model": body.get("model"),
                        }
                    else:
                        error = line.get("error") or body.get("error") or {}
                        record = {
                            "response": None,
                            "response_error_kind": error.get("code") or "error",
                            "response_error": error.get("message"),
                            "response_input_tokens": None,
                            "response_output_tokens": None,
                            "response_finish_reason": None,
                            "response_model": None,
                        }
                    by_id[line["custom_id"]] = record
    with context.step("read table + row ids"):
        df = pd.read_parquet(source)
        row_ids = pd.read_parquet(files.row_ids)["custom_id"]
    with context.step("lookup per row"):
        missing = {"response_error_kind": "missing"}
        records = [by_id.get(cid, missing) for cid in row_ids]
        answers = pd.DataFrame(records, index=df.index)
        df = pd.concat([df, answers], axis=1)
    with context.step("write parquet"):
        df.to_parquet(output)
    return {"rows": len(df), "lines": lines}


def collect_floor(context: StageContext) -> dict[str, Any]:
    """``orjson.loads`` of every output and error line, and nothing else."""
    import orjson

    files = ensure_results(context.rows, context.seed)
    lines = 0
    for path in (files.output, files.error):
        for raw in path.read_bytes().splitlines():
            orjson.loads(raw)
            lines += 1
    return {"rows": context.rows, "lines": lines}


def collect_job(context: StageContext) -> dict[str, Any]:
    """Collect as a job does it, from the same result lines: per batch what ``jobs.collect_chunk``
    does once a batch has ended (its request ids, ``parse_results`` of its output and error files,
    ``select_results``, then ``store_collected``: the stored results, the response cache and the
    chunk's state), then ``jobs.assemble``
    (matching every row by key, each batch's stored answers read when first needed). Batches are
    collected ``jobs.COLLECTS_IN_FLIGHT`` at a time in threads, as a job does (one at a time for a
    tree from before it).

    Untimed set-up: ``jobs.prepare`` of the table, and the result files cut into one output and
    one error file per batch (the lines of its requests, their synthetic ids paired with the job's).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from prefect_llm_batch import jobs
    from prefect_llm_batch.cache import ResponseCache
    from prefect_llm_batch.jobs import collect
    from prefect_llm_batch.jobs.chunks import chunk_custom_ids
    from prefect_llm_batch.jobs.collect import select_results, with_attempts
    from prefect_llm_batch.providers.openai import OpenAIBatchProvider
    from prefect_llm_batch.spec import ProviderTarget
    from prefect_llm_batch.store import JobStore

    store_collected = getattr(collect, "store_collected", None)
    files = ensure_results(context.rows, context.seed)
    source = str(ensure_table(context.rows, context.seed))
    spec, _ = _spec_and_target(KEY_BASE_URL)
    target = ProviderTarget(provider="openai", base_url=KEY_BASE_URL, key_base_url=KEY_BASE_URL)
    provider = OpenAIBatchProvider(api_key="bench-key", base_url=KEY_BASE_URL)
    state = context.work / "collect-job"
    shutil.rmtree(state, ignore_errors=True)
    ref = jobs.prepare(source, spec, provider, target, state_dir=str(state))
    store = JobStore(ref.state_dir, ref.job_id)
    # The result files name requests by synthetic ids: pair them with the job's, row by row.
    synthetic = pq.read_table(files.row_ids).column("custom_id").combine_chunks()
    real = pa.concat_arrays(list(store.iter_row_ids()))
    first = np.unique(np.asarray(pc.index_in(real, value_set=pc.unique(real))), return_index=True)[1]
    synthetic_of = dict(zip(real.take(first).to_pylist(), synthetic.take(first).to_pylist(), strict=True))
    chunk_of = {}
    plans = store.read_job().chunks
    wanted_of = {}
    for plan in plans:
        wanted = [synthetic_of[cid] for cid in chunk_custom_ids(store, plan.chunk_id)]
        wanted_of[plan.chunk_id] = pa.array(wanted, pa.string())
        chunk_of.update(dict.fromkeys(wanted, plan.chunk_id))
    del synthetic_of
    per_chunk: dict[int, list[bytes]] = {plan.chunk_id: [] for plan in plans}
    for path in (files.output, files.error):
        data = path.read_bytes()
        ids = pj.read_json(pa.BufferReader(data)).column("custom_id").to_pylist()
        lines = data.splitlines(keepends=True)
        by_chunk: dict[int, list[bytes]] = {plan.chunk_id: [] for plan in plans}
        for cid, line in zip(ids, lines, strict=True):
            by_chunk[chunk_of[cid]].append(line)
        for chunk_id, chunk_lines in by_chunk.items():
            per_chunk[chunk_id].append(b"".join(chunk_lines))
        del data, lines, ids
    del chunk_of
    context.restart_clock()

    def collect_one(plan: Any) -> int:
        chunk_id, batch_id = plan.chunk_id, f"batch_{plan.chunk_id:05d}"
        with context.step("request ids"):
            expected = chunk_custom_ids(store, chunk_id)
            wanted = wanted_of.pop(chunk_id)  # the same ids as the result lines spell them
        with context.step("parse lines"):
            tables = [
                provider.parse_results(data, batch_id, where=f"file {i} of {batch_id}")
                for i, data in enumerate(per_chunk.pop(chunk_id))
            ]
            lines = pa.concat_tables(tables)
            count = lines.num_rows
        with context.step("select_results"):
            table = select_results(lines, wanted, batch_id, chunk_id=chunk_id)
            table = with_attempts(table.set_column(0, "custom_id", pa.array(expected, pa.string())), 1)
        with context.step("store results + cache"):
            chunk = store.read_chunk(chunk_id)
            chunk.batch_id, chunk.status = batch_id, "completed"
            if store_collected is not None:
                store_collected(ref, chunk, table)
            else:  # a tree from before store_collected: what its collect_chunk did
                store.write_results(chunk_id, table)
                ok = table.filter(table.column("response_error_kind").is_null())
                ResponseCache(ref.state_dir).add(f"{ref.job_id}-chunk-{chunk_id:05d}-a1", ok)
                chunk.collected = True
                store.write_chunk(chunk)
        return count

    # as many batches at once as a job collects (jobs.collect_chunks, the flow's collect tasks)
    in_flight = getattr(jobs, "COLLECTS_IN_FLIGHT", 1)
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="bench-collect") as pool:
        lines_total = sum(pool.map(collect_one, plans))
    output = context.work / "collect-job.parquet"
    with context.step("assemble"):
        summary = jobs.assemble(ref, output=str(output), overwrite=True)
    if summary.rows != context.rows:
        raise RuntimeError(f"the output has {summary.rows} rows, not {context.rows}")
    return {"rows": summary.rows, "lines": lines_total, "ok_rows": summary.ok_rows, "chunks": ref.chunks}


def end_to_end(context: StageContext) -> dict[str, Any]:
    """prepare -> submit_chunk -> wait -> collect_chunk -> assemble against the fake server."""
    from prefect_llm_batch import jobs
    from prefect_llm_batch.providers.openai import OpenAIBatchProvider

    assert context.server_url is not None
    source = str(ensure_table(context.rows, context.seed))
    spec, target = _spec_and_target(context.server_url)
    provider = OpenAIBatchProvider(api_key="bench-key", base_url=context.server_url)
    state = context.work / "e2e-state"
    shutil.rmtree(state, ignore_errors=True)
    output = context.work / "e2e" / "out.parquet"
    with context.step("prepare"):
        ref = jobs.prepare(source, spec, provider, target, state_dir=str(state))
    with context.step("submit"):
        for chunk in range(ref.chunks):
            jobs.submit_chunk(ref, chunk, provider)
    with context.step("wait"):
        if "poll_interval" in inspect.signature(jobs.wait).parameters:
            jobs.wait(ref, provider, poll_interval=0)
        else:  # the interval moved into RunOptions
            from prefect_llm_batch.spec import RunOptions  # type: ignore[attr-defined]

            jobs.wait(ref, provider, RunOptions(poll_interval=0))
    with context.step("collect"):
        if hasattr(jobs, "collect_chunks"):  # as the runner and the flow: two batches at a time
            jobs.collect_chunks(ref, range(ref.chunks), provider)
        else:
            for chunk in range(ref.chunks):
                jobs.collect_chunk(ref, chunk, provider)
    with context.step("assemble"):
        summary = jobs.assemble(ref, output=str(output), overwrite=True)
    provider.close()
    if summary.rows != context.rows:
        raise RuntimeError(f"end to end wrote {summary.rows} rows, not {context.rows}")
    return {"rows": summary.rows, "unique": ref.unique_requests, "chunks": ref.chunks}


#: Rows per part file of the partitioned input of ``parts_job`` (so 1M rows are 16 parts, 4M are 64).
PART_ROWS = 62_500


def _reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0), so the next step's peak is its own."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _job_with_made_up_answers(
    context: StageContext, source: str, spec: Any, answer: Callable[[int], str], name: str
) -> dict[str, Any]:
    """``jobs.prepare``, then answers made up for every request (one per request, stored as a
    collected batch would leave them; untimed), then ``jobs.assemble``; the peak RSS of each side."""
    import pyarrow as pa

    from prefect_llm_batch import jobs
    from prefect_llm_batch.jobs.chunks import chunk_custom_ids
    from prefect_llm_batch.providers.openai import OpenAIBatchProvider
    from prefect_llm_batch.results import RESULT_SCHEMA
    from prefect_llm_batch.spec import ProviderTarget
    from prefect_llm_batch.store import JobStore

    target = ProviderTarget(provider="openai", base_url=KEY_BASE_URL, key_base_url=KEY_BASE_URL)
    provider = OpenAIBatchProvider(api_key="bench-key", base_url=KEY_BASE_URL)
    state = context.work / f"{name}-{context.rows}"
    shutil.rmtree(state, ignore_errors=True)
    _reset_peak_rss()
    with context.step("prepare"):
        ref = jobs.prepare(source, spec, provider, target, state_dir=str(state))
    prepare_peak = _status_mb("VmHWM")
    store = JobStore(ref.state_dir, ref.job_id)
    for plan in store.read_job().chunks:  # what collecting each batch would have stored
        ids = chunk_custom_ids(store, plan.chunk_id)
        n = len(ids)
        columns = {
            "custom_id": ids,
            "response": [answer(plan.chunk_id * 100_000 + i) for i in range(n)],
            "response_input_tokens": [120] * n,
            "response_output_tokens": [1] * n,
            "response_finish_reason": ["stop"] * n,
            "response_model": ["gpt-4o-mini-2024-07-18"] * n,
            "response_batch_id": [f"batch_{plan.chunk_id:05d}"] * n,
            "response_cached": [False] * n,
            "response_attempts": [1] * n,
        }
        table = pa.table(
            {f.name: columns.get(f.name, [None] * n) for f in RESULT_SCHEMA}, schema=RESULT_SCHEMA
        )
        store.write_results(plan.chunk_id, table)
        chunk = store.read_chunk(plan.chunk_id)
        chunk.batch_id, chunk.status, chunk.collected = f"batch_{plan.chunk_id:05d}", "completed", True
        store.write_chunk(chunk)
        del table, columns, ids
    _reset_peak_rss()
    output = context.work / f"{name}-{context.rows}.parquet"
    with context.step("write output"):
        summary = jobs.assemble(ref, output=str(output), overwrite=True)
    output_peak = _status_mb("VmHWM")
    if summary.rows != context.rows or summary.error_rows:
        raise RuntimeError(
            f"the output has {summary.rows} rows ({summary.errors_by_kind}), not {context.rows}"
        )
    return {
        "rows": summary.rows,
        "prepare_peak_mb": prepare_peak,
        "output_peak_mb": output_peak,
        "chunks": ref.chunks,
    }


def parts_job(context: StageContext) -> dict[str, Any]:
    """A job over a partitioned input (a directory of Parquet parts): prepare, then write the output."""
    source = ensure_table(context.rows, context.seed, parts=max(2, context.rows // PART_ROWS))
    spec, _ = _spec_and_target(KEY_BASE_URL)
    result = _job_with_made_up_answers(context, str(source), spec, lambda _: "positive", "parts")
    return {**result, "parts": len(list(source.glob("*.parquet")))}


#: The response schema of ``structured_job``: two typed columns.
STRUCTURED_SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "confidence": {"type": "number"},
    },
    "required": ["sentiment", "confidence"],
}


def structured_job(context: StageContext) -> dict[str, Any]:
    """Structured answers: prepare with a response schema (``response_format`` in every body), then
    write the output with every answer parsed and checked into typed columns."""
    from prefect_llm_batch.spec import JobSpec

    source = str(ensure_table(context.rows, context.seed))
    spec = JobSpec(
        prompt=TEMPLATE,
        model=MODEL,
        provider="openai",
        base_url=KEY_BASE_URL,
        response_schema=STRUCTURED_SCHEMA,
    )
    sentiments = ("positive", "negative", "mixed")

    def answer(request: int) -> str:  # every answer distinct: the worst case (each is parsed)
        return f'{{"sentiment": "{sentiments[request % 3]}", "confidence": {request / 1e7:.7f}}}'

    return _job_with_made_up_answers(context, source, spec, answer, "structured")


STAGES: dict[str, Stage] = {
    "prepare_ours": prepare_ours,
    "prepare_steps": prepare_steps,
    "prepare_naive": prepare_naive,
    "prepare_floor": prepare_floor,
    "collect_ours": collect_ours,
    "collect_naive": collect_naive,
    "collect_floor": collect_floor,
    "collect_job": collect_job,
    "e2e": end_to_end,
    "parts_job": parts_job,
    "structured_job": structured_job,
}


# -- the driver ---------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _child(
    stage: str,
    rows: int,
    seed: int,
    work: Path,
    *,
    server_url: str | None = None,
    profile: bool = False,
    env: dict[str, str] | None = None,
    repeat: int = 1,
) -> dict[str, Any]:
    """Run one stage in a new Python process (``repeat`` times: the fastest run counts)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--rows", str(rows)]
    command += ["--seed", str(seed), "--work", str(work)]
    if server_url:
        command += ["--server-url", server_url]
    if profile:
        command += ["--profile-to", str(PROFILE_DIR / f"{stage}-{rows}.prof")]
    _log(f"  {stage} ({rows:,} rows)...")
    best: dict[str, Any] | None = None
    for _ in range(max(1, repeat)):
        os.sync()  # the previous stage's dirty pages are not this stage's I/O
        _warm_inputs(stage, rows, seed)
        _touch_memory(TOUCH_MB)
        busy = _system_busy_seconds()
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
        )
        busy = _system_busy_seconds() - busy
        if done.returncode != 0:
            raise RuntimeError(f"stage {stage} failed:\n{done.stdout}\n{done.stderr}")
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"stage {stage} printed no result:\n{done.stdout}\n{done.stderr}")
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
        # CPU the rest of the machine used meanwhile (the stage's own start-up and imports included).
        mine = result["cpu_s"] + result["import_cpu_s"] + result.get("setup_cpu_s", 0.0)
        result["others_cpu_s"] = max(0.0, busy - mine - 0.3)
        _log(
            f"    {result['wall_s']:.2f} s, CPU {result['cpu_s']:.2f} s, "
            f"peak {result['peak_rss_mb']:.0f} MB, others busy {result['others_cpu_s']:.1f} CPU s"
        )
        best = _best(best, result)
    assert best is not None
    return best


def _best(best: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """The fastest of two runs of a stage, with the highest peak of both and every run's wall time."""
    walls = [*(best["runs_wall_s"] if best else []), result["wall_s"]]
    peak = max(result["peak_rss_mb"], best["peak_rss_mb"] if best else 0.0)
    fastest = result if best is None or result["wall_s"] < best["wall_s"] else best
    return {**fastest, "peak_rss_mb": peak, "runs_wall_s": walls}


#: Stages measured against each other (a variant and its floor): with ``--repeat``, their runs
#: alternate (ours, floor, ours, floor...), so that each ratio also has pairs of runs made next
#: to each other in time, which a busy machine slows alike.
PAIRED = (("prepare_ours", "prepare_floor"), ("collect_ours", "collect_floor", "collect_job"))


def _paired_ratio(ours: dict[str, Any], floor: dict[str, Any]) -> float | None:
    """The median of the ratios of runs made one after the other (None: not alternated)."""
    a, b = ours.get("runs_wall_s", []), floor.get("runs_wall_s", [])
    if len(a) < 2 or len(a) != len(b) or not ours.get("alternated") or not floor.get("alternated"):
        return None
    return statistics.median(_ratio(x, y) for x, y in zip(a, b, strict=True))


#: Memory written before every run (``--touch-mb``).
TOUCH_MB = 0


def _touch_memory(megabytes: int) -> None:
    """Write to (then free) ``megabytes`` of memory, so that the next process finds it mapped.

    These virtual machines hand freed memory back to their host, and taking it again costs
    about 9 s per GB at first touch (against 0.1-0.3 s once the host backs it): a stage that
    allocates more than another would measure the host, not the code. Touching enough memory
    before every run makes each stage start from host-backed memory.
    """
    if megabytes > 0:
        import numpy as np

        block = np.ones(megabytes << 17)  # float64: 8 bytes
        del block


_PROBE = """
import json, time, numpy as np, pyarrow as pa
from numpy._core.multiarray import _set_madvise_hugepage
def touch(name, make):
    time.sleep(3)  # pages freed by the previous probe go back to the host first (if it takes them)
    start = time.perf_counter(); block = make(); out[name] = time.perf_counter() - start
out = {}
def arrow():
    buffer = pa.allocate_buffer(1 << 28, memory_pool=pa.mimalloc_memory_pool())
    np.frombuffer(buffer, np.uint8)[:] = 1
    return buffer
touch("mimalloc", arrow)
_set_madvise_hugepage(True)
touch("huge", lambda: np.ones(1 << 25))
_set_madvise_hugepage(False)
touch("small", lambda: np.ones(1 << 25))
print(json.dumps(out))
"""


def _run_probe(script: str, *args: str) -> dict[str, float] | None:
    """Run a probe script in a fresh process; its timings (the JSON it prints), or None if it failed."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    took: dict[str, float] = json.loads(done.stdout)
    return took


def probe_first_touch() -> str:
    """How long this machine takes to touch 256 MB of fresh memory: numpy with small pages, with
    transparent huge pages, and through Arrow's mimalloc pool (a fresh process, untimed by the suite)."""
    took = _run_probe(_PROBE)
    if took is None:
        return "First-touch probe: unavailable on this machine."
    return (
        f"First touch of 256 MB of fresh memory on this machine: {took['small']:.2f} s with small pages, "
        f"{took['huge']:.2f} s with transparent huge pages (numpy's default), {took['mimalloc']:.2f} s "
        "through Arrow's mimalloc pool (its default on Linux)."
    )


_PAGE_CACHE_PROBE = """
import json, os, shutil, sys, time
from prefect_llm_batch.files import write_bytes_atomic
root, data, out = sys.argv[1], os.urandom(1 << 20) * 32, {}
for drop in (False, True):
    shutil.rmtree(root, ignore_errors=True)
    time.sleep(3)  # pages freed before go back to the host first (if it takes them)
    start = time.perf_counter()
    for i in range(8):
        write_bytes_atomic(f"{root}/file-{i}", data, drop_cache=drop)
    out["dropped" if drop else "kept"] = time.perf_counter() - start
shutil.rmtree(root, ignore_errors=True)
print(json.dumps(out))
"""


def probe_page_cache() -> str:
    """How long writing 256 MB of new files (8 of 32 MB, each synced) takes here, with their pages
    kept in the page cache and with them dropped behind the write (``drop_cache``)."""
    took = _run_probe(_PAGE_CACHE_PROBE, str(WORK_ROOT / "page-cache-probe"))
    if took is None:
        return "Page-cache probe: unavailable on this machine."
    return (
        f"Writing 256 MB of new files (8 of 32 MB, each synced) on this machine: {took['kept']:.2f} s "
        f"with their pages kept in the page cache, {took['dropped']:.2f} s dropped behind the write."
    )


def _warm_inputs(stage: str, rows: int, seed: int) -> None:
    """Read a stage's input files once, untimed, so that every variant starts from the page cache.

    These machines reclaim idle page cache within minutes (DAMON), and their disks are slow and
    uneven: without this, a stage's wall time measures how much of its input the disk had to
    give back, not the code.
    """
    paths = [table_path(rows, seed), results_dir(rows, seed)]
    if stage == "parts_job":
        paths = [table_path(rows, seed, parts=max(2, rows // PART_ROWS))]
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            with open(file, "rb") as handle:
                while handle.read(16 << 20):
                    pass


def _system_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (0 without /proc)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(value) for value in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process, from ``/proc/PID/stat`` (0 without /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def fake_server(cwd: Path) -> Iterator[tuple[str, int]]:
    """Run the fake provider (instant batches) in its own process; yield its base URL and pid."""
    port = _free_port()
    code = f"from prefect_llm_batch.testing import serve; serve({port}, log_level='warning')"
    # Started in ``cwd``: ``python -c`` puts the current directory first on sys.path, and the
    # package measured must be the one the stages import.
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, cwd=cwd)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            request = urllib.request.Request(url + "/batches", headers={"Authorization": "Bearer bench-key"})
            try:
                with urllib.request.urlopen(request, timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fake provider did not start") from None
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Suite:
    """The measurements of one run, and how to show them."""

    rows: int
    naive_rows: int
    e2e_rows: int
    package: str = ""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (target, measured by wall time, measured by CPU time, passed; None when it does not apply).
    checks: list[tuple[str, str, str, bool | None]] = field(default_factory=list)

    def per_row(self, stage: str) -> float:
        """Wall seconds per row of a stage."""
        result = self.results[stage]
        return float(result["wall_s"]) / max(1, int(result["rows"]))

    def has(self, *stages: str) -> bool:
        """True when every named stage ran."""
        return all(stage in self.results for stage in stages)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def _package_location() -> str:
    """Which ``prefect_llm_batch`` the stages import, and its git commit when it is in a work tree."""
    code = "import os, prefect_llm_batch as p; print(os.path.dirname(os.path.dirname(p.__file__)))"
    root = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=WORK_ROOT
    ).stdout.strip()
    described = subprocess.run(
        ["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    commit = described.stdout.strip() if described.returncode == 0 else "not a git work tree"
    return f"{root} ({commit})"


def run_suite(args: argparse.Namespace) -> Suite:
    """Generate the data, run the stages, each in its own process, and check the targets."""
    rows, naive_rows, e2e_rows = args.rows, args.naive_rows or args.rows, args.e2e_rows
    wanted = set(args.stages.split(",")) if args.stages else set(STAGES)
    if args.skip_e2e:
        wanted.discard("e2e")
    if "prepare_floor" in wanted:
        wanted.add("prepare_ours")  # the floor writes the bytes ours made
    suite = Suite(rows=rows, naive_rows=naive_rows, e2e_rows=e2e_rows)
    global TOUCH_MB
    TOUCH_MB = args.touch_mb
    work = WORK_ROOT / f"run-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    suite.package = _package_location()
    _log(f"measuring prefect_llm_batch from {suite.package}")
    seed, repeat = args.seed, args.repeat
    r = suite.results
    try:
        _log("generating (or finding) the data...")
        generate = [sys.executable, str(Path(__file__).resolve().with_name("data.py")), "--seed", str(seed)]
        counts = {rows} | ({naive_rows} if wanted & {"prepare_naive", "collect_naive"} else set())
        counts |= {e2e_rows} if "e2e" in wanted else set()
        for count in sorted(counts):
            subprocess.run([*generate, "--rows", str(count)], check=True, stdout=subprocess.DEVNULL)
        parts_sizes = {"parts_job": rows, "parts_job_4x": args.parts_rows or 4 * rows}
        if "parts_job" in wanted:
            for count in parts_sizes.values():
                parts = ["--parts", str(max(2, count // PART_ROWS)), "--parts-only"]
                subprocess.run(
                    [*generate, "--rows", str(count), *parts], check=True, stdout=subprocess.DEVNULL
                )
        for stage in STAGES:
            if stage not in wanted or stage in r:
                continue
            stage_rows = {"prepare_naive": naive_rows, "collect_naive": naive_rows, "e2e": e2e_rows}.get(
                stage, rows
            )
            profile = args.profile and stage in PROFILED
            group = [s for g in PAIRED if stage in g for s in g if s in wanted]
            if repeat > 1 and len(group) > 1:  # a variant and its floor: their runs alternate
                for _ in range(repeat):
                    for name in group:
                        env = (
                            {"BENCH_REQUESTS_DIR": r["prepare_ours"]["requests_dir"]}
                            if name == "prepare_floor"
                            else None
                        )
                        result = _child(
                            name, rows, seed, work, env=env, profile=args.profile and name in PROFILED
                        )
                        r[name] = {**_best(r.get(name), result), "alternated": True}
            elif stage == "prepare_floor":
                env = {"BENCH_REQUESTS_DIR": r["prepare_ours"]["requests_dir"]}
                r[stage] = _child(stage, stage_rows, seed, work, env=env, repeat=repeat)
            elif stage == "parts_job":
                for label, count in parts_sizes.items():
                    r[label] = _child(stage, count, seed, work, repeat=repeat)
            elif stage == "e2e":
                with fake_server(work) as (url, pid):
                    server_cpu = _process_cpu_seconds(pid)
                    r[stage] = _child(stage, stage_rows, seed, work, server_url=url, profile=profile)
                    r[stage]["server_cpu_s"] = _process_cpu_seconds(pid) - server_cpu
            else:
                r[stage] = _child(stage, stage_rows, seed, work, profile=profile, repeat=repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    _check_targets(suite)
    return suite


#: Stages that ``--profile`` runs under cProfile (their wall times are then inflated).
PROFILED = frozenset({"prepare_steps", "collect_ours", "e2e"})


def _check_targets(suite: Suite) -> None:
    """Compare with issue 7's targets (by wall time; the same ratio by CPU time beside it)."""
    r = suite.results
    checks = suite.checks

    def cpu_per_row(stage: str) -> float:
        return float(r[stage]["cpu_s"]) / max(1, int(r[stage]["rows"]))

    if suite.has("prepare_ours", "prepare_naive"):
        ratio = _ratio(suite.per_row("prepare_naive"), suite.per_row("prepare_ours"))
        by_cpu = _ratio(cpu_per_row("prepare_naive"), cpu_per_row("prepare_ours"))
        limit = TARGET_PREPARE_VS_NAIVE
        checks.append((f"prepare >= {limit:g}x naive", f"{ratio:.1f}x", f"{by_cpu:.1f}x", ratio >= limit))

    def against_floor(name: str, ours: dict[str, Any], floor: dict[str, Any], limit: float) -> None:
        # Judged on the fastest run of each; the median of the alternated pairs is shown beside it.
        ratio = _ratio(ours["wall_s"], floor["wall_s"])
        by_cpu = _ratio(ours["cpu_s"], floor["cpu_s"])
        paired = _paired_ratio(ours, floor)
        shown = f"{ratio:.2f}x" + (f" (pairs: median {paired:.2f}x)" if paired is not None else "")
        checks.append((name, shown, f"{by_cpu:.1f}x", ratio <= limit))

    for group, limit in (("prepare", TARGET_PREPARE_VS_FLOOR), ("collect", TARGET_COLLECT_VS_FLOOR)):
        ours, floor = r.get(f"{group}_ours"), r.get(f"{group}_floor")
        if ours and floor:
            against_floor(f"{group} within {limit:g}x of floor", ours, floor, limit)
    if suite.has("collect_job", "collect_floor"):  # what a job runs, not only the functions it runs
        name = f"collect as a job (collect_chunk + assemble) within {TARGET_COLLECT_VS_FLOOR:g}x of floor"
        against_floor(name, r["collect_job"], r["collect_floor"], TARGET_COLLECT_VS_FLOOR)
    peaks = [r[stage]["peak_rss_mb"] for stage in ("prepare_ours", "collect_ours") if stage in r]
    if peaks:
        checks.append(
            (
                f"peak RSS < {TARGET_PEAK_RSS_MB:g} MB at 1M rows",
                f"{max(peaks):,.0f} MB at {suite.rows:,} rows",
                "",
                max(peaks) < TARGET_PEAK_RSS_MB if suite.rows >= 1_000_000 else None,
            )
        )
    if suite.has("parts_job", "parts_job_4x"):
        small, big = r["parts_job"], r["parts_job_4x"]
        grows = _ratio(big["rows"], small["rows"])
        for side in ("prepare", "output"):
            ratio = _ratio(big[f"{side}_peak_mb"], small[f"{side}_peak_mb"])
            measured = (
                f"{small[f'{side}_peak_mb']:,.0f} -> {big[f'{side}_peak_mb']:,.0f} MB "
                f"({ratio:.2f}x for {grows:.0f}x the rows)"
            )
            name = f"partitioned input, {side}: peak RSS x{TARGET_PARTS_GROWTH:g} at most for 4x the rows"
            passed = ratio <= TARGET_PARTS_GROWTH if small["rows"] >= 1_000_000 else None
            checks.append((name, measured, "", passed))
    if "e2e" in r:
        ms = 1000 * r["e2e"]["cpu_s"] / r["e2e"]["rows"]
        target = TARGET_E2E_MS_PER_ROW
        checks.append((f"end to end < {target:g} CPU ms/row", "", f"{ms:.3f} ms/row", ms < target))


_LABELS = {
    "prepare_ours": ("prepare", "ours (jobs.prepare)"),
    "prepare_steps": ("prepare", "ours, step by step"),
    "prepare_naive": ("prepare", "naive"),
    "prepare_floor": ("prepare", "floor (write bytes)"),
    "collect_ours": ("collect", "ours"),
    "collect_naive": ("collect", "naive"),
    "collect_floor": ("collect", "floor (orjson.loads)"),
    "collect_job": ("collect", "ours, as a job (collect_chunk per batch + assemble)"),
    "e2e": ("end to end", "ours, fake server"),
    "parts_job": ("partitioned job", "prepare + output"),
    "parts_job_4x": ("partitioned job", "prepare + output, 4x rows"),
    "structured_job": ("structured answers", "prepare + output"),
}


def render(suite: Suite) -> str:
    """The results as a Markdown table, the step breakdowns and the target checks."""
    r = suite.results
    out = io.StringIO()
    out.write(
        "| stage | variant | rows | wall s | rows/s | lines/s | CPU s | peak RSS MB | vs naive | vs floor "
        "| others' CPU s |\n"
    )
    out.write("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for key, (stage, variant) in _LABELS.items():
        if key not in r:
            continue
        result = r[key]
        rows = int(result["rows"])
        wall = float(result["wall_s"])
        lines = f"{result['lines'] / wall:,.0f}" if "lines" in result else ""
        group = key.split("_")[0]
        vs_naive = vs_floor = ""
        if group in ("prepare", "collect") and not key.endswith(("naive", "floor")):
            if f"{group}_naive" in r:
                vs_naive = f"{_ratio(suite.per_row(f'{group}_naive'), wall / rows):.1f}x"
            if f"{group}_floor" in r:
                vs_floor = f"{_ratio(wall, r[f'{group}_floor']['wall_s']):.2f}x"
        out.write(
            f"| {stage} | {variant} | {rows:,} | {wall:.2f} | {rows / wall:,.0f} | {lines} | "
            f"{result['cpu_s']:.2f} | {result['peak_rss_mb']:,.0f} | {vs_naive} | {vs_floor} | "
            f"{result.get('others_cpu_s', 0.0):.1f} |\n"
        )
    out.write(
        "\n`vs naive`: naive wall per row / ours (higher is better); `vs floor`: ours wall / floor's; "
        "`others' CPU s`: CPU the rest of the machine used during the stage (noise when large).\n"
    )
    out.write("\nSteps (wall s):\n\n")
    steps = (
        "prepare_steps",
        "prepare_naive",
        "collect_ours",
        "collect_job",
        "collect_naive",
        "e2e",
        "parts_job",
        "structured_job",
    )
    for key in steps:
        if key in r and r[key]["steps"]:
            steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in r[key]["steps"].items())
            out.write(f"- {_LABELS[key][0]}, {_LABELS[key][1]}: {steps}\n")
    if "e2e" in r:
        e2e = r["e2e"]
        out.write(
            f"\nEnd to end at {e2e['rows']:,} rows ({e2e['chunks']} batches): our process "
            f"{1000 * e2e['cpu_s'] / e2e['rows']:.3f} CPU ms/row ({e2e['cpu_s']:.2f} s, after imports, "
            f"which took {e2e['import_cpu_s']:.2f} CPU s); the fake server, in its own process and not "
            f"counted, {1000 * e2e['server_cpu_s'] / e2e['rows']:.3f} CPU ms/row.\n"
        )
    if suite.has("parts_job", "parts_job_4x"):
        out.write(
            "\nPartitioned input (a directory of Parquet parts of 62,500 rows; batches of 50,000 requests; "
            "made-up answers stored as collected batches would leave them):\n\n"
            "| rows | parts | batches | prepare s | prepare peak RSS MB | output s | output peak RSS MB |\n"
            "|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for key in ("parts_job", "parts_job_4x"):
            job = r[key]
            out.write(
                f"| {job['rows']:,} | {job['parts']} | {job['chunks']} | {job['steps']['prepare']:.2f} | "
                f"{job['prepare_peak_mb']:,.0f} | {job['steps']['write output']:.2f} | "
                f"{job['output_peak_mb']:,.0f} |\n"
            )
    if suite.has("structured_job"):
        job = r["structured_job"]
        out.write(
            f"\nStructured answers (a response schema of two properties; every answer distinct, parsed "
            f"and checked into typed columns), {job['rows']:,} rows: prepare {job['steps']['prepare']:.2f} s "
            f"(peak {job['prepare_peak_mb']:,.0f} MB), output {job['steps']['write output']:.2f} s "
            f"(peak {job['output_peak_mb']:,.0f} MB).\n"
        )
    if suite.naive_rows != suite.rows and suite.has("prepare_naive"):
        out.write(
            f"\nThe naive baseline ran on {suite.naive_rows:,} rows; its ratios compare time per row.\n"
        )
    out.write("\n| target | measured (wall) | same ratio by CPU time | |\n|---|---|---|---|\n")
    for name, measured, by_cpu, passed in suite.checks:
        verdict = "n/a" if passed is None else ("PASS" if passed else "FAIL")
        out.write(f"| {name} | {measured} | {by_cpu} | {verdict} |\n")
    return out.getvalue()


def print_profiles(limit: int = 25) -> None:
    """Print the top functions of every profile written by this run."""
    for path in sorted(PROFILE_DIR.glob("*.prof")):
        for sort in ("tottime", "cumulative"):
            stream = io.StringIO()
            stats = pstats.Stats(str(path), stream=stream)
            stats.strip_dirs().sort_stats(sort).print_stats(limit)
            print(f"\n===== {path.name} by {sort} =====")
            print(stream.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite (or, with ``--stage``, one stage in this process)."""
    parser = argparse.ArgumentParser(description="Benchmark prepare, collect and end to end (issue 7).")
    parser.add_argument(
        "--rows", type=int, default=None, help="rows of prepare and collect (default 1,000,000)"
    )
    parser.add_argument("--quick", action="store_true", help="20,000 rows, e2e at 5,000: what CI runs")
    parser.add_argument("--naive-rows", type=int, default=None, help="rows of the naive baseline")
    parser.add_argument("--e2e-rows", type=int, default=None, help="rows end to end (default 100,000)")
    parser.add_argument("--skip-e2e", action="store_true", help="leave out the end-to-end stage")
    parser.add_argument(
        "--parts-rows", type=int, default=None, help="rows of the bigger partitioned job (default 4x --rows)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile prepare, collect and e2e")
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of: {', '.join(STAGES)}")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help=(
            "runs per stage; the fastest counts (a variant and its floor alternate, and the median "
            "ratio of their pairs is shown too)"
        ),
    )
    parser.add_argument(
        "--touch-mb",
        type=int,
        default=0,
        help="memory written (then freed) before every run, so stages start from host-backed memory"
        " (default 0: off; RESULTS.md used 4096, which makes the suite about 3x longer)",
    )
    parser.add_argument(
        "--default-pages",
        action="store_true",
        help="keep Arrow's and numpy's own allocation (huge pages) instead of what the flows use",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--server-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        context = StageContext(args.rows, args.seed, args.work, args.server_url)
        print("RESULT " + json.dumps(run_stage(args.stage, context, args.profile_to)), flush=True)
        return 0
    if args.rows is None:
        args.rows = 20_000 if args.quick else 1_000_000
    if args.e2e_rows is None:
        args.e2e_rows = 5_000 if args.quick else 100_000
    if args.profile:
        shutil.rmtree(PROFILE_DIR, ignore_errors=True)
    if args.default_pages:
        os.environ["PREFECT_LLM_BATCH_SMALL_PAGES"] = "0"  # the stages' processes inherit it
    started = time.perf_counter()
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    probe = "" if args.quick else f"{probe_first_touch()}\n{probe_page_cache()}"
    suite = run_suite(args)
    print(f"prefect_llm_batch measured: {suite.package}\n")
    pools = sorted({str(result.get("arrow_pool")) for result in suite.results.values()})
    pages = "libraries' defaults (--default-pages)" if args.default_pages else "small pages, as the flows"
    print(f"Allocation: {pages}; Arrow pool of the stages: {', '.join(pools)}.")
    if probe:
        print(probe)
    print()
    print(render(suite))
    print(f"(suite ran in {time.perf_counter() - started:.0f} s)")
    if args.json is not None:
        payload = {
            "rows": suite.rows,
            "package": suite.package,
            "results": suite.results,
            "checks": suite.checks,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    if args.profile:
        print_profiles()
    failed = [name for name, _, _, passed in suite.checks if passed is False]
    return 1 if failed and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
