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

and, shared by every job of the state directory, the **response cache**::

    {state_dir}/cache/results/{time_ns}-{job_id}-chunk-00000-a1.parquet    a chunk's stored results
    {state_dir}/cache/segments/{time_ns}-{name}.parquet                    successful answers by custom_id

(named by write time, so that the newest answer to a request wins, e.g. after a refresh). A
collected chunk's segment under ``results/`` is a copy of its ``results/chunk-00000.parquet``
(its own bytes, never a link: deleting a job or clearing the cache frees what it says, and damage
to one never reaches the other), errors included: the cache skips rows with a
``response_error_kind``. A damaged segment is skipped with a warning naming it (its requests are
sent again); a damaged job file is a :class:`~prefect_llm_batch.errors.StateError` naming it.

The cache holds answers (and so, indirectly, prompts' content): clear it with
``prefect-llm-batch cache clear`` (optionally ``--older-than DAYS``) or delete the folder. Delete
jobs with ``prefect-llm-batch jobs clean`` (:func:`clean_jobs`; a job a runner holds is kept).

One runner holds a job from planning to its output: the lease is taken once the job id is known
(:func:`~prefect_llm_batch.jobs.identify`), before the plan is written or resumed, and held
through every round and the output; it is re-entrant within one run (one context).

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

import contextlib
import contextvars
import io
import json
import logging
import os
import re
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import fsspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from .errors import JobLocked, StateError, TableError
from .requests import split_fixed_width
from .spec import BatchLimits
from .table import (
    dictionary_columns,
    drop_behind,
    exists,
    make_dirs,
    read_bytes,
    write_bytes_atomic,
    write_parquet_batches_atomic,
)

#: Schema of a job's ``rows.parquet``: the request key of every input row, in row order.
ROW_IDS_SCHEMA = pa.schema([pa.field("custom_id", pa.string())])

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no OS lock, the check-then-write race remains
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("prefect_llm_batch")

#: Environment variable naming the state directory.
STATE_DIR_ENV = "PREFECT_LLM_BATCH_STATE_DIR"
#: Bump when the layout changes incompatibly.
STATE_FORMAT = 2
#: How long a job lease lives without renewal.
LEASE_TTL_S = 120.0


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
    fs, local = fsspec.core.url_to_fs(state_dir, **(storage_options or {}))
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
            f"the file {path} of job {self.job_id} is damaged ({_short(exc)}); delete the job with "
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
        fs, path = fsspec.core.url_to_fs(self._path("rows.parquet"), **(self._options or {}))
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
        fs, path = fsspec.core.url_to_fs(self._path("rows.parquet"), **(self._options or {}))
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
        :func:`~prefect_llm_batch.table.drop_behind` on, out of the page cache once synced: it is
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
            path, _parquet_bytes(table), storage_options=self._options, durable=False, private=True
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
        :meth:`ResponseCache.add_results`)."""
        data = _parquet_bytes(table)
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
            return pq.read_table(io.BytesIO(self._read(path)))
        try:  # only the columns' pages are read: a file's ids are a tenth of its bytes
            fs, fs_path = fsspec.core.url_to_fs(path, **(self._options or {}))
            with fs.open(fs_path, "rb") as handle:
                return pq.read_table(handle, columns=columns)
        except FileNotFoundError:  # read as before: the error names the file, credentials hidden
            return pq.read_table(io.BytesIO(self._read(path)), columns=columns)

    def write_partial_results(self, chunk_id: int, part: int, table: pa.Table) -> None:
        """Write one slice of a realtime chunk's results (so a crash loses at most a slice)."""
        self._write(
            self._path("results", f"chunk-{chunk_id:05d}.part-{part:05d}.parquet"), _parquet_bytes(table)
        )

    def read_partial_results(self, chunk_id: int) -> list[pa.Table]:
        """The slices of a realtime chunk's results written so far, in order."""
        fs, root = fsspec.core.url_to_fs(self._path("results"), **(self._options or {}))
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
        self._write(self._path("results", "cached.parquet"), _parquet_bytes(table))

    def read_cached_results(self, columns: list[str] | None = None) -> pa.Table | None:
        """Read the answers the job took from the response cache (None if it took none)."""
        path = self._path("results", "cached.parquet")
        if not exists(path, storage_options=self._options):
            return None
        return self._read_parquet(path, columns)

    # cancel marker ----------------------------------------------------------------------

    def write_cancel(self, reason: str) -> None:
        """Record that the user cancelled the job (the running flow stops retrying)."""
        self._write(self._path("cancel.json"), orjson_dumps({"at": time.time(), "reason": reason}))

    def is_cancelled(self) -> bool:
        """True while a user's cancel applies."""
        return exists(self._path("cancel.json"), storage_options=self._options)

    def clear_cancel(self) -> None:
        """Forget a user's cancel (a new run resumes the job)."""
        fs, path = fsspec.core.url_to_fs(self._path("cancel.json"), **(self._options or {}))
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
        fs, path = fsspec.core.url_to_fs(self._lease_path(), **(self._options or {}))
        lease = _HELD.get({}).get(lease_key(fs, path))
        if lease is not None:
            lease.ensure_held()


