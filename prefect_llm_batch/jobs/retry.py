"""Planning a retry round: the requests of a round that failed in a retryable way, in new chunks."""

from __future__ import annotations

import logging

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..spec import BatchLimits, ErrorKind, RunOptions
from ..store import ChunkPlanRecord, JobStore
from .chunks import ChunkWriter, estimate_tokens_of
from .identity import JobRef
from .spend import retry_round_within_budget

logger = logging.getLogger("prefect_llm_batch")


def plan_retry_round(ref: JobRef, round_: int, options: RunOptions) -> list[int]:
    """Plan round ``round_ + 1``: resend the requests of round ``round_`` whose error is retryable.

    Idempotent: when the next round is already planned (a resumed run), its chunks are returned.
    Nothing is planned after ``options.max_attempts`` rounds or while a user's cancel applies, nor
    when the job's spend so far plus the round's estimate is over ``options.max_cost_usd`` (the
    reason is kept in the job record, for its summary).

    Returns:
        The chunk ids of the next round (empty when there is nothing to retry).
    """
    store = JobStore(ref.state_dir, ref.job_id)
    record = store.read_job()
    planned = record.round_chunks(round_ + 1)
    if planned:
        return planned
    if round_ >= options.max_attempts or store.is_cancelled():
        return []
    retryable = pa.array([k.value for k in ErrorKind if k.retryable], pa.string())
    retry_ids: set[str] = set()
    for chunk_id in record.round_chunks(round_):
        results = store.read_results(chunk_id)
        failed = results.filter(pc.is_in(results.column("response_error_kind"), value_set=retryable))
        retry_ids.update(str(cid) for cid in failed.column("custom_id").to_pylist())
    if not retry_ids:
        return []
    # Per model (a job with a model per row): a batch holds one model.
    by_model: dict[str | None, list[bytes]] = {}
    for plan in record.chunks:
        if plan.round == round_:
            by_model.setdefault(plan.model, []).extend(
                line
                for line in store.read_chunk_input(plan.chunk_id).splitlines(keepends=True)
                if line.strip() and str(orjson.loads(line)["custom_id"]) in retry_ids
            )
    lines = [line for group in by_model.values() for line in group]
    stopped = retry_round_within_budget(
        store,
        round_ + 1,
        len(lines),
        estimate_tokens_of(lines),
        options.max_cost_usd,
        options.prices,
        by_model=None
        if record.model_column is None
        else {
            model or record.model: (len(group), estimate_tokens_of(group))
            for model, group in by_model.items()
        },
    )
    if stopped is not None:
        if record.stopped != stopped:
            record.stopped = stopped
            store.write_job(record)
        logger.warning("job %s: %s", ref.job_id, stopped)
        return []
    first_id = max((c.chunk_id for c in record.chunks), default=-1) + 1
    chunks: list[ChunkPlanRecord] = []
    for model, group in by_model.items():
        if not group:
            continue
        limits = record.limits or BatchLimits()
        writer = ChunkWriter(store, limits, first_id + len(chunks), round_ + 1, model=model, images=True)
        try:
            writer.add(group, None)
        except BaseException:
            writer.abandon()
            raise
        chunks += writer.close()
    record.chunks.extend(chunks)
    store.write_job(record)
    logger.info(
        "job %s: %d request(s) failed in a retryable way in round %d; round %d sends them in %d batch(es)",
        ref.job_id, len(lines), round_, round_ + 1, len(chunks),
    )  # fmt: skip
    return [c.chunk_id for c in chunks]
