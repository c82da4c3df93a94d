"""Chunk packing: splitting request lines into batches under the provider's request and byte limits
(:class:`~prefect_llm_batch.spec.BatchLimits`)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from prefect_llm_batch.errors import InputError
from prefect_llm_batch.spec import BatchLimits


@dataclass(frozen=True)
class ChunkPlan:
    """A contiguous slice ``[start, stop)`` of the unique requests that goes into one batch."""

    start: int
    stop: int
    n_bytes: int

    @property
    def size(self) -> int:
        """Number of requests in the chunk."""
        return self.stop - self.start


class ChunkPacker:
    """Greedy, order-preserving packing of request lines into batches under both limits.

    Feed it the size of every line in order; it says when a line opens a new batch.

    Examples:
        >>> packer = ChunkPacker(BatchLimits(max_requests_per_batch=2, max_batch_bytes=1024))
        >>> [packer.add(10, row) for row in range(5)]
        [False, False, True, False, True]
    """

    def __init__(self, limits: BatchLimits) -> None:
        self.max_requests = limits.max_requests_per_batch
        self.max_bytes = limits.max_batch_bytes
        self.count = 0
        self.used = 0

    def add(self, size: int, where: int, what: str = "row") -> bool:
        """Account for a line of ``size`` bytes; True when it must start a new batch.

        Args:
            size: The line's encoded size in bytes (newline included).
            where: The input row (or request) it comes from, named when it is too big.
            what: What ``where`` counts (``"row"`` or ``"request"``).

        Raises:
            InputError: The line alone exceeds the byte limit (names the row).
        """
        if size > self.max_bytes:
            raise InputError(
                f"the request of {what} {where} is {size} bytes, more than max_batch_bytes={self.max_bytes}"
            )
        starts = bool(self.count) and (self.count >= self.max_requests or self.used + size > self.max_bytes)
        if starts:
            self.count = self.used = 0
        self.count += 1
        self.used += size
        return starts

    def add_many(
        self,
        sizes: Sequence[int],
        where: Sequence[int] | npt.NDArray[np.int64] | None = None,
        what: str = "row",
    ) -> list[int]:
        """Account for many lines at once; return the indices of those that start a new batch.

        The same packing as calling :meth:`add` for each line, by bisection over running sums
        instead of a step per line.

        Examples:
            >>> packer = ChunkPacker(BatchLimits(max_requests_per_batch=2, max_batch_bytes=1024))
            >>> packer.add_many([10] * 5)
            [2, 4]
            >>> packer.add_many([1000, 10, 10])  # 1000 bytes join the open batch's last 10
            [1]
        """
        if not sizes:
            return []
        biggest = max(sizes)
        if biggest > self.max_bytes:
            index = list(sizes).index(biggest)
            self.add(biggest, int(where[index]) if where is not None else index, what)  # raises
        totals = list(itertools.accumulate(sizes, initial=0))  # totals[k] = sum(sizes[:k])
        starts: list[int] = []
        at, n = 0, len(sizes)
        while at < n:
            # The furthest line that still fits the open batch, by count and by bytes.
            stop = min(
                n,
                at + self.max_requests - self.count,
                bisect.bisect_right(totals, totals[at] + self.max_bytes - self.used) - 1,
            )
            if stop <= at:  # not even the next line fits: it opens a new batch
                starts.append(at)
                self.count = self.used = 0
                continue
            self.count += stop - at
            self.used += totals[stop] - totals[at]
            at = stop
        return starts


def plan_chunks(
    line_sizes: Sequence[int], limits: BatchLimits, first_row: Sequence[int] | None = None
) -> list[ChunkPlan]:
    """Split requests into batches that respect both the count and the byte limit.

    Greedy and order-preserving: a chunk is closed as soon as the next line would break a limit
    (the same packing as :class:`ChunkPacker`).

    Args:
        line_sizes: Encoded size in bytes of every request line (newline included).
        limits: The batch limits.
        first_row: Optional input row of each request, to name it when a single line is too big.

    Returns:
        The chunks, in order; empty when there are no requests.

    Raises:
        InputError: One request alone exceeds the byte limit (names the row).

    Examples:
        >>> lim = BatchLimits(max_requests_per_batch=2, max_batch_bytes=1024)
        >>> [(c.start, c.stop) for c in plan_chunks([10, 10, 10, 10, 10], lim)]
        [(0, 2), (2, 4), (4, 5)]
        >>> [(c.start, c.stop) for c in plan_chunks([600, 600], BatchLimits(max_batch_bytes=1024))]
        [(0, 1), (1, 2)]
    """
    chunks: list[ChunkPlan] = []
    packer = ChunkPacker(limits)
    start = used = 0
    for index, size in enumerate(line_sizes):
        where, what = (first_row[index], "row") if first_row is not None else (index, "request")
        if packer.add(size, where, what):
            chunks.append(ChunkPlan(start, index, used))
            start, used = index, 0
        used += size
    if len(line_sizes) > start:
        chunks.append(ChunkPlan(start, len(line_sizes), used))
    return chunks