def lease_key(fs: Any, path: str) -> str:
    """The canonical name of a lease file (``path`` on ``fs``, as :func:`fsspec.core.url_to_fs`
    gives them): its real path (symlinks resolved) on a local filesystem, the URL otherwise.

    Examples:
        >>> import fsspec
        >>> lease_key(*fsspec.core.url_to_fs("memory://st/jobs/j/lease.json"))
        'memory:///st/jobs/j/lease.json'
    """
    if "file" in fs.protocol:
        return "file://" + os.path.realpath(path)
    return str(fs.unstrip_protocol(path))


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


def _short(exc: BaseException, most: int = 160) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= most else text[: most - 3] + "..."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_jobs(state_dir: str, storage_options: dict[str, Any] | None = None) -> list[JobRecord]:
    """Every prepared job of a state directory, newest first (a job whose ``job.json`` is damaged
    is left out, with a warning that names the file and how to delete the job)."""
    fs, root = fsspec.core.url_to_fs(f"{state_dir.rstrip('/')}/jobs", **(storage_options or {}))
    if not fs.exists(root):
        return []
    records = []
    for path in fs.ls(root, detail=False):
        job_id = str(path).rstrip("/").rsplit("/", 1)[-1]
        store = JobStore(state_dir, job_id, storage_options)
        if store.is_prepared():
            try:
                records.append(store.read_job())
            except StateError as exc:
                logger.warning("%s", exc)
    return sorted(records, key=lambda r: r.created_at, reverse=True)


class CleanedJobs(BaseModel):
    """What :func:`clean_jobs` did: the jobs deleted, the bytes that freed, the jobs it kept and why."""

    removed: list[str] = Field(default_factory=list)
    bytes: int = 0
    kept: dict[str, str] = Field(default_factory=dict)


def job_finished(store: JobStore) -> bool:
    """True when a job is planned, every batch of it is collected and it is not pending (detached).

    A damaged or unplanned job is not finished (delete it by its id).
    """
    pending = f"{store.state_dir}/pending/{store.job_id}.json"
    if not store.is_prepared() or exists(pending, storage_options=store._options):
        return False
    try:
        record = store.read_job()
        return all(store.read_chunk(c.chunk_id).collected for c in record.chunks)
    except StateError:
        return False


def in_flight(store: JobStore) -> str | None:
    """Why deleting a job now would throw paid work away, or None: it is pending (submitted in
    detached mode, not yet written), or has batches submitted and not collected (running at the
    provider, or ended with results nobody downloaded). A damaged chunk file counts no batch.
    """
    fix = (
        "collect them (`prefect-llm-batch collect`, or run the job again) or cancel them "
        f"(`prefect-llm-batch cancel {store.job_id}`) first, or delete it anyway with --force "
        "(`force=True`)"
    )
    if exists(f"{store.state_dir}/pending/{store.job_id}.json", storage_options=store._options):
        return f"it is pending (submitted detached, its output not written yet): {fix}"
    fs, root = fsspec.core.url_to_fs(store._path("chunks"), **(store._options or {}))
    if not fs.exists(root):
        return None
    batches = []
    for path in sorted(str(p) for p in fs.ls(root, detail=False)):
        name = path.rsplit("/", 1)[-1]
        if not (name.startswith("chunk-") and name.endswith(".json")):
            continue
        try:
            state = store.read_chunk(int(name[len("chunk-") : -len(".json")]))
        except (StateError, ValueError):
            continue
        if state.batch_id and not state.collected:
            batches.append(state.batch_id)
    if not batches:
        return None
    shown = ", ".join(batches[:3]) + (", ..." if len(batches) > 3 else "")
    return f"{len(batches)} batch(es) submitted and not collected ({shown}): {fix}"


