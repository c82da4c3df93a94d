"""Moderations answers as typed columns (pure).

A moderations job (endpoint ``/v1/moderations``) sends each row's rendered prompt as
``{"model", "input"}`` and gets back OpenAI's ``{"id", "model", "results": [{"flagged",
"categories", "category_scores", ...}]}``. Each answer becomes ``flagged`` (bool) and one float64
column per documented category score, named as the ``category_scores`` keys
(:data:`MODERATION_CATEGORIES`, a fixed list, so the output schema never depends on which rows
failed or which categories a model reports). A category a model does not score is null.

The provider stores the answer as JSON text in ``response``
(:func:`moderation_answer`); the output step parses it with :data:`MODERATION_SCHEMA` like a
response schema, so cached answers and retries need nothing else.

Examples:
    >>> body = {"id": "modr-1", "model": "omni-moderation-latest",
    ...         "results": [{"flagged": True, "category_scores": {"violence": 0.9, "hate": 0.01}}]}
    >>> text = moderation_answer(body)
    >>> values = MODERATION_SCHEMA.convert(__import__("json").loads(text))
    >>> values["flagged"], values["violence"], values["hate"], values["sexual/minors"]
    (True, 0.9, 0.01, None)
    >>> [(name, str(t)) for name, t in MODERATION_SCHEMA.arrow_fields()][:2]
    [('flagged', 'bool'), ('harassment', 'double')]
"""

from __future__ import annotations

from typing import Any

import orjson

from .results import RowResult
from .schemas import ResponseSchema
from .spec import ErrorKind

#: The documented ``category_scores`` keys of OpenAI's moderation object (openai-python's
#: ``types/moderation.py``, ``CategoryScores``), in its order.
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

#: The typed columns of a moderations answer: ``flagged`` and one nullable number per category.
MODERATION_SCHEMA = ResponseSchema(
    {
        "type": "object",
        "properties": {
            "flagged": {"type": "boolean"},
            **{name: {"anyOf": [{"type": "number"}, {"type": "null"}]} for name in MODERATION_CATEGORIES},
        },
        "required": ["flagged"],
    },
    name="moderation",
)


def moderation_answer(body: dict[str, Any]) -> str | None:
    """The answer text of a moderations response body: canonical JSON of ``flagged`` and the
    documented category scores of its first result (one input per request), or ``None`` when the
    body has no result with a boolean ``flagged``.

    Examples:
        >>> moderation_answer({"results": [{"flagged": False, "category_scores": {"hate": 0.5, "new": 1}}]})
        '{"flagged":false,"hate":0.5}'
        >>> moderation_answer({"results": []}) is None
        True
    """
    results = body.get("results")
    first = results[0] if isinstance(results, list) and results else None
    if not isinstance(first, dict) or not isinstance(first.get("flagged"), bool):
        return None
    scores = first.get("category_scores")
    scores = scores if isinstance(scores, dict) else {}
    answer: dict[str, Any] = {"flagged": first["flagged"]}
    for name in MODERATION_CATEGORIES:
        value = scores.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            answer[name] = float(value)
    return orjson.dumps(answer).decode()


def parse_moderation(custom_id: str, body: dict[str, Any], batch_id: str | None = None) -> RowResult:
    """Turn a successful moderations response body into a :class:`RowResult` whose ``response``
    is :func:`moderation_answer` (moderations report no token usage).

    Examples:
        >>> r = parse_moderation("k", {"model": "m", "results": [{"flagged": True, "category_scores": {}}]})
        >>> r.response, r.model, r.error_kind
        ('{"flagged":true}', 'm', None)
        >>> parse_moderation("k", {"results": "?"}).error_kind.value
        'parse_error'
    """
    model = body.get("model")
    result = RowResult(
        custom_id=custom_id, model=model if isinstance(model, str) else None, batch_id=batch_id
    )
    result.response = moderation_answer(body)
    if result.response is None:
        result.error_kind, result.error = ErrorKind.PARSE_ERROR, "the response has no moderation result"
    return result
