"""De-duplication of request keys: the positions of the keys a job has not seen yet (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .digest import no_cyclic_gc


def first_new(digests: Sequence[bytes], seen: set[bytes]) -> list[int]:
    """The positions of the digests not in ``seen`` and not earlier in ``digests``, in order;
    adds every digest to ``seen`` (the reference that :class:`DigestSet` is checked against).

    Examples:
        >>> seen = {b"a"}
        >>> first_new([b"b", b"a", b"c", b"b"], seen), sorted(seen)
        ([0, 2], [b'a', b'b', b'c'])
    """
    with no_cyclic_gc():
        # Each digest's first position (later ones overwrite, reversed: the first wins), then
        # those not seen before, in order.
        firsts = dict(zip(reversed(digests), range(len(digests) - 1, -1, -1), strict=True))
        new = sorted(map(firsts.__getitem__, firsts.keys() - seen))
        seen.update(firsts)
    return new


class DigestSet:
    """The distinct 32-byte request keys seen so far, for de-duplication slice by slice.

    :meth:`add` returns, for one slice of digests, the positions of those never seen before
    (each at its first position in the slice), in increasing order, and remembers the slice:
    exactly :func:`first_new` against a set of every digest added so far, without a Python
    object per digest. Every distinct digest is kept once in numpy arrays (32 bytes, one block
    a slice, never copied), and its first 8 bytes, as a sort key, with its number (16 bytes)
    in one of a few sorted runs, merged as they grow (sizes at least doubling, so a key is
    merged about log2(slices) times); a slice is sorted by key and looked up in each run by
    bisection.
    Equal keys are always confirmed on all 32 bytes; two different digests that share their
    first 8 bytes (never seen in practice: about n^2 / 2^65 for n requests) switch the set to
    a Python set of bytes, which gives the same answers.

    Args:
        key_mask: The bits of the first 8 bytes (little-endian) used as the sort key; narrower
            masks make distinct digests share keys (for tests of that case).

    Examples:
        >>> digests = DigestSet()
        >>> digests.add([b"a" * 32, b"b" * 32, b"a" * 32]).tolist()
        [0, 1]
        >>> digests.add([b"c" * 32, b"b" * 32, b"c" * 32]).tolist(), len(digests)
        ([0], 3)
    """

    def __init__(self, key_mask: int = (1 << 64) - 1) -> None:
        self._mask = np.uint64(key_mask)
        # Every distinct digest, as added: one (n, 4) block a slice, numbered on from ``_starts``.
        self._blocks: list[npt.NDArray[np.uint64]] = []
        self._starts: list[int] = []
        self._count = 0
        # Sorted runs: (keys, strictly increasing; the row of ``_words`` of each key's digest).
        self._runs: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = []
        self._exact: set[bytes] | None = None  # once two distinct digests share a key

    def __len__(self) -> int:
        return self._count if self._exact is None else len(self._exact)

    def clear(self) -> None:
        """Forget every digest."""
        self._blocks, self._starts, self._count, self._runs, self._exact = [], [], 0, [], None

    def add(self, digests: Sequence[bytes] | npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Add one slice of 32-byte digests; return the positions of those new to the set.

        Args:
            digests: The digests, as bytes, or as rows of four little-endian 64-bit words (what
                :func:`~prefect_llm_batch.keys.decode_custom_ids` gives: no bytes object per digest).

        Returns:
            The increasing positions in ``digests`` of every digest neither added before nor
            earlier in ``digests``.
        """
        if self._exact is None:
            new = self._add_sorted(digests)
            if new is not None:
                return new
            self._exact = self._as_set()  # two distinct digests share a key: exact from now on
            self._blocks, self._starts, self._count, self._runs = [], [], 0, []
        if isinstance(digests, np.ndarray):
            digests = [row.tobytes() for row in np.ascontiguousarray(digests, "<u8")]
        return np.asarray(first_new(digests, self._exact), np.int64)

    def _add_sorted(self, digests: Sequence[bytes] | npt.NDArray[np.uint64]) -> npt.NDArray[np.int64] | None:
        """:meth:`add` on the sorted runs; None (nothing changed) when distinct digests share a key."""
        n = len(digests)
        if not n:
            return np.zeros(0, np.int64)
        if isinstance(digests, np.ndarray):
            if digests.shape != (n, 4):
                raise ValueError("request digests are rows of four 64-bit words")
            words = np.ascontiguousarray(digests, "<u8")
        else:
            joined = b"".join(digests)
            if len(joined) != 32 * n:
                raise ValueError("request digests are 32 bytes each")
            words = np.frombuffer(joined, "<u8").reshape(n, 4)
        keys = words[:, 0] & self._mask
        order = np.argsort(keys)
        ordered = keys[order]
        same = ordered[1:] == ordered[:-1]
        starts = np.flatnonzero(np.concatenate(([True], ~same)))  # where each key's rows begin
        if len(starts) < n:  # repeated keys: the same digest, or distinct ones sharing a key
            if not np.array_equal(words[order[:-1][same]], words[order[1:][same]]):
                return None
            positions = np.minimum.reduceat(order, starts)  # each digest's first position
        else:
            positions = order
        unique_keys = ordered[starts]  # increasing, as the positions
        fresh = np.ones(len(positions), bool)
        for run_keys, run_rows in self._runs:
            at = np.minimum(np.searchsorted(run_keys, unique_keys), len(run_keys) - 1)
            hit = run_keys[at] == unique_keys
            if hit.any():
                if not np.array_equal(self._stored(run_rows[at[hit]]), words[positions[hit]]):
                    return None
                fresh &= ~hit
        positions = positions[fresh]
        if len(positions):
            self._insert(unique_keys[fresh], np.take(words, positions, axis=0))
        new = np.zeros(n, bool)
        new[positions] = True
        return np.flatnonzero(new).astype(np.int64, copy=False)

    def _insert(self, keys: npt.NDArray[np.uint64], words: npt.NDArray[np.uint64]) -> None:
        start, stop = self._count, self._count + len(keys)
        self._blocks.append(words)
        self._starts.append(start)
        self._count = stop
        self._runs.append((keys, np.arange(start, stop, dtype=np.int64)))
        while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 > len(self._runs[-2][0]):
            (keys_a, rows_a), (keys_b, rows_b) = self._runs[-2:]
            merged = np.concatenate((keys_a, keys_b))
            order = np.argsort(merged, kind="stable")  # two sorted runs: merged in linear time
            self._runs[-2:] = [(merged[order], np.concatenate((rows_a, rows_b))[order])]

    def _as_set(self) -> set[bytes]:
        out: set[bytes] = set()
        with no_cyclic_gc():
            for block in self._blocks:
                data = block.tobytes()
                out.update(data[at : at + 32] for at in range(0, len(data), 32))
        return out

    def _stored(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        """The digests (as (n, 4) words) numbered ``rows``."""
        starts = np.asarray(self._starts, np.int64)
        blocks = np.searchsorted(starts, rows, side="right") - 1
        out = np.empty((len(rows), 4), np.uint64)
        for block in np.unique(blocks).tolist():
            picked = blocks == block
            out[picked] = self._blocks[block][rows[picked] - starts[block]]
        return out
