"""Compile prompt templates once and render them for every row of a table.

Templates are `Jinja2 <https://jinja.palletsprojects.com>`_, compiled once in a sandbox
(``jinja2.sandbox.SandboxedEnvironment``) with strict undefined variables, no HTML escaping and
the template's trailing newline kept. This module is pure: no I/O, no Prefect, no HTTP.

Variables:
    Every column of the table, by name (``{{ review }}``), and ``row``, a dict of all columns,
    for names that are not identifiers (``{{ row["star rating"] }}``). ``row`` is always that
    dict, even when a column is named ``row`` (reach it as ``row["row"]``). Using a column the
    table does not have is an error before anything is rendered.

How values render:
    Rendered prompts feed request keys (hashes), so these rules are part of the contract and must
    not change without bumping the key version. Values reach Jinja as the Python objects Arrow
    gives (``to_pylist()``, never pandas), so ``{% if x is none %}`` and arithmetic work; only
    what ``{{ ... }}`` prints follows the table below (:func:`render_value` implements it).

    ==================================  =========================================================
    value                               rendered as
    ==================================  =========================================================
    null, and NaN in a float column     the empty string (in Jinja the value is ``None``, so
                                        ``{{ x if x is not none else "n/a" }}`` works)
    string                              itself
    integer                             its digits: ``42``, ``-7`` (never ``42.0``, nulls or not)
    float                               Python's shortest round-trip ``repr``: ``1.5``, ``0.1``,
                                        ``3.0``, ``1e+16``, ``inf``; float32 values print their
                                        own shortest form (``0.1``, not ``0.10000000149011612``)
    boolean                             ``True`` / ``False`` (Python's, as Jinja prints them)
    timestamp                           ISO 8601: ``2024-01-02T03:04:05``, with fractional seconds
                                        only when present (``.123000``) and the offset when
                                        zone-aware (``2024-01-02T03:04:05+00:00``)
    date / time                         ISO 8601: ``2024-01-02`` / ``03:04:05``
    decimal                             ``str()``, keeping the scale: ``1.50``
    binary                              decoded as UTF-8 (invalid bytes become U+FFFD)
    list, struct, map (and ``row``)     JSON (``["a", "b"]``, ``{"k": 1}``), non-ASCII kept,
                                        nested values as above
    anything else (durations...)        ``str()``
    ==================================  =========================================================

Speed:
    A template made only of text and plain ``{{ column }}`` substitutions over string columns is
    rendered without Jinja, by joining the column values; it gives byte-identical output.

Examples:
    >>> import pyarrow as pa
    >>> table = pa.table({"name": ["Ada", None], "age": [36, None], "score": [1.5, float("nan")]})
    >>> PromptTemplate("{{ name }} ({{ age }}): {{ score }}").render_table(table)
    ['Ada (36): 1.5', ' (): ']
    >>> PromptTemplate('{{ age if age is not none else "n/a" }}').render_table(table)
    ['36', 'n/a']
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import difflib
import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jinja2
import jinja2.filters
import jinja2.meta
import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from prefect_llm_batch.errors import InputError, TemplateError
from prefect_llm_batch.keys import value_offsets

__all__ = ["MAX_PROMPT_CHARS", "PromptTemplate", "render_value"]

#: Most column names quoted in an error message.
_MAX_NAMES_SHOWN = 50


def render_value(value: Any) -> str:
    """Turn one value into the text ``{{ value }}`` prints in a prompt.

    See the module docstring for the table of rules.

    Args:
        value: A Python value as Arrow's ``to_pylist()`` gives it (or any value a template
            computes).

    Returns:
        The text.

    Examples:
        >>> import datetime
        >>> [render_value(v) for v in (None, float("nan"), "x", 3, 3.0, 0.1, True)]
        ['', '', 'x', '3', '3.0', '0.1', 'True']
        >>> render_value(datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc))
        '2024-01-02T03:04:05+00:00'
        >>> render_value({"tags": ["é", None], "at": datetime.date(2024, 1, 2)})
        '{"tags": ["é", null], "at": "2024-01-02"}'
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(float(value))
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, ensure_ascii=False, default=render_value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def _finalize(value: Any) -> Any:
    # Undefined values must reach str() so that StrictUndefined raises; everything else is text.
    if isinstance(value, jinja2.Undefined):
        return value
    return render_value(value)


