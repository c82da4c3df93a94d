"""Response schemas: from what users write to what providers accept and what Parquet stores (pure).

Users give a JSON Schema dict or a pydantic model class. This module

* **normalises** it: pydantic models become their JSON Schema, ``$ref`` into ``$defs`` is
  inlined (recursive schemas are refused, naming the property), the top level must be an object;
* makes the **strict form** OpenAI's ``strict: true`` wants: every object lists all its properties
  as required and sets ``additionalProperties: false``; a property that was optional becomes
  nullable instead; ``default`` is dropped (strict mode rejects it);
* maps every top-level property to an **Arrow type**: string -> string, integer -> int64,
  number -> float64, boolean -> bool, enum -> string, array -> list of the item type,
  object -> struct; ``anyOf`` with ``null`` (pydantic's ``Optional``) -> the other type;
* **validates and converts** one answer into typed column values, reporting where it breaks.

Anything that cannot be one typed column (a union of two types, an object without
``properties``, ``patternProperties``...) fails before sending, naming the property.

Examples:
    >>> from pydantic import BaseModel
    >>> class Review(BaseModel):
    ...     sentiment: str
    ...     score: int | None = None
    >>> schema = ResponseSchema.from_user(Review)
    >>> [(name, str(t)) for name, t in schema.arrow_fields()]
    [('sentiment', 'string'), ('score', 'int64')]
    >>> schema.strict()["required"], schema.strict()["properties"]["score"]["anyOf"][1]
    (['sentiment', 'score'], {'type': 'null'})
    >>> schema.convert({"sentiment": "positive"})
    {'sentiment': 'positive', 'score': None}
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .errors import InputError

_SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}
_UNSUPPORTED = ("patternProperties", "oneOf", "allOf", "not", "if", "then", "else", "dependentSchemas")


class SchemaViolation(ValueError):
    """An answer does not fit the schema; ``path`` says where (``$.topics[2]``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _resolve_refs(node: Any, defs: Mapping[str, Any], where: str, seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, list):
        return [_resolve_refs(item, defs, where, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#/$defs/") and not ref.startswith("#/definitions/"):
            raise InputError(
                f"response schema: {where} uses the reference {ref!r}; only local $defs are supported"
            )
        name = ref.rsplit("/", 1)[-1]
        if name in seen:
            raise InputError(
                f"response schema: {where} is recursive ({' -> '.join([*seen, name])}); not supported"
            )
        if name not in defs:
            raise InputError(f"response schema: {where} refers to {ref!r}, which $defs does not define")
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve_refs(merged, defs, where, (*seen, name))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$defs", "definitions"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {p: _resolve_refs(v, defs, f"{where}.{p}", seen) for p, v in value.items()}
        else:
            out[key] = _resolve_refs(value, defs, where, seen)
    return out


def _non_null(node: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Strip ``null`` from a node's type / anyOf; return the remaining node and whether null was allowed."""
    node = dict(node)
    nullable = False
    types = node.get("type")
    if isinstance(types, list):
        rest = [t for t in types if t != "null"]
        nullable = len(rest) != len(types)
        node["type"] = rest[0] if len(rest) == 1 else rest
    options = node.get("anyOf")
    if isinstance(options, list):
        rest_opts = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
        nullable = nullable or len(rest_opts) != len(options)
        if len(rest_opts) == 1:
            del node["anyOf"]
            node = {**rest_opts[0], **{k: v for k, v in node.items() if k not in ("anyOf",)}}
        else:
            node["anyOf"] = rest_opts
    return node, nullable


def _arrow_type(node: Mapping[str, Any], where: str) -> pa.DataType:
    node, _ = _non_null(node)
    for keyword in _UNSUPPORTED:
        if keyword in node:
            raise InputError(f"response schema: {where} uses {keyword!r}, which cannot be one typed column")
    if "anyOf" in node:
        raise InputError(f"response schema: {where} allows several types (anyOf); a column needs one type")
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {str}:
            return pa.string()
        if kinds <= {int}:
            return pa.int64()
        raise InputError(f"response schema: {where} has an enum of mixed types; use strings")
    kind = node.get("type")
    if isinstance(kind, list):
        raise InputError(f"response schema: {where} allows several types {kind}; a column needs one type")
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = node.get("items")
        if not isinstance(items, dict):
            raise InputError(f"response schema: {where} is an array without one 'items' schema")
        return pa.list_(_arrow_type(items, f"{where}[]"))
    if kind == "object":
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            raise InputError(
                f"response schema: {where} is an object without 'properties'; a struct needs them"
            )
        if isinstance(node.get("additionalProperties"), dict):
            raise InputError(
                f"response schema: {where} has typed additionalProperties (a map); not supported"
            )
        return pa.struct([pa.field(p, _arrow_type(v, f"{where}.{p}")) for p, v in props.items()])
    raise InputError(f"response schema: {where} has no supported 'type' (got {kind!r})")


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if k != "default"}
    if out.get("type") == "object" and isinstance(out.get("properties"), dict):
        required = set(node.get("required") or [])
        props = {}
        for name, prop in out["properties"].items():
            if name not in required and not _non_null(prop)[1]:
                prop = {"anyOf": [prop, {"type": "null"}]}
            props[name] = prop
        out["properties"] = props
        out["required"] = list(props)
        out["additionalProperties"] = False
    return out


class ResponseSchema:
    """A normalised response schema (see the module docstring).

    Args:
        schema: A JSON Schema dict whose top level is an object with properties.
        name: Name sent to the provider (``json_schema.name``; letters, digits, ``_`` and ``-``).

    Raises:
        InputError: The schema is not usable; the message names the property.
    """

    def __init__(self, schema: Mapping[str, Any], name: str = "response") -> None:
        if not isinstance(schema, Mapping):
            raise InputError("the response schema must be a JSON Schema object (a dict) or a pydantic model")
        defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
        resolved = _resolve_refs(copy.deepcopy(dict(schema)), defs, "$")
        if resolved.get("type") != "object" or not isinstance(resolved.get("properties"), dict):
            raise InputError("the response schema must describe an object with 'properties' at its top level")
        try:
            Draft202012Validator.check_schema(resolved)
        except SchemaError as exc:
            raise InputError(f"the response schema is not valid JSON Schema: {exc.message}") from None
        self.name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64] or "response"
        self.schema: dict[str, Any] = resolved
        self._fields = [
            (prop, _arrow_type(node, f"$.{prop}")) for prop, node in resolved["properties"].items()
        ]
        self._validator = Draft202012Validator(resolved)
        self._accepts = _compile_check(resolved)
        self._struct = pa.struct(self._fields)

    @classmethod
    def from_user(cls, value: Any) -> ResponseSchema:
        """Build from a JSON Schema (a dict, or JSON text), a pydantic model class, or a ResponseSchema."""
        if isinstance(value, ResponseSchema):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise InputError(f"the response schema is not valid JSON: {exc}") from None
        if isinstance(value, type) and hasattr(value, "model_json_schema"):
            return cls(value.model_json_schema(), name=value.__name__)
        if isinstance(value, Mapping):
            return cls(value, name=str(value.get("title") or "response"))
        raise InputError(
            f"response_format must be a JSON Schema dict or a pydantic model class, not {type(value)}"
        )

    @property
    def properties(self) -> list[str]:
        """Top-level property names, in schema order."""
        return [name for name, _ in self._fields]

    def arrow_fields(self) -> list[tuple[str, pa.DataType]]:
        """One (name, Arrow type) per top-level property."""
        return list(self._fields)

    def strict(self) -> dict[str, Any]:
        """The schema in OpenAI's strict form."""
        result: dict[str, Any] = _strict(self.schema)
        return result

    def openai_response_format(self) -> dict[str, Any]:
        """The ``response_format`` body parameter for chat completions."""
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "strict": True, "schema": self.strict()},
        }

    def response_format(self, style: str = "openai") -> dict[str, Any]:
        """The ``response_format`` body parameter in a server's style (``spec.SchemaStyle``).

        ``openai``: :meth:`openai_response_format`. ``json_object_schema``: ``{"type":
        "json_object", "schema": ...}``, the shape llama.cpp's servers constrain answers with (never
        ``json_object`` without a schema: it lets a small model loop until ``max_tokens``).

        Examples:
            >>> s = ResponseSchema({"type": "object", "properties": {"n": {"type": "integer"}}}, name="n")
            >>> s.response_format("json_object_schema")["type"], sorted(s.response_format("openai"))
            ('json_object', ['json_schema', 'type'])
        """
        if style == "json_object_schema":
            return {"type": "json_object", "schema": self.strict()}
        if style != "openai":
            raise ValueError(f"schema_style must be openai or json_object_schema, not {style!r}")
        return self.openai_response_format()

    def convert(self, answer: Any) -> dict[str, Any]:
        """Validate one parsed answer and return its top-level values (missing optional ones as None).

        Raises:
            SchemaViolation: The answer does not fit; names the path and the rule broken.
        """
        if not isinstance(answer, dict):
            raise SchemaViolation("$", f"expected an object, got {type(answer).__name__}")
        if self._accepts is not None and self._accepts(answer):  # certainly valid: no jsonschema walk
            return {name: answer.get(name) for name in self.properties}
        error = next(iter(sorted(self._validator.iter_errors(answer), key=lambda e: list(e.path))), None)
        if error is not None:
            path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise SchemaViolation(path, error.message[:200])
        return {name: answer.get(name) for name in self.properties}

    def to_arrays(self, rows: list[dict[str, Any] | None]) -> list[pa.Array[Any]]:
        """Typed column arrays for converted answers (None for rows without one)."""
        struct = pa.array(rows, type=self._struct)
        assert isinstance(struct, pa.StructArray)
        return list(struct.flatten())  # flatten (unlike .field) keeps the rows' nulls


