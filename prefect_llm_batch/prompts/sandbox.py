"""The bounded, sandboxed Jinja environment prompts are compiled in, and its size checks.

Jinja's sandbox (``jinja2.sandbox.SandboxedEnvironment``) with strict undefined variables, no
HTML escaping and the template's trailing newline kept, where no text or sequence is built
longer than :data:`MAX_PROMPT_CHARS`: the sizes are checked before an operation runs, so that
``{{ "x" * 10**9 }}`` allocates nothing. :data:`ENVIRONMENT` is the one environment;
:func:`bounded_join` bounds the output of templates with loops as it is rendered.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jinja2
import jinja2.filters
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from .values import render_value

__all__ = ["ENVIRONMENT", "MAX_PROMPT_CHARS", "TextTooLong", "bounded_join"]


def _finalize(value: Any) -> Any:
    # Undefined values must reach str() so that StrictUndefined raises; everything else is text.
    if isinstance(value, jinja2.Undefined):
        return value
    return render_value(value)


#: The most characters a rendered prompt (or system prompt) may have: 8 million, a few times the
#: longest context of today's models, and far under a batch file's 200 MB. A template computing
#: a longer text (``{{ "x" * 10**9 }}``) is stopped before the text is built.
MAX_PROMPT_CHARS = 8_000_000


class TextTooLong(SecurityError):
    """A template would build a text longer than :data:`MAX_PROMPT_CHARS`."""

    def __init__(self) -> None:
        super().__init__(
            f"the text would be longer than {MAX_PROMPT_CHARS:,} characters, the most a prompt may have"
        )


def _count(value: Any) -> int | None:
    """The length of a text or sequence whose repetition or joining allocates (else None)."""
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_widths(text: Any, args: Any = ()) -> None:
    """Refuse a format string with a width or precision above the limit (``"%0999999999d"``),
    written in it or given as an argument (``"%*d" % (10**9, 1)``, ``"{:>{w}}".format(1, w=...)``)."""
    if not isinstance(text, str):
        return
    if isinstance(args, dict):
        args = list(args.values())
    elif not isinstance(args, (list, tuple)):
        args = [args]
    if any(_integer(arg) and arg > MAX_PROMPT_CHARS for arg in args) or any(
        len(digits) > 7 and int(digits) > MAX_PROMPT_CHARS for digits in _DIGITS.findall(text)
    ):
        raise TextTooLong()


_DIGITS = re.compile(r"\d+")


def _check_padding(value: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Refuse a call on a text whose integer argument (a width) is above the limit."""
    if isinstance(value, (str, bytes)) and any(
        _integer(a) and a > MAX_PROMPT_CHARS for a in (*args, *kwargs.values())
    ):
        raise TextTooLong()


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(items, (list, tuple)):
        size = len(str(separator)) * max(len(items) - 1, 0)
        for item in items:
            size += len(item) if isinstance(item, str) else 0
            if size > MAX_PROMPT_CHARS:
                raise TextTooLong()


def _check_replace(text: Any, args: Sequence[Any]) -> None:
    if isinstance(text, str) and len(args) >= 2 and isinstance(args[1], str):
        old = args[0] if isinstance(args[0], str) else ""
        found = len(text) + 1 if not old else text.count(old)
        if len(text) + found * len(args[1]) > MAX_PROMPT_CHARS:
            raise TextTooLong()


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` into a call of the environment's :meth:`_BoundedEnvironment.bounded_concat`."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox, with no text or sequence built longer than :data:`MAX_PROMPT_CHARS`.

    The sizes are checked before the operation runs, so that ``{{ "x" * 10**9 }}`` allocates
    nothing: repetition (``*``), addition (``+``), printf formatting (``%``), powers (``**``),
    concatenation (``~``), the padding and joining methods and filters. (The output of a loop is
    bounded as it is rendered: see
    :meth:`~prefect_llm_batch.prompts.PromptTemplate.render_table`.)
    """

    intercepted_binops = frozenset({"*", "+", "%", "**"})
    code_generator_class = _BoundedCodeGenerator

    def bounded_concat(self, values: Sequence[Any]) -> str:
        """``a ~ b ~ ...``: the values as text, joined, unless that is too long."""
        texts = [str(value) for value in values]
        if sum(map(len, texts)) > MAX_PROMPT_CHARS:
            raise TextTooLong()
        return "".join(texts)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                size = _count(seq)
                if size is not None and _integer(times) and size * times > MAX_PROMPT_CHARS:
                    raise TextTooLong()
        elif operator == "+":
            sizes = (_count(left), _count(right))
            if sizes[0] is not None and sizes[1] is not None and sizes[0] + sizes[1] > MAX_PROMPT_CHARS:
                raise TextTooLong()
        elif operator == "%":
            _check_widths(left, right)
        elif (
            operator == "**"
            and _integer(left)
            and _integer(right)
            and abs(left) > 1
            and right * math.log10(abs(left)) > MAX_PROMPT_CHARS
        ):
            raise TextTooLong()
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if name in ("ljust", "rjust", "center", "zfill", "expandtabs"):
            _check_padding(owner, args, kwargs)
            if name == "expandtabs" and isinstance(owner, str):
                tab = args[0] if args else kwargs.get("tabsize", 8)
                if _integer(tab) and len(owner) + owner.count("\t") * tab > MAX_PROMPT_CHARS:
                    raise TextTooLong()
        elif name == "join" and isinstance(owner, str) and args:
            _check_join(owner, args[0])
        elif name == "replace":
            _check_replace(owner, args)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map``, sandboxed by Jinja, with their widths bounded."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_widths(
                text,
                [*args, *kwargs.values(), *(args[0].values() if args and isinstance(args[0], dict) else ())],
            )
            return wrapped(*args, **kwargs)

        return functools.update_wrapper(bounded, value)


def _bounded_filter(name: str, check: Callable[..., None]) -> Callable[..., Any]:
    original = jinja2.filters.FILTERS[name]

    @functools.wraps(original)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    return bounded


def _check_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    if _integer(width) and width > MAX_PROMPT_CHARS:
        raise TextTooLong()


def _check_indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    if not isinstance(value, str):
        return
    pad = len(width) if isinstance(width, str) else width if _integer(width) else 0
    if len(value) + (value.count("\n") + 1) * pad > MAX_PROMPT_CHARS:
        raise TextTooLong()


def _check_join_filter(context: Any, value: Any, d: Any = "", *_: Any, **__: Any) -> None:
    _check_join(d, list(value) if isinstance(value, (list, tuple)) else value)


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_widths(value, [*args, *kwargs.values()])


def _check_replace_filter(context: Any, value: Any, *args: Any, **__: Any) -> None:
    _check_replace(value, args)


ENVIRONMENT = _BoundedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    finalize=_finalize,
)
ENVIRONMENT.filters.update(
    center=_bounded_filter("center", _check_center),
    indent=_bounded_filter("indent", _check_indent),
    join=_bounded_filter("join", _check_join_filter),
    format=_bounded_filter("format", _check_format),
    replace=_bounded_filter("replace", _check_replace_filter),
)


def bounded_join(pieces: Iterator[str]) -> str:
    """Join a template's output, stopping once it is longer than :data:`MAX_PROMPT_CHARS`."""
    parts: list[str] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > MAX_PROMPT_CHARS:
            raise TextTooLong()
        parts.append(piece)
    return "".join(parts)
