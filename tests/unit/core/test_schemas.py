"""Response schemas: normalising, the strict form, Arrow types, validation."""

from __future__ import annotations

from enum import Enum
from typing import Literal

import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from prefect_llm_batch.errors import InputError
from prefect_llm_batch.schemas import ResponseSchema, SchemaViolation


class Sentiment(str, Enum):
    positive = "positive"
    negative = "negative"
    mixed = "mixed"


class Aspect(BaseModel):
    name: str
    score: float


class Review(BaseModel):
    """What we want to know about a review."""

    sentiment: Sentiment
    confidence: float = Field(description="0 to 1")
    stars: int
    recommended: bool
    topics: list[str]
    aspects: list[Aspect]
    summary: Aspect
    language: Literal["en", "fr", "other"]
    note: str | None = None


JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
        "confidence": {"type": "number"},
        "stars": {"type": "integer"},
        "recommended": {"type": "boolean"},
        "topics": {"type": "array", "items": {"type": "string"}},
        "aspects": {"type": "array", "items": {"$ref": "#/$defs/Aspect"}},
        "summary": {"$ref": "#/$defs/Aspect"},
        "language": {"enum": ["en", "fr", "other"]},
        "note": {"type": ["string", "null"]},
    },
    "required": [
        "sentiment",
        "confidence",
        "stars",
        "recommended",
        "topics",
        "aspects",
        "summary",
        "language",
    ],
    "$defs": {
        "Aspect": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "score": {"type": "number"}},
            "required": ["name", "score"],
        }
    },
}

ASPECT = pa.struct([pa.field("name", pa.string()), pa.field("score", pa.float64())])
EXPECTED_TYPES = {
    "sentiment": pa.string(),
    "confidence": pa.float64(),
    "stars": pa.int64(),
    "recommended": pa.bool_(),
    "topics": pa.list_(pa.string()),
    "aspects": pa.list_(ASPECT),
    "summary": ASPECT,
    "language": pa.string(),
    "note": pa.string(),
}


@pytest.mark.parametrize("source", [Review, JSON_SCHEMA], ids=["pydantic", "json-schema"])
def test_arrow_types_per_property(source: object) -> None:
    schema = ResponseSchema.from_user(source)
    assert dict(schema.arrow_fields()) == EXPECTED_TYPES
    assert schema.properties == list(EXPECTED_TYPES)


@pytest.mark.parametrize("source", [Review, JSON_SCHEMA], ids=["pydantic", "json-schema"])
def test_strict_form_requires_everything_and_makes_optional_nullable(source: object) -> None:
    strict = ResponseSchema.from_user(source).strict()

    def check(node: object) -> None:
        if isinstance(node, dict):
            assert "$ref" not in node and "default" not in node
            if node.get("type") == "object":
                assert node["additionalProperties"] is False
                assert node["required"] == list(node["properties"])
            for value in node.values():
                check(value)
        elif isinstance(node, list):
            for value in node:
                check(value)

    check(strict)
    note = strict["properties"]["note"]
    assert {"type": "null"} in note.get("anyOf", []) or "null" in note.get("type", [])
    rf = ResponseSchema.from_user(source).openai_response_format()
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True


def test_convert_validates_and_names_the_path() -> None:
    schema = ResponseSchema.from_user(Review)
    good = {
        "sentiment": "mixed",
        "confidence": 0.5,
        "stars": 3,
        "recommended": False,
        "topics": ["price"],
        "aspects": [{"name": "fit", "score": 0.2}],
        "summary": {"name": "overall", "score": 0.5},
        "language": "en",
    }
    assert schema.convert(good)["note"] is None
    with pytest.raises(SchemaViolation, match=r"\$\.aspects\[0\]"):
        schema.convert({**good, "aspects": [{"name": "fit"}]})
    with pytest.raises(SchemaViolation, match="sentiment"):
        schema.convert({**good, "sentiment": "great"})
    with pytest.raises(SchemaViolation, match="stars"):
        schema.convert({**good, "stars": "three"})
    with pytest.raises(SchemaViolation, match="expected an object"):
        schema.convert([1, 2])


