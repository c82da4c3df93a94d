"""Batch input files (pure): request bodies, JSONL lines per endpoint, chunk packing under limits.

:func:`chat_body` builds a chat-completions body; :class:`RequestEncoder` builds the bodies, keys
(:mod:`~prefect_llm_batch.keys`) and batch input lines of many rows at once, in Arrow;
:func:`build_request_set` is the same in one call, de-duplicated. :func:`encode_line` writes one
JSONL line, :func:`fixed_width_ids` reads the ``custom_id`` s back out of a batch file this
package wrote. :class:`ChunkPacker` and :func:`plan_chunks` split the lines into batches under
the provider's request and byte limits (:class:`~prefect_llm_batch.spec.BatchLimits`).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError
from .keys import canonical_json, custom_id_array, hash_rows, key_parts
from .spec import BatchLimits


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

    One ``orjson.dumps`` of the whole list, split at the element boundaries, is much faster
    than one call per text. Inside an encoded string every ``"`` is escaped, so
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


#: What :meth:`RequestEncoder.encode` takes as texts: Python strings, or their JSON string
#: contents (escaped, without quotes) as an Arrow binary array, as
#: :meth:`prefect_llm_batch.prompts.PromptTemplate.render_json` makes them.
Texts: TypeAlias = "Sequence[str] | Sequence[str | None] | pa.Array[Any]"


def _contents(texts: Texts) -> pa.Array[Any]:
    if isinstance(texts, pa.Array):
        return texts.cast(pa.large_binary())
    return pa.array(json_string_contents([t or "" for t in texts]), pa.large_binary())


def _text(texts: Texts, row: int) -> str:
    if isinstance(texts, pa.Array):
        return str(orjson.loads(b'"' + texts[row].as_py() + b'"'))
    return texts[row] or ""


def _binary(value: bytes) -> pa.Scalar[Any]:
    return pa.scalar(value, pa.large_binary())


def _join(pieces: Sequence[bytes | pa.Array[Any]]) -> pa.Array[Any]:
    """Concatenate fixed bytes and binary arrays element-wise (Arrow, no Python per row);
    at least one piece is an array."""
    args: list[Any] = [_binary(piece) if isinstance(piece, bytes) else piece for piece in pieces]
    joined: pa.Array[Any] = pc.binary_join_element_wise(*args, _binary(b""))
    return joined


class RequestEncoder:
    """Request keys, ``custom_id`` s and batch input lines for many rows at once.

    A provider's body builder is called once per body *shape* (with and without a system
    prompt) with stand-in texts; every row's body is then the shape's fixed JSON around the
    row's JSON-escaped texts, and its key is hashed from a precomputed SHA-256 state. Lines are
    joined in Arrow, never one Python object per row. The result is byte-for-byte
    ``canonical_json(build_body(prompt, system))`` (checked on the first row of every call,
    falling back to building each body when it is not), at a fraction of the cost.

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
        >>> from prefect_llm_batch.keys import custom_id
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
        self._key_head, self._key_tail = key_parts(provider, base_url, endpoint)
        self._line_parts = _line_parts(build_line) if build_line is not None else None
        self._shapes: dict[bool, _BodyShape | None] = {}

    def _shape(self, with_system: bool) -> _BodyShape | None:
        if with_system not in self._shapes:
            system = _SYSTEM_SLOT if with_system else None
            slots = ("prompt", "system") if with_system else ("prompt",)
            body = canonical_json(self._build_body(_PROMPT_SLOT, system))
            self._shapes[with_system] = _body_shape(body, slots)
        return self._shapes[with_system]

    def encode(self, prompts: Texts, systems: Texts | None = None) -> EncodedRequests:
        """Key the requests of ``prompts`` (and ``systems``), one per row.

        The same as ``encoder.key(encoder.lay_out(prompts, systems))``: a pipeline may lay out
        one slice (Arrow work, mostly outside the GIL) in one thread while another thread keys
        the slice before it (hashing, which holds the GIL).

        Args:
            prompts: The rendered prompt of every row: strings, or their JSON contents as an
                Arrow binary array.
            systems: The rendered system prompt of every row (an empty one means none), the
                same way, or None.

        Raises:
            InputError: As the body builder does (a bad parameter, a system prompt where none
                is allowed).
        """
        return self.key(self.lay_out(prompts, systems))

    def lay_out(self, prompts: Texts, systems: Texts | None = None) -> LaidOutRequests:
        """Everything :meth:`encode` does but hashing: each row's body and the bytes its key hashes.

        Args:
            prompts: As :meth:`encode`.
            systems: As :meth:`encode`.

        Raises:
            InputError: As :meth:`encode`.
            ValueError: As :meth:`encode`.
        """
        n = len(prompts)
        if systems is not None and len(systems) != n:
            raise ValueError(f"{len(systems)} system prompts for {n} prompts")
        prompt_contents = _contents(prompts)
        system_contents = _contents(systems) if systems is not None else None
        for name, texts in (("prompt", prompt_contents), ("system prompt", system_contents)):
            if texts is not None and texts.null_count:
                row = pc.index(pc.is_null(texts), True).as_py()
                raise ValueError(f"the {name} of row {row} is null (an empty text is '')")
        groups: list[tuple[bool, pa.Array[Any] | None]]  # (with a system prompt, its rows or all)
        if system_contents is None:
            groups = [(False, None)]
        else:
            contents: Any = system_contents
            lengths: Any = pc.binary_length(contents)
            has: Any = pc.greater(lengths, pa.scalar(0, lengths.type))  # an empty system prompt is none
            if pc.all(has).as_py():
                groups = [(True, None)]
            elif not pc.any(has).as_py():
                groups = [(False, None)]
                system_contents = None
            else:
                groups = [
                    (flag, pc.indices_nonzero(has if flag else pc.invert(has))) for flag in (False, True)
                ]
        laid = LaidOutRequests(EncodedRequests(self, n), n)
        for with_system, rows in groups:
            group_prompts = prompt_contents if rows is None else prompt_contents.take(rows)
            group_systems = None
            if with_system:
                assert system_contents is not None
                group_systems = system_contents if rows is None else system_contents.take(rows)
            payload = self._lay_out_group(with_system, group_prompts, group_systems, rows, laid.encoded)
            if payload is not None:
                laid.payloads.append((rows, *payload))
        return laid

    def key(self, laid: LaidOutRequests) -> EncodedRequests:
        """Hash the keys of requests :meth:`lay_out` laid out, and spell their ids.

        Args:
            laid: What :meth:`lay_out` returned (keyed once).

        Returns:
            The keyed requests, as :meth:`encode` returns them.
        """
        encoded, n = laid.encoded, laid.rows
        digests: list[bytes] = [] if len(laid.payloads) == 1 else [b""] * n
        for rows, head, keyed in laid.payloads:
            part = hash_rows(head, keyed)
            if rows is None:
                digests = part
            else:
                row_numbers: list[Any] = rows.to_pylist()
                for row, digest in zip(row_numbers, part, strict=True):
                    digests[row] = digest
        encoded.set_digests(digests)
        return encoded

    def _lay_out_group(
        self,
        with_system: bool,
        prompts: pa.Array[Any],
        systems: pa.Array[Any] | None,
        rows: pa.Array[Any] | None,
        encoded: EncodedRequests,
    ) -> tuple[Any, pa.Array[Any]] | None:
        """Record a group's bodies; return the hash state of its keys' fixed head and the rest
        of each key's bytes (None for no rows)."""
        if not len(prompts):
            return None
        columns_by_slot: dict[str, Any] = {"prompt": prompts, "system": systems}
        shape = self._shape(with_system)
        if shape is not None:
            columns = [columns_by_slot[slot] for slot in shape.slots]
            first = b"".join(_interleave(shape.parts, [column[0].as_py() for column in columns]))
            system0 = _text(systems, 0) if systems is not None else None
            if first != canonical_json(self._build_body(_text(prompts, 0), system0)):
                shape = None  # the builder does not embed the texts as they are: build every body
        if shape is None:
            bodies = [
                canonical_json(
                    self._build_body(_text(prompts, i), _text(systems, i) if systems is not None else None)
                )
                for i in range(len(prompts))
            ]
            body_array = pa.array(bodies, pa.large_binary())
            encoded.add_group(rows, _BodyShape(parts=(b"", b""), slots=("body",)), [body_array])
            head = hashlib.sha256(self._key_head)
            keyed = _join([body_array, self._key_tail])
        else:
            encoded.add_group(rows, shape, columns)
            head = hashlib.sha256(self._key_head + shape.parts[0])
            # What follows the fixed head of every row's key payload: its texts and the fixed
            # parts between and after them, joined in Arrow (outside the GIL).
            pieces: list[bytes | pa.Array[Any]] = []
            for column, part in zip(columns, shape.parts[1:], strict=True):
                pieces += (column, part)
            pieces[-1] = shape.parts[-1] + self._key_tail
            keyed = _join(pieces)
        return head, keyed


