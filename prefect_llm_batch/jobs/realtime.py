"""Realtime mode: the same job, chunks, cache, retry rounds and output, sent request by request.

For servers without a batch API (vLLM, llama.cpp, Ollama, LM Studio) and for small urgent jobs.
A chunk is sent through :class:`~prefect_llm_batch.providers.realtime.RealtimeClient` (bounded
concurrency, request and token limiters, retry-after) and its results are stored exactly as a
collected batch's, so resuming, caching and retrying work unchanged: a chunk whose results are
stored is never sent again.
"""

from __future__ import annotations

import logging
from typing import Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from ..providers.base import BatchProvider
from ..providers.http import redact
from ..providers.realtime import RealtimeClient, has_batch_api
from ..results import RowResult, results_to_table
from ..spec import EMBEDDINGS_ENDPOINT, ProviderTarget, RunOptions
from ..store import JobStore
from .collect import store_collected
from .identity import JobRef

#: Realtime requests in flight against the ``local`` provider's server (``local_model.DEFAULT_CONCURRENCY``,
#: repeated here so that planning does not import the server module; a test keeps them equal).
LOCAL_CONCURRENCY = 1

logger = logging.getLogger("prefect_llm_batch")

#: Requests sent (and their results stored) per slice of a realtime chunk: a crash re-sends at
#: most one slice's unfinished requests.
REALTIME_SLICE = 200
#: ``mode="auto"`` runs jobs with at most this many requests to send in realtime.
AUTO_REALTIME_MAX_REQUESTS = 100

Mode = Literal["batch", "realtime", "auto"]


def choose_mode(
    mode: Mode, target: ProviderTarget, requests_to_send: int, api_key: str | None
) -> tuple[Literal["batch", "realtime"], str]:
    """Resolve ``auto``: realtime for small jobs or servers without a batch API, else batch.

    The batch API is detected by asking the server (``GET /batches``), never guessed from its
    host name. Returns the mode and the reason, for the summary.

    Examples:
        >>> t = ProviderTarget(provider="openai", base_url="https://x/v1", key_base_url="https://x/v1")
        >>> choose_mode("auto", t, 12, None)
        ('realtime', 'auto: 12 requests to send, at most 100 go realtime')
        >>> choose_mode("batch", t, 12, None)
        ('batch', 'asked for')
    """
    if target.provider == "local":  # llama.cpp's server has no batch API, whatever was asked
        return "realtime", "local model server (llama.cpp): no batch API, so realtime"
    if mode != "auto":
        return mode, "asked for"
    if requests_to_send <= AUTO_REALTIME_MAX_REQUESTS:
        return (
            "realtime",
            f"auto: {requests_to_send} requests to send, at most {AUTO_REALTIME_MAX_REQUESTS} go realtime",
        )
    if target.provider in ("openai", "simulator") and api_key and not has_batch_api(target.base_url, api_key):
        shown = redact(target.base_url)  # a target is refused with credentials; never show them anyway
        return "realtime", f"auto: {shown} has no batch API (GET /batches answered 404)"
    return "batch", f"auto: {requests_to_send} requests, and the server has a batch API"


def pick_mode(
    mode: Mode, target: ProviderTarget, requests_to_send: int, api_key: str | None, *, detached: bool
) -> tuple[Literal["batch", "realtime"], str]:
    """:func:`choose_mode`, refusing what realtime mode does not support yet (detached runs, Azure).

    Raises:
        ConfigError: Realtime was chosen for a detached run or for Azure.
    """
    chosen, reason = choose_mode(mode, target, requests_to_send, api_key)
    if chosen == "realtime" and (detached or target.provider == "azure"):
        raise ConfigError(f"realtime mode does not support {'detached runs' if detached else 'azure'} yet")
    return chosen, reason


def realtime_client(
    provider: BatchProvider,
    target: ProviderTarget,
    api_key: str,
    *,
    max_concurrency: int | None = 16,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
) -> RealtimeClient:
    """A realtime client for a job's target (OpenAI-compatible or Anthropic wire).

    ``max_concurrency`` ``None`` takes the target's default: 16, or
    :data:`~prefect_llm_batch.local_model.DEFAULT_CONCURRENCY` for the ``local`` provider, whose
    answers are also stored one by one as they come (a killed run sends none of them again).
    """
    local = target.provider == "local"
    if max_concurrency is None:
        max_concurrency = LOCAL_CONCURRENCY if local else 16
    return RealtimeClient(
        provider,
        api_key=api_key,
        base_url=target.base_url,
        wire="anthropic" if target.provider == "anthropic" else "openai",
        max_concurrency=max_concurrency,
        store_each=local,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )


def run_chunk_realtime(ref: JobRef, chunk_id: int, client: RealtimeClient, options: RunOptions) -> int:
    """Send one chunk's requests in realtime and store its results like a collected batch's.

    Returns the number of results stored (0 sends when the chunk already has its results).
    """
    store = JobStore(ref.state_dir, ref.job_id)
    state = store.read_chunk(chunk_id)
    if state.collected:
        return store.read_results(chunk_id).num_rows
    record = store.read_job()
    round_ = next(c.round for c in record.chunks if c.chunk_id == chunk_id)
    embeddings = record.endpoint == EMBEDDINGS_ENDPOINT
    lines = [orjson.loads(line) for line in store.read_chunk_input(chunk_id).splitlines() if line.strip()]
    parts = store.read_partial_results(chunk_id)  # slices a crashed run already finished
    answered = {str(cid) for part in parts for cid in part.column("custom_id").to_pylist()}
    remaining = [line for line in lines if str(line["custom_id"]) not in answered]
    if answered:
        logger.info("chunk %d: %d requests already answered by an earlier run", chunk_id, len(answered))
    stored: set[str] = set()

    def keep(result: RowResult) -> None:  # client.store_each: each answer stored as it comes
        result.attempts = round_
        part = results_to_table([result], embeddings=embeddings)
        store.write_partial_results(chunk_id, len(parts), part)
        parts.append(part)
        stored.add(result.custom_id)

    for start in range(0, len(remaining), REALTIME_SLICE):
        store.ensure_held()  # a run that lost its lease to another sends nothing more
        batch = remaining[start : start + REALTIME_SLICE]
        results = client.run(batch, keep) if client.store_each else client.run(batch)
        results = [result for result in results if result.custom_id not in stored]
        for result in results:
            result.attempts = round_
        if results or not client.store_each:
            part = results_to_table(results, embeddings=embeddings)
            store.write_partial_results(chunk_id, len(parts), part)
            parts.append(part)
    by_id = pa.concat_tables(parts) if parts else results_to_table([], embeddings=embeddings)
    order = pa.array([str(line["custom_id"]) for line in lines], pa.string())
    table = by_id.take(pc.index_in(order, value_set=by_id.column("custom_id")))
    failed = table.num_rows - table.column("response_error_kind").null_count
    state.status, state.raw_status = "completed", "realtime"
    state.total, state.completed, state.failed = table.num_rows, table.num_rows - failed, failed
    store_collected(ref, state, table, cache=options.cache != "off", tag="realtime")
    stats = client.stats
    logger.info(
        "chunk %d: %d requests in realtime, %d ok, %d answered 429",
        chunk_id, table.num_rows, table.num_rows - failed, stats.responses_429,
    )  # fmt: skip
    return table.num_rows