#: Keywords the fast check understands; any other assertion keyword leaves validation to jsonschema.
#: ``format`` asserts nothing without a format checker (none is configured).
_CHECKED = frozenset(
    {"type", "enum", "const", "properties", "required", "additionalProperties", "items", "anyOf", "format"}
)
_ASSERTIONS = frozenset(Draft202012Validator.VALIDATORS)

_TYPES: dict[str, Callable[[Any], bool]] = {
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


def _same_scalar(member: Any, value: Any) -> bool:
    """JSON Schema equality of scalars (``True`` is not ``1``); lists and objects: not decided."""
    if isinstance(value, bool) or value is None:
        return member is value
    if isinstance(value, str):
        return isinstance(member, str) and member == value
    if isinstance(value, (int, float)):
        return isinstance(member, (int, float)) and not isinstance(member, bool) and member == value
    return False


def _compile_check(node: Any) -> Callable[[Any], bool] | None:
    """A fast predicate that says True only of answers ``node`` certainly accepts.

    Covers what response schemas are made of (types, enums, consts, properties, required,
    ``additionalProperties`` true or false, items, ``anyOf``); returns None when ``node`` uses
    anything else, and then jsonschema decides alone. A False answer is always re-checked by
    jsonschema, which also words the message, so the predicate may be stricter, never looser.
    """
    if node is True or node == {}:
        return lambda value: True
    if node is False:
        return lambda value: False
    if not isinstance(node, dict) or any(key in _ASSERTIONS and key not in _CHECKED for key in node):
        return None
    checks: list[Callable[[Any], bool]] = []
    if "type" in node:
        names = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not all(name in _TYPES for name in names):
            return None
        tests = [_TYPES[name] for name in names]
        checks.append(lambda value: any(test(value) for test in tests))
    if "enum" in node:
        members = list(node["enum"])
        checks.append(lambda value: any(_same_scalar(member, value) for member in members))
    if "const" in node:
        constant = node["const"]
        checks.append(lambda value: _same_scalar(constant, value))
    if "anyOf" in node:
        branches = [_compile_check(branch) for branch in node["anyOf"]]
        if any(branch is None for branch in branches):
            return None
        ready = [branch for branch in branches if branch is not None]
        checks.append(lambda value: any(branch(value) for branch in ready))
    if "items" in node:
        item = _compile_check(node["items"])
        if item is None:
            return None
        checks.append(lambda value: not isinstance(value, list) or all(item(v) for v in value))
    if any(key in node for key in ("properties", "required", "additionalProperties")):
        object_check = _compile_object(node)
        if object_check is None:
            return None
        checks.append(object_check)
    return lambda value: all(check(value) for check in checks)


def _compile_object(node: dict[str, Any]) -> Callable[[Any], bool] | None:
    properties: dict[str, Callable[[Any], bool]] = {}
    for name, child in (node.get("properties") or {}).items():
        check = _compile_check(child)
        if check is None:
            return None
        properties[name] = check
    required = list(node.get("required") or [])
    extra = node.get("additionalProperties", True)
    if extra not in (True, False):
        return None  # a schema for additional properties: left to jsonschema

    def check_object(value: Any) -> bool:
        if not isinstance(value, dict):
            return True  # properties, required and additionalProperties only apply to objects
        if any(name not in value for name in required):
            return False
        for key, item in value.items():
            test = properties.get(key)
            if test is None:
                if extra is False:
                    return False
            elif not test(item):
                return False
        return True

    return check_object
