"""The job state directory: one place, on any fsspec URL, that says where a job stands.

Layout under ``{state_dir}/jobs/{job_id}/``::

    job.json                   the plan (written last when preparing: its presence means "prepared")
    rows.parquet               the custom_id of every input row, in row order
    requests/chunk-00000.jsonl the batch input file of each chunk, exactly as uploaded
    requests/chunk-00000.ids.parquet its requests' custom_ids, in order (older state: a packed
                               ``chunk-00000.ids``, still read)
    chunks/chunk-00000.json    each chunk's state: intent, input file, batch id, status, history
    results/chunk-00000.parquet each chunk's parsed results (one row per custom_id)
    results/cached.parquet     answers taken from the response cache when the job was prepared
    lease.json                 who is running the job now (one runner per job)
    lease.json.lock            an empty file locked (flock) while a local runner takes the lease
    cancel.json                present while a user's cancel applies to the running job

A damaged job file is a :class:`~prefect_llm_batch.errors.StateError` naming it.

The rest of a state directory has its own homes: the response cache (``cache/``) in
:mod:`~prefect_llm_batch.cache`, the lease (``lease.json``) in :mod:`~prefect_llm_batch.lease`,
the listing and deleting of jobs and the records of detached jobs (``pending/``) and flow runs
(``runs/``) in :mod:`~prefect_llm_batch.registry`. This module holds one job's state
(:class:`JobStore`, :class:`JobRecord`, :class:`ChunkState`) and what every part of the state
directory shares: where it is (:func:`default_state_dir`), owner-only modes
(:func:`secure_state_dir`) and telling damage from other failures (:func:`is_damage`).

Every file is written whole (temporary file and rename locally, one put on object stores), so a
reader never sees half a state. Each chunk has its own state file, so concurrent tasks working on
different chunks never overwrite each other's state. Nothing here ever holds an API key. On a
local filesystem the state is owner-only (files 0600, the directories it creates 0700, whatever
the umask): it holds prompts and answers. A state directory made earlier with looser modes is
closed on the first write of each process (:func:`secure_state_dir`): its ``jobs/``, ``cache/``,
``pending/`` and ``runs/`` folders become 0700, and so does the directory itself when it holds
nothing else; files already in them keep their modes (not changed one by one), but nobody else
can reach them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from .errors import StateError, TableError
from .files import exists, read_bytes, write_bytes_atomic, write_parquet_batches_atomic
from .keys import split_fixed_width
from .lease import LEASE_TTL_S, Lease, check_held
from .local_files import drop_behind
from .object_stores import filesystem
from .results import LATER_FIELDS, with_later_columns
from .shards import Shard
from .spec import BatchLimits
from .table import parquet_bytes

#: Schema of a job's ``rows.parquet``: the request key of every input row, in row order.
ROW_IDS_SCHEMA = pa.schema([pa.field("custom_id", pa.string())])


logger = logging.getLogger("prefect_llm_batch")

#: Environment variable naming the state directory.
STATE_DIR_ENV = "PREFECT_LLM_BATCH_STATE_DIR"
#: Bump when the layout changes incompatibly.
STATE_FORMAT = 2


#: The folders the store makes in a state directory.
STATE_FOLDERS = ("cache", "jobs", "pending", "runs")
_SECURED: set[str] = set()  # the local state directories already secured by this process


def secure_state_dir(state_dir: str, storage_options: dict[str, Any] | None = None) -> None:
    """Make an existing local state directory owner-only (0700), once per process, before the
    store first writes into it: its folders (``jobs/``, ``cache/``, ``pending/``, ``runs/``), and
    the directory itself when it holds nothing else (a directory shared with other files is left
    as it is; its store folders still close it). Not recursive: older files keep their modes, but
    nobody else can reach them through an owner-only folder. Object stores have no such modes.

    Examples:
        >>> import os, stat, tempfile
        >>> root = tempfile.mkdtemp()
        >>> os.mkdir(f"{root}/jobs", 0o755); os.chmod(f"{root}/jobs", 0o755)
        >>> secure_state_dir(root)
        >>> oct(stat.S_IMODE(os.stat(f"{root}/jobs").st_mode))
        '0o700'
    """
    fs, local = filesystem(state_dir, storage_options)
    if "file" not in fs.protocol:
        return
    root = os.path.realpath(local)
    if root in _SECURED:
        return
    try:
        entries = set(os.listdir(root))
    except OSError:  # not there yet: what the store creates is owner-only
        return
    _SECURED.add(root)
    folders = [os.path.join(root, name) for name in STATE_FOLDERS if name in entries]
    for path in ([root] if entries <= set(STATE_FOLDERS) else []) + folders:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                os.chmod(path, 0o700)
                logger.info("made %s owner-only (it was %o): the state holds prompts and answers", path, mode)
        except OSError as exc:  # not ours (another user's directory): leave it
            logger.warning("could not make %s owner-only: %s", path, exc)


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
    """One planned batch: ``requests`` requests of retry round ``round`` (1 = first sending)."""

    chunk_id: int
    requests: int
    bytes: int
    round: int = 1
    est_tokens: int = 0
    #: The model every request of the batch goes to, for a job with a model per row
    #: (``JobSpec.model_column``); None: the job's one model.
    model: str | None = None


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
    params: dict[str, Any] = Field(default_factory=dict)
    rows: int
    unique_requests: int
    cached_requests: int = 0
    chunks: list[ChunkPlanRecord]
    limits: BatchLimits | None = None
    invalid_utf8: Literal["error", "replace"] = "error"  # how the source was read (and is read again)
    shard: Shard | None = None  # a shard of a sharded job: the part and row groups it reads
    #: The column naming each row's model (``JobSpec.model_column``; ``model`` then lists the
    #: models, and each chunk's plan has its own); None: one model for the job.
    model_column: str | None = None
    #: Why a retry round was not sent (``max_cost_usd``); None when every planned round was.
    stopped: str | None = None

    def round_chunks(self, round_: int) -> list[int]:
        """Ids of the chunks of one round."""
        return [c.chunk_id for c in self.chunks if c.round == round_]

    @property
    def rounds(self) -> int:
        """The highest round planned so far (0 when nothing had to be sent)."""
        return max((c.round for c in self.chunks), default=0)


class ChunkState(BaseModel):
    """The state of one chunk (what ``chunks/chunk-NNNNN.json`` holds)."""

    chunk_id: int
    attempt: int = 1
    cancelled_by: str | None = None
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
    #: Result lines of the batch that could not be read (not JSON, or no ``custom_id``).
    unreadable_lines: int = 0
    history: list[dict[str, Any]] = Field(default_factory=list)
    updated_at: float | None = None
    #: ``batch_id`` was adopted after an ambiguous create without proof that it is this chunk's
    #: (a provider whose batches carry no metadata): the job never cancels it, and it counts as
    #: the chunk's only once its results carry the chunk's request ids.
    provisional: bool = False
    #: Leases on a shared provider budget held for the running batch (see ``jobs.budget``).
    budget_leases: list[str] = Field(default_factory=list)
    #: The batch's ``usage`` as its provider reported it (empty when it reports none).
    usage: dict[str, Any] = Field(default_factory=dict)


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

    def _write(
        self, path: str, data: bytes | Sequence[bytes | memoryview], *, drop_cache: bool = False
    ) -> None:
        secure_state_dir(self.state_dir, self._options)
        write_bytes_atomic(path, data, storage_options=self._options, drop_cache=drop_cache, private=True)

    def _read(self, path: str, *, drop_cache: bool = False) -> bytes:
        return read_bytes(path, storage_options=self._options, drop_cache=drop_cache)

    def damaged(self, path: str, exc: BaseException) -> StateError:
        """The error for a state file of this job that cannot be decoded: it names the file and
        how to get going again (delete the job: the response cache keeps its answers)."""
        return StateError(
            f"the file {path} of job {self.job_id} is damaged ({short_error(exc)}); delete the job with "
            f"`prefect-llm-batch jobs clean {self.job_id} --state-dir {self.state_dir}` (or "
            f"`clean_jobs(..., job_ids=[{self.job_id!r}])`) and run it again: answers already in the "
            "response cache are not paid for twice"
        )

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
            raise self.damaged(self._path("job.json"), exc) from exc
        if record.format != STATE_FORMAT:
            raise StateError(
                f"job {self.job_id} was written by state format {record.format}, not {STATE_FORMAT}"
            )
        return record

    # rows and requests ------------------------------------------------------------------

    def write_row_ids(self, row_ids: list[str] | Iterable[pa.Array[Any]]) -> int:
        """Write the custom_id of every input row (a list, or arrays of them streamed in order).

        Returns:
            The number of rows written.
        """
        if isinstance(row_ids, list):
            row_ids = [pa.array(row_ids, pa.string())]
        batches = (pa.record_batch([ids], schema=ROW_IDS_SCHEMA) for ids in row_ids)
        secure_state_dir(self.state_dir, self._options)
        return write_parquet_batches_atomic(
            batches,
            self._path("rows.parquet"),
            schema=ROW_IDS_SCHEMA,
            overwrite=True,
            storage_options=self._options,
            # Request keys are random: a dictionary never pays, and trying one costs time.
            writer_options={"use_dictionary": False},
            drop_cache=drop_behind(),  # read back once, a slice at a time, when the output is written
            private=True,
        )

    def read_row_ids(self) -> pa.Array[Any]:
        """Read the custom_id of every input row."""
        fs, path = filesystem(self._path("rows.parquet"), self._options)
        try:
            with fs.open(path, "rb") as handle:  # read as it decodes, not whole into memory first
                table = pq.read_table(handle)
        except FileNotFoundError as exc:
            raise StateError(f"job {self.job_id} has no row ids in {self.state_dir}") from exc
        except Exception as exc:
            if is_damage(exc):
                raise self.damaged(self._path("rows.parquet"), exc) from exc
            raise
        return table.column("custom_id").combine_chunks()

    def iter_row_ids(self, batch_rows: int = 65_536) -> Iterator[pa.Array[Any]]:
        """Read the custom_id of every input row, in order, ``batch_rows`` at a time.

        Raises:
            StateError: The job has no row ids.
        """
        fs, path = filesystem(self._path("rows.parquet"), self._options)
        try:
            handle = fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise StateError(f"job {self.job_id} has no row ids in {self.state_dir}") from exc
        try:
            with handle, pq.ParquetFile(handle) as file:
                for batch in file.iter_batches(batch_size=batch_rows, columns=["custom_id"]):
                    yield batch.column(0)
        except Exception as exc:
            if is_damage(exc):
                raise self.damaged(self._path("rows.parquet"), exc) from exc
            raise

    def write_chunk_input(self, chunk_id: int, data: bytes | Sequence[bytes | memoryview]) -> None:
        """Write a chunk's batch input file, whole or as its pieces in order (with
        :func:`~prefect_llm_batch.local_files.drop_behind` on, out of the page cache once synced: it is
        read once, to be uploaded, so a job holds the cache of the files being written, not all)."""
        self._write(self._path("requests", f"chunk-{chunk_id:05d}.jsonl"), data, drop_cache=drop_behind())

    def write_chunk_ids(self, chunk_id: int, ids: pa.Array[Any]) -> None:
        """Write the ``custom_id`` of every request of a chunk's batch file, in its order: collecting
        the batch reads these, not the batch file (Parquet, one ``custom_id`` column).

        Not synced: a copy of what the batch file holds, so after a crash a missing or damaged file
        only means the batch file is read instead (:meth:`read_chunk_ids` checks it).
        """
        if ids.null_count:  # (never from a batch file: every line has its id)
            return
        table = pa.Table.from_arrays([ids.cast(pa.string())], schema=ROW_IDS_SCHEMA)
        path = self._path("requests", f"chunk-{chunk_id:05d}.ids.parquet")
        secure_state_dir(self.state_dir, self._options)
        write_bytes_atomic(
            path, parquet_bytes(table), storage_options=self._options, durable=False, private=True
        )

    def read_chunk_ids(self, chunk_id: int) -> list[str] | None:
        """The ids :meth:`write_chunk_ids` wrote, or None when there is no such file or it is
        damaged (state from before these files, a crash): the caller reads the batch file then.

        State written before the ids files were Parquet has ``chunk-NNNNN.ids`` files instead
        ("count width\\n", then the ids packed end to end): those are read too.
        """
        path = self._path("requests", f"chunk-{chunk_id:05d}.ids.parquet")
        if exists(path, storage_options=self._options):
            data = self._read(path)
            try:  # (decoding bytes in memory: any error is damage)
                ids = pq.read_table(io.BytesIO(data)).column("custom_id")
            except (KeyError, pa.ArrowException, OSError):
                self._warn_ids_damaged(chunk_id)
                return None
            return cast("list[str]", ids.to_pylist())  # (no nulls: see write_chunk_ids)
        legacy = self._path("requests", f"chunk-{chunk_id:05d}.ids")
        if not exists(legacy, storage_options=self._options):
            return None
        header, _, packed = self._read(legacy).partition(b"\n")
        try:
            count, width = (int(field) for field in header.split())
        except ValueError:
            count = width = 0
        if width < 1 or len(packed) != count * width or not packed.isascii():
            self._warn_ids_damaged(chunk_id)
            return None
        return split_fixed_width(packed, width)

    def _warn_ids_damaged(self, chunk_id: int) -> None:
        logger.warning(
            "chunk %d of job %s: its ids file is not whole; reading its batch file instead",
            chunk_id, self.job_id,
        )  # fmt: skip

    def read_chunk_input(self, chunk_id: int) -> bytes:
        """Read a chunk's batch input file (its pages then leave the page cache, with drop-behind on)."""
        return self._read(self._path("requests", f"chunk-{chunk_id:05d}.jsonl"), drop_cache=drop_behind())

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
        except ValueError as exc:
            raise self.damaged(self._chunk_path(chunk_id), exc) from exc

    # results ----------------------------------------------------------------------------

    def results_path(self, chunk_id: int) -> str:
        """Where one chunk's parsed results are (see :meth:`write_results`)."""
        return self._path("results", f"chunk-{chunk_id:05d}.parquet")

    def write_results(self, chunk_id: int, table: pa.Table) -> bytes:
        """Write one chunk's parsed results; returns the file's bytes (see
        :meth:`~prefect_llm_batch.cache.ResponseCache.add_results`)."""
        data = parquet_bytes(table)
        self._write(self.results_path(chunk_id), data, drop_cache=drop_behind())
        return data

    def read_results(self, chunk_id: int, columns: list[str] | None = None) -> pa.Table:
        """Read one chunk's parsed results (only ``columns`` when given, reading only theirs)."""
        return self._read_parquet(self.results_path(chunk_id), columns)

    def _read_parquet(self, path: str, columns: list[str] | None) -> pa.Table:
        try:
            return self._read_parquet_file(path, columns)
        except Exception as exc:
            if is_damage(exc):
                raise self.damaged(path, exc) from exc
            raise

    def _read_parquet_file(self, path: str, columns: list[str] | None) -> pa.Table:
        if columns is None:
            return with_later_columns(pq.read_table(io.BytesIO(self._read(path))))
        # results written before the LATER_FIELDS existed lack them: read the rest, add them as nulls
        later = [f for f in LATER_FIELDS if f.name in columns]
        try:  # only the columns' pages are read: a file's ids are a tenth of its bytes
            fs, fs_path = filesystem(path, self._options)
            with fs.open(fs_path, "rb") as handle:
                file = pq.ParquetFile(handle)
                present = set(file.schema_arrow.names)
                table = file.read(columns=[c for c in columns if c in present or not _is_later(c)])
        except FileNotFoundError:  # read as before: the error names the file, credentials hidden
            data = self._read(path)
            present = set(pq.read_schema(io.BytesIO(data)).names)
            table = pq.read_table(
                io.BytesIO(data), columns=[c for c in columns if c in present or not _is_later(c)]
            )
        for field in later:
            if field.name not in table.column_names:
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
        return table.select(columns) if later else table

    def write_partial_results(self, chunk_id: int, part: int, table: pa.Table) -> None:
        """Write one slice of a realtime chunk's results (so a crash loses at most a slice)."""
        self._write(
            self._path("results", f"chunk-{chunk_id:05d}.part-{part:05d}.parquet"), parquet_bytes(table)
        )

    def read_partial_results(self, chunk_id: int) -> list[pa.Table]:
        """The slices of a realtime chunk's results written so far, in order."""
        fs, root = filesystem(self._path("results"), self._options)
        if not fs.exists(root):
            return []
        prefix = f"chunk-{chunk_id:05d}.part-"
        paths = sorted(p for p in fs.ls(root, detail=False) if str(p).rsplit("/", 1)[-1].startswith(prefix))
        tables = []
        for p in paths:
            try:
                tables.append(pq.read_table(io.BytesIO(bytes(fs.cat_file(p)))))
            except Exception as exc:
                if is_damage(exc):
                    raise self.damaged(str(p), exc) from exc
                raise
        return tables

    def write_cached_results(self, table: pa.Table) -> None:
        """Write the answers the job took from the response cache."""
        self._write(self._path("results", "cached.parquet"), parquet_bytes(table))

    def read_cached_results(self, columns: list[str] | None = None) -> pa.Table | None:
        """Read the answers the job took from the response cache (None if it took none)."""
        path = self._path("results", "cached.parquet")
        if not exists(path, storage_options=self._options):
            return None
        return self._read_parquet(path, columns)

    def write_borrowed_results(self, table: pa.Table) -> None:
        """Write the answers a shard borrows from the earlier shards of its job that sent them."""
        self._write(self._path("results", "borrowed.parquet"), parquet_bytes(table))

    def read_borrowed_results(self, columns: list[str] | None = None) -> pa.Table | None:
        """Read the answers a shard borrowed (None if it borrowed none)."""
        path = self._path("results", "borrowed.parquet")
        if not exists(path, storage_options=self._options):
            return None
        return self._read_parquet(path, columns)

    @property
    def options(self) -> dict[str, Any] | None:
        """The fsspec storage options of the state directory."""
        return self._options

    # summary of the written output --------------------------------------------------------

    def write_summary(self, data: bytes) -> None:
        """Write ``summary.json``: what the run that last wrote the job's output reported."""
        self._write(self._path("summary.json"), data)

    def read_summary(self) -> bytes | None:
        """Read ``summary.json`` (None until a run has written the job's output)."""
        path = self._path("summary.json")
        if not exists(path, storage_options=self._options):
            return None
        return self._read(path)

    # cancel marker ----------------------------------------------------------------------

    def write_cancel(self, reason: str) -> None:
        """Record that the user cancelled the job (the running flow stops retrying)."""
        self._write(self._path("cancel.json"), orjson_dumps({"at": time.time(), "reason": reason}))

    def is_cancelled(self) -> bool:
        """True while a user's cancel applies."""
        return exists(self._path("cancel.json"), storage_options=self._options)

    def clear_cancel(self) -> None:
        """Forget a user's cancel (a new run resumes the job)."""
        fs, path = filesystem(self._path("cancel.json"), self._options)
        if fs.exists(path):
            fs.rm(path)

    # lease ------------------------------------------------------------------------------

    def lease(self, ttl: float = LEASE_TTL_S) -> Lease:
        """A lease on this job; use it as a context manager (see :class:`Lease`)."""
        return Lease(self, ttl)

    def _lease_path(self) -> str:
        return self._path("lease.json")

    def ensure_held(self) -> None:
        """Before acting on the job (creating a batch, writing the output): when this run holds
        the job's lease, check that it still does. Without a lease in this context, nothing to check.

        Raises:
            JobLocked: This run lost the lease: another run took the job over.
        """
        check_held(self._lease_path(), self._options)


