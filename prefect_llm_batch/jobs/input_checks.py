"""Checks on a job's input, made before anything is sent: output column clashes, templates and
the columns they use, the id column, blank prompts; :func:`preflight` runs them on the first rows."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..moderations import MODERATION_SCHEMA
from ..prompts import PromptTemplate
from ..results import OUTPUT_COLUMNS
from ..schemas import ResponseSchema
from ..spec import MODERATIONS_ENDPOINT, JobSpec
from ..table import read_table

#: Rows read by :func:`preflight`.
PREFLIGHT_ROWS = 100


def check_id_column(table: pa.Table, id_column: str | None) -> None:
    """The id column must exist, be non-null and unique; the message names the rows."""
    if id_column is None:
        return
    if id_column not in table.column_names:
        raise InputError(
            f"id column {id_column!r} is not in the table; available columns: {', '.join(table.column_names)}"
        )
    column = table.column(id_column)
    if column.null_count:
        row = pc.index(pc.is_null(column), pa.scalar(True)).as_py()
        raise InputError(f"id column {id_column!r} is null in row {row}")
    counts = pc.value_counts(column)
    dupes = pc.filter(counts, pc.greater(counts.field("counts"), pa.scalar(1)))
    if len(dupes):
        value = dupes[0]["values"].as_py()
        rows = pc.indices_nonzero(pc.equal(column, pa.scalar(value, column.type))).to_pylist()[:5]
        raise InputError(f"id column {id_column!r} repeats the value {value!r} (rows {rows})")


def response_schema(spec: JobSpec) -> ResponseSchema | None:
    """The job's response schema, normalised (or None)."""
    return ResponseSchema(spec.response_schema) if spec.response_schema is not None else None


def check_columns(spec: JobSpec, names: list[str]) -> tuple[PromptTemplate, PromptTemplate | None]:
    """Check output column names, then compile both templates and check the columns they use."""
    clash = [c for c in OUTPUT_COLUMNS if c in names]
    if clash:
        raise InputError(
            f"the input already has column(s) {', '.join(clash)}, which the output adds; rename them first"
        )
    schema = response_schema(spec)
    if schema is None and spec.endpoint == MODERATIONS_ENDPOINT:
        schema = MODERATION_SCHEMA  # its columns must not clash either
    if schema is not None:
        for prop in schema.properties:
            name = spec.column_prefix + prop
            if name in names or name in OUTPUT_COLUMNS:
                raise InputError(
                    f"response schema property {prop!r} would become column {name!r}, which "
                    f"{'the input already has' if name in names else 'the output uses'}; "
                    "rename it or set column_prefix"
                )
    template = PromptTemplate(spec.prompt, name="prompt")
    template.check_columns(names)
    system_template = PromptTemplate(spec.system, name="system prompt") if spec.system else None
    if system_template is not None:
        system_template.check_columns(names)
    if spec.id_column is not None and spec.id_column not in names:
        raise InputError(
            f"id column {spec.id_column!r} is not in the table; available columns: {', '.join(names)}"
        )
    if spec.model_column is not None and spec.model_column not in names:
        raise InputError(
            f"model column {spec.model_column!r} is not in the table; available columns: {', '.join(names)}"
        )
    return template, system_template


