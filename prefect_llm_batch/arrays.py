"""Arrow array helpers (pure): views of an array's buffers without copying them.

Examples:
    >>> import pyarrow as pa
    >>> value_offsets(pa.array(["ab", "", "cde"], pa.large_string())).tolist()
    [0, 2, 2, 5]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = ["value_offsets"]


def value_offsets(values: pa.Array[Any]) -> npt.NDArray[np.int64]:
    """Where each value of a large binary or large string array starts and ends in its data
    buffer (``len(values) + 1`` offsets, the array's own slice taken into account; no copy).

    Examples:
        >>> value_offsets(pa.array([b"ab", b"c", b"def"], pa.large_binary()).slice(1)).tolist()
        [2, 3, 6]
    """
    buffers: list[Any] = values.buffers()
    offsets: npt.NDArray[np.int64] = np.frombuffer(buffers[1], np.int64)
    return offsets[values.offset : values.offset + len(values) + 1]
