"""A prompt template compiled once and rendered for every row of a table: :class:`PromptTemplate`.

See :mod:`prefect_llm_batch.prompts` for the variables a template sees and how values print.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import jinja2
import jinja2.meta
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import nodes

from ..errors import InputError, TemplateError
from .analysis import PlainColumn, plain_parts, row_keys
from .escaping import json_contents
from .sandbox import ENVIRONMENT, MAX_PROMPT_CHARS, TextTooLong, bounded_join
from .values import python_values

__all__ = ["PromptTemplate"]

#: Most column names quoted in an error message.
_MAX_NAMES_SHOWN = 50


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
            tree = ENVIRONMENT.parse(source, name=name)
            self._template = ENVIRONMENT.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(_syntax_message(name, source, exc)) from exc
        undeclared = jinja2.meta.find_undeclared_variables(tree)
        self._variables = frozenset(undeclared - {"row"})
        self._uses_row = "row" in undeclared
        # Names a column may fill: undeclared ones, and Jinja globals (``range``...) a column shadows.
        self._loaded = frozenset(
            node.name for node in tree.find_all(nodes.Name) if node.ctx == "load" and node.name != "row"
        )
        self._row_keys = frozenset(row_keys(tree)) if self._uses_row else frozenset()
        self._plain = plain_parts(tree)
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
            if isinstance(part, PlainColumn):
                parts.append(json_contents(table.column(part.name)))
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
                raise TemplateError(self._row_error(table, too_long, id_column, TextTooLong(), first_row))
            return [i for i, p in enumerate(prompts) if not p or p.isspace()]
        assert self._plain is not None, "prompts are needed for a template that renders through Jinja"
        text = "".join(part for part in self._plain if isinstance(part, str))
        lengths: Any = pa.scalar(len(text), pa.int64())
        blank: Any = pa.scalar(not text.strip(), pa.bool_())
        for part in self._plain:
            if isinstance(part, PlainColumn):
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
            raise TemplateError(self._row_error(table, over[0], id_column, TextTooLong(), first_row))
        blank_rows: list[int] = pc.indices_nonzero(blank).to_pylist()
        return blank_rows

    # -- the two ways to render ---------------------------------------------------------------

    def _can_render_plain(self, table: pa.Table) -> bool:
        if self._plain is None:
            return False
        schema = table.schema
        for part in self._plain:
            if isinstance(part, PlainColumn):
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
        names = [part.name for part in self._plain if isinstance(part, PlainColumn)]
        # One type for every input of the join; 64-bit offsets so that long prompts times many
        # rows cannot overflow a chunk (measured as fast as 32-bit ``string``).
        text_type = pa.large_string()
        parts: list[Any] = []
        for part in self._plain:
            if isinstance(part, PlainColumn):
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
        values = [python_values(table.column(name)) for name in wanted]
        # Template.render() copies Jinja's globals (a ChainMap) into a new dict for every call;
        # building the context dict here and sharing it saves that copy and renders the same.
        template = self._template
        root_render = template.root_render_func
        new_context = template.new_context
        base = dict(template.globals)
        rows: Iterator[tuple[Any, ...]] = (
            zip(*values, strict=True) if values else itertools.repeat((), table.num_rows)
        )
        join = bounded_join if self._loops else "".join
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
                    raise TextTooLong()
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


def _rebuild(source: str, name: str) -> PromptTemplate:
    return PromptTemplate(source, name=name)


def _syntax_message(name: str, source: str, exc: jinja2.TemplateSyntaxError) -> str:
    message = f"{name} has a syntax error on line {exc.lineno}: {exc.message}"
    lines = source.splitlines()
    if 1 <= exc.lineno <= len(lines):
        message += f"\n    {lines[exc.lineno - 1].strip()}"
    return message
