"""A job's batch input files: written as request lines come (:class:`ChunkWriter`, packing under
the batch limits, the ``custom_id`` s beside each file) and their request ids read back
(:func:`chunk_custom_ids`)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa

from ..arrays import value_offsets
from ..batchfile import ChunkPacker, fixed_width_ids
from ..images import image_token_adjustment, may_carry_images
from ..keys import split_fixed_width
from ..spec import ID_HEAD, BatchLimits
from ..store import ChunkPlanRecord, ChunkState, JobStore


def estimate_tokens(line: bytes) -> int:
    """Heuristic prompt tokens of one request line: UTF-8 bytes / 4 (documented in RunOptions);
    an image's base64 counts :data:`~prefect_llm_batch.images.IMAGE_TOKENS` instead.

    Examples:
        >>> estimate_tokens(b"x" * 400)
        100
    """
    return max(1, len(line) // 4 + image_token_adjustment(line))


def estimate_tokens_of(lines: list[bytes], joined: bytes | None = None) -> int:
    """The sum of :func:`estimate_tokens` over request lines, without a Python call per line when
    none carries an image (millions of lines when a sharded job's claim rewrites its batch files).

    Args:
        lines: Request lines.
        joined: The lines joined, when the caller has them (else they are joined here).

    Examples:
        >>> lines = [b"x" * 400, b"y" * 8]
        >>> estimate_tokens_of(lines) == sum(estimate_tokens(line) for line in lines) == 102
        True
    """
    if may_carry_images(b"".join(lines) if joined is None else joined):
        return sum(estimate_tokens(line) for line in lines)
    sizes = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    return int(np.maximum(sizes // 4, 1).sum())


#: Batch files being written at once while a job is prepared (each one's sync overlaps with the
#: next one's write).
WRITES_IN_FLIGHT = 2


class ChunkWriter:
    """Packs request lines into batch input files as they come and writes each one when full.

    Args:
        store: The job's state.
        limits: The batch limits.
        first_id: The id of the first batch file written.
        round_: The round the batches belong to.
        model: The one model of every line added (a job with a model per row has one writer per
            model, so that no batch holds two models); recorded in each chunk's plan.
        chunk_ids: Where batch ids come from instead of ``first_id`` on (the writers of one job's
            models share one counter).
    """

    def __init__(
        self,
        store: JobStore,
        limits: BatchLimits,
        first_id: int,
        round_: int,
        *,
        model: str | None = None,
        chunk_ids: Iterator[int] | None = None,
        images: bool = False,
    ) -> None:
        self.store = store
        self.images = images  # lines may carry base64 images: their tokens are counted per image
        self.round = round_
        self.model = model
        self.records: list[ChunkPlanRecord] = []
        self._packer = ChunkPacker(limits)
        self._chunk_ids = chunk_ids if chunk_ids is not None else itertools.count(first_id)
        self._parts: list[memoryview] = []  # the open batch's lines, as views into Arrow buffers
        self._ids: list[pa.Array[Any]] | None = []  # their custom_ids (None: not all known)
        self._count = 0
        self._bytes = 0
        self._tokens = 0
        self._executor = ThreadPoolExecutor(
            max_workers=WRITES_IN_FLIGHT, thread_name_prefix="prefect-llm-batch-write"
        )
        self._pending: collections.deque[Future[None]] = collections.deque()

    def add(
        self,
        lines: pa.Array[Any] | list[bytes],
        rows: npt.NDArray[np.int64] | None,
        keep: npt.NDArray[np.int64] | None = None,
        ids: pa.Array[Any] | None = None,
    ) -> None:
        """Add lines in order.

        Args:
            lines: The lines (an Arrow binary array, or bytes).
            rows: The input row of each line added (named when a line is too big).
            keep: Add only the lines at these increasing positions of ``lines`` (None: all).
                Runs of consecutive lines are added as views of ``lines``' buffer: no copy
                until the batch file is assembled.
            ids: The ``custom_id`` of each of ``lines``: written beside each batch file, for
                collecting it (None: the batch files have none beside them).
        """
        if isinstance(lines, list):
            lines = pa.array(lines, pa.large_binary())
        lines = lines.cast(pa.large_binary())
        if keep is not None and len(keep) < len(lines) // 2:
            # Few new lines (repeated requests, cache hits): copy them out, so that the files
            # in flight hold views of these lines, not of every slice they came from.
            taken = pa.array(keep, pa.int64())
            lines, ids, keep = lines.take(taken), ids.take(taken) if ids is not None else None, None
        picked = np.arange(len(lines)) if keep is None else keep
        if not len(picked):
            return
        buffers: list[Any] = lines.buffers()
        offsets = value_offsets(lines)
        data = memoryview(buffers[2])
        starts, ends = offsets[picked], offsets[picked + 1]
        sizes = ends - starts
        what = "row" if rows is not None else "request"
        cuts = [0, *self._packer.add_many(sizes.tolist(), rows, what), len(picked)]
        for number, (start, stop) in enumerate(itertools.pairwise(cuts)):
            if number:
                self._flush()  # ``start`` opens a new batch
            if start == stop:  # the first line added opens a new batch: nothing for the open one
                continue
            segment = picked[start:stop]
            if ids is None:
                self._ids = None
            elif self._ids is not None:
                self._ids.append(ids.take(segment))
            # Runs of consecutive lines: one view of the buffer each.
            breaks = np.flatnonzero(np.diff(segment) != 1) + 1
            for first, last in zip(
                np.concatenate(([0], breaks)), np.concatenate((breaks, [len(segment)])), strict=True
            ):
                self._parts.append(data[offsets[segment[first]] : offsets[segment[last - 1] + 1]])
                if self.images:
                    self._tokens += image_token_adjustment(self._parts[-1])
            self._bytes += int(sizes[start:stop].sum())
            # estimate_tokens per line (every line is far longer than 4 bytes, so never 0)
            self._tokens += int((sizes[start:stop] // 4).sum())
            self._count += stop - start

    def _write(self, chunk_id: int, data: list[memoryview], ids: pa.Array[Any] | None) -> None:
        self.store.write_chunk_input(chunk_id, data)
        if ids is not None:  # what collecting the batch reads, instead of the whole batch file
            self.store.write_chunk_ids(chunk_id, ids)
        if not self.store.has_chunk(chunk_id):
            self.store.write_chunk(ChunkState(chunk_id=chunk_id))

    def _flush(self) -> None:
        chunk_id = next(self._chunk_ids)
        # Written by other threads (I/O, outside the GIL) while the next lines are built, as
        # views of the lines (never joined in memory): one file's sync overlaps with the next
        # file's write. At most WRITES_IN_FLIGHT writes at once, so at most one more batch
        # file's lines than that are in memory.
        self._wait(WRITES_IN_FLIGHT - 1)
        ids = pa.concat_arrays(self._ids) if self._ids else None
        self._pending.append(self._executor.submit(self._write, chunk_id, self._parts, ids))
        self.records.append(
            ChunkPlanRecord(
                chunk_id=chunk_id,
                requests=self._count,
                bytes=self._bytes,
                round=self.round,
                est_tokens=self._tokens,
                model=self.model,
            )
        )
        self._parts, self._ids, self._count, self._bytes, self._tokens = [], [], 0, 0, 0

    def _wait(self, left: int = 0) -> None:
        """Wait until at most ``left`` writes are in flight, the oldest first; re-raise the
        failure of the oldest failed write (those already done are checked first, so that a
        failure is raised at the next batch, not one later)."""
        while self._pending and (len(self._pending) > left or self._pending[0].done()):
            self._pending.popleft().result()

    def close(self) -> list[ChunkPlanRecord]:
        """Write the last, partly filled chunk; return every chunk written."""
        try:
            if self._count:
                self._flush()
            self._wait()
        finally:
            self._executor.shutdown(wait=True)
        return self.records

    def abandon(self) -> None:
        """Stop after a failure: wait for the writes in flight, report nothing."""
        self._executor.shutdown(wait=True)
        self._pending.clear()


def _id_strings(matrix: npt.NDArray[np.uint8]) -> list[str]:
    return split_fixed_width(matrix.tobytes(), matrix.shape[1])


def chunk_custom_ids(store: JobStore, chunk_id: int) -> list[str]:
    """The ``custom_id`` of every request of a chunk, in order: from the ids file prepare wrote
    beside its batch file, else (state written before there were such files) from the batch file."""
    written = store.read_chunk_ids(chunk_id)
    if written is not None:
        return written
    data = store.read_chunk_input(chunk_id)
    matrix = fixed_width_ids(data)
    if matrix is not None:
        return _id_strings(matrix)
    ids = []
    start = len(ID_HEAD)
    for line in data.splitlines():
        if not line:
            continue
        end = line.find(b'"', start) if line.startswith(ID_HEAD) else -1
        custom_id = line[start:end]
        if end > start and custom_id.isascii() and b"\\" not in custom_id:  # no escapes: the bytes are the id
            ids.append(custom_id.decode("ascii"))
        else:
            ids.append(str(orjson.loads(line)["custom_id"]))
    return ids
