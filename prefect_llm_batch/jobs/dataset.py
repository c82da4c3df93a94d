"""The output of a sharded job: a dataset of Parquet parts, one per shard, and a manifest written last.

Parts are named in source order (``part-00000.parquet``...), each written atomically by its
shard's write step; ``_manifest.json`` (rows, shards, job id, schema) is written last, so its
presence means the dataset is whole. :func:`concatenate_parts` streams the parts into one file
instead, for jobs that fit one machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StateError
from ..files import write_bytes_atomic
from ..store import JobStore
from .claims import fill_borrowed
from .identity import JobRef
from .output import JobSummary, assemble

if TYPE_CHECKING:
    from .sharded import ShardedJob

#: The manifest of a sharded output, written last.
MANIFEST = "_manifest.json"


def part_name(index: int) -> str:
    """The file name of shard ``index``'s part of the output dataset.

    Examples:
        >>> part_name(12)
        'part-00012.parquet'
    """
    return f"part-{index:05d}.parquet"


def write_shard(
    ref: JobRef,
    index: int,
    earlier: list[JobRef],
    output: str,
    *,
    overwrite: bool = False,
    parser: Callable[[str], Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> JobSummary:
    """Fill a shard's borrowed answers and write its rows as one part of the output dataset."""
    store = JobStore(ref.state_dir, ref.job_id, storage_options)
    with store.lease():
        fill_borrowed(ref, earlier, storage_options=storage_options)
        return assemble(
            ref,
            output=f"{output.rstrip('/')}/{part_name(index)}",
            overwrite=overwrite,
            parser=parser,
            storage_options=storage_options,
        )


def write_manifest(
    output: str,
    job: ShardedJob,
    summaries: list[JobSummary],
    *,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the output dataset's manifest, last: its parts, rows, job id and schema.

    Raises:
        StateError: A part is missing.
    """
    from ..object_stores import filesystem

    parts: list[dict[str, Any]] = []
    schema: pa.Schema | None = None
    fs, root = filesystem(output, storage_options)
    for shard, summary in zip(job.plan.shards, summaries, strict=True):
        name = part_name(shard.index)
        path = f"{root.rstrip('/')}/{name}"
        if not fs.exists(path):
            raise StateError(f"the part {name} of {output} is missing; run the job again")
        if schema is None:
            with fs.open(path, "rb") as handle:
                schema = pq.ParquetFile(handle).schema_arrow
        parts.append({"path": name, "rows": summary.rows, "shard": shard.index, "job_id": summary.job_id})
    manifest = {
        "job_id": job.job_id,
        "source": job.source,
        "rows": sum(p["rows"] for p in parts),
        "shards": len(parts),
        "parts": parts,
        "schema": [{"name": f.name, "type": str(f.type)} for f in (schema or pa.schema([]))],
    }
    write_bytes_atomic(
        f"{output.rstrip('/')}/{MANIFEST}", orjson.dumps(manifest, option=orjson.OPT_INDENT_2),
        storage_options=storage_options,
    )  # fmt: skip
    return manifest


def combine(job: ShardedJob, output: str, summaries: list[JobSummary]) -> JobSummary:
    """One summary of the whole sharded job, from its shards'."""
    errors: dict[str, int] = {}
    for s in summaries:
        for kind, count in s.errors_by_kind.items():
            errors[kind] = errors.get(kind, 0) + count
    first = summaries[0]
    costs = [s.cost_usd for s in summaries]
    return JobSummary(
        job_id=job.job_id,
        output=output,
        state_dir=first.state_dir,
        provider=first.provider,
        model=first.model,
        rows=sum(s.rows for s in summaries),
        unique_requests=sum(s.unique_requests for s in summaries),
        cached_requests=sum(s.cached_requests for s in summaries),
        ok_rows=sum(s.ok_rows for s in summaries),
        error_rows=sum(s.error_rows for s in summaries),
        errors_by_kind=dict(sorted(errors.items())),
        batch_ids=[b for s in summaries for b in s.batch_ids],
        rounds=max(s.rounds for s in summaries),
        input_tokens=sum(s.input_tokens for s in summaries),
        output_tokens=sum(s.output_tokens for s in summaries),
        cost_usd=None if any(c is None for c in costs) else sum(c or 0.0 for c in costs),
        unreadable_lines=sum(s.unreadable_lines for s in summaries),
        stopped="; ".join(f"shard {i}: {s.stopped}" for i, s in enumerate(summaries) if s.stopped),
    )


def check_output_dataset(
    output: str, *, overwrite: bool, single_file: bool, storage_options: dict[str, Any] | None = None
) -> None:
    """Refuse an output that exists (unless ``overwrite``), before anything is read or sent.

    A dataset directory without a manifest (a run interrupted while writing its parts) is taken
    as this job's and written again.

    Raises:
        TableError: The output exists.
    """
    from ..errors import TableError
    from ..object_stores import filesystem, shown_path

    fs, path = filesystem(output, storage_options)
    if overwrite or not fs.exists(path):
        return
    if single_file or not fs.isdir(path) or fs.exists(f"{path.rstrip('/')}/{MANIFEST}"):
        raise TableError(f"the output {shown_path(output)} exists; pass overwrite to replace it")


def concatenate_parts(
    folder: str,
    names: list[str],
    output: str,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """Write the parts, in order, as one Parquet file (streamed: one row group at a time).

    Returns:
        The rows written.
    """
    from ..files import write_parquet_batches_atomic
    from ..object_stores import filesystem

    fs, root = filesystem(folder, storage_options)
    paths = [f"{root.rstrip('/')}/{name}" for name in names]
    with fs.open(paths[0], "rb") as handle:
        schema = pq.ParquetFile(handle).schema_arrow

    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            with fs.open(path, "rb") as handle:
                yield from pq.ParquetFile(handle).iter_batches()

    return write_parquet_batches_atomic(
        batches(), output, schema=schema, overwrite=overwrite, storage_options=storage_options
    )