def test_to_arrays_keeps_null_rows_null() -> None:
    schema = ResponseSchema.from_user(Review)
    row = {name: None for name in schema.properties} | {"summary": {"name": "a", "score": 1.0}, "stars": 4}
    arrays = schema.to_arrays([row, None])
    by_name = dict(zip(schema.properties, arrays, strict=True))
    assert by_name["stars"].to_pylist() == [4, None]
    assert by_name["summary"].to_pylist() == [{"name": "a", "score": 1.0}, None]
    assert all(len(a) == 2 for a in arrays)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        (
            {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
            r"\$\.x",
        ),
        (
            {
                "type": "object",
                "properties": {"m": {"type": "object", "additionalProperties": {"type": "string"}}},
            },
            r"\$\.m",
        ),
        ({"type": "object", "properties": {"t": {"type": ["string", "integer"]}}}, r"\$\.t"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, r"\$\.a"),
        (
            {
                "type": "object",
                "properties": {"n": {"$ref": "#/$defs/N"}},
                "$defs": {"N": {"type": "object", "properties": {"child": {"$ref": "#/$defs/N"}}}},
            },
            "recursive",
        ),
        ({"type": "array", "items": {"type": "string"}}, "object"),
    ],
)
def test_unrepresentable_features_fail_naming_the_property(schema: dict[str, object], named: str) -> None:
    with pytest.raises(InputError, match=named):
        ResponseSchema(schema)


FAST_SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "mixed"]},
            "confidence": {"type": "number"},
            "count": {"type": "integer"},
            "flag": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "kind": {"const": "review"},
            "nested": {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "required": ["a"],
                "additionalProperties": False,
            },
        },
        "required": ["sentiment", "confidence"],
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"n": {"enum": [1, 2]}}},  # True is not 1
    {"type": "object", "properties": {"s": {"type": "string", "maxLength": 3}}},  # not covered: jsonschema
]
VALUES = [
    *(None, True, False, 0, 1, 1.0, 1.5, -2, "", "1", "positive", "mixed", "review", "x" * 5),
    *([], ["a"], [1], {}, {"a": 1}, {"a": "1"}, {"a": 1, "b": 2}, {"b": 1}),
]
#: Values that fit, per property, so that random answers are often valid.
GOOD = {
    "sentiment": ["positive", "mixed"], "confidence": [0.5, 1, 0], "count": [1, 2.0], "flag": [True],
    "tags": [["a"], []], "maybe": [None, 3], "kind": ["review"], "nested": [{"a": 1}], "n": [1, 2.0],
    "s": ["ab"],
}  # fmt: skip


def test_the_fast_check_never_accepts_what_jsonschema_rejects() -> None:
    import random

    from jsonschema import Draft202012Validator

    rng = random.Random(17)
    for raw in FAST_SCHEMAS:
        schema = ResponseSchema(raw)
        validator = Draft202012Validator(schema.schema)
        names = [*schema.properties, "unknown"]
        accepted = 0
        for _ in range(1500):
            picked = rng.sample(names, rng.randint(0, len(names)))
            if rng.random() < 0.5:  # most properties, mostly good values
                picked = [n for n in names if n != "unknown" and rng.random() < 0.9]
            answer = {
                n: rng.choice(GOOD[n]) if n in GOOD and rng.random() < 0.8 else rng.choice(VALUES)
                for n in picked
            }
            fast = schema._accepts(answer) if schema._accepts is not None else False
            if fast:
                accepted += 1
                assert validator.is_valid(answer), (raw, answer)
            try:
                got: object = schema.convert(answer)
            except SchemaViolation as exc:
                got = ("violation", str(exc))
            slow = ResponseSchema(raw)
            slow._accepts = None
            try:
                want: object = slow.convert(answer)
            except SchemaViolation as exc:
                want = ("violation", str(exc))
            assert got == want, answer
        if schema._accepts is not None:
            assert accepted > 50  # the fast path is really taken
    assert ResponseSchema(FAST_SCHEMAS[2])._accepts is None  # maxLength: jsonschema decides alone
