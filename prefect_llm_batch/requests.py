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


#: Stand-ins for a row's prompt and system prompt when a body's fixed JSON is worked out once.
_PROMPT_SLOT = "\x00prompt-slot\x00"
_SYSTEM_SLOT = "\x00system-slot\x00"
_ID_SLOT = "\x00custom_id\x00"
_BODY_SLOT = "\x00body\x00"


def json_string_contents(texts: Sequence[str]) -> list[bytes]:
    r"""The JSON encoding of each text without its quotes, as ``orjson`` writes it inside a body.

    One ``orjson.dumps`` of the whole list, split at the element boundaries, is about seven
    times faster than one call per text. Inside an encoded string every ``"`` is escaped, so
    ``","`` can only be a boundary, except where a text ends with ``",`` (its escaped quote
    followed by the comma and the closing quote); such lists are encoded one text at a time.

    Examples:
        >>> json_string_contents(['say "hi"', "two\nlines", "é", ""])
        [b'say \\"hi\\"', b'two\\nlines', b'\xc3\xa9', b'']
        >>> json_string_contents(['ends with ",', "x"])
        [b'ends with \\",', b'x']
    """
    if not texts:
        return []
    encoded = orjson.dumps(texts if isinstance(texts, list) else list(texts))
    if b'\\","' in encoded:
        return [orjson.dumps(text)[1:-1] for text in texts]
    parts = encoded[2:-2].split(b'","')
    if len(parts) != len(texts):  # cannot happen (see above); never guess
        return [orjson.dumps(text)[1:-1] for text in texts]
    return parts


def custom_ids_from_digests(digests: Sequence[bytes]) -> list[str]:
    """Spell many 32-byte request keys as ``custom_id`` s at once (see :func:`custom_id_from_digest`).

    Each digest is padded to 33 bytes, a multiple of 3, so one base64 pass over all of them
    gives 44 characters per digest whose first 43 are that digest's ``custom_id``.

    Examples:
        >>> digests = [bytes(range(32)), bytes([255]) * 32]
        >>> custom_ids_from_digests(digests) == [custom_id_from_digest(d) for d in digests]
        True
    """
    if not digests:
        return []
    joined = b"\x00".join(digests) + b"\x00"
    text = binascii.b2a_base64(joined, newline=False).translate(_URLSAFE).decode("ascii")
    return [text[start : start + 43] for start in range(0, len(text), 44)]


@dataclass(frozen=True)
class _BodyShape:
    """A body's canonical JSON as fixed parts around its string slots (prompt, system prompt)."""

    parts: tuple[bytes, ...]  # len(slots) + 1 fixed parts, the quotes of each slot included
    slots: tuple[str, ...]  # "prompt" or "system", in the order they appear in the JSON


def _body_shape(body_json: bytes, slots: Sequence[str]) -> _BodyShape | None:
    """Split a body encoded with slot stand-ins into fixed parts, or None when it cannot be."""
    markers = {"prompt": orjson.dumps(_PROMPT_SLOT), "system": orjson.dumps(_SYSTEM_SLOT)}
    found: list[tuple[int, str]] = []
    for slot in slots:
        if body_json.count(markers[slot]) != 1:
            return None  # the builder changed, dropped or repeated the text: no shortcut
        found.append((body_json.index(markers[slot]), slot))
    found.sort()
    parts: list[bytes] = []
    at = 0
    for position, slot in found:
        parts.append(body_json[at : position + 1])  # up to and including the opening quote
        at = position + len(markers[slot]) - 1  # from the closing quote
    parts.append(body_json[at:])
    return _BodyShape(parts=tuple(parts), slots=tuple(slot for _, slot in found))


