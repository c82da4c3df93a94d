"""Tests for prefect_llm_batch.prompts: compiling templates and rendering them per row."""

from __future__ import annotations

import datetime
import decimal
import pickle
import random
from typing import Any

import pyarrow as pa
import pytest

from prefect_llm_batch.errors import InputError, TemplateError
from prefect_llm_batch.prompts import PromptTemplate, render_value

# -- rendering rules -------------------------------------------------------------------------

UTC = datetime.timezone.utc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (float("nan"), ""),
        ("", ""),
        ("é {{ x }}", "é {{ x }}"),
        (0, "0"),
        (-12345678901234567, "-12345678901234567"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (3.0, "3.0"),
        (-0.0, "-0.0"),
        (1e16, "1e+16"),
        (float("inf"), "inf"),
        (True, "True"),
        (False, "False"),
        (datetime.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (datetime.datetime(2024, 1, 2, 3, 4, 5, 123000), "2024-01-02T03:04:05.123000"),
        (datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05+00:00"),
        (datetime.date(2024, 1, 2), "2024-01-02"),
        (datetime.time(3, 4, 5), "03:04:05"),
        (decimal.Decimal("1.50"), "1.50"),
        (b"caf\xc3\xa9 \xff", "café \ufffd"),
        (["a", 1, None], '["a", 1, null]'),
        ({"k": "é", "at": datetime.date(2024, 1, 2)}, '{"k": "é", "at": "2024-01-02"}'),
        (datetime.timedelta(days=1, hours=2), "1 day, 2:00:00"),
    ],
)
def test_render_value(value: Any, expected: str) -> None:
    assert render_value(value) == expected


def test_values_from_arrow_columns_render_by_the_rules() -> None:
    table = pa.table(
        {
            "i": pa.array([1, None], pa.int64()),
            "f": pa.array([2.0, float("nan")], pa.float64()),
            "f32": pa.array([0.1, None], pa.float32()),
            "b": pa.array([True, None]),
            "ts": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5), None], pa.timestamp("s")),
            "tz": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5), None], pa.timestamp("ms", "UTC")),
            "ns": pa.array([1_704_164_645_000_000_001, None], pa.timestamp("ns")),
            "d": pa.array([datetime.date(2024, 1, 2), None]),
            "dec": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(5, 2)),
            "l": pa.array([["x", "y"], None]),
            "s": pa.array([{"a": 1}, None]),
            "dict": pa.array(["red", None]).dictionary_encode(),
        }
    )
    template = PromptTemplate("|".join(f"{{{{ {name} }}}}" for name in table.column_names))
    assert template.render_table(table) == [
        "1|2.0|0.1|True|2024-01-02T03:04:05|2024-01-02T03:04:05+00:00|2024-01-02T03:04:05.000000001"
        '|2024-01-02|1.50|["x", "y"]|{"a": 1}|red',
        "|" * (table.num_columns - 1),
    ]


def test_nulls_and_nan_are_none_inside_jinja() -> None:
    table = pa.table({"x": pa.array([1.5, float("nan"), None]), "n": pa.array([1, None, 3])})
    template = PromptTemplate('{{ x if x is not none else "n/a" }}/{{ "null" if n is none else n + 1 }}')
    assert template.render_table(table) == ["1.5/2", "n/a/null", "n/a/4"]


def test_int_column_with_nulls_keeps_digits() -> None:
    table = pa.table({"n": pa.array([7, None, 9], pa.int64())})
    assert PromptTemplate("n={{ n }}").render_table(table) == ["n=7", "n=", "n=9"]


def test_row_gives_every_column() -> None:
    table = pa.table({"odd name": ["a", "b"], "x": [1, 2], "row": ["r1", "r2"]})
    template = PromptTemplate('{{ row["odd name"] }}-{{ row.x }}-{{ row["row"] }}-{{ x }}')
    assert template.render_table(table) == ["a-1-r1-1", "b-2-r2-2"]
    assert PromptTemplate("{{ row }}").render_table(table.slice(0, 1)) == [
        '{"odd name": "a", "x": 1, "row": "r1"}'
    ]
    loop = PromptTemplate("{% for k, v in row.items() %}{{ k }}={{ v }};{% endfor %}")
    assert loop.render_table(table.slice(1)) == ["odd name=b;x=2;row=r2;"]


def test_no_variables_and_empty_tables() -> None:
    table = pa.table({"a": ["x", "y", "z"]})
    assert PromptTemplate("Say hi.\n").render_table(table) == ["Say hi.\n"] * 3
    assert PromptTemplate("").render_table(table) == [""] * 3
    assert PromptTemplate("{{ range(2) | list }}").render_table(table) == ["[0, 1]"] * 3
    assert PromptTemplate("{{ a }}").render_table(table.slice(0, 0)) == []
    assert PromptTemplate("{{ a | upper }}").render_table(table.slice(0, 0)) == []