def row_models(
    table: pa.Table, model_column: str, first_row: int = 0, id_column: str | None = None
) -> pa.Array[Any]:
    """The model of every row of ``table`` (a slice starting at input row ``first_row``), from its
    model column: text, neither null nor blank.

    Raises:
        InputError: The column is missing or not text, or a cell is null or blank (names the row,
            its id when there is an id column, and the column).

    Examples:
        >>> t = pa.table({"model": ["gpt-4o", " gpt-4o-mini "]})
        >>> row_models(t, "model").to_pylist()
        ['gpt-4o', 'gpt-4o-mini']
        >>> try:
        ...     row_models(pa.table({"model": ["gpt-4o", None]}), "model", first_row=10)
        ... except InputError as error:
        ...     print(str(error)[:42])
        model column 'model' is null in row 11 (ea
    """
    if model_column not in table.column_names:
        raise InputError(
            f"model column {model_column!r} is not in the table; available columns: "
            f"{', '.join(table.column_names)}"
        )
    column = table.column(model_column)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InputError(f"model column {model_column!r} must hold text (model names), not {column.type}")
    models: Any = pc.utf8_trim_whitespace(column.combine_chunks().cast(pa.string()))
    bad: Any = pc.or_kleene(pc.is_null(models), pc.equal(pc.utf8_length(models), pa.scalar(0, pa.int32())))
    if pc.any(bad).as_py():
        position = pc.index(bad, pa.scalar(True)).as_py()
        what = "null" if models[position].as_py() is None else "empty"
        where = f"row {first_row + position}"
        if id_column is not None:
            where += f" (id {table.column(id_column)[position].as_py()!r})"
        raise InputError(
            f"model column {model_column!r} is {what} in {where} (each row names its model); "
            "fill it in or drop the row (nothing was sent)"
        )
    result: pa.Array[Any] = models
    return result


def check_and_render(spec: JobSpec, table: pa.Table) -> tuple[list[str], list[str | None] | None]:
    """Check output column names, then compile, check and render both templates over ``table``."""
    template, system_template = check_columns(spec, table.column_names)
    prompts = template.render_table(table, id_column=spec.id_column)
    blank = BlankPrompts(spec.id_column)
    blank.add(table, template.check_rendered(table, prompts, spec.id_column), 0)
    systems: list[str | None] | None = None
    if system_template is not None:
        rendered = system_template.render_table(table, id_column=spec.id_column)
        system_template.check_rendered(table, rendered, spec.id_column)
        systems = list(rendered)
    if not spec.allow_empty:
        blank.check()
    return prompts, systems


#: Rows quoted in the error about blank prompts.
BLANK_ROWS_SHOWN = 5


class BlankPrompts:
    """The rows whose prompt rendered empty or only whitespace, counted over a job's slices."""

    def __init__(self, id_column: str | None) -> None:
        self.id_column = id_column
        self.count = 0
        self.shown: list[str] = []

    def add(self, table: pa.Table, positions: list[int], first_row: int) -> None:
        """Count the blank prompts of a slice (at ``positions`` of ``table``, row ``first_row`` on)."""
        self.count += len(positions)
        for position in positions[: BLANK_ROWS_SHOWN - len(self.shown)]:
            name = str(first_row + position)
            if self.id_column is not None:
                name += f" (id {table.column(self.id_column)[position].as_py()!r})"
            self.shown.append(name)

    def check(self) -> None:
        """Raise when any prompt was blank.

        Raises:
            InputError: Naming the first rows and how many there are.
        """
        if not self.count:
            return
        more = f" and {self.count - len(self.shown)} more" if self.count > len(self.shown) else ""
        raise InputError(
            f"the prompt renders empty (or only whitespace) for {self.count} row(s): row "
            f"{', '.join(self.shown)}{more}; fix the template or the data, or pass allow_empty=True "
            "(--allow-empty) to send them as they are"
        )


def preflight(source: str, spec: JobSpec, *, storage_options: dict[str, Any] | None = None) -> None:
    """Cheap checks on the first rows, before anything heavier starts (a Prefect server, HTTP).

    Catches the usual mistakes in well under a second: an unreadable table, a template that does
    not compile, a column that does not exist, a bad id column, an output column clash.
    :func:`~prefect_llm_batch.jobs.prepare.prepare` checks every row again.

    Raises:
        InputError: As :func:`~prefect_llm_batch.jobs.prepare.prepare` would.
    """
    table = read_table(
        source, limit=PREFLIGHT_ROWS, storage_options=storage_options, invalid_utf8=spec.invalid_utf8
    )
    check_id_column(table, spec.id_column)
    check_and_render(spec, table)
    if spec.model_column is not None:
        row_models(table, spec.model_column, 0, spec.id_column)