def _interleave(parts: Sequence[bytes], values: Sequence[bytes]) -> list[bytes]:
    out = [parts[0]]
    for value, part in zip(values, parts[1:], strict=True):
        out += (value, part)
    return out


class LaidOutRequests:
    """Requests :meth:`RequestEncoder.lay_out` laid out, for :meth:`RequestEncoder.key` to key.

    Attributes:
        encoded: The requests (their digests and ids not set yet).
        rows: How many.
        payloads: Per group of rows (None: all rows): the hash state of its keys' fixed head,
            and the rest of each key's bytes.
    """

    def __init__(self, encoded: EncodedRequests, rows: int) -> None:
        self.encoded = encoded
        self.rows = rows
        self.payloads: list[tuple[pa.Array[Any] | None, Any, pa.Array[Any]]] = []


class EncodedRequests:
    """The keyed requests of one :meth:`RequestEncoder.encode` call (one entry per row).

    Attributes:
        digests: The 32-byte request key of every row.
    """

    def __init__(self, encoder: RequestEncoder, n: int) -> None:
        self._encoder = encoder
        self._n = n
        self.digests: list[bytes] = []
        self._ids: pa.Array[Any] | None = None
        self._id_list: list[str] | None = None
        # Each group: the rows it holds (None: all), its shape and its text columns.
        self._groups: list[tuple[pa.Array[Any] | None, _BodyShape, list[pa.Array[Any]]]] = []
        self._where: list[tuple[int, int]] | None = None  # row -> (group, index), for several groups

    def add_group(self, rows: pa.Array[Any] | None, shape: _BodyShape, columns: list[pa.Array[Any]]) -> None:
        """Record rows whose bodies are ``shape`` around ``columns`` (internal)."""
        number = len(self._groups)
        self._groups.append((rows, shape, columns))
        if rows is not None:
            if self._where is None:
                self._where = [(-1, -1)] * self._n
            row_numbers: list[Any] = rows.to_pylist()
            for index, row in enumerate(row_numbers):
                self._where[row] = (number, index)

    def set_digests(self, digests: list[bytes]) -> None:
        """Record the digests and spell the ids (internal)."""
        self.digests = digests
        self._ids = custom_id_array(digests)

    @property
    def custom_id_array(self) -> pa.Array[Any]:
        """The ``custom_id`` of every row, as an Arrow string array."""
        assert self._ids is not None
        return self._ids

    @property
    def custom_ids(self) -> list[str]:
        """The ``custom_id`` of every row."""
        if self._id_list is None:
            self._id_list = [str(cid) for cid in self.custom_id_array.to_pylist()]
        return self._id_list

    def _locate(self, row: int) -> tuple[int, int]:
        return (0, row) if self._where is None else self._where[row]

    def body_json(self, row: int) -> bytes:
        """The canonical JSON of a row's body (the bytes its key hashes)."""
        number, index = self._locate(row)
        _, shape, columns = self._groups[number]
        values: list[bytes] = [column[index].as_py() for column in columns]
        return b"".join(_interleave(shape.parts, values))

    def lines_array(self, rows: Sequence[int] | pa.Array[Any] | None = None) -> pa.Array[Any]:
        """The batch input lines (newline included) of the given rows (None: every row), in that
        order, as one Arrow binary array (joined in Arrow, no Python object per line)."""
        line_parts = self._encoder._line_parts
        if line_parts is None:
            raise ValueError("RequestEncoder was made without build_line")
        head, middle, tail = line_parts
        ids = self.custom_id_array.cast(pa.large_binary())
        if len(self._groups) == 1 and self._groups[0][0] is None:  # the usual case: at most one take
            _, shape, columns = self._groups[0]
            body_parts: list[Any] = [shape.parts[0]]
            for column, part in zip(columns, shape.parts[1:], strict=True):
                body_parts += (column, part)
            every = _join([head, ids, middle, *body_parts, tail])
            return every if rows is None else every.take(rows)
        wanted = pa.array(range(self._n), pa.int64()) if rows is None else rows
        wanted = wanted if isinstance(wanted, pa.Array) else pa.array(wanted, pa.int64())
        pieces: list[pa.Array[Any]] = []
        places: list[pa.Array[Any]] = []  # where each group's lines go among those wanted
        for group_rows, shape, columns in self._groups:
            if group_rows is None:
                picked, where = ids.take(wanted), wanted
            else:
                members = pc.index_in(wanted, value_set=group_rows)  # place in the group, or null
                keep = pc.is_valid(members)
                where = pc.filter(members, keep)
                picked = ids.take(pc.filter(wanted, keep))
                places.append(pc.indices_nonzero(keep))
            body: list[Any] = [shape.parts[0]]
            for column, part in zip(columns, shape.parts[1:], strict=True):
                body += (column.take(where), part)
            pieces.append(_join([head, picked, middle, *body, tail]))
        if len(pieces) == 1:
            return pieces[0]
        order = pc.sort_indices(pa.concat_arrays(places))
        return pa.concat_arrays(pieces).take(order)

    def lines(self, rows: Sequence[int]) -> list[bytes]:
        """The batch input lines (newline included) of the given rows, in that order."""
        return [bytes(line or b"") for line in self.lines_array(rows).to_pylist()]


#: How every batch line this package writes starts (:class:`RequestEncoder` puts ``custom_id`` first).
ID_HEAD = b'{"custom_id":"'


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


@dataclass(frozen=True)
class RequestSet:
    """The requests of a job after de-duplication.

    Attributes:
        row_ids: The ``custom_id`` of every input row, in row order (duplicates repeat).
        unique_ids: Each distinct ``custom_id`` once, in order of first appearance.
        body_json: The canonical JSON of the body of each entry of ``unique_ids``, same order
            (the bytes the request key hashes, which lines embed as they are).
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
