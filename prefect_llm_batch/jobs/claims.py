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

import numpy as np
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
from .chunks import estimate_tokens_of
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
    shard has are *borrowed*: written, with the number of the shard that sends them, to the
    shard's ``borrowed.parquet`` and taken out of its batch files (before anything is sent), so
    each key is sent once per job. Run before the first submit of any shard; running it again
    finds the same claims (a shard's borrowed ids are recomputed from its rows, and its batch
    files rewritten only while they still hold them). Memory holds every distinct key of the job
    (about 48 bytes each), in this process; when keys repeat across shards, a second pass over
    the shards' row ids finds which shard sends each borrowed key.
    """
    seen = DigestSet()
    borrowed: list[pa.Array[Any]] = []
    for ref in refs:
        ids = _unique_ids(JobStore(ref.state_dir, ref.job_id, storage_options))
        digests = decode_custom_ids(ids, what="row")
        fresh = np.zeros(len(ids), bool)
        fresh[seen.add(digests)] = True
        borrowed.append(ids.filter(pa.array(~fresh)))
    seen.clear()
    claims = Claims(borrowed=[len(b) for b in borrowed])
    if not claims.total:
        return claims
    owners = _owners(refs, borrowed, storage_options)
    owner_ids = owners.column("custom_id").combine_chunks()
    owner_numbers = owners.column("owner").combine_chunks()
    for ref, ids in zip(refs, borrowed, strict=True):
        if len(ids):
            owner = pc.take(owner_numbers, pc.index_in(ids, value_set=owner_ids))
            _take_out(JobStore(ref.state_dir, ref.job_id, storage_options), ids, owner)
    logger.info(
        "%d request(s) repeated across shards are sent once, by the first shard that has them",
        claims.total,
    )
    return claims


def _owners(
    refs: list[JobRef], borrowed: list[pa.Array[Any]], storage_options: dict[str, Any] | None
) -> pa.Table:
    """Which shard sends each borrowed id: the first one whose own (not borrowed) ids hold it."""
    wanted = pc.unique(pa.chunked_array(borrowed, pa.string()).combine_chunks())
    found: list[pa.Table] = []
    for number, (ref, own_borrowed) in enumerate(zip(refs, borrowed, strict=True)):
        ids = _unique_ids(JobStore(ref.state_dir, ref.job_id, storage_options))
        ids = ids.filter(pc.invert(pc.is_in(ids, value_set=own_borrowed)))
        lent = ids.filter(pc.is_in(ids, value_set=wanted))
        if len(lent):
            found.append(pa.table({"custom_id": lent, "owner": pa.array([number] * len(lent), pa.int32())}))
    return (
        pa.concat_tables(found) if found else pa.table({"custom_id": [], "owner": pa.array([], pa.int32())})
    )


def _take_out(store: JobStore, borrowed: pa.Array[Any], owner: pa.Array[Any]) -> None:
    """Record a shard's borrowed ids and their owners, then take them out of its first-round
    batch files."""
    table = pa.table({"custom_id": borrowed.cast(pa.string()), "owner": owner})
    path = f"{store.root}/{BORROWED_IDS}"
    if not exists(path, storage_options=store.options):
        write_bytes_atomic(path, parquet_bytes(table), storage_options=store.options, private=True)
    record = store.read_job()
    if any(
        store.read_chunk(c.chunk_id).intent_at or store.read_chunk(c.chunk_id).batch_id for c in record.chunks
    ):
        return  # already sent (a job claimed and submitted before): the batch files stay as sent
    value_set = table.column("custom_id").combine_chunks()
    kept_chunks = []
    changed = False
    for plan in record.chunks:
        lines: list[bytes] | None = None
        ids = store.read_chunk_ids(plan.chunk_id)
        if ids is None:  # no ids file (state from before them, or damaged): the batch file has them
            lines = _lines(store.read_chunk_input(plan.chunk_id))
            ids = [str(orjson.loads(line)["custom_id"]) for line in lines]
        id_array = pa.array(ids, pa.string())
        taken = pc.is_in(id_array, value_set=value_set)
        if not pc.any(taken).as_py():
            kept_chunks.append(plan)
            continue
        if lines is None:
            lines = _lines(store.read_chunk_input(plan.chunk_id))
        if len(lines) != len(ids):
            raise StateError(
                f"chunk {plan.chunk_id} of job {store.job_id}: its ids file does not match its batch file"
            )
        keep = np.asarray(pc.invert(taken))  # the ids file lists the batch file's lines in order
        kept = [line for line, wanted in zip(lines, keep.tolist(), strict=True) if wanted]
        changed = True
        if not kept:
            continue
        data = b"".join(kept)
        store.write_chunk_input(plan.chunk_id, data)
        store.write_chunk_ids(plan.chunk_id, id_array.filter(pa.array(keep)))
        kept_chunks.append(
            plan.model_copy(
                update={
                    "requests": len(kept),
                    "bytes": len(data),
                    "est_tokens": estimate_tokens_of(kept, data),
                }
            )
        )
    if changed:
        record.chunks = kept_chunks
        store.write_job(record)


def _lines(data: bytes) -> list[bytes]:
    """The request lines of a batch file (newline kept; blank lines dropped)."""
    return [line for line in data.splitlines(keepends=True) if line.strip()]


def read_borrowed_ids(store: JobStore) -> pa.Table | None:
    """The ids a shard borrows and the shard that sends each (``custom_id``, ``owner``); None: none."""
    path = f"{store.root}/{BORROWED_IDS}"
    if not exists(path, storage_options=store.options):
        return None
    return pq.read_table(pa.BufferReader(read_bytes(path, storage_options=store.options)))


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
    if wanted is None or not wanted.num_rows:
        return 0
    found: list[pa.Table] = []
    owners = wanted.column("owner").combine_chunks()
    for number in [int(n) for n in pc.unique(owners).to_pylist() if n is not None]:
        ids = (
            wanted.column("custom_id")
            .filter(pc.equal(owners, pa.scalar(number, pa.int32())))
            .combine_chunks()
        )
        results, _ = latest_results(
            JobStore(earlier[number].state_dir, earlier[number].job_id, storage_options)
        )
        hit = results.filter(pc.is_in(results.column("custom_id"), value_set=ids))
        if hit.num_rows < len(ids):
            raise StateError(
                f"shard job {ref.job_id}: shard {number} holds {hit.num_rows} of the {len(ids)} answers it "
                "lends; run the job again"
            )
        found.append(hit)
    table = pa.concat_tables(found)
    store.write_borrowed_results(table)
    return table.num_rows
