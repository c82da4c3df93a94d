"""Running a whole job in this process without Prefect (notebooks, scripts).

The ``enrich_table`` flow runs the same steps as Prefect tasks; this driver calls them directly,
so a notebook needs no Prefect server. Resume, cache, retry rounds and the lease work the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..providers.base import BatchProvider
from ..spec import RunOptions
from ..store import JobStore
from .batches import Progress, collect_chunks, submit_chunk, wait
from .plan import JobRef, plan_retry_round

logger = logging.getLogger("prefect_llm_batch")


def run_batches(
    ref: JobRef,
    provider: BatchProvider,
    options: RunOptions,
    *,
    on_change: Callable[[Progress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Submit, wait for and collect every round of a prepared job, holding its lease."""
    store = JobStore(ref.state_dir, ref.job_id)
    with store.lease():
        store.clear_cancel()
        round_, chunks = 1, store.read_job().round_chunks(1)
        while chunks:
            pending = list(chunks)
            while pending:
                for chunk_id in pending:
                    submit_chunk(ref, chunk_id, provider, options, sleep)
                pending = wait(ref, provider, options, on_change=on_change, sleep=sleep)
            collect_chunks(ref, chunks, provider, options)
            chunks = plan_retry_round(ref, round_, options)
            if chunks:
                sleep(options.retry_backoff * 2 ** (round_ - 1))
                round_ += 1
