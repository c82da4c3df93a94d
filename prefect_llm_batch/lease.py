"""One runner per job: the lease file ``{state_dir}/jobs/{job_id}/lease.json``.

One runner holds a job from planning to its output: the lease is taken once the job id is known
(:func:`~prefect_llm_batch.jobs.identify`), before the plan is written or resumed, and held
through every round and the output; it is re-entrant within one run (one context).

How the lease file is written, by store:

- Local filesystem: checked and written under an OS lock on ``lease.json.lock`` (``flock``; the
  lock is local-only: it means nothing to another machine).
- S3 (s3fs; :func:`~prefect_llm_batch.object_stores.conditional_writes`): compare-and-swap on the object.
  A free lease is created with ``If-None-Match: *`` (absent) or replaced with ``If-Match`` on the
  ETag read when it was found free (expired, or of a dead process of this host); renewals are
  ``If-Match`` on the ETag of this runner's last write. Of two runners racing, the store lets one
  put through and refuses the other, which raises JobLocked; a renewal refused means the lease
  was taken over. Release reads the holder then deletes (S3 general-purpose buckets do not all
  take a condition on delete): a lease taken over in between would be deleted, which can only
  follow an expiry this runner already missed.
- Other stores (``memory://``, GCS, Azure...): no atomic create here; the lease is written and
  read back after a short pause, so two runners starting within that pause could both believe
  they hold it.

:class:`Lease` works on a :class:`~prefect_llm_batch.store.JobStore` (its lease path, state
directory and storage options); :meth:`JobStore.lease <prefect_llm_batch.store.JobStore.lease>`
makes one. This module does not import :mod:`~prefect_llm_batch.store` at import time (the store
imports it).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from .errors import JobLocked
from .files import make_dirs, write_bytes_atomic
from .object_stores import WriteConflict, conditional_writes, filesystem, read_versioned, write_if_version

if TYPE_CHECKING:
    from .store import JobStore

logger = logging.getLogger("prefect_llm_batch")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no OS lock, the check-then-write race remains
    fcntl = None  # type: ignore[assignment]


#: How long a job lease lives without renewal.
LEASE_TTL_S = 120.0


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    (``lease.json.lock``, ``flock``; not on Windows); on S3 with conditional puts
    (``If-None-Match: *`` to create, ``If-Match`` on the ETag to take over and renew); on other
    object stores it is written and read back after a short pause, and two runners starting
    within that pause could both believe they hold it (see the module docstring).

    Examples:
        >>> import socket
        >>> from prefect_llm_batch.store import JobStore
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
        self._fs, self._fs_path = filesystem(self.path, store._options)
        #: The lease file's canonical name: every spelling of one state directory (relative or
        #: absolute, ``file://`` or plain, through a symlink) is the same lease within a run.
        self.key = lease_key(self._fs, self._fs_path)
        #: Set once this runner found that another run holds the job (its lease expired
        #: while this one was suspended, and was taken): from then on it must not act on the job.
        self.lost = False
        #: The store takes conditional puts: the lease is a compare-and-swap on this object.
        self._cas = conditional_writes(self.path, store._options)
        #: The version (ETag) of this runner's last write of the lease (conditional stores).
        self._version: str | None = None

    def holder(self) -> dict[str, Any] | None:
        """The current lease record, or None."""
        if self._cas:
            return self._versioned()[0]
        try:
            with self._fs.open(self._fs_path, "rb") as handle:
                value = orjson.loads(handle.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn or empty file: treat as free
        return value if isinstance(value, dict) else None

    def _versioned(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lease record and the version it was read at (None, None when absent)."""
        found = read_versioned(self.path, storage_options=self.store._options)
        if found is None:
            return None, None
        data, version = found
        try:
            value = orjson.loads(data)
        except ValueError:
            return None, version  # a torn or empty object: free, replaced at this version
        return (value if isinstance(value, dict) else None), version

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
        return orjson.dumps({**self.owner, "acquired_at": time.time(), "expires_at": time.time() + self.ttl})

    def _check_free(self, record: dict[str, Any] | None) -> None:
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
        from .store import secure_state_dir  # store.py imports this module

        secure_state_dir(self.store.state_dir, self.store._options)
        if "file" in self._fs.protocol:
            # Check and write under an OS lock: two runners taking over the same stale lease
            # cannot both win, and the lease file is only ever replaced whole (never torn).
            make_dirs(self._fs._parent(self._fs_path), private=True)
            with _os_lock(self._fs_path + ".lock"):
                self._check_free(self.holder())
                write_bytes_atomic(
                    self.path, self._record(), storage_options=self.store._options, private=True
                )
            return
        if self._cas:
            record, version = self._versioned()
            self._check_free(record)
            try:
                self._version = write_if_version(
                    self.path, self._record(), version=version, storage_options=self.store._options
                )
            except WriteConflict:
                # Another runner's put went through first (or this one's did, and its answer
                # was lost and the put retried): the lease file says which.
                record, version = self._versioned()
                if record is None or record.get("id") != self.owner["id"]:
                    self._check_free(record)  # says who holds it, when it is still held
                    raise JobLocked(f"job {self.store.job_id} was just taken by another run") from None
                self._version = version
            return
        self._check_free(self.holder())
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
        if self._cas:
            self._renew_conditionally()
            return
        record = self.holder()
        if record is not None and record.get("id") != self.owner["id"]:
            raise JobLocked(f"job {self.store.job_id}: the lease was taken over by another run")
        write_bytes_atomic(self.path, self._record(), storage_options=self.store._options, private=True)

    def _renew_conditionally(self) -> None:
        """Renew with ``If-Match`` on this runner's last version of the lease."""
        try:
            self._version = write_if_version(
                self.path, self._record(), version=self._version, storage_options=self.store._options
            )
            return
        except WriteConflict:
            pass
        # Refused: taken over, or this runner's last put went through with its answer lost.
        record, version = self._versioned()
        if record is None or record.get("id") != self.owner["id"] or version is None:
            raise JobLocked(f"job {self.store.job_id}: the lease was taken over by another run")
        try:
            self._version = write_if_version(
                self.path, self._record(), version=version, storage_options=self.store._options
            )
        except WriteConflict:
            raise JobLocked(f"job {self.store.job_id}: the lease was taken over by another run") from None

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


def check_held(lease_path: str, storage_options: dict[str, Any] | None = None) -> None:
    """When this context holds the lease at ``lease_path``, check that it still does (see
    :meth:`Lease.ensure_held`); without a lease in this context, nothing to check.

    Raises:
        JobLocked: This run lost the lease: another run took the job over.
    """
    fs, path = filesystem(lease_path, storage_options)
    lease = _HELD.get({}).get(lease_key(fs, path))
    if lease is not None:
        lease.ensure_held()
