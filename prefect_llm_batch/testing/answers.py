"""Deterministic answers and embeddings of the fake provider: pure functions of the request body.

The fake server (:mod:`prefect_llm_batch.testing.server`) answers every chat request with
:func:`default_answer` unless :class:`~prefect_llm_batch.testing.FakeServerConfig` sets its own
``answer`` callable. The same body always gets the same answer, so tests can assert on it.

* If the last user message mentions ``sentiment``, the answer is ``"positive"``, ``"negative"``
  or ``"mixed"``, from a small word list (with ``not``/``never``/``no`` flipping the next word).
* Otherwise the answer is ``"[simulated] "`` followed by the first 12 words of the last user
  message (``"..."`` marks a cut).
* With ``response_format`` ``json_schema``, the answer is a JSON document that fits the schema
  (strings from the rules above, enums prefer the sentiment label); with ``json_object``,
  ``{"answer": ...}``.
* Anthropic Messages bodies work the same way (``content`` a string or a list of text blocks,
  ``system`` at the top level). When ``tool_choice`` forces a tool (``{"type": "tool", "name": N}``
  with ``N`` among ``tools``), :func:`forced_tool` finds it and :func:`tool_input` builds an
  ``input`` that fits the tool's ``input_schema``, by the same rules as ``json_schema`` answers.

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
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

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


def _schema_value(schema: Any, text: str, sentiment: str, depth: int = 0) -> Any:
    if not isinstance(schema, Mapping) or depth > 8:
        return None
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return sentiment if sentiment in schema["enum"] else schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            usable = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
            return _schema_value(usable[0], text, sentiment, depth + 1) if usable else None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        return {name: _schema_value(sub, text, sentiment, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [_schema_value(schema.get("items"), text, sentiment, depth + 1)]
    if kind == "integer":
        return len(text.split())
    if kind == "number":
        return float(len(text.split()))
    if kind == "boolean":
        return sentiment == "positive"
    if kind == "null":
        return None
    return _text_answer(text)


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
        '{"label": "positive", "score": 2.0}'
    """
    text = last_user_text(body)
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        if response_format.get("type") == "json_schema":
            json_schema = response_format.get("json_schema")
            schema = json_schema.get("schema") if isinstance(json_schema, Mapping) else None
            value = _schema_value(schema, text, classify_sentiment(text))
            return json.dumps(value if value is not None else {}, ensure_ascii=False)
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
    text = last_user_text(body)
    value = _schema_value(input_schema, text, classify_sentiment(text))
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
