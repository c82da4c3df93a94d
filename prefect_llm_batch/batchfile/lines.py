"""Batch input lines (JSONL): encoding one line, a provider's line layout around the ``custom_id``
and the body, and reading the ``custom_id`` s back out of a batch file this package wrote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

from prefect_llm_batch.spec import ID_HEAD

_ID_SLOT = "\x00custom_id\x00"


_BODY_SLOT = "\x00body\x00"


def line_parts(build_line: Callable[[str, Any], dict[str, Any]]) -> tuple[bytes, bytes, bytes]:
    """``build_line``'s JSON as (head, middle, tail) around the custom_id and the body."""
    template = encode_line(build_line(_ID_SLOT, _BODY_SLOT))
    id_slot, body_slot = orjson.dumps(_ID_SLOT), orjson.dumps(_BODY_SLOT)
    if template.count(id_slot) != 1 or template.count(body_slot) != 1:
        raise ValueError("build_line must embed the custom_id and the body once, as given")
    head, rest = template.split(id_slot)
    if body_slot in head:
        raise ValueError("build_line must put the custom_id before the body")
    middle, tail = rest.split(body_slot)
    return head + b'"', b'"' + middle, tail


def encode_line(line: dict[str, Any]) -> bytes:
    """Encode one JSONL line (with its trailing newline).

    Examples:
        >>> encode_line({"custom_id": "a", "body": {}})
        b'{"custom_id":"a","body":{}}\\n'
    """
    return orjson.dumps(line) + b"\n"


def fixed_width_ids(data: bytes) -> npt.NDArray[np.uint8] | None:
    """The ``custom_id`` of every line of a batch file, one row of bytes per line, sliced out with
    numpy; None unless every line is :data:`ID_HEAD`, an id of one width in plain printable ASCII
    (no escapes), then ``"``, and the file ends with a newline (the files this package writes;
    the caller reads any other file line by line).

    Examples:
        >>> ids = fixed_width_ids(b'{"custom_id":"k1","body":{}}\\n{"custom_id":"k2","body":{}}\\n')
        >>> ids.shape, ids.tobytes()
        ((2, 2), b'k1k2')
        >>> fixed_width_ids(b'{"custom_id":"k1"}\\n{"custom_id":"key2"}\\n') is None  # two widths
        True
    """
    if not data.endswith(b"\n") or b"\r" in data:
        return None
    raw = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(raw == 10)
    starts = np.concatenate((np.zeros(1, np.int64), ends[:-1] + 1))
    head = len(ID_HEAD)
    width = data.find(b'"', head) - head
    if width < 1 or np.any(ends - starts < head + width + 1):
        return None
    heads = raw[starts[:, None] + np.arange(head)]
    if not np.array_equal(heads, np.broadcast_to(np.frombuffer(ID_HEAD, np.uint8), heads.shape)):
        return None
    ids = raw[starts[:, None] + np.arange(head, head + width)]
    printable = (ids >= 0x20) & (ids < 0x7F) & (ids != ord('"')) & (ids != ord("\\"))
    if not printable.all() or np.any(raw[starts + head + width] != ord('"')):
        return None
    return cast("npt.NDArray[np.uint8]", ids)