#: The most characters a rendered prompt (or system prompt) may have: 8 million, a few times the
#: longest context of today's models, and far under a batch file's 200 MB. A template computing
#: a longer text (``{{ "x" * 10**9 }}``) is stopped before the text is built.
MAX_PROMPT_CHARS = 8_000_000


class _TooLong(SecurityError):
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
        raise _TooLong()


_DIGITS = re.compile(r"\d+")


def _check_padding(value: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Refuse a call on a text whose integer argument (a width) is above the limit."""
    if isinstance(value, (str, bytes)) and any(
        _integer(a) and a > MAX_PROMPT_CHARS for a in (*args, *kwargs.values())
    ):
        raise _TooLong()


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(items, (list, tuple)):
        size = len(str(separator)) * max(len(items) - 1, 0)
        for item in items:
            size += len(item) if isinstance(item, str) else 0
            if size > MAX_PROMPT_CHARS:
                raise _TooLong()


def _check_replace(text: Any, args: Sequence[Any]) -> None:
    if isinstance(text, str) and len(args) >= 2 and isinstance(args[1], str):
        old = args[0] if isinstance(args[0], str) else ""
        found = len(text) + 1 if not old else text.count(old)
        if len(text) + found * len(args[1]) > MAX_PROMPT_CHARS:
            raise _TooLong()


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
    bounded as it is rendered: see :meth:`PromptTemplate.render_table`.)
    """

    intercepted_binops = frozenset({"*", "+", "%", "**"})
    code_generator_class = _BoundedCodeGenerator

    def bounded_concat(self, values: Sequence[Any]) -> str:
        """``a ~ b ~ ...``: the values as text, joined, unless that is too long."""
        texts = [str(value) for value in values]
        if sum(map(len, texts)) > MAX_PROMPT_CHARS:
            raise _TooLong()
        return "".join(texts)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                size = _count(seq)
                if size is not None and _integer(times) and size * times > MAX_PROMPT_CHARS:
                    raise _TooLong()
        elif operator == "+":
            sizes = (_count(left), _count(right))
            if sizes[0] is not None and sizes[1] is not None and sizes[0] + sizes[1] > MAX_PROMPT_CHARS:
                raise _TooLong()
        elif operator == "%":
            _check_widths(left, right)
        elif (
            operator == "**"
            and _integer(left)
            and _integer(right)
            and abs(left) > 1
            and right * math.log10(abs(left)) > MAX_PROMPT_CHARS
        ):
            raise _TooLong()
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if name in ("ljust", "rjust", "center", "zfill", "expandtabs"):
            _check_padding(owner, args, kwargs)
            if name == "expandtabs" and isinstance(owner, str):
                tab = args[0] if args else kwargs.get("tabsize", 8)
                if _integer(tab) and len(owner) + owner.count("\t") * tab > MAX_PROMPT_CHARS:
                    raise _TooLong()
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
        raise _TooLong()


def _check_indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    if not isinstance(value, str):
        return
    pad = len(width) if isinstance(width, str) else width if _integer(width) else 0
    if len(value) + (value.count("\n") + 1) * pad > MAX_PROMPT_CHARS:
        raise _TooLong()


def _check_join_filter(context: Any, value: Any, d: Any = "", *_: Any, **__: Any) -> None:
    _check_join(d, list(value) if isinstance(value, (list, tuple)) else value)


def _check_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _check_widths(value, [*args, *kwargs.values()])


def _check_replace_filter(context: Any, value: Any, *args: Any, **__: Any) -> None:
    _check_replace(value, args)


_ENV = _BoundedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    finalize=_finalize,
)
_ENV.filters.update(
    center=_bounded_filter("center", _check_center),
    indent=_bounded_filter("indent", _check_indent),
    join=_bounded_filter("join", _check_join_filter),
    format=_bounded_filter("format", _check_format),
    replace=_bounded_filter("replace", _check_replace_filter),
)