class RequestEncoder:
    """Request keys, ``custom_id`` s and batch input lines for many rows at once.

    A provider's body builder is called once per body *shape* (with and without a system
    prompt) with stand-in texts; every row's body is then the shape's fixed JSON around the
    row's JSON-escaped texts, and its key is hashed from a precomputed SHA-256 state. The result
    is byte-for-byte ``canonical_json(build_body(prompt, system))`` (checked on the first row of
    every call, falling back to building each body when it is not), at about a tenth of the cost.

    Args:
        provider: Provider identity for the key.
        base_url: Base URL for the key (normalised here).
        endpoint: The endpoint every request goes to.
        build_body: From (prompt, system prompt or None) to a request body.
        build_line: From (custom_id, body) to a batch input line (a provider's ``build_line``);
            needed only for :meth:`EncodedRequests.lines`.

    Examples:
        >>> encoder = RequestEncoder(provider="openai", base_url="https://x/v1",
        ...     endpoint="/v1/chat/completions", build_body=lambda p, s: chat_body("m", p, s),
        ...     build_line=lambda cid, body: {"custom_id": cid, "body": body})
        >>> encoded = encoder.encode(["hi", "hi", "yo"])
        >>> encoded.custom_ids[0] == encoded.custom_ids[1] != encoded.custom_ids[2]
        True
        >>> encoded.custom_ids[2] == custom_id("openai", "https://x/v1/", "/v1/chat/completions",
        ...                                    chat_body("m", "yo"))
        True
        >>> import orjson
        >>> line = orjson.loads(encoded.lines([2])[0])
        >>> line["custom_id"] == encoded.custom_ids[2], line["body"] == chat_body("m", "yo")
        (True, True)
    """

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        endpoint: str,
        build_body: Callable[[str, str | None], dict[str, Any]],
        build_line: Callable[[str, Any], dict[str, Any]] | None = None,
    ) -> None:
        self._build_body = build_body
        self._digest = key_hasher(provider, base_url, endpoint)
        payload = {
            "key_version": KEY_VERSION,
            "provider": provider,
            "base_url": normalise_base_url(base_url),
            "endpoint": endpoint,
            "body": None,
        }
        whole = canonical_json(payload)
        at = whole.index(b'"body":null') + len(b'"body":')
        self._key_head, self._key_tail = whole[:at], whole[at + len(b"null") :]
        self._line_parts = _line_parts(build_line) if build_line is not None else None
        self._shapes: dict[bool, _BodyShape | None] = {}

    def _shape(self, with_system: bool) -> _BodyShape | None:
        if with_system not in self._shapes:
            system = _SYSTEM_SLOT if with_system else None
            slots = ("prompt", "system") if with_system else ("prompt",)
            body = canonical_json(self._build_body(_PROMPT_SLOT, system))
            self._shapes[with_system] = _body_shape(body, slots)
        return self._shapes[with_system]

    def encode(self, prompts: Sequence[str], systems: Sequence[str | None] | None = None) -> EncodedRequests:
        """Key the requests of ``prompts`` (and ``systems``), one per row.

        Raises:
            InputError: As the body builder does (a bad parameter, a system prompt where none
                is allowed).
        """
        n = len(prompts)
        if systems is not None and len(systems) != n:
            raise ValueError(f"{len(systems)} system prompts for {n} prompts")
        has_system = [bool(s) for s in systems] if systems is not None else None
        groups: list[tuple[bool, list[int] | None]]
        if has_system is None or not any(has_system):
            groups = [(False, None)]
        elif all(has_system):
            groups = [(True, None)]
        else:
            groups = [
                (flag, [i for i, has in enumerate(has_system) if has is flag]) for flag in (False, True)
            ]
        digests: list[bytes] = [b""] * n if len(groups) > 1 else []
        encoded = EncodedRequests(self, n)
        for with_system, rows in groups:
            texts = prompts if rows is None else [prompts[i] for i in rows]
            sys_texts = None
            if with_system:
                assert systems is not None
                sys_texts = [str(systems[i]) for i in (rows if rows is not None else range(n))]
            part = self._encode_group(with_system, texts, sys_texts, rows, encoded)
            if rows is None:
                digests = part
            else:
                for row, digest in zip(rows, part, strict=True):
                    digests[row] = digest
        encoded.digests = digests
        encoded.custom_ids = custom_ids_from_digests(digests)
        return encoded

    def _encode_group(
        self,
        with_system: bool,
        prompts: Sequence[str],
        systems: list[str] | None,
        rows: list[int] | None,
        encoded: EncodedRequests,
    ) -> list[bytes]:
        if not prompts:
            return []
        shape = self._shape(with_system)
        texts = {"prompt": json_string_contents(prompts)}
        if systems is not None:
            texts["system"] = json_string_contents(systems)
        if shape is not None:
            columns = [texts[slot] for slot in shape.slots]
            first = b"".join(_interleave(shape.parts, [column[0] for column in columns]))
            if first != canonical_json(self._build_body(prompts[0], systems[0] if systems else None)):
                shape = None  # the builder does not embed the texts as they are: build every body
        if shape is None:
            bodies = [
                canonical_json(self._build_body(p, systems[i] if systems else None))
                for i, p in enumerate(prompts)
            ]
            encoded.add_bodies(rows, bodies)
            digest = self._digest
            return [digest(body) for body in bodies]
        encoded.add_shape(rows, shape, columns)
        head = hashlib.sha256(self._key_head + shape.parts[0])
        tail = shape.parts[-1] + self._key_tail
        out: list[bytes] = []
        append = out.append
        with no_cyclic_gc():
            if len(columns) == 1:
                for text in columns[0]:
                    hasher = head.copy()
                    hasher.update(text)
                    hasher.update(tail)
                    append(hasher.digest())
            else:
                middles = shape.parts[1:-1]
                for values in zip(*columns, strict=True):
                    hasher = head.copy()
                    for index, value in enumerate(values):
                        hasher.update(value)
                        hasher.update(middles[index] if index < len(middles) else tail)
                    append(hasher.digest())
        return out


