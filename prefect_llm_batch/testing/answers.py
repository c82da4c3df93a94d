"""Deterministic answers and embeddings of the fake provider: pure functions of the request body.

The fake server (:mod:`prefect_llm_batch.testing.server`) answers every chat request with
:func:`default_answer` unless :class:`~prefect_llm_batch.testing.FakeServerConfig` sets its own
``answer`` callable. The same body always gets the same answer, so tests can assert on it.

* If the last user message mentions ``sentiment``, the answer is ``"positive"``, ``"negative"``
  or ``"mixed"``, from a small word list (with ``not``/``never``/``no`` flipping the next word).
* Otherwise the answer is ``"[simulated] "`` followed by the first 12 words of the last user
  message (``"..."`` marks a cut).
* With ``response_format`` ``json_schema``, the answer is a JSON document that fits the schema
  (:func:`schema_answer`; strings from the rules above, enums prefer the sentiment label); with
  ``json_object``, ``{"answer": ...}``.
* Anthropic Messages bodies work the same way (``content`` a string or a list of text blocks,
  ``system`` at the top level). When ``tool_choice`` forces a tool (``{"type": "tool", "name": N}``
  with ``N`` among ``tools``), :func:`forced_tool` finds it and :func:`tool_input` builds an
  ``input`` that fits the tool's ``input_schema``, by the same rules as ``json_schema`` answers.

Schema answers are a function of the model, the last user message and the schema; each choice
is seeded by the SHA-256 of the model, the prompt and the value's path in the schema. The
supported subset, whose answers always validate:

* ``type`` (``object``, ``array``, ``string``, ``integer``, ``number``, ``boolean``, ``null``, or a
  list of them: the first non-null one that can be made), ``const``, ``enum`` (the sentiment
  label when it is a member, else a seeded member of the schema's type);
* objects: every property (past :data:`MINIMAL_DEPTH` levels only the required ones), required
  names without a property get a value of ``additionalProperties``, ``minProperties`` is met;
* arrays: ``items``, ``max(minItems, 1)`` items capped by ``maxItems`` (past :data:`MINIMAL_DEPTH`,
  ``minItems``);
* integers and numbers look like data: ``minimum``/``maximum``/``exclusiveMinimum``/
  ``exclusiveMaximum`` (2020-12 numbers or draft-4 booleans) and ``multipleOf``; with both
  bounds a seeded value inside them (a 1-5 score is 1 to 5), numbers with about three significant
  digits of the range (0.73 in 0-1); an integer with no upper bound counts the prompt's words
  (raised into a lower bound if below it); a number with no bounds is in 0-1, with one bound
  within 10 of it;
* strings: ``minLength``/``maxLength`` (the text answer cut at a word or padded with the prompt's
  words), ``format`` ``date``, ``date-time``, ``time``, ``email``, ``uuid``, ``uri``, ``hostname``,
  ``ipv4``, ``ipv6`` (other formats are ignored), ``pattern`` in a simple subset: literals, ``.``,
  classes such as ``[a-z0-9_]`` and ``[^...]``, ``\\d \\w \\s`` (and ``\\D \\W \\S``),
  ``\\xHH \\uHHHH``, quantifiers ``? * + {m} {m,} {m,n}``, groups ``(...)``/``(?:...)``/named, ``|``
  and the anchors ``^ $``. Any other pattern (lookarounds, back references, ``\\b``...) gets the
  text answer if it matches, else :class:`SchemaAnswerError`; every generated string is checked
  with :func:`re.search`, as validators do;
* ``anyOf``/``oneOf``: the first branch that can be made, non-null branches first (a ``oneOf``
  value must fit no other branch); ``$ref`` to a local JSON pointer (``#/$defs/X``), recursive
  ones too (they end at :data:`MINIMAL_DEPTH`).

Not supported (ignored, so the answer may not validate): ``allOf``, ``not``, ``if``/``then``/
``else``, ``uniqueItems``, ``prefixItems``, ``contains``, ``patternProperties``, ``propertyNames``,
``dependentRequired``. A contradiction (bounds that leave nothing, an empty ``enum``) raises
:class:`SchemaAnswerError` naming the path; the server answers that request with a 500 error
carrying the message.

Embeddings requests (``/v1/embeddings``) get :func:`default_embedding` vectors: unit-length,
seeded by the SHA-256 of the model and the input text, as long as ``dimensions`` when given, else
as :data:`EMBEDDING_DIMENSIONS` says for the model (:data:`DEFAULT_EMBEDDING_DIMENSIONS` for
models it does not list). The same (model, text, dimensions) always gives the same vector.

Markers such as ``[[fake:400]]`` (see :data:`MARKERS`) are removed before answering; the server
reads them with :func:`find_markers` to make single rows misbehave. ``[[fake:invalid_json]]``
makes a ``response_format`` answer invalid JSON: :func:`broken_json` cuts it in half.

Token counts are ``ceil(characters / 4)``, like OpenAI's rule of thumb.

Examples:
    >>> body = {"model": "m", "messages": [{"role": "user", "content": "Sentiment of: I love it"}]}
    >>> default_answer(body)
    'positive'
    >>> default_answer({"messages": [{"role": "user", "content": "Summarize: the cat sat on the mat"}]})
    '[simulated] Summarize: the cat sat on the mat'
    >>> sorted(find_markers({"messages": [{"role": "user", "content": "hi [[fake:500]]"}]}))
    ['500']
    >>> estimate_tokens("abcde")
    2
    >>> schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    >>> tool = {"name": "answer", "input_schema": schema}
    >>> anthropic = {"system": "Be brief", "messages": [{"role": "user", "content": [
    ...     {"type": "text", "text": "Sentiment of: great"}]}],
    ...     "tools": [tool], "tool_choice": {"type": "tool", "name": "answer"}}
    >>> tool_input(anthropic, forced_tool(anthropic)["input_schema"])
    {'label': 'positive'}
    >>> vector = default_embedding("text-embedding-3-small", "hello")
    >>> len(vector), round(sum(x * x for x in vector), 6), vector == default_embedding(
    ...     "text-embedding-3-small", "hello")
    (1536, 1.0, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import date
from types import MappingProxyType
from typing import Any

from jsonschema import Draft202012Validator

#: Markers understood by the fake server, written ``[[fake:<name>]]`` in any message content
#: (or in an embeddings ``input``).
MARKERS: frozenset[str] = frozenset(
    {"400", "500", "refusal", "length", "content_filter", "drop", "timeout", "invalid_json"}
)

#: Native vector length per embeddings model (read-only); ``dimensions`` in a request overrides it.
EMBEDDING_DIMENSIONS: Mapping[str, int] = MappingProxyType(
    {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
)
#: Vector length for models :data:`EMBEDDING_DIMENSIONS` does not list.
DEFAULT_EMBEDDING_DIMENSIONS = 256

#: Words of the summary-like answer.
SUMMARY_WORDS = 12

_MARKER_RE = re.compile(r"\[\[fake:([A-Za-z0-9_]+)\]\]")
_WORD_RE = re.compile(r"[a-z']+")

POSITIVE_WORDS: frozenset[str] = frozenset(
    {
        "amazing", "awesome", "best", "delightful", "enjoy", "enjoyed", "excellent", "fantastic",
        "fast", "fine", "glad", "good", "great", "happy", "helpful", "like", "liked", "love",
        "loved", "lovely", "nice", "perfect", "pleasant", "recommend", "superb", "wonderful",
    }
)  # fmt: skip
NEGATIVE_WORDS: frozenset[str] = frozenset(
    {
        "angry", "awful", "bad", "boring", "broken", "disappointed", "disappointing", "hate",
        "hated", "horrible", "poor", "refund", "rude", "sad", "slow", "terrible", "useless",
        "waste", "worse", "worst", "wrong",
    }
)  # fmt: skip
_NEGATIONS = frozenset({"not", "never", "no", "don't", "didn't", "isn't", "wasn't"})


def content_text(content: Any) -> str:
    """Return the text of one message ``content`` (a string or a list of content parts).

    Args:
        content: A message's ``content``: a string, a list of parts such as
            ``{"type": "text", "text": ...}``, or ``None``.

    Returns:
        The text parts joined by newlines; ``""`` when there is no text.

    Examples:
        >>> content_text([{"type": "text", "text": "a"}, {"type": "image_url"},
        ...               {"type": "text", "text": "b"}])
        'a\\nb'
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
        return "\n".join(parts)
    return ""


