"""The plain text answer and what it reads from a request body: messages, the last user text,
``[[fake:...]]`` markers, token estimates and the sentiment label (the rules:
:mod:`prefect_llm_batch.testing.answers`).

Examples:
    >>> classify_sentiment("not bad at all"), _text_answer("Summarize: one two")
    ('positive', '[simulated] Summarize: one two')
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: Markers understood by the fake server, written ``[[fake:<name>]]`` in any message content
#: (or in an embeddings ``input``).
MARKERS: frozenset[str] = frozenset(
    {"400", "500", "refusal", "length", "content_filter", "drop", "timeout", "invalid_json"}
)

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