def orjson_dumps(value: Any) -> bytes:
    """Encode JSON (orjson)."""
    return orjson.dumps(value)


#: What the messages of the errors without an errno that Arrow raises for undecodable Parquet
#: bytes say (bad pages, compression, thrift metadata); other errno-less ``OSError``s (a dropped
#: connection of an object store, say) are not damage.
_DECODE_ERROR = re.compile(
    r"thrift|corrupt|magic bytes|deseriali[sz]|decompress|codec failed|unexpected end of stream"
    r"|no more data to read|exceeded size limit|malformed|page must be|dictionary page|page header"
    r"|invalid (data|ttype|byte_array|page|column|flatbuffers|compressed|encoding|repetition|definition)",
    re.IGNORECASE,
)


def is_damage(exc: BaseException) -> bool:
    """True when reading a state file or segment failed because its bytes cannot be decoded:
    Arrow's ``ArrowInvalid`` (e.g. no Parquet magic bytes), the ``OSError`` without an errno it
    raises for corrupt pages, compression or thrift metadata, and JSON or UTF-8 decode errors.
    Not when the file is missing or forbidden, the network failed, memory ran out
    (``MemoryError``, ``ArrowMemoryError``) or Arrow cannot read a feature
    (``ArrowNotImplementedError``): those are raised as they are, never taken for damage.

    Examples:
        >>> is_damage(OSError("Corrupt snappy compressed data.")), is_damage(FileNotFoundError(2, "x"))
        (True, False)
        >>> is_damage(OSError("Connection reset by peer")), is_damage(pa.ArrowMemoryError("malloc"))
        (False, False)
    """
    if isinstance(exc, MemoryError | NotImplementedError):
        return False
    if isinstance(exc, pa.ArrowInvalid | json.JSONDecodeError | UnicodeDecodeError):
        return True
    return type(exc) is OSError and exc.errno is None and bool(_DECODE_ERROR.search(str(exc)))


def short_error(exc: BaseException, most: int = 160) -> str:
    """An exception's text on one line, cut to ``most`` characters (for messages naming a file).

    Examples:
        >>> short_error(ValueError("a long message"), most=9)
        'a long...'
    """
    text = str(exc).replace("\n", " ")
    return text if len(text) <= most else text[: most - 3] + "..."


def _is_later(name: str) -> bool:
    """True for a result column added after the first versions (see :data:`LATER_FIELDS`)."""
    return any(field.name == name for field in LATER_FIELDS)
