"""The request key of a request and its ``custom_id`` spelling (pure).

A **request key** identifies what is asked, and of whom: the SHA-256 of the canonical JSON
(sorted keys, no whitespace, UTF-8) of ``{"key_version", "provider", "base_url", "endpoint",
"body"}``. Two rows that render the same body share one key, so the request is sent once and
its answer fanned back out to both. The key includes the provider and the normalised base URL,
so an answer from the simulator can never be served to a job against a real provider.

A **custom_id** is the key in a fixed-length, provider-safe spelling: the 32 digest bytes in
unpadded URL-safe base64, always 43 characters of ``[A-Za-z0-9_-]``; valid for OpenAI,
Anthropic and Together alike. Rows reach their answers through it, never through line order.

Also the Arrow helpers that key many rows at once (:func:`key_parts`, :func:`hash_rows`,
:func:`custom_id_array`) and :func:`split_fixed_width` for ids packed end to end. Base URLs
are normalised by :func:`~prefect_llm_batch.spec.normalise_base_url`.
"""

from __future__ import annotations

import binascii
import contextlib
import gc
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from ..arrays import value_offsets
from ..spec import KEY_VERSION, normalise_base_url


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value canonically: sorted keys, no whitespace, UTF-8.

    Examples:
        >>> canonical_json({"b": 1, "a": [1.5, "é"]})
        b'{"a":[1.5,"\\xc3\\xa9"],"b":1}'
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def key_parts(provider: str, base_url: str, endpoint: str) -> tuple[bytes, bytes]:
    """The canonical key payload's bytes before and after the body's JSON (for encoders that
    hash many bodies: the key of a body is the SHA-256 of ``head + body JSON + tail``).

    Sorted keys put ``body`` second, so the payload is always ``prefix + body JSON + suffix``.
    """
    payload = {
        "key_version": KEY_VERSION,
        "provider": provider,
        "base_url": normalise_base_url(base_url),
        "endpoint": endpoint,
        "body": None,
    }
    whole = canonical_json(payload)
    at = whole.index(b'"body":null') + len(b'"body":')
    return whole[:at], whole[at + len(b"null") :]


def request_digest(provider: str, base_url: str, endpoint: str, body: dict[str, Any]) -> bytes:
    """Return the 32-byte SHA-256 request key of one request (see the module docstring)."""
    payload = {
        "key_version": KEY_VERSION,
        "provider": provider,
        "base_url": normalise_base_url(base_url),
        "endpoint": endpoint,
        "body": body,
    }
    return hashlib.sha256(canonical_json(payload)).digest()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def custom_id_from_digest(digest: bytes) -> str:
    """Spell a 32-byte request key as a 43-character ``custom_id``.

    Examples:
        >>> custom_id_from_digest(bytes(32))
        'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
        >>> import base64
        >>> expected = base64.urlsafe_b64encode(bytes(range(32)))[:43].decode()
        >>> custom_id_from_digest(bytes(range(32))) == expected
        True
    """
    return binascii.b2a_base64(digest, newline=False)[:43].translate(_URLSAFE).decode("ascii")


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of acyclic objects.

    Each generation-2 collection walks every live container; building 1M request bodies triggers
    dozens of them for nothing (bodies hold no cycles). Reference counting still frees memory.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def custom_id(provider: str, base_url: str, endpoint: str, body: dict[str, Any]) -> str:
    """Return the ``custom_id`` of one request: its request key, spelled for the wire."""
    return custom_id_from_digest(request_digest(provider, base_url, endpoint, body))


def custom_id_array(digests: Sequence[bytes]) -> pa.Array[Any]:
    """Spell many 32-byte request keys as ``custom_id`` s at once (see :func:`custom_id_from_digest`).

    Each digest is padded to 33 bytes, a multiple of 3, so one base64 pass over all of them
    gives 44 characters per digest whose first 43 are that digest's ``custom_id``.

    Examples:
        >>> digests = [bytes(range(32)), bytes([255]) * 32]
        >>> custom_id_array(digests).to_pylist() == [custom_id_from_digest(d) for d in digests]
        True
    """
    if not digests:
        return pa.array([], pa.large_string())
    joined = b"\x00".join(digests) + b"\x00"
    text = binascii.b2a_base64(joined, newline=False).translate(_URLSAFE)
    if len(text) != 44 * len(digests):
        raise ValueError("request digests are 32 bytes each")
    # The first 43 characters of every 44 (base64 is ASCII: valid UTF-8 as it is).
    data = np.ascontiguousarray(np.frombuffer(text, np.uint8).reshape(len(digests), 44)[:, :43])
    offsets = np.arange(0, 43 * len(digests) + 1, 43, dtype=np.int64)
    spelled: pa.Array[Any] = pa.Array.from_buffers(
        pa.large_string(), len(digests), [None, pa.py_buffer(offsets.data), pa.py_buffer(data.data)]
    )
    return spelled


def hash_rows(head: Any, keyed: pa.Array[Any]) -> list[bytes]:
    """The SHA-256 digest of ``head``'s bytes followed by each value of ``keyed`` (a binary
    array without nulls): one hash copy, one update and one digest per row, over views of the
    array's buffer (no Python object per value but the view)."""
    keyed = keyed.cast(pa.large_binary())
    buffers: list[Any] = keyed.buffers()
    offsets = value_offsets(keyed).tolist()
    data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
    out: list[bytes] = []
    append = out.append
    copy = head.copy
    with no_cyclic_gc():
        for start, end in itertools.pairwise(offsets):
            hasher = copy()
            hasher.update(data[start:end])
            append(hasher.digest())
    return out


def split_fixed_width(packed: bytes, width: int) -> list[str]:
    """ASCII ids packed end to end, ``width`` bytes each, as strings.

    Examples:
        >>> split_fixed_width(b"k1k2k3", 2)
        ['k1', 'k2', 'k3']
    """
    text = packed.decode("ascii")
    return [text[i : i + width] for i in range(0, len(text), width)]
