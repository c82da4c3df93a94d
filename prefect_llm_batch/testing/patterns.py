"""Strings for the simple regular expressions the simulator can generate (``pattern`` in a schema),
drawn by :class:`_Draw`, the seeded choices of a schema answer.

Examples:
    >>> _generate(_PatternParser("^[A-Z]{2}-[0-9]$").parse(), _Draw("m", "hi"), "$", False, [0])
    'WK-9'
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import Any

_DIGITS = "0123456789"
_WORD_CHARS = string.ascii_letters + _DIGITS + "_"
_PRINTABLE = "".join(chr(c) for c in range(32, 127))
_DOT_CHARS = string.ascii_lowercase + _DIGITS


class _Draw:
    """Deterministic choices: SHA-256 of (model, prompt) then of the place in the schema."""

    def __init__(self, model: str, text: str) -> None:
        self._base = hashlib.sha256(f"{model}\x00{text}".encode()).digest()

    def below(self, where: str, n: int) -> int:
        """An integer in ``[0, n)`` for ``where`` (a JSON path plus a salt)."""
        digest = hashlib.sha256(self._base + where.encode()).digest()
        return int.from_bytes(digest[:8], "big") % n if n > 1 else 0

    def raw(self, where: str) -> bytes:
        """16 bytes for ``where`` (uuids)."""
        return hashlib.sha256(self._base + where.encode()).digest()[:16]


# ----- patterns --------------------------------------------------------------------------------
# A node is ("set", chars) | ("seq", [nodes]) | ("alt", [nodes]) | ("rep", node, low, high) | ("anchor",)

_Node = tuple[Any, ...]


class _UnsupportedPattern(ValueError):
    pass


class _PatternParser:
    """Parse the simple regular expressions the simulator can generate strings for."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.i = 0

    def parse(self) -> _Node:
        node = self._alternation()
        if self.i != len(self.pattern):
            raise _UnsupportedPattern(f"unexpected {self.pattern[self.i]!r} at {self.i}")
        return node

    def _peek(self) -> str:
        return self.pattern[self.i] if self.i < len(self.pattern) else ""

    def _alternation(self) -> _Node:
        options = [self._sequence()]
        while self._peek() == "|":
            self.i += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else ("alt", options)

    def _sequence(self) -> _Node:
        items: list[_Node] = []
        while self._peek() not in ("", "|", ")"):
            items.append(self._quantified(self._atom()))
        return ("seq", items)

    def _atom(self) -> _Node:
        char = self._peek()
        self.i += 1
        if char == "(":
            if self.pattern.startswith("?:", self.i):
                self.i += 2
            elif self.pattern.startswith("?P<", self.i) or self.pattern.startswith("?<", self.i):
                end = self.pattern.find(">", self.i)
                if end < 0 or self.pattern[self.i + 2 : self.i + 3] in ("=", "!"):
                    raise _UnsupportedPattern("lookbehind")
                self.i = end + 1
            elif self._peek() == "?":
                raise _UnsupportedPattern("a lookaround or inline flag")
            node = self._alternation()
            if self._peek() != ")":
                raise _UnsupportedPattern("an unclosed group")
            self.i += 1
            return node
        if char == "[":
            return ("set", self._char_class())
        if char == ".":
            return ("set", _DOT_CHARS)
        if char in ("^", "$"):
            return ("anchor",)
        if char == "\\":
            return ("set", self._escape(in_class=False))
        if char in "*+?{":
            raise _UnsupportedPattern(f"a quantifier {char!r} with nothing before it")
        return ("set", char)

    def _escape(self, in_class: bool) -> str:
        char = self._peek()
        self.i += 1
        classes = {"d": _DIGITS, "w": _WORD_CHARS, "s": " "}
        if char in classes:
            return classes[char]
        if char.lower() in classes:
            return "".join(c for c in _PRINTABLE if c not in classes[char.lower()])
        if char in ("x", "u"):
            size = 2 if char == "x" else 4
            digits = self.pattern[self.i : self.i + size]
            if len(digits) != size or any(c not in string.hexdigits for c in digits):
                raise _UnsupportedPattern(f"the escape \\{char}{digits}")
            self.i += size
            return chr(int(digits, 16))
        controls = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
        if char in controls:
            return controls[char]
        if char == "" or char.isalnum():
            raise _UnsupportedPattern(f"the escape \\{char}")
        return char

    def _char_class(self) -> str:
        negate = self._peek() == "^"
        if negate:
            self.i += 1
        chars: list[str] = []
        first = True
        while True:
            char = self._peek()
            if char == "":
                raise _UnsupportedPattern("an unclosed character class")
            if char == "]" and not first:
                self.i += 1
                break
            first = False
            self.i += 1
            if char == "\\":
                piece = self._escape(in_class=True)
            elif char == "[" and self._peek() == ":":
                raise _UnsupportedPattern("a POSIX class")
            else:
                piece = char
            if (
                len(piece) == 1
                and self._peek() == "-"
                and self.pattern[self.i + 1 : self.i + 2] not in ("]", "")
            ):
                self.i += 1
                end = self._peek()
                self.i += 1
                if end == "\\":
                    end = self._escape(in_class=True)
                if len(end) != 1 or ord(end) < ord(piece):
                    raise _UnsupportedPattern(f"the range {piece}-{end}")
                piece = "".join(chr(c) for c in range(ord(piece), ord(end) + 1))
            chars.append(piece)
        members = "".join(dict.fromkeys("".join(chars)))
        if negate:
            members = "".join(c for c in _DOT_CHARS + _PRINTABLE if c not in members)
            members = "".join(dict.fromkeys(members))
        if not members:
            raise _UnsupportedPattern("an empty character class")
        return members

    def _quantified(self, node: _Node) -> _Node:
        char = self._peek()
        if char in ("?", "*", "+"):
            self.i += 1
            low, high = {"?": (0, 1), "*": (0, None), "+": (1, None)}[char]
        elif char == "{":
            end = self.pattern.find("}", self.i)
            body = self.pattern[self.i + 1 : end] if end > 0 else ""
            match = re.fullmatch(r"(\d+)(,(\d*))?", body)
            if match is None:
                return node  # a literal "{", as Python's re reads it
            self.i = end + 1
            low = int(match.group(1))
            high = low if match.group(2) is None else (int(match.group(3)) if match.group(3) else None)
            if high is not None and high < low:
                raise _UnsupportedPattern(f"the quantifier {{{body}}}")
        else:
            return node
        if self._peek() in ("?", "+"):
            self.i += 1  # lazy or possessive: same strings
        if node[0] == "anchor":
            raise _UnsupportedPattern("a quantified anchor")
        return ("rep", node, low, high)


def _generate(node: _Node, draw: _Draw, where: str, minimal: bool, counter: list[int]) -> str:
    counter[0] += 1
    salt = f"{where}~{counter[0]}"
    kind = node[0]
    if kind == "set":
        chars: str = node[1]
        return chars[draw.below(salt, len(chars))]
    if kind == "seq":
        return "".join(_generate(child, draw, where, minimal, counter) for child in node[1])
    if kind == "alt":
        options: list[_Node] = node[1]
        return _generate(
            options[0 if minimal else draw.below(salt, len(options))], draw, where, minimal, counter
        )
    if kind == "rep":
        low: int = node[2]
        high: int | None = node[3]
        top = low + 3 if high is None else min(high, low + 3)
        count = low if minimal else low + draw.below(salt, top - low + 1)
        return "".join(_generate(node[1], draw, where, minimal, counter) for _ in range(count))
    return ""  # an anchor


# ----- values ----------------------------------------------------------------------------------