@dataclasses.dataclass(frozen=True)
class _Column:
    """A plain ``{{ name }}`` substitution in a template made only of text and substitutions."""

    name: str


class PromptTemplate:
    """A Jinja2 prompt template, compiled once, rendered for every row of a table.

    Args:
        source: The template text.
        name: What error messages call the template (``"prompt"``, ``"system prompt"``).

    Raises:
        TemplateError: The template does not compile; the message names the template and the line.

    Examples:
        >>> import pyarrow as pa
        >>> template = PromptTemplate("Classify: {{ review }}\\nStars: {{ row['star rating'] }}")
        >>> sorted(template.variables)
        ['review']
        >>> template.render_table(pa.table({"review": ["great"], "star rating": [5]}))
        ['Classify: great\\nStars: 5']
        >>> PromptTemplate("{{ review }", name="system prompt")
        Traceback (most recent call last):
        ...
        prefect_llm_batch.errors.TemplateError: system prompt has a syntax error on line 1: ...
    """

    def __init__(self, source: str, *, name: str = "prompt") -> None:
        self.source = source
        self.name = name
        try:
            tree = _ENV.parse(source, name=name)
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(_syntax_message(name, source, exc)) from exc
        undeclared = jinja2.meta.find_undeclared_variables(tree)
        self._variables = frozenset(undeclared - {"row"})
        self._uses_row = "row" in undeclared
        # Names a column may fill: undeclared ones, and Jinja globals (``range``...) a column shadows.
        self._loaded = frozenset(
            node.name for node in tree.find_all(nodes.Name) if node.ctx == "load" and node.name != "row"
        )
        self._row_keys = frozenset(_row_keys(tree)) if self._uses_row else frozenset()
        self._plain = _plain_parts(tree)
        # Loops (and macros, which may recurse) can output without end: bounded as they render.
        self._loops = next(tree.find_all((nodes.For, nodes.Macro, nodes.CallBlock)), None) is not None

    def __repr__(self) -> str:
        return f"PromptTemplate({self.source!r}, name={self.name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.source, self.name))

    @property
    def variables(self) -> frozenset[str]:
        """The columns the template uses by name (its undeclared variables, without ``row``).

        Examples:
            >>> sorted(PromptTemplate("{% for t in tags %}{{ t }}{% endfor %} {{ title }}").variables)
            ['tags', 'title']
        """
        return self._variables

    def columns_read(self, columns: Sequence[str]) -> list[str]:
        """The columns of a table with these columns that rendering reads, in the table's order.

        Those the template names (or that shadow a Jinja global it calls); every column when it
        uses ``row``, whose dict holds them all.

        Examples:
            >>> PromptTemplate("{{ title }}: {{ body }}").columns_read(["id", "body", "title", "stars"])
            ['body', 'title']
            >>> PromptTemplate("{{ row['title'] }}").columns_read(["id", "title"])
            ['id', 'title']
        """
        if self._uses_row:
            return list(columns)
        return [name for name in columns if name in self._loaded]

    def check_columns(self, columns: Sequence[str]) -> None:
        """Fail unless the table has every column the template uses.

        Columns used through ``row`` with a constant key (``row["a b"]``, ``row.title``) are
        checked too.

        Args:
            columns: The table's column names.

        Raises:
            TemplateError: A column is missing; the message lists the available columns and
                suggests a close name.

        Examples:
            >>> PromptTemplate("{{ reveiw }}").check_columns(["id", "review"])
            Traceback (most recent call last):
            ...
            prefect_llm_batch.errors.TemplateError: prompt uses column 'reveiw', which the table does not have; available columns: id, review; did you mean 'review'?
        """  # noqa: E501
        available = list(columns)
        present = set(available)
        missing = sorted(name for name in self._variables | self._row_keys if name not in present)
        if not missing:
            return
        quoted = ", ".join(repr(name) for name in missing)
        shown = ", ".join(available[:_MAX_NAMES_SHOWN]) or "(none)"
        if len(available) > _MAX_NAMES_SHOWN:
            shown += f" and {len(available) - _MAX_NAMES_SHOWN} more"
        what = "column" if len(missing) == 1 else "columns"
        message = (
            f"{self.name} uses {what} {quoted}, which the table does not have; available columns: {shown}"
        )
        hints = []
        for name in missing:
            close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
            if close:
                hints.append(f"{close[0]!r}" if len(missing) == 1 else f"{close[0]!r} for {name!r}")
        if hints:
            message += f"; did you mean {', '.join(hints)}?"
        raise TemplateError(message)

    def render_table(self, table: pa.Table, id_column: str | None = None, first_row: int = 0) -> list[str]:
        """Render the template once per row.

        Args:
            table: The rows. Values are taken with Arrow's ``to_pylist()``; see the module
                docstring for how they print.
            id_column: A column naming rows in error messages.
            first_row: The number of the table's first row in the whole input, for error
                messages when ``table`` is one slice of it.

        Returns:
            One prompt per row, in row order.

        Raises:
            TemplateError: A column is missing, or a row does not render; the message names the
                0-based row number (and its id when ``id_column`` is given) and Jinja's reason.
            InputError: ``id_column`` is not a column of the table.

        Examples:
            >>> import pyarrow as pa
            >>> table = pa.table({"id": ["a", "b"], "n": [2, 0]})
            >>> PromptTemplate("{{ 10 // n }}").render_table(table, id_column="id")
            Traceback (most recent call last):
            ...
            prefect_llm_batch.errors.TemplateError: prompt does not render for row 1 (id 'b'): ZeroDivisionError: integer division or modulo by zero
        """  # noqa: E501
        names = table.column_names
        self.check_columns(names)
        if id_column is not None and id_column not in names:
            raise InputError(
                f"id column {id_column!r} is not a column of the table; available columns: {', '.join(names)}"
            )
        if self._can_render_plain(table):
            return self._render_plain(table)
        return self._render_jinja(table, id_column, first_row)

    def render_json(self, table: pa.Table) -> pa.Array[Any] | None:
        """Render every row straight into its JSON string contents, without Python per row.

        For a template made only of text and plain ``{{ column }}`` substitutions over string
        columns: each value is JSON-escaped as ``orjson`` escapes it (only values holding a
        quote, a backslash or a control character are escaped one by one) and joined with the
        escaped text in Arrow. Element ``i`` equals ``orjson.dumps(render_table(table)[i])``
        without its quotes. Request bodies embed these bytes as they are.

        Args:
            table: The rows (the template's columns were checked by :meth:`check_columns`).

        Returns:
            A ``large_binary`` array of one entry per row, or None when the template (or a
            column's type) needs Jinja: then use :meth:`render_table`.

        Examples:
            >>> import pyarrow as pa
            >>> import orjson
            >>> table = pa.table({"a": ["x", None, 'q"']})
            >>> PromptTemplate("Say {{ a }}!").render_json(table).to_pylist()[:2]
            [b'Say x!', b'Say !']
            >>> PromptTemplate("Say {{ a }}!").render_json(table)[2].as_py() == orjson.dumps('Say q"!')[1:-1]
            True
            >>> PromptTemplate("{{ n + 1 }}").render_json(pa.table({"n": [1]})) is None
            True
        """
        if not self._can_render_plain(table):
            return None
        assert self._plain is not None
        binary = pa.large_binary()
        parts: list[Any] = []
        for part in self._plain:
            if isinstance(part, _Column):
                parts.append(_json_contents(table.column(part.name)))
            elif part:
                parts.append(pa.scalar(orjson.dumps(part)[1:-1], binary))
        if not any(isinstance(part, pa.Array) for part in parts):
            constant = b"".join(part.as_py() for part in parts)
            return pa.array([constant] * table.num_rows, binary)
        if len(parts) == 1:
            only: pa.Array[Any] = parts[0]
            return only
        joined: pa.Array[Any] = pc.binary_join_element_wise(*parts, pa.scalar(b"", binary))
        return joined

    def check_rendered(
        self,
        table: pa.Table,
        prompts: Sequence[str] | Sequence[str | None] | pa.Array[Any] | None = None,
        id_column: str | None = None,
        first_row: int = 0,
    ) -> list[int]:
        """Check the prompts rendered for ``table``'s rows; return the rows whose prompt is blank.

        Args:
            table: The rows.
            prompts: What :meth:`render_table` returned for them, or None (or what
                :meth:`render_json` returned) when the template renders without Jinja: then
                lengths are computed from the columns, in Arrow.
            id_column: A column naming rows in error messages.
            first_row: The number of the table's first row in the whole input.

        Returns:
            The positions in ``table`` of the rows whose prompt is empty or only whitespace.

        Raises:
            TemplateError: A prompt is longer than :data:`MAX_PROMPT_CHARS`; the message names
                the first such row.

        Examples:
            >>> import pyarrow as pa
            >>> table = pa.table({"a": ["x", " ", None]})
            >>> PromptTemplate("{{ a }}").check_rendered(table)
            [1, 2]
            >>> PromptTemplate("{{ a }}").check_rendered(table, ["x", " ", ""])
            [1, 2]
        """
        if prompts is not None and not isinstance(prompts, pa.Array):
            too_long = next((i for i, p in enumerate(prompts) if len(p or "") > MAX_PROMPT_CHARS), None)
            if too_long is not None:
                raise TemplateError(self._row_error(table, too_long, id_column, _TooLong(), first_row))
            return [i for i, p in enumerate(prompts) if not p or p.isspace()]
        assert self._plain is not None, "prompts are needed for a template that renders through Jinja"
        text = "".join(part for part in self._plain if isinstance(part, str))
        lengths: Any = pa.scalar(len(text), pa.int64())
        blank: Any = pa.scalar(not text.strip(), pa.bool_())
        for part in self._plain:
            if isinstance(part, _Column):
                values: Any = table.column(part.name).cast(pa.large_string())
                lengths = pc.add(lengths, pc.utf8_length(values).fill_null(0))
                trimmed: Any = pc.utf8_length(pc.utf8_trim_whitespace(values)).fill_null(0)
                blank = pc.and_(blank, pc.equal(trimmed, pa.scalar(0, pa.int64())))
        if isinstance(lengths, pa.Scalar):  # no column: the same text for every row
            lengths = pa.array([lengths.as_py()] * table.num_rows, pa.int64())
            blank = pa.array([blank.as_py()] * table.num_rows, pa.bool_())
        over: list[Any] = pc.indices_nonzero(
            pc.greater(lengths, pa.scalar(MAX_PROMPT_CHARS, pa.int64()))
        ).to_pylist()
        if over:
            raise TemplateError(self._row_error(table, over[0], id_column, _TooLong(), first_row))
        blank_rows: list[int] = pc.indices_nonzero(blank).to_pylist()
        return blank_rows

    # -- the two ways to render ---------------------------------------------------------------

    def _can_render_plain(self, table: pa.Table) -> bool:
        if self._plain is None:
            return False
        schema = table.schema
        for part in self._plain:
            if isinstance(part, _Column):
                if len(schema.get_all_field_indices(part.name)) != 1:
                    return False  # not a column (a Jinja global such as ``range``), or ambiguous
                field_type = schema.field(part.name).type
                if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
                    return False
        return True

    def _render_plain(self, table: pa.Table) -> list[str]:
        """Join text and string columns without Jinja (Arrow's ``binary_join_element_wise``, no
        Python per row); same bytes as :meth:`_render_jinja`."""
        assert self._plain is not None
        names = [part.name for part in self._plain if isinstance(part, _Column)]
        # One type for every input of the join; 64-bit offsets so that long prompts times many
        # rows cannot overflow a chunk (measured as fast as 32-bit ``string``).
        text_type = pa.large_string()
        parts: list[Any] = []
        for part in self._plain:
            if isinstance(part, _Column):
                column = table.column(part.name).cast(text_type)
                parts.append(column.fill_null(pa.scalar("", text_type)))
            elif part:
                parts.append(pa.scalar(part, text_type))
        if not names:
            return ["".join(part for part in self._plain if isinstance(part, str))] * table.num_rows
        joined = (
            parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, pa.scalar("", text_type))
        )
        prompts: list[str] = joined.to_pylist()
        return prompts

    def _render_jinja(self, table: pa.Table, id_column: str | None, first_row: int = 0) -> list[str]:
        names = table.column_names
        wanted = self.columns_read(names)
        duplicated = sorted({name for name in wanted if names.count(name) > 1})
        if duplicated:
            raise InputError(
                f"{self.name} cannot tell apart the table's columns named {', '.join(map(repr, duplicated))}"
            )
        values = [_python_values(table.column(name)) for name in wanted]
        # Template.render() copies Jinja's globals (a ChainMap) into a new dict for every call;
        # building the context dict here and sharing it saves that copy and renders the same.
        template = self._template
        root_render = template.root_render_func
        new_context = template.new_context
        base = dict(template.globals)
        rows: Iterator[tuple[Any, ...]] = (
            zip(*values, strict=True) if values else itertools.repeat((), table.num_rows)
        )
        join = _bounded_join if self._loops else "".join
        prompts: list[str] = []
        try:
            for row_values in rows:
                context = base.copy()
                if self._uses_row:
                    row = dict(zip(wanted, row_values, strict=True))
                    context.update(row)
                    context["row"] = row
                else:
                    context.update(zip(wanted, row_values, strict=True))
                prompt = join(root_render(new_context(context, shared=True)))
                if len(prompt) > MAX_PROMPT_CHARS:
                    raise _TooLong()
                prompts.append(prompt)
        except Exception as exc:
            raise TemplateError(self._row_error(table, len(prompts), id_column, exc, first_row)) from exc
        return prompts

    def _row_error(
        self, table: pa.Table, index: int, id_column: str | None, exc: Exception, first_row: int = 0
    ) -> str:
        where = f"row {first_row + index}"
        if id_column is not None:
            where += f" (id {table.column(id_column)[index].as_py()!r})"
        reason = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
        return f"{self.name} does not render for {where}: {reason}"


