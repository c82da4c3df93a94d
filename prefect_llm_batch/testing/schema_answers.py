"""Schema answers: a value that fits a JSON Schema, a function of the model, the last user message
and the schema (the supported subset: :mod:`prefect_llm_batch.testing.answers`).

Examples:
    >>> body = {"model": "m", "messages": [{"role": "user", "content": "sentiment: great"}]}
    >>> schema_answer({"enum": ["positive", "negative"]}, body)
    'positive'
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import date
from types import MappingProxyType
from typing import Any

from jsonschema import Draft202012Validator

from prefect_llm_batch.testing.patterns import (
    _Draw,
    _generate,
    _PatternParser,
    _UnsupportedPattern,
)
from prefect_llm_batch.testing.text_answers import _text_answer, classify_sentiment, last_user_text


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
