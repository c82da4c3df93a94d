"""Request keys as numbers: ``custom_id`` s decoded back to their digests, and an index from
digests to results (pure: numpy and Arrow, no I/O).

Matching the rows of a large job to their answers by ``custom_id`` string needs every id as a
string and a hash table over them: about 100 bytes per request, and the row ids besides. A
``custom_id`` is 32 digest bytes spelled in base64; decoded, it is four 64-bit words. Sorted by
the first word, a job's results are found with a binary search and checked on all four words:
48 bytes per result, nothing kept per row but the position found, and the row ids can stream.

Examples:
    >>> import pyarrow as pa
    >>> from prefect_llm_batch.keys import custom_id_from_digest
    >>> ids = [custom_id_from_digest(bytes([i]) * 32) for i in range(3)]
    >>> index = ResultIndex([decode_custom_ids(pa.array(ids[:2])), decode_custom_ids(pa.array(ids[1:]))])
    >>> index.lookup(decode_custom_ids(pa.array([ids[2], ids[0], ids[1]]))).tolist()
    [3, 0, 2]
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

#: Characters of a ``custom_id`` (32 bytes in unpadded base64).
CUSTOM_ID_CHARS = 43

_TO_STANDARD = bytes.maketrans(b"-_", b"+/")

Digests = npt.NDArray[np.uint64]
"""Request keys as an ``(n, 4)`` array: the 32 digest bytes of each, as four 64-bit words."""


def decode_custom_ids(
    ids: pa.Array[Any] | pa.ChunkedArray[Any], *, what: str = "result", first: int = 0
) -> Digests:
    """The digests of ``custom_id`` s, one row of four 64-bit words per id.

    One base64 pass over all of them: each id, with an ``A`` appended, is the base64 of its
    digest followed by a zero byte (which is how ids are spelled, see
    :func:`~prefect_llm_batch.keys.custom_id_array`).

    Args:
        ids: The ids.
        what: What an id belongs to, for the error message.
        first: The number of the first id, for the error message.

    Raises:
        ValueError: An id is null or not a ``custom_id`` (the message names its position).

    Examples:
        >>> import pyarrow as pa
        >>> from prefect_llm_batch.keys import custom_id_from_digest
        >>> words = decode_custom_ids(pa.array([custom_id_from_digest(bytes(range(32)))]))
        >>> words.shape, words.tobytes() == bytes(range(32))
        ((1, 4), True)
        >>> decode_custom_ids(pa.array(["r-1"]))
        Traceback (most recent call last):
        ...
        ValueError: result 0 has the id 'r-1', which is not a request key
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    n = len(ids)
    if n == 0:
        return np.zeros((0, 4), np.uint64)
    if ids.null_count:
        raise ValueError(f"{what} {first + _first(pc.is_null(ids))} has no id")
    text_ids: Any = ids.cast(pa.string())
    wrong = pc.not_equal(pc.binary_length(text_ids), pa.scalar(CUSTOM_ID_CHARS, pa.int32()))
    if pc.any(wrong).as_py():
        _raise_not_a_key(text_ids, _first(wrong), what, first)
    joined = pc.binary_join_element_wise(text_ids, pa.scalar("A"), pa.scalar("")).cast(pa.large_binary())
    _, offsets, data = joined.buffers()
    assert offsets is not None and data is not None
    bounds = np.frombuffer(offsets, np.int64, count=2, offset=joined.offset * 8)
    begin = int(bounds[0])
    text = memoryview(data)[begin : begin + n * (CUSTOM_ID_CHARS + 1)].tobytes().translate(_TO_STANDARD)
    try:
        raw = binascii.a2b_base64(text)
    except binascii.Error:
        raw = b""
    if len(raw) != n * 33:  # a character outside the alphabet was skipped
        _raise_not_a_key(text_ids, _first_undecodable(text_ids), what, first)
    padded = np.frombuffer(raw, np.uint8).reshape(n, 33)
    if padded[:, 32].any():  # the last character carries bits no digest has
        _raise_not_a_key(text_ids, int(np.flatnonzero(padded[:, 32])[0]), what, first)
    return np.ascontiguousarray(padded[:, :32]).view(np.uint64)