def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, Mapping)]


def embedding_inputs(body: Mapping[str, Any]) -> list[str] | None:
    """Return the texts of an embeddings body's ``input`` (a string or a list of strings).

    Returns:
        One text per embedding to make, or ``None`` when ``input`` is missing or of another
        shape (token arrays are not supported by the fake).

    Examples:
        >>> embedding_inputs({"input": "a"}), embedding_inputs({"input": ["a", "b"]})
        (['a'], ['a', 'b'])
        >>> embedding_inputs({"input": [1, 2]}) is None
        True
    """
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def find_markers(body: Mapping[str, Any]) -> frozenset[str]:
    """Return the ``[[fake:...]]`` marker names found in any message of a request body.

    The top-level ``system`` of an Anthropic Messages body and the ``input`` of an embeddings
    body (a string or a list of strings) are searched too.

    Args:
        body: A chat completions, Anthropic Messages or embeddings request body.

    Returns:
        The marker names (only those in :data:`MARKERS`).

    Examples:
        >>> sorted(find_markers({"messages": [{"role": "system", "content": "[[fake:drop]] [[fake:nope]]"}]}))
        ['drop']
    """
    found: set[str] = set(_MARKER_RE.findall(content_text(body.get("system"))))
    for message in _messages(body):
        found.update(_MARKER_RE.findall(content_text(message.get("content"))))
    for text in embedding_inputs(body) or []:
        found.update(_MARKER_RE.findall(text))
    return frozenset(found & MARKERS)