def _bounded_join(pieces: Iterator[str]) -> str:
    """Join a template's output, stopping once it is longer than :data:`MAX_PROMPT_CHARS`."""
    parts: list[str] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > MAX_PROMPT_CHARS:
            raise _TooLong()
        parts.append(piece)
    return "".join(parts)


def _rebuild(source: str, name: str) -> PromptTemplate:
    return PromptTemplate(source, name=name)


def _syntax_message(name: str, source: str, exc: jinja2.TemplateSyntaxError) -> str:
    message = f"{name} has a syntax error on line {exc.lineno}: {exc.message}"
    lines = source.splitlines()
    if 1 <= exc.lineno <= len(lines):
        message += f"\n    {lines[exc.lineno - 1].strip()}"
    return message


def _plain_parts(tree: nodes.Template) -> tuple[str | _Column, ...] | None:
    """The template as text and ``{{ name }}`` parts, or None when it does more than that."""
    parts: list[str | _Column] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(child.data)
            elif isinstance(child, nodes.Name) and child.ctx == "load" and child.name != "row":
                parts.append(_Column(child.name))
            else:
                return None
    return tuple(parts)


def _row_keys(tree: nodes.Template) -> set[str]:
    """Column names used as ``row["name"]`` or ``row.name`` (when ``name`` is no dict method)."""
    keys: set[str] = set()
    for node in tree.find_all((nodes.Getitem, nodes.Getattr)):
        if not isinstance(node, (nodes.Getitem, nodes.Getattr)):
            continue
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "row"):
            continue
        if isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                keys.add(node.arg.value)
        elif not hasattr(dict, node.attr):
            keys.add(node.attr)
    return keys


