"""Request bodies: JSON string contents, and a body's fixed JSON around its texts (its shape),
which :class:`~prefect_llm_batch.batchfile.encoder.RequestEncoder` fills row by row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

#: Stand-ins for a row's prompt and system prompt when a body's fixed JSON is worked out once.
PROMPT_SLOT = "\x00prompt-slot\x00"


SYSTEM_SLOT = "\x00system-slot\x00"


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
class BodyShape:
    """A body's canonical JSON as fixed parts around its string slots (prompt, system prompt)."""

    parts: tuple[bytes, ...]  # len(slots) + 1 fixed parts, the quotes of each slot included
    slots: tuple[str, ...]  # "prompt" or "system", in the order they appear in the JSON


def body_shape(body_json: bytes, slots: Sequence[str]) -> BodyShape | None:
    """Split a body encoded with slot stand-ins into fixed parts, or None when it cannot be."""
    markers = {"prompt": orjson.dumps(PROMPT_SLOT), "system": orjson.dumps(SYSTEM_SLOT)}
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
    return BodyShape(parts=tuple(parts), slots=tuple(slot for _, slot in found))