def clean_jobs(
    state_dir: str,
    *,
    job_ids: Sequence[str] | None = None,
    older_than_s: float | None = None,
    finished: bool = False,
    force: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> CleanedJobs:
    """Delete jobs from a state directory (their plans, batch files, results); the response cache
    keeps their answers, so running one again pays only for what the cache does not answer.

    Every job matching all the conditions given is deleted (with none, every job), except a
    job whose lease a runner holds, and (unless ``force``) a job with work in flight: pending
    (submitted detached) or with batches submitted and not collected (see :func:`in_flight`).
    Those are kept, and :attr:`CleanedJobs.kept` says why. With ``force``, batches of a deleted
    job still running at the provider are not cancelled and their results are not collected
    (``prefect-llm-batch cancel JOB_ID`` first).

    Args:
        state_dir: The state directory.
        job_ids: Only these jobs (an id that is not there is reported in ``kept``).
        older_than_s: Only jobs none of whose files changed for this many seconds.
        finished: Only jobs whose batches are all collected (see :func:`job_finished`).
        force: Delete jobs with work in flight too.
        storage_options: fsspec options for the state directory.

    Returns:
        The jobs deleted, the bytes freed and the jobs kept (with the reason).

    Examples:
        >>> store = JobStore("memory://doc-clean", "job1")
        >>> store.write_chunk(ChunkState(chunk_id=0))
        >>> clean_jobs("memory://doc-clean").removed
        ['job1']
    """
    report = CleanedJobs()
    fs, root = fsspec.core.url_to_fs(f"{state_dir.rstrip('/')}/jobs", **(storage_options or {}))
    present = (
        sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        if fs.exists(root)
        else []
    )
    for job_id in job_ids or []:
        if job_id not in present:
            report.kept[job_id] = "no such job"
    now = time.time()
    for job_id in present:
        if job_ids is not None and job_id not in job_ids:
            continue
        store = JobStore(state_dir, job_id, storage_options)
        folder = f"{root}/{job_id}"
        files = [str(p) for p in fs.find(folder)]
        if older_than_s is not None and any(now - _modified(fs, p, now) < older_than_s for p in files):
            continue
        if finished and not job_finished(store):
            continue
        lease = store.lease()
        try:
            lease.acquire()  # held until the folder is gone (it holds the lease file too)
        except JobLocked as exc:
            report.kept[job_id] = str(exc)
            continue
        busy = None if force else in_flight(store)
        if busy is not None:
            lease.release()
            report.kept[job_id] = busy
            continue
        freed = 0
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                freed += _bytes_freed_by_removing(fs, path)
        fs.rm(folder, recursive=True)
        remove_pending(state_dir, job_id, storage_options)
        report.removed.append(job_id)
        report.bytes += freed
        logger.info("deleted job %s from %s (%d bytes)", job_id, state_dir, freed)
    return report


def write_pending(
    state_dir: str, job_id: str, data: bytes, storage_options: dict[str, Any] | None = None
) -> None:
    """Record a job submitted in detached mode (``pending/{job_id}.json``)."""
    secure_state_dir(state_dir, storage_options)
    write_bytes_atomic(
        f"{state_dir.rstrip('/')}/pending/{job_id}.json", data, storage_options=storage_options, private=True
    )


def read_pending(state_dir: str, storage_options: dict[str, Any] | None = None) -> list[tuple[str, bytes]]:
    """The records of every job still pending in a state directory: ``(path, bytes)``, by path."""
    fs, root = fsspec.core.url_to_fs(f"{state_dir.rstrip('/')}/pending", **(storage_options or {}))
    if not fs.exists(root):
        return []
    paths = sorted(str(p) for p in fs.ls(root, detail=False) if str(p).endswith(".json"))
    return [(p, bytes(fs.cat_file(p))) for p in paths]


def remove_pending(state_dir: str, job_id: str, storage_options: dict[str, Any] | None = None) -> None:
    """Forget a detached job once its output is written."""
    fs, path = fsspec.core.url_to_fs(
        f"{state_dir.rstrip('/')}/pending/{job_id}.json", **(storage_options or {})
    )
    if fs.exists(path):
        fs.rm(path)


def record_run(
    state_dir: str, run_id: str, job_id: str, storage_options: dict[str, Any] | None = None
) -> None:
    """Remember which job a flow run works on (for its cancellation hook)."""
    secure_state_dir(state_dir, storage_options)
    write_bytes_atomic(
        f"{state_dir.rstrip('/')}/runs/{run_id}.json",
        orjson_dumps({"job_id": job_id, "at": time.time()}),
        storage_options=storage_options,
        private=True,
    )


def job_for_run(state_dir: str, run_id: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The job a flow run worked on, if it got that far."""
    path = f"{state_dir.rstrip('/')}/runs/{run_id}.json"
    if not exists(path, storage_options=storage_options):
        return None
    return str(orjson.loads(read_bytes(path, storage_options=storage_options))["job_id"])


@contextlib.contextmanager
def _os_lock(path: str) -> Iterator[None]:
    """Hold an exclusive OS lock on a local file (released by the OS if the process dies)."""
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


#: The leases held in the current context (by :func:`lease_key`): entering a lease on a job this
#: context already holds does nothing (one run holds its job once, from planning to output).
#: Prefect runs a flow's tasks in copies of the flow's context, so they share its leases; another
#: thread or process starts with none.
_HELD: contextvars.ContextVar[dict[str, Lease]] = contextvars.ContextVar("prefect_llm_batch_leases")


class Lease:
    """One runner per job: a lease file in the job's state directory.

    Taken on entry, renewed every ``ttl / 3`` seconds by a background thread while held, and
    released on exit. Re-entrant within one context: entering a lease on a job that an enclosing
    ``with`` of the same context (thread, or a Prefect task of the flow run) holds does nothing,
    so a run takes its job's lease once, around planning, every round and the output, and the
    steps that need it can say so. Leases are told apart by :func:`lease_key`, so any spelling
    of the same state directory (relative, ``file://``, through a symlink) is the same lease. A
    lease is free when it is absent, expired, or held by a process of this host that no longer
    exists (so a rerun right after a crash does not wait for expiry).

    A runner that finds another holder in the lease file (it was suspended past the lease's life
    and another run took the job) marks its lease :attr:`lost`: re-entering it, creating a batch
    and writing the output (:meth:`JobStore.ensure_held`) then raise JobLocked.

    On a local state directory the lease is checked and written under an OS file lock
    (``lease.json.lock``, ``flock``; not on Windows). On object
    stores, which have no atomic create here, the lease is written and read back after a short
    pause; two runners starting within that pause could both believe they hold it (documented).

    Examples:
        >>> store = JobStore("memory://doc-lease", "job1")
        >>> with store.lease() as lease:
        ...     lease.holder()["host"] == socket.gethostname()
        True
    """

    def __init__(self, store: JobStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.owner = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self.path = store._lease_path()
        self._fs, self._fs_path = fsspec.core.url_to_fs(self.path, **(store._options or {}))
        #: The lease file's canonical name: every spelling of one state directory (relative or
        #: absolute, ``file://`` or plain, through a symlink) is the same lease within a run.
        self.key = lease_key(self._fs, self._fs_path)
        #: Set once this runner found that another run holds the job (its lease expired
        #: while this one was suspended, and was taken): from then on it must not act on the job.
        self.lost = False

    def holder(self) -> dict[str, Any] | None:
        """The current lease record, or None."""
        try:
            with self._fs.open(self._fs_path, "rb") as handle:
                value = orjson.loads(handle.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn or empty file: treat as free
        return value if isinstance(value, dict) else None

    def _free(self, record: dict[str, Any] | None) -> bool:
        if record is None:
            return True
        if record.get("id") == self.owner["id"]:
            return True
        if float(record.get("expires_at", 0)) < time.time():
            return True
        same_host = record.get("host") == self.owner["host"]
        return same_host and isinstance(record.get("pid"), int) and not _pid_alive(record["pid"])

    def _record(self) -> bytes:
        return orjson_dumps({**self.owner, "acquired_at": time.time(), "expires_at": time.time() + self.ttl})

    def _check_free(self) -> None:
        record = self.holder()
        if not self._free(record):
            assert record is not None
            until = time.strftime("%H:%M:%S", time.localtime(float(record.get("expires_at", 0))))
            itself = record.get("host") == self.owner["host"] and record.get("pid") == self.owner["pid"]
            message = (
                f"job {self.store.job_id} is being run by process {record.get('pid')} "
                f"on {record.get('host')} "
                f"(lease renewed until {until}); wait for it to finish, or run again once it has stopped"
            )
            if itself:
                message += (
                    f" (that is this very process: another run of the job in it, in another thread "
                    f"or context, holds the lease on {self.path})"
                )
                logger.warning("%s", message)
            raise JobLocked(message)

    def _lost_error(self) -> JobLocked:
        return JobLocked(
            f"job {self.store.job_id}: this run lost its lease (another run took the job over after "
            "the lease expired, e.g. while this one was suspended); it stops here and leaves the job "
            "to that run"
        )

    def ensure_held(self) -> None:
        """Check that this runner still holds the lease (the lease file names it).

        Raises:
            JobLocked: The lease was lost: another run holds the job now (this lease is marked
                :attr:`lost` from then on).
        """
        if not self.lost:
            record = self.holder()
            if record is not None and record.get("id") != self.owner["id"]:
                self.lost = True
        if self.lost:
            raise self._lost_error()

    def acquire(self) -> None:
        """Take the lease.

        Raises:
            JobLocked: Another live run holds it; the message says who and until when.
        """
        secure_state_dir(self.store.state_dir, self.store._options)
        if "file" in self._fs.protocol:
            # Check and write under an OS lock: two runners taking over the same stale lease
            # cannot both win, and the lease file is only ever replaced whole (never torn).
            make_dirs(self._fs._parent(self._fs_path), private=True)
            with _os_lock(self._fs_path + ".lock"):
                self._check_free()
                write_bytes_atomic(
                    self.path, self._record(), storage_options=self.store._options, private=True
                )
            return
        self._check_free()
        write_bytes_atomic(self.path, self._record(), storage_options=self.store._options, private=True)
        time.sleep(0.2)
        record = self.holder()
        if record is None or record.get("id") != self.owner["id"]:
            raise JobLocked(f"job {self.store.job_id} was just taken by another run")

    def renew(self) -> None:
        """Extend the lease; call it at least every ``ttl / 3`` seconds.

        Raises:
            JobLocked: The lease expired and another runner took it meanwhile (this runner was
                suspended longer than the lease lives); it must stop rather than overwrite it.
        """
        record = self.holder()
        if record is not None and record.get("id") != self.owner["id"]:
            raise JobLocked(f"job {self.store.job_id}: the lease was taken over by another run")
        write_bytes_atomic(self.path, self._record(), storage_options=self.store._options, private=True)

    def release(self) -> None:
        """Give the lease up (only if this runner still holds it)."""
        record = self.holder()
        if record is not None and record.get("id") == self.owner["id"]:
            self._fs.rm(self._fs_path)

    def __enter__(self) -> Lease:
        held = _HELD.get({})
        outer = held.get(self.key)
        self._token: contextvars.Token[dict[str, Lease]] | None = None
        if outer is not None:  # this context holds the job already: nothing to take or release
            if outer.lost:
                raise outer._lost_error()
            self.owner = outer.owner
            self._outer: Lease | None = outer
            return self
        self._outer = None
        self.acquire()
        self._token = _HELD.set({**held, self.key: self})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name="llm-batch-lease", daemon=True)
        self._thread.start()
        return self

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except JobLocked as exc:
                self.lost = True  # checked on re-entry, before each create and before the output
                logger.error("%s; this run no longer holds the job and stops acting on it", exc)
                return
            except Exception as exc:  # a missed renewal is retried; expiry is ttl away
                logger.warning("could not renew the lease of job %s: %s", self.store.job_id, exc)

    def __exit__(self, *exc: object) -> None:
        if self._outer is not None:
            return
        if self._token is not None:
            try:
                _HELD.reset(self._token)
            except ValueError:  # left in another context than it was entered in
                _HELD.set({k: v for k, v in _HELD.get({}).items() if v is not self})
        self._stop.set()
        self._thread.join(timeout=5)
        self.release()


class ResponseCache:
    """Successful answers by ``custom_id``, in segment files shared by all jobs of a state directory.

    One segment per collected chunk (not one object per request: a million-row job makes a few
    dozen storage calls, not a million). A lookup reads the ``custom_id`` column of every segment,
    then the matching rows. Since a ``custom_id`` hashes provider, base URL, endpoint and body
    (model, params, prompt), a changed model or provider never finds a stale answer.

    Two kinds of segment: ``segments/`` hold answers only (:meth:`add`); ``results/`` hold a
    chunk's stored results as they are, errors included (:meth:`add_results`: the bytes of the
    job's file, encoded once and written twice, so that the cache and the jobs share no file).
    Every reader here skips rows with a ``response_error_kind``; the separate folder keeps
    versions from before it, which read only ``segments/``, from taking an error for an answer.

    A segment that cannot be decoded is skipped with a warning naming it: its requests are not
    answered from the cache (they are sent again), and every other segment still answers.

    Examples:
        >>> import pyarrow as pa
        >>> cache = ResponseCache("memory://doc-cache")
        >>> cache.add("job-chunk-0", pa.table({"custom_id": ["a", "b"], "response": ["x", "y"]}))
        >>> cache.lookup(["b", "c"]).to_pylist()
        [{'custom_id': 'b', 'response': 'y'}]
    """

    #: The folders of segments under ``{state_dir}/cache``.
    FOLDERS = ("segments", "results")

    def __init__(self, state_dir: str, storage_options: dict[str, Any] | None = None) -> None:
        self.state_dir = state_dir.rstrip("/")
        self.base = f"{self.state_dir}/cache"
        self.root = f"{self.base}/segments"
        self._options = storage_options
        self._fs, self._fs_base = fsspec.core.url_to_fs(self.base, **(storage_options or {}))

    def segments(self) -> list[str]:
        """Paths of the segment files of both folders, oldest first (by the time in their names)."""
        paths = []
        for folder in self.FOLDERS:
            root = f"{self._fs_base}/{folder}"
            try:
                listed = self._fs.ls(root, detail=False) if self._fs.exists(root) else []
            except FileNotFoundError:  # deleted since (a cache clear removing the folder)
                listed = []
            paths += [str(p) for p in listed if str(p).endswith(".parquet")]
        return sorted(paths, key=lambda p: (p.rsplit("/", 1)[-1], p))

    def _name(self, name: str) -> str:
        return f"{time.time_ns():020d}-{name}.parquet"

    def add(self, name: str, table: pa.Table) -> None:
        """Store a segment of answers (rows with a ``custom_id``); its file name starts with the
        time, so that :meth:`lookup` prefers the newest answer."""
        if table.num_rows == 0:
            return
        path = f"{self.root}/{self._name(name)}"
        secure_state_dir(self.state_dir, self._options)
        write_bytes_atomic(path, _parquet_bytes(table), storage_options=self._options, private=True)

    def add_results(self, name: str, data: bytes) -> None:
        """Add a chunk's stored results (the bytes of its results file) as a segment of its own.

        The segment is a file of its own (never a link to the job's): deleting or damaging one
        leaves the other whole. Rows with an error are in the segment and skipped by every reader.
        """
        path = f"{self.base}/results/{self._name(name)}"
        secure_state_dir(self.state_dir, self._options)
        write_bytes_atomic(path, data, storage_options=self._options, drop_cache=drop_behind(), private=True)

    def _warn_damaged(self, path: str, exc: BaseException) -> None:
        logger.warning(
            "the response cache segment %s is damaged (%s) and was skipped: its requests are not "
            "answered from the cache; delete that file, or run `prefect-llm-batch cache clear`",
            path, _short(exc),
        )  # fmt: skip

    def _gone(self, path: str) -> None:
        logger.debug("the response cache segment %s was deleted while it was read; skipped", path)

    def _read_or_skip(self, path: str, columns: list[str] | None = None) -> pa.Table | None:
        """:meth:`_read`, or None when the segment is damaged (with a warning naming it) or was
        deleted since it was listed (a ``cache clear`` meanwhile: silently)."""
        try:
            return self._read(path, columns)
        except FileNotFoundError:
            self._gone(path)
            return None
        except Exception as exc:
            if not is_damage(exc):
                raise
            self._warn_damaged(path, exc)
            return None

    def _read(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """A segment's answers (only ``columns`` when given), its error rows left out."""
        with self._fs.open(path, "rb") as handle:
            file = pq.ParquetFile(handle)
            names = file.schema_arrow.names
            errors = "response_error_kind" in names
            wanted = None if columns is None else [*columns, *(["response_error_kind"] if errors else [])]
            table = file.read(columns=list(dict.fromkeys(wanted)) if wanted is not None else None)
        if errors:
            table = table.filter(table.column("response_error_kind").is_null())
            if columns is not None and "response_error_kind" not in columns:
                table = table.drop_columns(["response_error_kind"])
        return table

    def lookup(self, custom_ids: list[str]) -> pa.Table | None:
        """Cached rows for the given ids (each id at most once), or None when none is cached."""
        if not custom_ids:
            return None
        wanted = pa.array(custom_ids, pa.string())
        found: list[pa.Table] = []
        seen: pa.Array[Any] = pa.array([], pa.string())
        for path in reversed(self.segments()):  # newest segment (by its time-stamped name) wins
            segment = self._read_or_skip(path)
            if segment is None:
                continue
            ids = segment.column("custom_id")
            mask = pc.and_(pc.is_in(ids, value_set=wanted), pc.invert(pc.is_in(ids, value_set=seen)))
            hits = segment.filter(mask)
            if hits.num_rows:
                found.append(hits)
                seen = pa.concat_arrays([seen, hits.column("custom_id").combine_chunks()])
        if not found:
            return None
        return pa.concat_tables(found, promote_options="default")

    def ids(self) -> pa.Array[Any]:
        """Every cached ``custom_id`` once (only the ids, and the errors, of each segment are read)."""
        segments = (self._read_or_skip(path, ["custom_id"]) for path in self.segments())
        columns = [segment.column("custom_id") for segment in segments if segment is not None]
        if not columns:
            return pa.array([], pa.string())
        return pc.unique(pa.chunked_array(columns, pa.string()).combine_chunks())

    def stats(self) -> tuple[int, int, int]:
        """(segments, answers, bytes) in the cache (a damaged segment counts no answers)."""
        count = answers = size = 0
        for path in self.segments():
            try:
                stored = int(self._fs.info(path).get("size") or 0)
            except FileNotFoundError:  # deleted since it was listed
                self._gone(path)
                continue
            count, answers, size = count + 1, answers + self._answers(path), size + stored
        return count, answers, size

    def _answers(self, path: str) -> int:
        """How many answers a segment holds (only its error column is read, if it has one; none
        when it is damaged or was deleted since it was listed)."""
        try:
            return self._count_answers(path)
        except FileNotFoundError:
            self._gone(path)
            return 0
        except Exception as exc:
            if not is_damage(exc):
                raise
            self._warn_damaged(path, exc)
            return 0

    def _count_answers(self, path: str) -> int:
        with self._fs.open(path, "rb") as handle:
            file = pq.ParquetFile(handle)
            if "response_error_kind" not in file.schema_arrow.names:
                return int(file.metadata.num_rows)
            return int(file.read(columns=["response_error_kind"]).column(0).null_count)

    def clear(self, older_than_s: float | None = None) -> Removed:
        """Delete segments (only those older than ``older_than_s`` seconds when given).

        Returns:
            How many segments were deleted and the bytes that freed (a segment that is still a
            hard link to a job's file, as versions before this one made, frees nothing until the
            job is deleted too, and counts none).
        """
        files = freed = 0
        now = time.time()
        for path in self.segments():
            try:
                if older_than_s is not None and now - _modified(self._fs, path, now) < older_than_s:
                    continue
                size = _bytes_freed_by_removing(self._fs, path)
                self._fs.rm(path)
            except FileNotFoundError:  # deleted since it was listed (another clear)
                self._gone(path)
                continue
            freed += size
            files += 1
        return Removed(files, freed)


class Removed(NamedTuple):
    """What a clean-up deleted: files (or jobs) and the bytes that freed."""

    files: int
    bytes: int


def _modified(fs: Any, path: str, default: float) -> float:
    """A file's modification time (seconds since the epoch), or ``default`` when unknown."""
    info = fs.info(path)
    modified = info.get("mtime") or info.get("created") or info.get("LastModified")
    return modified.timestamp() if hasattr(modified, "timestamp") else float(modified or default)


def _bytes_freed_by_removing(fs: Any, path: str) -> int:
    """The bytes deleting a file frees: its size; locally, none while another link to it lives."""
    if "file" in fs.protocol:
        stat = os.stat(path)
        return int(stat.st_size) if stat.st_nlink <= 1 else 0
    return int(fs.info(path).get("size") or 0)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    # Ids and answers are mostly distinct: written plain (see dictionary_columns), faster.
    options: dict[str, Any] = {"use_dictionary": dictionary_columns(table.schema, table.slice(0, 4096))}
    pq.write_table(table, sink, **options)  # (the stubs take only a bool)
    return bytes(sink.getvalue().to_pybytes())
