"""Request keys, ``custom_id`` s and batch input lines of many rows at once, in Arrow
(:class:`RequestEncoder`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from prefect_llm_batch.batchfile.bodies import (
    PROMPT_SLOT,
    SYSTEM_SLOT,
    BodyShape,
    body_shape,
    json_string_contents,
)
from prefect_llm_batch.batchfile.lines import line_parts
from prefect_llm_batch.keys import canonical_json, custom_id_array, hash_rows, key_parts

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
        >>> def chat(model, prompt, system=None):  # a chat-completions body, as a provider builds it
        ...     return {"model": model, "messages": [{"role": "user", "content": prompt}]}
        >>> encoder = RequestEncoder(provider="openai", base_url="https://x/v1",
        ...     endpoint="/v1/chat/completions", build_body=lambda p, s: chat("m", p, s),
        ...     build_line=lambda cid, body: {"custom_id": cid, "body": body})
        >>> encoded = encoder.encode(["hi", "hi", "yo"])
        >>> encoded.custom_ids[0] == encoded.custom_ids[1] != encoded.custom_ids[2]
        True
        >>> from prefect_llm_batch.keys import custom_id
        >>> encoded.custom_ids[2] == custom_id("openai", "https://x/v1/", "/v1/chat/completions",
        ...                                    chat("m", "yo"))
        True
        >>> import orjson
        >>> line = orjson.loads(encoded.lines([2])[0])
        >>> line["custom_id"] == encoded.custom_ids[2], line["body"] == chat("m", "yo")
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
        self._line_parts = line_parts(build_line) if build_line is not None else None
        self._shapes: dict[bool, BodyShape | None] = {}

    def _shape(self, with_system: bool) -> BodyShape | None:
        if with_system not in self._shapes:
            system = SYSTEM_SLOT if with_system else None
            slots = ("prompt", "system") if with_system else ("prompt",)
            body = canonical_json(self._build_body(PROMPT_SLOT, system))
            self._shapes[with_system] = body_shape(body, slots)
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

    def lay_out(
        self,
        prompts: Texts,
        systems: Texts | None = None,
        *,
        extend: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> LaidOutRequests:
        """Everything :meth:`encode` does but hashing: each row's body and the bytes its key hashes.

        Args:
            prompts: As :meth:`encode`.
            systems: As :meth:`encode`.
            extend: From (row of this call, its built body) to the body sent, for bodies that
                hold more of their row than its texts (images); every body is then built one by
                one (:meth:`lay_out_rows`).

        Raises:
            InputError: As :meth:`encode`.
            ValueError: As :meth:`encode`.
        """
        n = len(prompts)
        if systems is not None and len(systems) != n:
            raise ValueError(f"{len(systems)} system prompts for {n} prompts")
        if extend is not None:
            return self.lay_out_rows(prompts, systems, extend)
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

    def lay_out_rows(
        self,
        prompts: Texts,
        systems: Texts | None,
        extend: Callable[[int, dict[str, Any]], dict[str, Any]],
    ) -> LaidOutRequests:
        """Lay out every row's body built one by one: ``extend(row, build_body(prompt, system))``
        (an empty system prompt is none). Slower than the shapes :meth:`lay_out` fills, for bodies
        that hold more than their row's texts."""
        n = len(prompts)
        bodies = []
        for row in range(n):
            system = _text(systems, row) if systems is not None else None
            body = self._build_body(_text(prompts, row), system or None)
            bodies.append(canonical_json(extend(row, body)))
        laid = LaidOutRequests(EncodedRequests(self, n), n)
        if not n:
            return laid
        body_array = pa.array(bodies, pa.large_binary())
        laid.encoded.add_group(None, BodyShape(parts=(b"", b""), slots=("body",)), [body_array])
        laid.payloads.append((None, hashlib.sha256(self._key_head), _join([body_array, self._key_tail])))
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
            encoded.add_group(rows, BodyShape(parts=(b"", b""), slots=("body",)), [body_array])
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
        self._groups: list[tuple[pa.Array[Any] | None, BodyShape, list[pa.Array[Any]]]] = []
        self._where: list[tuple[int, int]] | None = None  # row -> (group, index), for several groups

    def add_group(self, rows: pa.Array[Any] | None, shape: BodyShape, columns: list[pa.Array[Any]]) -> None:
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