#: Characters JSON must escape in a string: the quote, the backslash and control characters.
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'

#: Bytes scanned at a time by :func:`_rows_needing_escape` (its masks stay in the CPU cache).
_SCAN_BLOCK = 1 << 18


def _rows_needing_escape(values: pa.Array[Any]) -> npt.NDArray[np.intp]:
    """The rows of a ``large_binary`` array of UTF-8 text holding a byte JSON escapes.

    Those bytes (``"``, ``\\`` and 0x00-0x1f) are ASCII, and in UTF-8 an ASCII byte is always
    that character, never part of another: this finds the rows that :data:`_NEEDS_ESCAPE`
    matches, with numpy over the data buffer (a few times faster than the regular expression).

    Examples:
        >>> texts = ["ok", 'say "x"', "", "a\\\\b", "é", "new\\nline"]
        >>> _rows_needing_escape(pa.array(texts, pa.large_binary())).tolist()
        [1, 3, 5]
    """
    if not len(values):
        return np.zeros(0, np.intp)
    buffers: list[Any] = values.buffers()
    offsets = value_offsets(values)
    if offsets[0] == offsets[-1]:
        return np.zeros(0, np.intp)
    data = np.frombuffer(buffers[2], np.uint8)
    begin, end = int(offsets[0]), int(offsets[-1])
    block = min(_SCAN_BLOCK, end - begin)
    mask, other = np.empty(block, bool), np.empty(block, bool)
    found: list[npt.NDArray[np.intp]] = []
    for start in range(begin, end, block):
        part = data[start : min(start + block, end)]
        hit, scratch = mask[: len(part)], other[: len(part)]
        np.less(part, 0x20, out=hit)
        np.equal(part, 0x22, out=scratch)
        hit |= scratch
        np.equal(part, 0x5C, out=scratch)
        hit |= scratch
        if hit.any():
            found.append(np.flatnonzero(hit) + start)
    if not found:
        return np.zeros(0, np.intp)
    where = np.concatenate(found)
    rows: npt.NDArray[np.intp] = np.unique(np.searchsorted(offsets, where, side="right") - 1)
    return rows


