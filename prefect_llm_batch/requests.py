"""Request bodies, request keys, ``custom_id`` s, de-duplication and chunk planning (pure).

A **request key** identifies what is asked, and of whom: the SHA-256 of the canonical JSON
(sorted keys, no whitespace, UTF-8) of ``{"key_version", "provider", "base_url", "endpoint",
"body"}``. Two rows that render the same body share one key, so the request is sent once and
its answer fanned back out to both. The key includes the provider and the normalised base URL,
so an answer from the simulator can never be served to a job against a real provider.

A **custom_id** is the key in a fixed-length, provider-safe spelling: the 32 digest bytes in
unpadded URL-safe base64, always 43 characters of ``[A-Za-z0-9_-]``; valid for OpenAI,
Anthropic and Together alike. Rows reach their answers through it, never through line order.

Examples:
    >>> body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    >>> cid = custom_id("openai", "https://api.openai.com/v1", "/v1/chat/completions", body)
    >>> len(cid), cid == custom_id("openai", "https://API.openai.com/v1/", "/v1/chat/completions", body)
    (43, True)
    >>> cid == custom_id("simulator", "https://api.openai.com/v1", "/v1/chat/completions", body)
    False
"""

from __future__ import annotations

import binascii
import contextlib
import gc
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from .errors import InputError
from .spec import KEY_VERSION, BatchLimits

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_base_url(url: str) -> str:
    """Return the canonical spelling of a base URL, as used in request keys.

    Lower-cases scheme and host, drops user info, default ports, query, fragment and trailing
    slashes. User info is dropped so credentials embedded in a URL never reach keys or files.

    Args:
        url: A base URL such as ``https://api.openai.com/v1/``.

    Returns:
        The normalised URL.

    Examples:
        >>> normalise_base_url("HTTPS://user:pw@Api.OpenAI.com:443/v1/")
        'https://api.openai.com/v1'
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    netloc = host
    if parts.port is not None and _DEFAULT_PORTS.get(scheme) != parts.port:
        netloc = f"{host}:{parts.port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, "", ""))


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value canonically: sorted keys, no whitespace, UTF-8.

    Examples:
        >>> canonical_json({"b": 1, "a": [1.5, "é"]})
        b'{"a":[1.5,"\\xc3\\xa9"],"b":1}'
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def key_hasher(provider: str, base_url: str, endpoint: str) -> Callable[[bytes], bytes]:
    """Return a function from a body's canonical JSON to its 32-byte request key.

    The key is the SHA-256 of ``canonical_json({"key_version", "provider", "base_url",
    "endpoint", "body"})``. Sorted keys put ``body`` second, so the canonical payload is always
    ``prefix + canonical_json(body) + suffix``: both parts are encoded (and the base URL
    normalised) once here, not once per row.

    Examples:
        >>> body = {"model": "m", "messages": []}
        >>> digest = key_hasher("openai", "https://x/v1/", "/v1/chat/completions")
        >>> same = request_digest("openai", "https://x/v1", "/v1/chat/completions", body)
        >>> digest(canonical_json(body)) == same
        True
    """
    payload = {
        "key_version": KEY_VERSION,
        "provider": provider,
        "base_url": normalise_base_url(base_url),
        "endpoint": endpoint,
        "body": None,
    }
    whole = canonical_json(payload)
    marker = b'"body":null'
    at = whole.index(marker) + len(b'"body":')
    head = hashlib.sha256(whole[:at])
    suffix = whole[at + len(b"null") :]

    def digest(body_json: bytes) -> bytes:
        hasher = head.copy()
        hasher.update(body_json)
        hasher.update(suffix)
        return hasher.digest()

    return digest


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


def chat_body(
    model: str, prompt: str, system: str | None = None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build a chat-completions request body.

    Examples:
        >>> chat_body("gpt-4o-mini", "Hi", system="Be brief", params={"temperature": 0})
        {'model': 'gpt-4o-mini', 'messages': [{'role': 'system', 'content': 'Be brief'}, \
{'role': 'user', 'content': 'Hi'}], 'temperature': 0}
    """
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {"model": model, "messages": messages}
    if params:
        body.update(params)
    return body


