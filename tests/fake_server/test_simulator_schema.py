"""The simulator's structured answers obey the schema: a property test over the supported subset, and HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from prefect_llm_batch.flows import enrich_table
from prefect_llm_batch.schemas import ResponseSchema
from prefect_llm_batch.testing import FakeProviderServer, FakeServerConfig, default_answer
from prefect_llm_batch.testing.answers import SchemaAnswerError, schema_answer, tool_input

# Hypothesis warns (an error here) when the global ``random`` state moves while it draws an
# example. Threads other tests leave behind (HTTP retry jitter, servers) draw from it, so the
# warning says nothing about these strategies, which use no randomness of their own.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)

KEY = "fake-key-FAKE-simulator-schema"
SCORE = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["score"],
    "additionalProperties": False,
}
#: Patterns in the generator's subset (anchored and not), as users write them.
PATTERNS = [
    r"^[A-Z]{3}-\d{2}$",
    r"^[a-z]+$",
    r"\d{4}-\d{2}",
    r"^(foo|bar)+baz?$",
    r"^[a-f0-9]{8}$",
    r"^\w+@\w+\.com$",
    r"^v\d+(\.\d+){0,2}$",
    r"[^a-z]{2,4}",
    r"^(?:yes|no|maybe)$",
    r"^\+?\d{7,12}$",
    r"^.{3,5}$",
    r"^[A-Za-z_][A-Za-z0-9_]*$",
    r"^\s*x\S+$",
]
FORMATS = ["date", "date-time", "time", "email", "uuid", "ipv4", "ipv6"]
NAMES = st.sampled_from(["score", "label", "when", "tags", "id", "note", "email", "a", "b", "c"])


def chat_body(prompt: str, schema: Any, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "t", "strict": True, "schema": schema},
        },
    }


def validator(schema: Any) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# ----- schemas within the supported subset -------------------------------------------------------


@st.composite
def integer_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    step = draw(st.sampled_from([None, 2, 3, 5, 10]))
    if step is not None:
        schema["multipleOf"] = step
    low = draw(st.none() | st.integers(-1000, 1000))
    span = draw(st.integers(0, 500)) + (step or 0) + 2
    high = draw(st.none() | st.just(span if low is None else low + span))
    if low is not None:
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = high
    return schema


@st.composite
def number_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    step = draw(st.sampled_from([None, None, 0.5, 0.25, 0.1, 0.01, 2]))
    if step is not None:
        schema["multipleOf"] = step
    low = draw(st.none() | st.floats(-1000, 1000, allow_nan=False) | st.integers(-10, 10))
    span = draw(st.floats(0.001, 1000)) + (12 * step if step else 0)
    high = draw(st.none() | st.just(span if low is None else low + span))
    if low is not None:
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = high
    return schema


@st.composite
def string_schemas(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["lengths", "format", "pattern", "plain"]))
    schema: dict[str, Any] = {"type": "string"}
    if kind == "lengths":
        low = draw(st.integers(0, 60))
        if draw(st.booleans()):
            schema["minLength"] = low
        if draw(st.booleans()):
            schema["maxLength"] = low + draw(st.integers(0, 40))
    elif kind == "format":
        schema["format"] = draw(st.sampled_from(FORMATS))
    elif kind == "pattern":
        schema["pattern"] = draw(st.sampled_from(PATTERNS))
        if draw(st.booleans()):
            schema["maxLength"] = 40
    return schema


SCALARS = st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.none())
ENUMS = st.one_of(
    st.lists(
        st.sampled_from(["positive", "negative", "mixed", "en", "fr", "other"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    st.lists(st.integers(1, 10), min_size=1, max_size=4, unique=True),
).map(lambda members: {"enum": members})
LEAVES = st.one_of(
    integer_schemas(),
    number_schemas(),
    string_schemas(),
    ENUMS,
    SCALARS.map(lambda value: {"const": value}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.sampled_from(["string", "integer", "number", "boolean"]).map(lambda t: {"type": [t, "null"]}),
)


@st.composite
def object_schemas(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    properties = draw(st.dictionaries(NAMES, children, min_size=1, max_size=4))
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["required"] = [name for name in properties if draw(st.booleans())]
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    return schema


@st.composite
def array_schemas(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": draw(children)}
    low = draw(st.integers(0, 4))
    if draw(st.booleans()):
        schema["minItems"] = low
    if draw(st.booleans()):
        schema["maxItems"] = low + draw(st.integers(0, 3))
    return schema


def composed(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        object_schemas(children),
        array_schemas(children),
        children.map(lambda child: {"anyOf": [child, {"type": "null"}]}),
        st.tuples(children, children).map(lambda pair: {"anyOf": list(pair)}),
        st.tuples(string_schemas(), integer_schemas()).map(
            lambda pair: {"oneOf": [pair[0], pair[1], {"type": "boolean"}]}
        ),
    )


NESTED = st.recursive(LEAVES, composed, max_leaves=12)
TOP_LEVEL = object_schemas(NESTED)


@st.composite
def response_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """A top-level object within the supported subset; sometimes one property behind a $ref."""
    schema = draw(TOP_LEVEL)
    if draw(st.booleans()):
        name = next(iter(schema["properties"]))
        schema["$defs"] = {"Shared": schema["properties"][name]}
        schema["properties"][name] = {"$ref": "#/$defs/Shared"}
    return schema


COLUMN_LEAVES = st.one_of(
    integer_schemas(), number_schemas(), string_schemas(), ENUMS, st.just({"type": "boolean"})
)
COLUMN_SCHEMAS = object_schemas(
    st.recursive(
        COLUMN_LEAVES,
        lambda children: st.one_of(
            object_schemas(children),
            array_schemas(children),
            children.filter(lambda child: "anyOf" not in child).map(
                lambda child: {"anyOf": [child, {"type": "null"}]}
            ),
        ),
        max_leaves=8,
    )
)
PROMPTS = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["Sentiment of: I love it", "Sentiment of: awful, slow", "Summarize: the cat sat"]),
)


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schema=response_schemas(), prompt=PROMPTS, model=st.sampled_from(["gpt-4o-mini", "claude-x"]))
def test_every_simulator_answer_validates_against_its_schema(
    schema: dict[str, Any], prompt: str, model: str
) -> None:
    body = chat_body(prompt, schema, model)
    text = default_answer(body)
    answer = json.loads(text)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(schema).iter_errors(answer)]
    assert not errors, (schema, answer, errors)
    assert default_answer(json.loads(json.dumps(body))) == text  # the same request, the same answer
    anthropic = {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        "tools": [{"name": "t", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": "t"},
    }
    assert validator(schema).is_valid(tool_input(anthropic, schema))


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(schema=COLUMN_SCHEMAS, prompt=PROMPTS)
def test_answers_to_the_strict_form_the_flow_sends_fill_the_projects_typed_columns(
    schema: dict[str, Any], prompt: str
) -> None:
    typed = ResponseSchema(schema)
    strict = typed.openai_response_format()["json_schema"]["schema"]
    row = typed.convert(json.loads(default_answer(chat_body(prompt, strict))))
    [column.to_pylist() for column in typed.to_arrays([row])]  # Arrow takes every value


# ----- examples ------------------------------------------------------------------------------------


def test_a_bounded_score_is_inside_its_bounds_and_varies_with_the_prompt() -> None:
    scores = [
        json.loads(default_answer(chat_body(f"Rate review {i}: it was fine", SCORE)))["score"]
        for i in range(40)
    ]
    assert set(scores) == {1, 2, 3, 4, 5}


def test_numbers_look_like_data() -> None:
    schema = {
        "type": "object",
        "properties": {
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "price": {"type": "number", "exclusiveMinimum": 10, "exclusiveMaximum": 20, "multipleOf": 0.5},
            "year": {"type": "integer", "minimum": 1990, "maximum": 2030},
            "words": {"type": "integer"},
        },
    }
    for i in range(20):
        answer = schema_answer(schema, chat_body(f"Describe product {i} in a few words", schema))
        assert 0 <= answer["confidence"] <= 1 and round(answer["confidence"], 2) == answer["confidence"]
        assert 10 < answer["price"] < 20 and answer["price"] * 2 == int(answer["price"] * 2)
        assert 1990 <= answer["year"] <= 2030
        assert answer["words"] == 7  # an unbounded integer counts the prompt's words


def test_formats_patterns_and_lengths_give_values_of_their_kind() -> None:
    schema = {
        "type": "object",
        "properties": {
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "email": {"type": "string", "format": "email"},
            "id": {"type": "string", "format": "uuid"},
            "sku": {"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"},
            "title": {"type": "string", "minLength": 5, "maxLength": 12},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 2, "maxItems": 3},
        },
    }
    answer = schema_answer(schema, chat_body("Summarize: a long review of a very good blender", schema))
    assert validator(schema).is_valid(answer)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", answer["day"]) and answer["at"].startswith("20")
    assert answer["email"].endswith("@example.com") and len(answer["id"]) == 36
    assert 5 <= len(answer["title"]) <= 12 and 2 <= len(answer["tags"]) <= 3


def test_answers_depend_on_model_prompt_and_schema_only() -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}}
    first = default_answer(chat_body("hello there", schema))
    assert default_answer(chat_body("hello there", schema)) == first
    assert default_answer(chat_body("hello there", schema, model="other")) != first
    assert default_answer(chat_body("hello here", schema)) != first


def test_local_refs_and_recursive_schemas_are_answered() -> None:
    schema = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
        "required": ["root"],
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["name", "children"],
            }
        },
    }
    answer = schema_answer(schema, chat_body("tree", schema))
    assert validator(schema).is_valid(answer) and answer["root"]["children"]


def test_an_unsupported_pattern_raises_naming_the_path_and_pattern() -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": r"^(?=.*\d)\w{8}$"}}}
    with pytest.raises(SchemaAnswerError, match=r"\$\.code.*lookaround"):
        schema_answer(schema, chat_body("anything", schema))
    fits_anyway = {"type": "string", "pattern": r"(?<=\[)simulated"}  # the plain answer matches it
    assert schema_answer(fits_anyway, chat_body("hi", fits_anyway)) == "[simulated] hi"


def test_contradictory_bounds_raise_naming_the_path() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 3, "maximum": 3}}}
    with pytest.raises(SchemaAnswerError, match=r"\$\.n: no integer"):
        schema_answer(schema, chat_body("x", schema))


# ----- over HTTP -------------------------------------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(FakeServerConfig()) as srv:
        yield srv


def test_realtime_chat_answers_a_bounded_score_and_names_an_unanswerable_pattern(
    server: FakeProviderServer,
) -> None:
    bad = {"type": "object", "properties": {"code": {"type": "string", "pattern": r"\bx\b"}}}
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=5.0
    ) as http:
        good = http.post("/chat/completions", json=chat_body("Rate: a long and winding road trip", SCORE))
        refused = http.post("/chat/completions", json=chat_body("Rate it", bad))
    assert good.status_code == 200
    assert json.loads(good.json()["choices"][0]["message"]["content"])["score"] in range(1, 6)
    assert refused.status_code == 500 and "$.code" in refused.json()["error"]["message"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_batch_with_a_1_to_5_score_schema_gives_1_to_5_typed_values(
    server: FakeProviderServer, tmp_path: Path
) -> None:
    texts = [f"Review {i}: the delivery was late but the product itself works well enough" for i in range(30)]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), source)
    out = tmp_path / "out.parquet"
    enrich_table(
        source=str(source),
        output=str(out),
        prompt="Score this review from 1 to 5: {{ text }}",
        model="gpt-4o-mini",
        response_format=json.dumps(SCORE),
        provider="openai",
        base_url=server.base_url,
        state_dir=str(tmp_path / "state"),
        poll_interval=0.05,
        retry_backoff=0,
    )
    table = pq.read_table(out)
    assert table.column("response_error_kind").null_count == len(texts)
    assert table.schema.field("score").type == pa.int64()
    scores = table.column("score").to_pylist()
    assert set(scores) <= {1, 2, 3, 4, 5} and len(set(scores)) >= 3