def strip_markers(text: str) -> str:
    """Remove ``[[fake:...]]`` markers and surrounding blanks from a text.

    Examples:
        >>> strip_markers("[[fake:length]] Tell me  more")
        'Tell me  more'
    """
    return _MARKER_RE.sub("", text).strip()


def last_user_text(body: Mapping[str, Any]) -> str:
    """Return the text of the last ``user`` message of a body, markers removed.

    Examples:
        >>> last_user_text({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
        'b'
    """
    for message in reversed(_messages(body)):
        if message.get("role") == "user":
            return strip_markers(content_text(message.get("content")))
    return ""


def estimate_tokens(text: str) -> int:
    """Count tokens the simulator's way: ``ceil(len(text) / 4)``.

    Examples:
        >>> estimate_tokens(""), estimate_tokens("abcd"), estimate_tokens("abcde")
        (0, 1, 2)
    """
    return math.ceil(len(text) / 4)


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """Count the prompt tokens of a body: ``ceil(characters of all message texts / 4)``.

    An Anthropic body's top-level ``system`` (a string or text blocks) counts too.

    Examples:
        >>> prompt_tokens({"messages": [{"role": "system", "content": "abc"},
        ...                             {"role": "user", "content": "de"}]})
        2
        >>> prompt_tokens({"system": "abc", "messages": [{"role": "user", "content": "de"}]})
        2
    """
    texts = [content_text(body.get("system"))]
    texts.extend(content_text(m.get("content")) for m in _messages(body))
    return estimate_tokens("".join(texts))


def classify_sentiment(text: str) -> str:
    """Classify a text as ``"positive"``, ``"negative"`` or ``"mixed"`` from a small word list.

    A negation (``not``, ``never``, ``no``...) right before a word flips it.

    Examples:
        >>> classify_sentiment("Great food, I loved it")
        'positive'
        >>> classify_sentiment("not good at all, slow service")
        'negative'
        >>> classify_sentiment("great food but rude staff")
        'mixed'
    """
    score_pos = score_neg = 0
    negate = False
    for word in _WORD_RE.findall(text.lower()):
        if word in _NEGATIONS:
            negate = True
            continue
        is_pos, is_neg = word in POSITIVE_WORDS, word in NEGATIVE_WORDS
        if negate:
            is_pos, is_neg = is_neg, is_pos
        score_pos += is_pos
        score_neg += is_neg
        negate = False
    if score_pos > score_neg:
        return "positive"
    if score_neg > score_pos:
        return "negative"
    return "mixed"


def _text_answer(text: str) -> str:
    if "sentiment" in text.lower():
        return classify_sentiment(text)
    words = text.split()
    summary = " ".join(words[:SUMMARY_WORDS])
    if len(words) > SUMMARY_WORDS:
        summary += "..."
    return f"[simulated] {summary}".rstrip()


class SchemaAnswerError(ValueError):
    """The simulator cannot make a value that fits a schema; the message names the path and the rule.

    Raised for a contradiction (``minimum`` above ``maximum``, an empty ``enum`` after the
    ``type`` filter, ``false``), for a ``pattern`` outside the supported subset when the plain
    answer does not match it either, and for a ``$ref`` it cannot resolve. The fake server turns
    it into a 500 answer for that one request, with this message.
    """