@dataclass(frozen=True)
class RequestSet:
    """The requests of a job after de-duplication.

    Attributes:
        row_ids: The ``custom_id`` of every input row, in row order (duplicates repeat).
        unique_ids: Each distinct ``custom_id`` once, in order of first appearance.
        body_json: The canonical JSON of the body of each entry of ``unique_ids``, same order
            (the bytes the request key hashes; :func:`line_encoder` puts them in a line as they are).
        first_row: The input row that first asked each entry of ``unique_ids``.
    """

    row_ids: list[str]
    unique_ids: list[str]
    body_json: list[bytes]
    first_row: list[int]

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The bodies as dicts (decoded on each access: for tests and small jobs)."""
        return [orjson.loads(body) for body in self.body_json]


def build_request_set(
    *,
    provider: str,
    base_url: str,
    endpoint: str,
    prompts: Sequence[str],
    systems: Sequence[str | None] | None = None,
    build_body: Callable[[str, str | None], dict[str, Any]],
) -> RequestSet:
    """Build one body per row, key it, and keep each distinct request once.

    Args:
        provider: Provider identity for the key (``"openai"``, ``"simulator"``...).
        base_url: Base URL for the key (normalised here).
        endpoint: The endpoint every request goes to.
        prompts: Rendered user prompt of every row.
        systems: Rendered system prompt of every row, or None.
        build_body: The provider's body builder, from (prompt, system) to a request body.

    Returns:
        The de-duplicated :class:`RequestSet`.

    Examples:
        >>> rs = build_request_set(provider="openai", base_url="https://x/v1",
        ...     endpoint="/v1/chat/completions", prompts=["a", "b", "a"],
        ...     build_body=lambda prompt, system: chat_body("m", prompt, system))
        >>> len(rs.row_ids), len(rs.unique_ids), rs.row_ids[0] == rs.row_ids[2], rs.first_row
        (3, 2, True, [0, 1])
    """
    digest = key_hasher(provider, base_url, endpoint)
    dumps, sort_keys = orjson.dumps, orjson.OPT_SORT_KEYS
    row_ids: list[str] = []
    seen: set[str] = set()
    unique_ids: list[str] = []
    body_json: list[bytes] = []
    first_row: list[int] = []
    with no_cyclic_gc():
        for row, prompt in enumerate(prompts):
            system = systems[row] if systems is not None else None
            encoded = dumps(build_body(prompt, system), option=sort_keys)
            cid = custom_id_from_digest(digest(encoded))
            row_ids.append(cid)
            if cid not in seen:
                seen.add(cid)
                unique_ids.append(cid)
                # A copy: orjson's result keeps its whole working buffer (4-8 KB here) allocated.
                body_json.append(memoryview(encoded).tobytes())
                first_row.append(row)
    return RequestSet(row_ids=row_ids, unique_ids=unique_ids, body_json=body_json, first_row=first_row)


_ID_SLOT = "\x00custom_id\x00"
_BODY_SLOT = "\x00body\x00"


def line_encoder(build_line: Callable[[str, Any], dict[str, Any]]) -> Callable[[str, bytes], bytes]:
    """Return a fast encoder of batch input lines from a ``custom_id`` and a body's JSON bytes.

    ``build_line`` (a provider's) is called once, with placeholders; every line is then the
    concatenation of its fixed parts, the ``custom_id`` and the body bytes, as they are: the
    same JSON value as ``encode_line(build_line(custom_id, body))``, without re-encoding the body.

    Examples:
        >>> encode = line_encoder(lambda cid, body: {"custom_id": cid, "method": "POST", "body": body})
        >>> encode("k1", b'{"model":"m"}')
        b'{"custom_id":"k1","method":"POST","body":{"model":"m"}}\\n'
    """
    template = encode_line(build_line(_ID_SLOT, _BODY_SLOT))
    id_slot, body_slot = orjson.dumps(_ID_SLOT), orjson.dumps(_BODY_SLOT)
    if template.count(id_slot) != 1 or template.count(body_slot) != 1:
        raise ValueError("build_line must embed the custom_id and the body once, as given")
    head, rest = template.split(id_slot)
    if body_slot in head:
        raise ValueError("build_line must put the custom_id before the body")
    middle, tail = rest.split(body_slot)
    head, middle = head + b'"', b'"' + middle

    def encode(custom_id: str, body_json: bytes) -> bytes:
        return b"".join((head, custom_id.encode("ascii"), middle, body_json, tail))

    return encode


def encode_line(line: dict[str, Any]) -> bytes:
    """Encode one JSONL line (with its trailing newline).

    Examples:
        >>> encode_line({"custom_id": "a", "body": {}})
        b'{"custom_id":"a","body":{}}\\n'
    """
    return orjson.dumps(line) + b"\n"


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


def plan_chunks(
    line_sizes: Sequence[int], limits: BatchLimits, first_row: Sequence[int] | None = None
) -> list[ChunkPlan]:
    """Split requests into batches that respect both the count and the byte limit.

    Greedy and order-preserving: a chunk is closed as soon as the next line would break a limit.

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
    start = 0
    used = 0
    for index, size in enumerate(line_sizes):
        if size > limits.max_batch_bytes:
            where = f"row {first_row[index]}" if first_row is not None else f"request {index}"
            raise InputError(
                f"the request of {where} is {size} bytes, more than max_batch_bytes={limits.max_batch_bytes}"
            )
        count = index - start
        if count and (count >= limits.max_requests_per_batch or used + size > limits.max_batch_bytes):
            chunks.append(ChunkPlan(start, index, used))
            start, used = index, 0
        used += size
    if len(line_sizes) > start:
        chunks.append(ChunkPlan(start, len(line_sizes), used))
    return chunks