def test_trailing_newline_is_kept_and_no_escaping() -> None:
    table = pa.table({"a": ["<b>&</b>"], "n": [1]})
    assert PromptTemplate("{{ a }}\n").render_table(table) == ["<b>&</b>\n"]
    assert PromptTemplate("{{ a }} {{ n }}\n").render_table(table) == ["<b>&</b> 1\n"]


def test_column_named_like_a_jinja_global() -> None:
    table = pa.table({"range": ["r"], "dict": [5]})
    assert PromptTemplate("{{ range }}{{ dict }}").render_table(table) == ["r5"]


# -- variables and columns -------------------------------------------------------------------


def test_variables() -> None:
    template = PromptTemplate(
        "{% set greeting = 'hi' %}{{ greeting }} {{ name }}{% for t in tags %}{{ t }}{% endfor %}"
        "{{ row['x y'] }}{{ range(3) | list }}"
    )
    assert template.variables == frozenset({"name", "tags"})


def test_missing_column_message() -> None:
    with pytest.raises(TemplateError) as info:
        PromptTemplate("{{ reveiw }}").check_columns(["id", "review", "stars"])
    assert str(info.value) == (
        "prompt uses column 'reveiw', which the table does not have; "
        "available columns: id, review, stars; did you mean 'review'?"
    )


def test_missing_columns_without_close_match_and_several() -> None:
    with pytest.raises(TemplateError) as info:
        PromptTemplate("{{ zzz }}", name="system prompt").check_columns(["a", "b"])
    assert str(info.value) == (
        "system prompt uses column 'zzz', which the table does not have; available columns: a, b"
    )
    expected = r"uses columns 'Title', 'zzz',.*did you mean 'title' for 'Title'\?"
    with pytest.raises(TemplateError, match=expected):
        PromptTemplate("{{ zzz }}{{ Title }}").check_columns(["title"])


def test_missing_column_through_row_is_caught() -> None:
    template = PromptTemplate('{{ row["star rating"] }} {{ row.items() | list | length }} {{ row.stars }}')
    with pytest.raises(TemplateError, match=r"columns 'star rating', 'stars'"):
        template.check_columns(["rating"])
    template.check_columns(["star rating", "stars"])


def test_render_table_checks_columns_first() -> None:
    with pytest.raises(TemplateError, match="uses column 'b'"):
        PromptTemplate("{{ a }}{{ b }}").render_table(pa.table({"a": ["x"]}))


def test_long_column_lists_are_cut() -> None:
    columns = [f"c{i}" for i in range(80)]
    with pytest.raises(TemplateError, match=r"c49 and 30 more"):
        PromptTemplate("{{ zzz }}").check_columns(columns)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "line", "detail"),
    [
        ("Hello {{ name }", 1, "unexpected '}'"),
        ("a\nb\n{% if x %}\nno end", 3, "Unexpected end of template"),
        ("line one\n{{ x | no_such_filter }}", 2, "No filter named 'no_such_filter'"),
    ],
)
def test_syntax_errors_name_template_and_line(source: str, line: int, detail: str) -> None:
    with pytest.raises(TemplateError) as info:
        PromptTemplate(source, name="system prompt")
    message = str(info.value)
    assert message.startswith(f"system prompt has a syntax error on line {line}: ")
    assert detail in message


def test_render_error_names_row_and_id() -> None:
    table = pa.table({"id": ["a", "b", "c"], "n": [1, 0, 2]})
    template = PromptTemplate("{{ 10 // n }}")
    with pytest.raises(TemplateError) as info:
        template.render_table(table)
    assert str(info.value) == (
        "prompt does not render for row 1: ZeroDivisionError: integer division or modulo by zero"
    )
    with pytest.raises(TemplateError, match=r"row 1 \(id 'b'\): ZeroDivisionError"):
        template.render_table(table, id_column="id")


def test_render_error_quotes_jinja_message() -> None:
    table = pa.table({"user": pa.array([{"name": "a"}, None], pa.struct([("name", pa.string())]))})
    with pytest.raises(TemplateError, match=r"row 1: 'None' has no attribute 'name'"):
        PromptTemplate("{{ user.name }}").render_table(table)


def test_sandbox_blocks_unsafe_access() -> None:
    table = pa.table({"a": ["x"]})
    with pytest.raises(TemplateError, match="row 0"):
        PromptTemplate("{{ a.__class__.__mro__[1].__subclasses__() }}").render_table(table)


def test_unknown_id_column() -> None:
    with pytest.raises(InputError, match="id column 'key'"):
        PromptTemplate("{{ a }}").render_table(pa.table({"a": ["x"]}), id_column="key")


def test_duplicate_column_names_are_refused() -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    with pytest.raises(InputError, match="columns named 'a'"):
        PromptTemplate("{{ a + 1 }}").render_table(table)