#: Nesting depth from which the simulator answers minimally (arrays get ``minItems`` items,
#: objects their required properties, nullable values ``null``): recursive ``$ref`` schemas end.
MINIMAL_DEPTH = 10
#: Nesting depth at which the simulator gives up (a ``$ref`` cycle that requires itself).
MAX_DEPTH = 60

_NAMES = ("alex", "maria", "sam", "noor", "li", "jordan", "eva", "omar", "kim", "lucas")
_DAY_ZERO = date(2020, 1, 1).toordinal()
_DAYS = date(2025, 12, 31).toordinal() - _DAY_ZERO + 1
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


def _bound(node: Mapping[str, Any], key: str, exclusive_key: str) -> tuple[float | None, bool]:
    """One side's bound and whether it is exclusive (2020-12 numbers and draft-4 booleans)."""
    value = node.get(key)
    exclusive = node.get(exclusive_key)
    bound = value if _is_number(value) else None
    if isinstance(exclusive, bool):
        return bound, exclusive and bound is not None
    if _is_number(exclusive):
        if bound is None:
            return exclusive, True
        tighter = exclusive >= bound if key == "minimum" else exclusive <= bound
        return (exclusive, True) if tighter else (bound, False)
    return bound, False


def _count(node: Mapping[str, Any], key: str) -> int | None:
    """A non-negative integer keyword (``minLength``...), else None."""
    value = node.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _positive(node: Mapping[str, Any], key: str) -> float | None:
    """A positive number keyword (``multipleOf``), else None."""
    value = node.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return value
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _multiple_ok(value: float, step: float) -> bool:
    """``value`` is a multiple of ``step`` the way jsonschema checks it."""
    if isinstance(step, float):
        quotient = value / step
        return math.isfinite(quotient) and int(quotient) == quotient
    return value % step == 0


def _accepts_any(value: Any) -> bool:
    return True


_TYPE_CHECKS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


