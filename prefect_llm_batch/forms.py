"""The flows' parameter forms in the Prefect UI: readable titles, plain-text descriptions, and no
Python-only parameters.

Prefect builds a deployment's parameter form from the flow function's signature and the
``Args:`` section of its docstring (``prefect.utilities.callables.parameter_schema``): each
parameter's title is its name, its description the docstring text as written. :func:`ui_form`
keeps the function as Python callers see it and adds what the form shows instead, through the
parameters' annotations (``Annotated[..., Field(json_schema_extra=...)]``): a title such as
"Max requests per batch", the description without reST markup (roles such as ``:class:`...```
and double backquotes), and ``SkipJsonSchema`` around the types a form cannot take (a function,
a class), so ``parser`` is not in the form and ``response_format`` offers JSON only.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, Union

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

__all__ = ["plain_text", "readable_title", "ui_form"]

F = TypeVar("F", bound=Callable[..., Any])

#: Words of parameter names written otherwise in a title.
_WORDS = {
    "url": "URL",
    "id": "ID",
    "usd": "(USD)",
    "utf8": "UTF-8",
    "rpm": "RPM",
    "tpm": "TPM",
    "dir": "directory",
}

_ROLE = re.compile(r":[a-z:]+:`(?P<text>[^`<]*?)(?:\s*<(?P<target>[^`>]*)>)?`")
_LITERAL = re.compile(r"``(?P<text>.*?)``")


def readable_title(name: str) -> str:
    """A form title from a parameter name.

    Args:
        name: A Python parameter name.

    Returns:
        The words of the name, the first capitalised.

    Examples:
        >>> readable_title("max_requests_per_batch")
        'Max requests per batch'
        >>> readable_title("base_url"), readable_title("max_cost_usd")
        ('Base URL', 'Max cost (USD)')
    """
    words = [_WORDS.get(word, word) for word in name.split("_") if word]
    title = " ".join(words)
    return title[:1].upper() + title[1:]


def plain_text(text: str) -> str:
    """Docstring text as plain text: reST roles become their text (the last part of a
    ``~``-shortened target), double backquotes go, lines are joined.

    Args:
        text: A parameter's description from a Google-style docstring.

    Returns:
        The text a form shows.

    Examples:
        >>> plain_text("Return its :class:`~prefect_llm_batch.costs.Estimate` (``rows``,\\n  tokens).")
        'Return its Estimate (rows, tokens).'
        >>> plain_text("See :mod:`prefect_llm_batch.schemas` and :func:`the flow <a.b>`.")
        'See prefect_llm_batch.schemas and the flow.'
    """

    def role(match: re.Match[str]) -> str:
        shown = match["text"].strip()
        if shown.startswith("~"):
            shown = shown[1:].rsplit(".", 1)[-1]
        return shown

    text = _ROLE.sub(role, " ".join(text.split()))
    return _LITERAL.sub(lambda m: m["text"], text)


def _python_only(annotation: Any) -> bool:
    """A type no form can hold: a function or a class."""
    origin = typing.get_origin(annotation)
    return origin in (collections.abc.Callable, type) or annotation is type


def _skipped(annotation: Any) -> Any:
    """``annotation`` left out of the JSON schema (``SkipJsonSchema[annotation]``)."""
    skip: Any = SkipJsonSchema  # applied at run time, to types mypy cannot see
    return skip[annotation]


def _without_python_only(annotation: Any) -> Any:
    """``annotation`` with its Python-only types skipped in the JSON schema (the whole annotation
    when nothing else than None is left)."""
    if typing.get_origin(annotation) not in (Union, types.UnionType):
        return _skipped(annotation) if _python_only(annotation) else annotation
    members = typing.get_args(annotation)
    kept = [m for m in members if m is not type(None) and not _python_only(m)]
    if not kept:
        return _skipped(annotation)
    if len(kept) == len([m for m in members if m is not type(None)]):
        return annotation
    union: Any = Union
    return union[tuple(_skipped(m) if _python_only(m) else m for m in members)]


def ui_form(fn: F) -> F:
    """Give a flow function's parameters readable titles and plain-text descriptions in the Prefect
    UI, and keep Python-only types out of its parameter schema; Python callers see no change.

    Put it under ``@flow`` (it must run first). The descriptions come from the ``Args:`` section of
    the docstring.

    Args:
        fn: The flow function.

    Returns:
        ``fn``, its annotations wrapped in ``Annotated[..., Field(json_schema_extra=...)]``.

    Examples:
        >>> from prefect.utilities.callables import parameter_schema
        >>> @ui_form
        ... def f(max_cost_usd: float = 1.0, parser: Callable[[str], Any] | None = None) -> None:
        ...     '''Do it.
        ...
        ...     Args:
        ...         max_cost_usd: Refuse a job over this (see :func:`~a.b.check_cost`).
        ...         parser: A ``function``.
        ...     '''
        >>> schema = parameter_schema(f).properties
        >>> list(schema), schema["max_cost_usd"]["title"], schema["max_cost_usd"]["description"]
        (['max_cost_usd'], 'Max cost (USD)', 'Refuse a job over this (see check_cost).')
    """
    from prefect.utilities.callables import parameter_docstrings

    hints = typing.get_type_hints(fn, include_extras=True)
    descriptions = parameter_docstrings(inspect.getdoc(fn))
    for name, annotation in hints.items():
        if name == "return":
            continue
        extra: dict[str, Any] = {"title": readable_title(name)}
        if name in descriptions:
            extra["description"] = plain_text(descriptions[name])
        fn.__annotations__[name] = Annotated[_without_python_only(annotation), Field(json_schema_extra=extra)]
    return fn