def _interleave(parts: Sequence[bytes], values: Sequence[bytes]) -> list[bytes]:
    out = [parts[0]]
    for value, part in zip(values, parts[1:], strict=True):
        out += (value, part)
    return out


class EncodedRequests:
    """The keyed requests of one :meth:`RequestEncoder.encode` call (one entry per row).

    Attributes:
        digests: The 32-byte request key of every row.
        custom_ids: The ``custom_id`` of every row.
    """

    def __init__(self, encoder: RequestEncoder, n: int) -> None:
        self._encoder = encoder
        self._n = n
        self.digests: list[bytes] = []
        self.custom_ids: list[str] = []
        # Per row: (shape, its texts, index in them), or (None, bodies, index).
        self._groups: list[tuple[_BodyShape | None, list[list[bytes]] | list[bytes]]] = []
        self._where: list[tuple[int, int]] | None = None  # row -> (group, index), for several groups

    def _add(self, rows: list[int] | None, group: tuple[Any, Any]) -> None:
        number = len(self._groups)
        self._groups.append(group)
        if rows is not None:  # several groups: remember where each row went
            if self._where is None:
                self._where = [(-1, -1)] * self._n
            for index, row in enumerate(rows):
                self._where[row] = (number, index)

    def _locate(self, row: int) -> tuple[int, int]:
        return (0, row) if self._where is None else self._where[row]

    def add_shape(self, rows: list[int] | None, shape: _BodyShape, columns: list[list[bytes]]) -> None:
        """Record rows whose bodies are ``shape`` around ``columns`` (internal)."""
        self._add(rows, (shape, columns))

    def add_bodies(self, rows: list[int] | None, bodies: list[bytes]) -> None:
        """Record rows whose bodies were built one by one (internal)."""
        self._add(rows, (None, bodies))

    def body_json(self, row: int) -> bytes:
        """The canonical JSON of a row's body (the bytes its key hashes)."""
        number, index = self._locate(row)
        shape, values = self._groups[number]
        if shape is None:
            return values[index]  # type: ignore[return-value]
        columns: list[list[bytes]] = values  # type: ignore[assignment]
        return b"".join(_interleave(shape.parts, [column[index] for column in columns]))

    def lines(self, rows: Sequence[int]) -> list[bytes]:
        """The batch input lines (newline included) of the given rows, in that order."""
        line_parts = self._encoder._line_parts
        if line_parts is None:
            raise ValueError("RequestEncoder was made without build_line")
        head, middle, tail = line_parts
        ids, locate, groups = self.custom_ids, self._locate, self._groups
        out: list[bytes] = []
        append = out.append
        join = b"".join
        if len(groups) == 1 and groups[0][0] is not None and len(groups[0][0].parts) == 2:
            shape, values = groups[0]  # the usual case, without a per-row lookup
            assert shape is not None
            texts: list[bytes] = values[0]  # type: ignore[assignment]
            middle = middle + shape.parts[0]
            tail = shape.parts[1] + tail
            for row in rows:
                append(join((head, ids[row].encode("ascii"), middle, texts[row], tail)))
            return out
        for row in rows:
            number, index = locate(row)
            shape, values = groups[number]
            cid = ids[row].encode("ascii")
            if shape is None:
                append(join((head, cid, middle, values[index], tail)))  # type: ignore[arg-type]
            elif len(shape.parts) == 2:
                parts = shape.parts
                text = values[0][index]
                append(join((head, cid, middle, parts[0], text, parts[1], tail)))  # type: ignore[arg-type]
            else:
                columns: list[list[bytes]] = values  # type: ignore[assignment]
                body = _interleave(shape.parts, [column[index] for column in columns])
                append(join((head, cid, middle, *body, tail)))
        return out


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
    """Build one body per row, key it, and keep each distinct request once (all in memory).

    Jobs stream their rows through :class:`RequestEncoder` instead; this is the same in one call.

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
    encoder = RequestEncoder(provider=provider, base_url=base_url, endpoint=endpoint, build_body=build_body)
    encoded = encoder.encode(prompts, systems)
    seen: set[str] = set()
    unique_ids: list[str] = []
    first_row: list[int] = []
    for row, cid in enumerate(encoded.custom_ids):
        if cid not in seen:
            seen.add(cid)
            unique_ids.append(cid)
            first_row.append(row)
    return RequestSet(
        row_ids=encoded.custom_ids,
        unique_ids=unique_ids,
        body_json=[encoded.body_json(row) for row in first_row],
        first_row=first_row,
    )


def _line_parts(build_line: Callable[[str, Any], dict[str, Any]]) -> tuple[bytes, bytes, bytes]:
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
    head, middle, tail = _line_parts(build_line)

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