def _json_contents(column: pa.ChunkedArray[Any]) -> pa.Array[Any]:
    """A string column's values JSON-escaped as ``orjson`` escapes them, without quotes (nulls: empty)."""
    text = column.combine_chunks().cast(pa.large_string()).fill_null("")
    escaped = text.cast(pa.large_binary())
    rows = _rows_needing_escape(escaped)
    if not len(rows):
        return escaped
    needs = np.zeros(len(text), bool)
    needs[rows] = True
    values = text.take(pa.array(rows, pa.int64())).to_pylist()
    fixed = pa.array([orjson.dumps(value)[1:-1] for value in values], pa.large_binary())
    replaced: pa.Array[Any] = pc.replace_with_mask(escaped, pa.array(needs), fixed)
    return replaced


def _python_values(column: pa.ChunkedArray[Any]) -> list[Any]:
    """A column's values as Python objects, NaN turned into None, float32 at its shortest."""
    data_type = column.type
    if pa.types.is_floating(data_type):
        if data_type != pa.float64():
            # float32 0.1 is 0.10000000149011612 as a double; its own shortest text is "0.1".
            column = pc.cast(pc.cast(column, pa.string()), pa.float64())
        nan = pc.is_nan(column)
        if pc.any(nan).as_py():
            column = pc.if_else(nan, pa.scalar(None, pa.float64()), column)
    return column.to_pylist()
