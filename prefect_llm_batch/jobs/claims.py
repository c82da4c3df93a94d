"""One request key, sent once per job: shards claim their keys in order, later shards borrow.

Shards are planned independently, so a prompt repeated in two shards is a request of both. Before
anything is sent, :func:`claim_shared_requests` gives every key to the first shard that has it:
later shards record it as *borrowed* and take it out of their batch files. Once the owners are
collected, :func:`fill_borrowed` copies the answers into each borrowing shard, whose output then
reads them like its own (:func:`~prefect_llm_batch.jobs.output.latest_results`).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from ..errors import StateError
from ..files import exists, read_bytes, write_bytes_atomic
from ..keys import DigestSet, decode_custom_ids
from ..store import JobStore
from ..table import parquet_bytes
from .chunks import estimate_tokens
from .identity import JobRef
from .output import latest_results

logger = logging.getLogger("prefect_llm_batch")

#: The ids a shard borrows (sent by earlier shards), in its folder.
BORROWED_IDS = "borrowed.parquet"


class Claims(BaseModel):
    """What :func:`claim_shared_requests` found: requests each shard borrows from earlier ones."""

    borrowed: list[int]

    @property
    def total(self) -> int:
        """Requests borrowed in all (sent once, by an earlier shard)."""
        return sum(self.borrowed)


def _unique_ids(store: JobStore) -> pa.Array[Any]:
    """The distinct request ids of a shard's rows that its cached answers do not hold."""
    ids = pc.unique(store.read_row_ids())
    cached = store.read_cached_results(["custom_id"])
    if cached is not None and cached.num_rows:
        ids = ids.filter(pc.invert(pc.is_in(ids, value_set=cached.column("custom_id").combine_chunks())))
    return ids


def claim_shared_requests(refs: list[JobRef], *, storage_options: dict[str, Any] | None = None) -> Claims:
    """Give every request key to the first shard that has it; later shards borrow its answer.

    In shard order: a shard's distinct request ids (not answered by the cache) that an earlier
    shard has are *borrowed*: written to the shard's ``borrowed.parquet`` and taken out of its
    batch files (before anything is sent), so each key is sent once per job. Run before the first
    submit of any shard; running it again finds the same claims (a shard's borrowed ids are
    recomputed from its rows, and its batch files rewritten only while they still hold them).
    Memory holds every distinct key of the job (about 48 bytes each), in this process.
    """
    seen = DigestSet()
    borrowed_counts: list[int] = []
    for ref in refs:
        store = JobStore(ref.state_dir, ref.job_id, storage_options)
        ids = _unique_ids(store)
        digests = decode_custom_ids(ids, what="row")
        new = seen.add([row.tobytes() for row in digests])
        keep = pa.array(_mask(len(ids), new))
        borrowed = ids.filter(pc.invert(keep))
        borrowed_counts.append(len(borrowed))
        if len(borrowed):
            _take_out(store, borrowed)
    claims = Claims(borrowed=borrowed_counts)
    if claims.total:
        logger.info(
            "%d request(s) repeated across shards are sent once, by the first shard that has them",
            claims.total,
        )
    return claims


def _mask(n: int, positions: Any) -> list[bool]:
    mask = [False] * n
    for position in positions.tolist():
        mask[position] = True
    return mask


def _take_out(store: JobStore, borrowed: pa.Array[Any]) -> None:
    """Record a shard's borrowed ids, then take them out of its first-round batch files."""
    table = pa.table({"custom_id": borrowed.cast(pa.string())})
    path = f"{store.root}/{BORROWED_IDS}"
    if not exists(path, storage_options=store.options):
        write_bytes_atomic(path, parquet_bytes(table), storage_options=store.options, private=True)
    record = store.read_job()
    if any(
        store.read_chunk(c.chunk_id).intent_at or store.read_chunk(c.chunk_id).batch_id for c in record.chunks
    ):
        return  # already sent (a job claimed and submitted before): the batch files stay as sent
    value_set = table.column("custom_id").combine_chunks()
    taken = set(value_set.to_pylist())
    kept_chunks = []
    changed = False
    for plan in record.chunks:
        ids = store.read_chunk_ids(plan.chunk_id)
        if ids is not None and not pc.any(pc.is_in(pa.array(ids, pa.string()), value_set=value_set)).as_py():
            kept_chunks.append(plan)
            continue
        lines = [
            line
            for line in store.read_chunk_input(plan.chunk_id).splitlines(keepends=True)
            if line.strip() and str(orjson.loads(line)["custom_id"]) not in taken
        ]
        changed = True
        if not lines:
            continue
        data = b"".join(lines)
        store.write_chunk_input(plan.chunk_id, data)
        store.write_chunk_ids(
            plan.chunk_id, pa.array([str(orjson.loads(line)["custom_id"]) for line in lines])
        )
        kept_chunks.append(
            plan.model_copy(
                update={
                    "requests": len(lines),
                    "bytes": len(data),
                    "est_tokens": sum(estimate_tokens(x) for x in lines),
                }
            )
        )
    if changed:
        record.chunks = kept_chunks
        store.write_job(record)


def read_borrowed_ids(store: JobStore) -> pa.Array[Any] | None:
    """The ids a shard borrows (None: it borrows none)."""
    path = f"{store.root}/{BORROWED_IDS}"
    if not exists(path, storage_options=store.options):
        return None
    return (
        pq.read_table(pa.BufferReader(read_bytes(path, storage_options=store.options)))
        .column("custom_id")
        .combine_chunks()
    )


def fill_borrowed(
    ref: JobRef, earlier: list[JobRef], *, storage_options: dict[str, Any] | None = None
) -> int:
    """Copy the answers a shard borrows from the earlier shards that sent them (idempotent).

    Returns:
        How many answers were copied.

    Raises:
        StateError: An earlier shard is not collected, or holds no answer for a borrowed id.
    """
    store = JobStore(ref.state_dir, ref.job_id, storage_options)
    wanted = read_borrowed_ids(store)
    if wanted is None or not len(wanted):
        return 0
    found: list[pa.Table] = []
    for owner in earlier:
        if not len(wanted):
            break
        results, _ = latest_results(JobStore(owner.state_dir, owner.job_id, storage_options))
        hit = results.filter(pc.is_in(results.column("custom_id"), value_set=wanted))
        if hit.num_rows:
            found.append(hit)
            wanted = wanted.filter(
                pc.invert(pc.is_in(wanted, value_set=hit.column("custom_id").combine_chunks()))
            )
    if len(wanted):
        raise StateError(
            f"shard job {ref.job_id}: {len(wanted)} borrowed answer(s) are in no earlier shard; "
            "run the job again"
        )
    table = pa.concat_tables(found)
    store.write_borrowed_results(table)
    return table.num_rows