def test_pickle_round_trip() -> None:
    template = PromptTemplate("{{ a }}!", name="system prompt")
    copy = pickle.loads(pickle.dumps(template))
    assert copy.name == "system prompt"
    assert copy.render_table(pa.table({"a": ["x"]})) == ["x!"]
    assert repr(copy) == "PromptTemplate('{{ a }}!', name='system prompt')"


# -- the fast path ---------------------------------------------------------------------------


def _both_paths(template: PromptTemplate, table: pa.Table) -> tuple[list[str], list[str]]:
    assert template._can_render_plain(table)
    return template._render_plain(table), template._render_jinja(table, None)


def test_fast_path_is_taken_for_plain_string_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    table = pa.table({"a": ["x", None], "n": [1, 2]})
    assert PromptTemplate("A: {{ a }}")._can_render_plain(table)
    assert PromptTemplate("A: {{ a }}").render_table(table) == ["A: x", "A: "]
    for source in ("{{ n }}", "{{ a | upper }}", "{% if a %}{{ a }}{% endif %}", "{{ row.a }}", "{{ 'x' }}"):
        assert not PromptTemplate(source)._can_render_plain(table), source
    assert not PromptTemplate("{{ range }}")._can_render_plain(table)

    def jinja_must_not_run(*args: object) -> list[str]:
        raise AssertionError("the Jinja path ran")

    monkeypatch.setattr(PromptTemplate, "_render_jinja", jinja_must_not_run)
    assert PromptTemplate("{{ a }}{{ a }}").render_table(table) == ["xx", ""]


_ALPHABET = [
    "a",
    "Z",
    " ",
    "\n",
    "\r\n",
    "\t",
    "{",
    "}",
    "{ ",
    "%",
    "#",
    "%s",
    "é",
    "日本",
    "🙂",
    "\\",
    "'",
    '"',
    "\x00",
    "<&>",
    "-",
    "$",
]


def _random_text(rng: random.Random, max_len: int) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, max_len)))


def _random_literal(rng: random.Random) -> str:
    # Literal template text must not open a Jinja tag: never "{" before "{", "%" or "#".
    text = _random_text(rng, 6)
    while "{{" in text or "{%" in text or "{#" in text or text.endswith("{"):
        text = _random_text(rng, 6)
    return text


def _random_template(rng: random.Random, columns: list[str]) -> str:
    pieces: list[str] = []
    for _ in range(rng.randint(0, 6)):
        kind = rng.random()
        if kind < 0.45:
            pieces.append(_random_literal(rng))
        elif kind < 0.85:
            left, right = rng.choice([("{{ ", " }}"), ("{{", "}}"), ("{{- ", " -}}"), ("{{ ", " -}}")])
            pieces.append(f"{left}{rng.choice(columns)}{right}")
        elif kind < 0.93:
            pieces.append("{% raw %}{{ " + rng.choice(columns) + " }}{% endraw %}")
        else:
            pieces.append("{# a comment #}")
    source = "".join(pieces)
    # Nothing can follow a trailing "{" that would make a tag: pad it.
    return source + " " if source.endswith("{") else source


def test_fast_path_matches_jinja_on_random_inputs() -> None:
    checked = 0
    for seed in range(120):
        rng = random.Random(seed)
        columns = ["a", "b", "long_name_1"]
        rows = rng.randint(0, 40)
        arrays = []
        for index in range(len(columns)):
            values = [None if rng.random() < 0.2 else _random_text(rng, 12) for _ in range(rows)]
            data_type = pa.large_string() if index == 2 and seed % 2 else pa.string()
            split = rng.randint(0, rows)  # several chunks
            arrays.append(pa.chunked_array([values[:split], values[split:]], data_type))
        table = pa.Table.from_arrays(arrays, names=columns)
        source = _random_template(rng, columns)
        template = PromptTemplate(source)
        plain, jinja = _both_paths(template, table)
        assert plain == jinja, (seed, source)
        assert len(plain) == rows
        checked += rows
    assert checked > 1000


def test_fast_path_edge_cases() -> None:
    table = pa.table({"a": ["50%", None, "{{ b }}", "x\r\ny"], "b": ["%s", "", "}}", "\n"]})
    for source in ("{{ a }}", "%{{ a }}%%s{{ b }}", "{{ a }}{{ b }}\n", "\n{{- a -}}\n x", "", "only text"):
        plain, jinja = _both_paths(PromptTemplate(source), table)
        assert plain == jinja, source


def test_non_string_columns_go_through_jinja() -> None:
    table = pa.table(
        {
            "i": pa.array([1, None], pa.int64()),
            "f": [0.5, 3.0],
            "b": [True, False],
            "t": pa.array(
                [datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), None], pa.timestamp("us", "UTC")
            ),
        }
    )
    template = PromptTemplate("{{ i }};{{ f }};{{ b }};{{ t }}")
    assert not template._can_render_plain(table)
    assert template.render_table(table) == ["1;0.5;True;2024-05-06T07:08:09+00:00", ";3.0;False;"]
