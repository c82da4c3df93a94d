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
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from prefect_llm_batch.testing.schema_answers import (
    MAX_DEPTH as MAX_DEPTH,
)
from prefect_llm_batch.testing.schema_answers import (
    MINIMAL_DEPTH as MINIMAL_DEPTH,
)
from prefect_llm_batch.testing.schema_answers import (
    SchemaAnswerError as SchemaAnswerError,
)
from prefect_llm_batch.testing.schema_answers import (
    schema_answer as schema_answer,
)
from prefect_llm_batch.testing.text_answers import (
    MARKERS as MARKERS,
)
from prefect_llm_batch.testing.text_answers import (
    NEGATIVE_WORDS as NEGATIVE_WORDS,
)
from prefect_llm_batch.testing.text_answers import (
    POSITIVE_WORDS as POSITIVE_WORDS,
)
from prefect_llm_batch.testing.text_answers import (
    SUMMARY_WORDS as SUMMARY_WORDS,
)
from prefect_llm_batch.testing.text_answers import (
    _text_answer,
)
from prefect_llm_batch.testing.text_answers import (
    classify_sentiment as classify_sentiment,
)
from prefect_llm_batch.testing.text_answers import (
    content_text as content_text,
)
from prefect_llm_batch.testing.text_answers import (
    embedding_inputs as embedding_inputs,
)
from prefect_llm_batch.testing.text_answers import (
    estimate_tokens as estimate_tokens,
)
from prefect_llm_batch.testing.text_answers import (
    find_markers as find_markers,
)
from prefect_llm_batch.testing.text_answers import (
    last_user_text as last_user_text,
)
from prefect_llm_batch.testing.text_answers import (
    prompt_tokens as prompt_tokens,
)
from prefect_llm_batch.testing.text_answers import (
    strip_markers as strip_markers,
)

#: Native vector length per embeddings model (read-only); ``dimensions`` in a request overrides it.
EMBEDDING_DIMENSIONS: Mapping[str, int] = MappingProxyType(
    {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
)
#: Vector length for models :data:`EMBEDDING_DIMENSIONS` does not list.
DEFAULT_EMBEDDING_DIMENSIONS = 256


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