def _first(mask: pa.Array[Any]) -> int:
    return int(pc.indices_nonzero(mask)[0].as_py())


def _first_undecodable(ids: pa.Array[Any]) -> int:
    matches = pc.match_substring_regex(ids, f"^[A-Za-z0-9_-]{{{CUSTOM_ID_CHARS}}}$")
    return _first(pc.invert(matches)) if not pc.all(matches).as_py() else 0


def _raise_not_a_key(ids: pa.Array[Any], position: int, what: str, first: int) -> None:
    shown = ids[position].as_py()
    raise ValueError(f"{what} {first + position} has the id {shown!r}, which is not a request key")


class ResultIndex:
    """Where each request's latest result is, among results numbered in order across sources.

    Results are numbered in the order given (the sources one after the other); when the same
    key appears more than once, the last one counts (a retry round replaces an earlier
    answer). Memory: about 48 bytes per result.

    Args:
        sources: The keys of each source's results, in order (from :func:`decode_custom_ids`).

    Attributes:
        size: The number of results, over all sources.
        latest: For every result, whether it is the one that counts for its key.
    """

    def __init__(self, sources: Sequence[Digests]) -> None:
        digests = np.concatenate(sources) if sources else np.zeros((0, 4), np.uint64)
        self.size = len(digests)
        order = np.argsort(digests[:, 0], kind="stable")  # equal first words keep result order
        prefix = digests[order, 0]
        drop = _replaced(digests, order, prefix)
        if drop is not None:
            keep = np.flatnonzero(~drop)
            order, prefix = order[keep], prefix[keep]
        self._digests = digests
        self._order = order
        self._prefix = prefix
        self.latest = np.zeros(self.size, bool)
        self.latest[order] = True

    def lookup(self, keys: Digests) -> npt.NDArray[np.int64]:
        """The number of the latest result of each key (-1 when there is none).

        Examples:
            >>> import numpy as np
            >>> keys = np.array([[1, 2, 3, 4], [1, 9, 9, 9], [5, 5, 5, 5]], np.uint64)
            >>> ResultIndex([keys[:2]]).lookup(keys).tolist()
            [0, 1, -1]
        """
        count = len(self._prefix)
        if count == 0 or len(keys) == 0:
            return np.full(len(keys), -1, np.int64)
        first = keys[:, 0]
        order = np.argsort(first)  # sorted keys search in a quarter of the time (cache locality)
        at = np.empty(len(first), np.intp)
        at[order] = np.searchsorted(self._prefix, first[order])
        clipped = np.minimum(at, count - 1)
        candidate = self._order[clipped]
        near = (at < count) & (self._prefix[clipped] == first)
        found = near & (self._digests[candidate] == keys).all(axis=1)
        out = np.where(found, candidate, -1).astype(np.int64)
        # Keys sharing a first word with another key (one pair in ~10^19): look along the run.
        for row in np.flatnonzero(near & ~found).tolist():
            slot = int(at[row]) + 1
            while slot < count and self._prefix[slot] == first[row]:
                if (self._digests[self._order[slot]] == keys[row]).all():
                    out[row] = self._order[slot]
                    break
                slot += 1
        return out


def _replaced(digests: Digests, order: npt.NDArray[np.intp], prefix: Digests) -> npt.NDArray[np.bool_] | None:
    """Which sorted results an equal key later in result order replaces (None: none)."""
    if len(prefix) < 2 or not (prefix[1:] == prefix[:-1]).any():
        return None
    starts = np.flatnonzero(np.concatenate([[True], prefix[1:] != prefix[:-1]]))
    lengths = np.diff(np.append(starts, len(prefix)))
    drop = np.zeros(len(prefix), bool)
    pairs = starts[lengths == 2]  # the usual case: one retry of one request
    same = (digests[order[pairs]] == digests[order[pairs + 1]]).all(axis=1)
    drop[pairs[same]] = True
    for start, length in zip(starts[lengths > 2].tolist(), lengths[lengths > 2].tolist(), strict=True):
        newest: dict[bytes, int] = {}  # sorted slots ascend in result order: the last one wins
        for slot in range(start, start + length):
            key = digests[order[slot]].tobytes()
            if key in newest:
                drop[newest[key]] = True
            newest[key] = slot
    return drop
