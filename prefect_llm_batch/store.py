"""The job state directory: one place, on any fsspec URL, that says where a job stands.

Layout under ``{state_dir}/jobs/{job_id}/``::

    job.json                   the plan (written last when preparing: its presence means "prepared")
    rows.parquet               the custom_id of every input row, in row order
    requests/chunk-00000.jsonl the batch input file of each chunk, exactly as uploaded
    chunks/chunk-00000.json    each chunk's state: intent, input file, batch id, status, history
    results/chunk-00000.parquet each chunk's parsed results (one row per custom_id)

Every file is written whole (temporary file and rename locally, one put on object stores), so a
reader never sees half a state. Each chunk has its own state file, so concurrent tasks working on
different chunks never overwrite each other's state. Nothing here ever holds an API key.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from .errors import StateError, TableError
from .table import exists, read_bytes, write_bytes_atomic

#: Environment variable naming the state directory.
STATE_DIR_ENV = "PREFECT_LLM_BATCH_STATE_DIR"
#: Bump when the layout changes incompatibly.
STATE_FORMAT = 1


def default_state_dir() -> str:
    """The state directory used when none is given: ``$PREFECT_LLM_BATCH_STATE_DIR``, else
    ``$XDG_STATE_HOME/prefect-llm-batch`` (``~/.local/state/prefect-llm-batch``).

    A scheduled run on fresh infrastructure needs a shared one (``s3://...``) to resume a job.
    """
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return configured
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "prefect-llm-batch")


class ChunkPlanRecord(BaseModel):
    """One planned batch: a slice of the job's unique requests."""

    chunk_id: int
    start: int
    stop: int
    requests: int
    bytes: int


class JobRecord(BaseModel):
    """What ``job.json`` holds: the plan of a prepared job (no secrets)."""

    format: int = STATE_FORMAT
    job_id: str
    created_at: float
    source: str
    source_fingerprint: str
    limit: int | None
    provider: str
    base_url: str
    endpoint: str
    model: str
    template_sha256: str
    response_schema: dict[str, Any] | None = None
    column_prefix: str = ""
    rows: int
    unique_requests: int
    chunks: list[ChunkPlanRecord]


class ChunkState(BaseModel):
    """The state of one chunk (what ``chunks/chunk-NNNNN.json`` holds)."""

    chunk_id: int
    attempt: int = 1
    input_file_id: str | None = None
    intent_at: float | None = None
    batch_id: str | None = None
    status: str | None = None
    raw_status: str | None = None
    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    error: str | None = None
    error_code: str | None = None
    collected: bool = False
    history: list[dict[str, Any]] = Field(default_factory=list)
    updated_at: float | None = None


class JobStore:
    """Reads and writes one job's state directory.

    Args:
        state_dir: The state directory (a local path or any fsspec URL).
        job_id: The job.
        storage_options: fsspec options for the state directory.

    Examples:
        >>> store = JobStore("memory://doc-state", "job1")
        >>> store.write_chunk(ChunkState(chunk_id=0, batch_id="batch_1"))
        >>> store.read_chunk(0).batch_id
        'batch_1'
    """

    def __init__(self, state_dir: str, job_id: str, storage_options: dict[str, Any] | None = None) -> None:
        self.state_dir = state_dir.rstrip("/")
        self.job_id = job_id
        self.root = f"{self.state_dir}/jobs/{job_id}"
        self._options = storage_options

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _write(self, path: str, data: bytes) -> None:
        write_bytes_atomic(path, data, storage_options=self._options)

    def _read(self, path: str) -> bytes:
        return read_bytes(path, storage_options=self._options)

    # job.json ---------------------------------------------------------------------------

    def is_prepared(self) -> bool:
        """True once ``job.json`` exists."""
        return exists(self._path("job.json"), storage_options=self._options)

    def write_job(self, record: JobRecord) -> None:
        """Write ``job.json``."""
        self._write(self._path("job.json"), record.model_dump_json(indent=1).encode())

    def read_job(self) -> JobRecord:
        """Read ``job.json``.

        Raises:
            StateError: It is missing, unreadable or of another format version.
        """
        try:
            record = JobRecord.model_validate_json(self._read(self._path("job.json")))
        except (FileNotFoundError, TableError) as exc:
            raise StateError(f"job {self.job_id} is not prepared in {self.state_dir}") from exc
        except ValueError as exc:
            raise StateError(
                f"the state of job {self.job_id} in {self.state_dir} is unreadable: {exc}"
            ) from exc
        if record.format != STATE_FORMAT:
            raise StateError(
                f"job {self.job_id} was written by state format {record.format}, not {STATE_FORMAT}"
            )
        return record

    # rows and requests ------------------------------------------------------------------

    def write_row_ids(self, row_ids: list[str]) -> None:
        """Write the custom_id of every input row."""
        self._write(
            self._path("rows.parquet"),
            _parquet_bytes(pa.table({"custom_id": pa.array(row_ids, pa.string())})),
        )

    def read_row_ids(self) -> pa.Array[Any]:
        """Read the custom_id of every input row."""
        table = pq.read_table(io.BytesIO(self._read(self._path("rows.parquet"))))
        return table.column("custom_id").combine_chunks()

    def write_chunk_input(self, chunk_id: int, data: bytes) -> None:
        """Write a chunk's batch input file."""
        self._write(self._path("requests", f"chunk-{chunk_id:05d}.jsonl"), data)

    def read_chunk_input(self, chunk_id: int) -> bytes:
        """Read a chunk's batch input file."""
        return self._read(self._path("requests", f"chunk-{chunk_id:05d}.jsonl"))

    # chunk states -----------------------------------------------------------------------

    def _chunk_path(self, chunk_id: int) -> str:
        return self._path("chunks", f"chunk-{chunk_id:05d}.json")

    def has_chunk(self, chunk_id: int) -> bool:
        """True when the chunk has a state file."""
        return exists(self._chunk_path(chunk_id), storage_options=self._options)

    def write_chunk(self, state: ChunkState) -> None:
        """Write one chunk's state (stamped with the time)."""
        state.updated_at = time.time()
        self._write(self._chunk_path(state.chunk_id), state.model_dump_json(indent=1).encode())

    def read_chunk(self, chunk_id: int) -> ChunkState:
        """Read one chunk's state."""
        try:
            return ChunkState.model_validate_json(self._read(self._chunk_path(chunk_id)))
        except (FileNotFoundError, TableError) as exc:
            raise StateError(f"chunk {chunk_id} of job {self.job_id} has no state") from exc

    # results ----------------------------------------------------------------------------

    def write_results(self, chunk_id: int, table: pa.Table) -> None:
        """Write one chunk's parsed results."""
        self._write(self._path("results", f"chunk-{chunk_id:05d}.parquet"), _parquet_bytes(table))

    def read_results(self, chunk_id: int) -> pa.Table:
        """Read one chunk's parsed results."""
        return pq.read_table(io.BytesIO(self._read(self._path("results", f"chunk-{chunk_id:05d}.parquet"))))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())
