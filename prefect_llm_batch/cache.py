"""The response cache, shared by every job of a state directory::

    {state_dir}/cache/results/{time_ns}-{job_id}-chunk-00000-a1.parquet    a chunk's stored results
    {state_dir}/cache/segments/{time_ns}-{name}.parquet                    successful answers by custom_id

(named by write time, so that the newest answer to a request wins, e.g. after a refresh). A
collected chunk's segment under ``results/`` is a copy of its ``results/chunk-00000.parquet``
(its own bytes, never a link: deleting a job or clearing the cache frees what it says, and damage
to one never reaches the other), errors included: the cache skips rows with a
``response_error_kind``. A damaged segment is skipped with a warning naming it (its requests are
sent again).

The cache holds answers (and so, indirectly, prompts' content): clear it with
``prefect-llm-batch cache clear`` (optionally ``--older-than DAYS``) or delete the folder.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .files import bytes_freed_by_removing, modified_time, write_bytes_atomic
from .local_files import drop_behind
from .object_stores import filesystem
from .store import is_damage, secure_state_dir, short_error
from .table import parquet_bytes

logger = logging.getLogger("prefect_llm_batch")


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
        self._fs, self._fs_base = filesystem(self.base, storage_options)

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
        write_bytes_atomic(path, parquet_bytes(table), storage_options=self._options, private=True)

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
            path, short_error(exc),
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
                if older_than_s is not None and now - modified_time(self._fs, path, now) < older_than_s:
                    continue
                size = bytes_freed_by_removing(self._fs, path)
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