class _Filler:
    """Build one value that fits a schema (see the module docstring for the supported subset)."""

    def __init__(self, root: Any, text: str, model: str) -> None:
        self.root = root
        self.text = text
        self.sentiment = classify_sentiment(text)
        self.words = len(text.split())
        self.draw = _Draw(model, text)

    def fail(self, where: str, message: str) -> SchemaAnswerError:
        return SchemaAnswerError(f"the simulator cannot answer {where}: {message}")

    def value(self, node: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(
                where, f"the schema nests deeper than {MAX_DEPTH} levels (a $ref that requires itself?)"
            )
        if node is True or node is None:
            node = {}
        if node is False:
            raise self.fail(where, "the schema is false (no value fits)")
        if not isinstance(node, Mapping):
            raise self.fail(where, f"a schema must be an object, not {type(node).__name__}")
        if isinstance(node.get("$ref"), str):
            target = self.resolve(node["$ref"], where)
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return self.value(merged, where, depth + 1)
        if "const" in node:
            return node["const"]
        if isinstance(node.get("enum"), list):
            return self.enum(node, where)
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                return self.branches(node, key, where, depth)
        kinds = node.get("type")
        if isinstance(kinds, list):
            order = [k for k in kinds if k != "null"] + [k for k in kinds if k == "null"]
            if depth >= MINIMAL_DEPTH and "null" in kinds:
                order = ["null"]
            errors: list[SchemaAnswerError] = []
            for kind in order:
                try:
                    return self.typed(node, kind, where, depth)
                except SchemaAnswerError as exc:
                    errors.append(exc)
            raise errors[0] if errors else self.fail(where, "the type list is empty")
        return self.typed(node, kinds if isinstance(kinds, str) else self.infer(node), where, depth)

    def resolve(self, ref: str, where: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            raise self.fail(where, f"only local references are supported, not {ref!r}")
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise self.fail(where, f"the reference {ref!r} points nowhere")
        if target is True:
            return {}
        if not isinstance(target, Mapping):
            raise self.fail(where, f"the reference {ref!r} is not a schema")
        return target

    @staticmethod
    def infer(node: Mapping[str, Any]) -> str:
        if any(k in node for k in ("properties", "required", "additionalProperties", "minProperties")):
            return "object"
        if any(k in node for k in ("items", "minItems", "maxItems", "prefixItems")):
            return "array"
        if any(
            k in node for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
        ):
            return "number"
        return "string"

    def enum(self, node: Mapping[str, Any], where: str) -> Any:
        kinds = node.get("type")
        names = kinds if isinstance(kinds, list) else [kinds] if isinstance(kinds, str) else None
        members = [
            m
            for m in node["enum"]
            if names is None or any(_TYPE_CHECKS.get(n, _accepts_any)(m) for n in names)
        ]
        if not members:
            raise self.fail(where, "no member of the enum has the schema's type")
        if self.sentiment in members:
            return self.sentiment
        return members[self.draw.below(f"{where}#enum", len(members))]

    def branches(self, node: Mapping[str, Any], key: str, where: str, depth: int) -> Any:
        siblings = {k: v for k, v in node.items() if k != key}
        options = [o for o in node[key] if o is not False]
        nulls = [o for o in options if isinstance(o, Mapping) and o.get("type") == "null"]
        others = [o for o in options if o not in nulls]
        order = nulls + others if depth >= MINIMAL_DEPTH else others + nulls
        errors: list[SchemaAnswerError] = []
        for option in order:
            branch = {**siblings, **option} if isinstance(option, Mapping) else siblings
            try:
                value = self.value(branch, where, depth + 1)
            except SchemaAnswerError as exc:
                errors.append(exc)
                continue
            if key == "oneOf" and any(self.fits(other, value) for other in options if other is not option):
                errors.append(self.fail(where, "the value of a oneOf branch fits another branch too"))
                continue
            return value
        raise errors[0] if errors else self.fail(where, f"{key} has no branch")

    def fits(self, node: Any, value: Any) -> bool:
        schema: Any = node
        if isinstance(node, Mapping) and isinstance(self.root, Mapping):
            defs = {k: self.root[k] for k in ("$defs", "definitions") if k in self.root}
            schema = {**defs, **node}
        return bool(Draft202012Validator(schema).is_valid(value))

    def typed(self, node: Mapping[str, Any], kind: str, where: str, depth: int) -> Any:
        if kind == "object":
            return self.object(node, where, depth)
        if kind == "array":
            return self.array(node, where, depth)
        if kind == "integer":
            return self.integer(node, where)
        if kind == "number":
            return self.number(node, where)
        if kind == "boolean":
            return self.sentiment == "positive"
        if kind == "null":
            return None
        if kind == "string":
            return self.string(node, where)
        raise self.fail(where, f"unknown type {kind!r}")

    def object(self, node: Mapping[str, Any], where: str, depth: int) -> dict[str, Any]:
        properties = node.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = [r for r in node.get("required") or [] if isinstance(r, str)]
        extra = node.get("additionalProperties", True)
        minimal = depth >= MINIMAL_DEPTH
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if not minimal or name in required:
                out[name] = self.value(sub, f"{where}.{name}", depth + 1)
        for name in required:
            if name not in out:
                if extra is False:
                    raise self.fail(where, f"{name!r} is required but additionalProperties is false")
                out[name] = self.value(extra, f"{where}.{name}", depth + 1)
        wanted = node.get("minProperties")
        index = 0
        while isinstance(wanted, int) and len(out) < wanted:
            if extra is False:
                raise self.fail(where, "minProperties asks for more properties than the schema allows")
            index += 1
            out.setdefault(f"extra_{index}", self.value(extra, f"{where}.extra_{index}", depth + 1))
        return out

    def array(self, node: Mapping[str, Any], where: str, depth: int) -> list[Any]:
        low, high = _count(node, "minItems") or 0, _count(node, "maxItems")
        if high is not None and high < low:
            raise self.fail(where, f"minItems {low} is above maxItems {high}")
        count = low if depth >= MINIMAL_DEPTH else max(low, 1)
        if high is not None:
            count = min(count, high)
        items = node.get("items", {})
        return [self.value(items, f"{where}[{i}]", depth + 1) for i in range(count)]

    def integer(self, node: Mapping[str, Any], where: str) -> int:
        low, low_open = _bound(node, "minimum", "exclusiveMinimum")
        high, high_open = _bound(node, "maximum", "exclusiveMaximum")
        lo = None if low is None else (math.floor(low) + 1 if low_open else math.ceil(low))
        hi = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
        step_raw = _positive(node, "multipleOf")
        step = 1
        if step_raw is not None:
            if not float(step_raw).is_integer():
                raise self.fail(where, f"an integer multipleOf must be a whole number here, not {step_raw}")
            step = int(step_raw)
        k_lo = None if lo is None else -((-lo) // step)
        k_hi = None if hi is None else hi // step
        if k_lo is not None and k_hi is not None and k_lo > k_hi:
            raise self.fail(where, "no integer lies between its minimum and maximum")
        natural = self.words // step
        if k_lo is not None and k_hi is not None:
            k = k_lo + self.draw.below(f"{where}#int", k_hi - k_lo + 1)
        elif k_lo is not None:
            k = natural if natural >= k_lo else k_lo + self.draw.below(f"{where}#int", 10)
        elif k_hi is not None:
            k = natural if natural <= k_hi else k_hi - self.draw.below(f"{where}#int", 10)
        else:
            k = natural
        return k * step

    def number(self, node: Mapping[str, Any], where: str) -> float:
        low, low_open = _bound(node, "minimum", "exclusiveMinimum")
        high, high_open = _bound(node, "maximum", "exclusiveMaximum")
        lo = float(low) if low is not None else (float(high) - 10.0 if high is not None else 0.0)
        hi = float(high) if high is not None else lo + (10.0 if low is not None else 1.0)
        step_raw = _positive(node, "multipleOf")
        if hi < lo or (hi == lo and (low_open or high_open)):
            raise self.fail(where, "no number lies between its minimum and maximum")

        def ok(value: float) -> bool:
            inside = (value > lo if low_open else value >= lo) and (value < hi if high_open else value <= hi)
            return inside and (step_raw is None or _multiple_ok(value, step_raw))

        decimals: int | None = None
        if step_raw is not None:
            step = float(step_raw)
        else:
            width = hi - lo
            exponent = math.floor(math.log10(width)) - 2 if width > 0 else 0
            step, decimals = 10.0**exponent, max(0, -exponent)
        k_lo, k_hi = math.ceil(lo / step), math.floor(hi / step)

        def candidates() -> Iterator[float]:  # the seeded one first; float rounding may push it out
            if k_lo <= k_hi:
                start = k_lo + self.draw.below(f"{where}#num", k_hi - k_lo + 1)
                for k in (
                    start,
                    *range(k_lo, min(k_hi, k_lo + 4) + 1),
                    *range(max(k_lo, k_hi - 4), k_hi + 1),
                ):
                    raw = k * step
                    yield float(round(raw, decimals)) if decimals is not None else raw
                    yield round(raw, 10)
            yield (lo + hi) / 2

        found = next((candidate for candidate in candidates() if ok(candidate)), None)
        if found is None:
            raise self.fail(where, "no number fits its bounds and multipleOf")
        return found

    def string(self, node: Mapping[str, Any], where: str) -> str:
        low, high = _count(node, "minLength") or 0, _count(node, "maxLength")
        if high is not None and high < low:
            raise self.fail(where, f"minLength {low} is above maxLength {high}")
        pattern = node.get("pattern")
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            value = _FORMATS[fmt](self.draw, where)
            if not low <= len(value) <= (len(value) if high is None else high):
                raise self.fail(where, f"a {fmt} value cannot have {low} to {high} characters")
            if isinstance(pattern, str) and not _search(pattern, value):
                raise self.fail(where, f"a {fmt} value does not match the pattern {pattern!r}")
            return value
        if isinstance(pattern, str):
            return self.patterned(pattern, low, high, where)
        return self.fit(_text_answer(self.text), low, high)

    def fit(self, value: str, low: int, high: int | None) -> str:
        """Fit a text between ``low`` and ``high`` characters: cut at a word, pad with the prompt's words."""
        if high is not None and len(value) > high:
            plain = value.removeprefix("[simulated] ")
            cut = plain[: high + 1].rsplit(" ", 1)[0] if " " in plain[: high + 1] else ""
            value = (
                plain if len(plain) <= high else (cut if low <= len(cut) <= high and cut else plain[:high])
            )
        if len(value) < low:
            filler = [w for w in self.text.split() if w] or ["lorem", "ipsum"]
            words = [value] if value else []
            index = 0
            while len(" ".join(words)) < low:
                words.append(filler[index % len(filler)])
                index += 1
            value = " ".join(words)
            if high is not None:
                value = value[:high]
        return value

    def patterned(self, pattern: str, low: int, high: int | None, where: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self.fail(
                where, f"the pattern {pattern!r} is not a valid regular expression ({exc})"
            ) from None
        try:
            tree = _PatternParser(pattern).parse()
        except _UnsupportedPattern as exc:
            fallback = self.fit(_text_answer(self.text), low, high)
            if _search(pattern, fallback):
                return fallback
            raise self.fail(
                where,
                f"the pattern {pattern!r} uses {exc}, outside the simple patterns the simulator "
                "generates (literals, classes, \\d \\w \\s, ?*+{m,n}, groups and |)",
            ) from None
        for minimal in (False, True):
            value = _generate(tree, self.draw, where, minimal, [0])
            for candidate in self.padded(value, low, high):
                if _search(pattern, candidate):
                    return candidate
        raise self.fail(where, f"no string of the pattern {pattern!r} has {low} to {high} characters")

    @staticmethod
    def padded(value: str, low: int, high: int | None) -> list[str]:
        if high is not None and len(value) > high:
            return []
        if len(value) >= low:
            return [value]
        pad = "x" * (low - len(value))
        return [value + pad, pad + value]


def _search(pattern: str, value: str) -> bool:
    return re.search(pattern, value) is not None


def _date(draw: _Draw, where: str) -> str:
    return date.fromordinal(_DAY_ZERO + draw.below(f"{where}#date", _DAYS)).isoformat()


def _time(draw: _Draw, where: str) -> str:
    seconds = draw.below(f"{where}#time", 86400)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"


def _email(draw: _Draw, where: str) -> str:
    name = _NAMES[draw.below(f"{where}#name", len(_NAMES))]
    return f"{name}.{draw.below(f'{where}#n', 100)}@example.com"


_FORMATS: Mapping[str, Callable[[_Draw, str], str]] = MappingProxyType(
    {
        "date": _date,
        "date-time": lambda draw, where: f"{_date(draw, where)}T{_time(draw, where)}",
        "time": _time,
        "email": _email,
        "uuid": lambda draw, where: str(uuid.UUID(bytes=draw.raw(f"{where}#uuid"), version=4)),
        "uri": lambda draw, where: f"https://example.com/{_NAMES[draw.below(f'{where}#uri', len(_NAMES))]}",
        "hostname": lambda draw, where: f"{_NAMES[draw.below(f'{where}#host', len(_NAMES))]}.example.com",
        "ipv4": lambda draw, where: f"192.0.2.{1 + draw.below(f'{where}#ip', 254)}",
        "ipv6": lambda draw, where: f"2001:db8::{1 + draw.below(f'{where}#ip', 65535):x}",
    }
)


def schema_answer(schema: Any, body: Mapping[str, Any]) -> Any:
    """Return the simulator's value for ``schema`` answering ``body`` (a chat or Messages body).

    The value is a function of the body's ``model``, its last user message and the schema, and
    it validates against the schema within the supported subset (see the module docstring).

    Args:
        schema: A JSON Schema (a dict; ``True`` and ``{}`` accept anything).
        body: The request body, for the model and the prompt.

    Returns:
        A JSON-ready value.

    Raises:
        SchemaAnswerError: No value can be made (a contradiction, an unsupported pattern that the
            plain answer does not match, a ``$ref`` that points nowhere); names the path.

    Examples:
        >>> body = {"model": "m", "messages": [{"role": "user", "content": "Rate: fine"}]}
        >>> score = schema_answer({"type": "integer", "minimum": 1, "maximum": 5}, body)
        >>> 1 <= score <= 5
        True
        >>> schema_answer({"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}, body)
        'ZYS-17'
        >>> schema_answer({"type": "string", "format": "date"}, body)
        '2024-05-12'
    """
    text = last_user_text(body)
    model = body.get("model")
    return _Filler(schema, text, model if isinstance(model, str) else "").value(schema, "$", 0)


def default_answer(body: Mapping[str, Any]) -> str:
    """Answer a chat completions request body deterministically.

    Args:
        body: A chat completions request body (``messages``, optional ``response_format``).

    Returns:
        The assistant message content.

    Examples:
        >>> default_answer({"messages": [{"role": "user", "content": "What is the sentiment? Awful, slow."}]})
        'negative'
        >>> schema = {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "mixed"]},
        ...           "score": {"type": "number"}}}
        >>> default_answer({"messages": [{"role": "user", "content": "sentiment: nice"}],
        ...                 "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
        '{"label": "positive", "score": 0.22}'
        >>> schema["properties"]["score"] = {"type": "integer", "minimum": 1, "maximum": 5}
        >>> default_answer({"model": "gpt-4o-mini",
        ...                 "messages": [{"role": "user", "content": "sentiment: nice"}],
        ...                 "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
        '{"label": "positive", "score": 3}'
    """
    text = last_user_text(body)
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        if response_format.get("type") == "json_schema":
            json_schema = response_format.get("json_schema")
            schema = json_schema.get("schema") if isinstance(json_schema, Mapping) else None
            if not isinstance(schema, Mapping):
                return "{}"
            return json.dumps(schema_answer(schema, body), ensure_ascii=False)
        if response_format.get("type") == "json_object":
            return json.dumps({"answer": _text_answer(text)}, ensure_ascii=False)
    return _text_answer(text)


def forced_tool(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the tool an Anthropic Messages body forces, or ``None``.

    A tool is forced by ``tool_choice: {"type": "tool", "name": N}`` when ``tools`` holds a
    tool named ``N``.

    Examples:
        >>> forced_tool({"tools": [{"name": "a", "input_schema": {}}],
        ...              "tool_choice": {"type": "tool", "name": "a"}})["name"]
        'a'
        >>> forced_tool({"tools": [{"name": "a"}], "tool_choice": {"type": "auto"}}) is None
        True
    """
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if not isinstance(choice, Mapping) or choice.get("type") != "tool" or not isinstance(tools, list):
        return None
    name = choice.get("name")
    return next((t for t in tools if isinstance(t, Mapping) and t.get("name") == name), None)


def tool_input(body: Mapping[str, Any], input_schema: Any) -> dict[str, Any]:
    """Build a deterministic tool ``input`` for a body that fits ``input_schema``.

    Values follow the ``json_schema`` answer rules (see the module docstring).

    Examples:
        >>> tool_input({"messages": [{"role": "user", "content": "count these words"}]},
        ...            {"type": "object", "properties": {"n": {"type": "integer"}}})
        {'n': 3}
    """
    if not isinstance(input_schema, Mapping):
        return {}
    value = schema_answer(input_schema, body)
    return value if isinstance(value, dict) else {}


def broken_json(text: str) -> str:
    """Return ``text`` made invalid JSON: its first half (``[[fake:invalid_json]]``).

    If the first half still parses (or is empty), ``{`` is put in front, which never parses.

    Examples:
        >>> broken_json('{"label": "positive"}')
        '{"label": '
        >>> broken_json("12")
        '{1'
    """
    cut = text[: len(text) // 2]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return "{" + cut


def embedding_dimensions(model: str, dimensions: int | None = None) -> int:
    """Return the length of the fake vectors of ``model``: ``dimensions`` if given, else from the table.

    Examples:
        >>> embedding_dimensions("text-embedding-3-large"), embedding_dimensions("my-embedder")
        (3072, 256)
        >>> embedding_dimensions("text-embedding-3-large", 64)
        64
    """
    if dimensions is not None:
        return dimensions
    return EMBEDDING_DIMENSIONS.get(model, DEFAULT_EMBEDDING_DIMENSIONS)


def default_embedding(model: str, text: str, dimensions: int | None = None) -> list[float]:
    """Return the deterministic unit-length embedding of ``text`` for ``model``.

    Components are drawn uniformly from ``[-1, 1)`` by SHA-256 in counter mode, seeded by the
    SHA-256 of ``model`` and ``text`` (markers included), then scaled to length 1. The result is
    the same on every platform and Python version.

    Args:
        model: The embeddings model name.
        text: One input text.
        dimensions: Vector length; default :func:`embedding_dimensions` of the model.

    Returns:
        The vector.

    Examples:
        >>> vector = default_embedding("text-embedding-3-small", "hi", dimensions=4)
        >>> len(vector), round(math.fsum(x * x for x in vector), 9)
        (4, 1.0)
        >>> vector == default_embedding("text-embedding-3-large", "hi", dimensions=4)
        False
    """
    size = embedding_dimensions(model, dimensions)
    seed = hashlib.sha256(f"{model}\x00{text}".encode()).digest()
    raw: list[float] = []
    for block in range(math.ceil(size / 8)):
        words = struct.unpack(">8I", hashlib.sha256(seed + block.to_bytes(4, "big")).digest())
        raw.extend(word / 2**31 - 1.0 for word in words)
    del raw[size:]
    norm = math.sqrt(math.fsum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
