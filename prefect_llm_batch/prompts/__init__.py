"""Compile prompt templates once and render them for every row of a table.

Templates are `Jinja2 <https://jinja.palletsprojects.com>`_, compiled once in a sandbox
(``jinja2.sandbox.SandboxedEnvironment``) with strict undefined variables, no HTML escaping and
the template's trailing newline kept. This package is pure: no I/O, no Prefect, no HTTP.

Modules: :mod:`~prefect_llm_batch.prompts.template` (:class:`PromptTemplate`),
:mod:`~prefect_llm_batch.prompts.values` (how values print), :mod:`~prefect_llm_batch.prompts.sandbox`
(the bounded Jinja environment and its size checks), :mod:`~prefect_llm_batch.prompts.analysis`
(what a template's tree says) and :mod:`~prefect_llm_batch.prompts.escaping` (JSON escaping in
Arrow). The public names are importable from here.

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

from .sandbox import MAX_PROMPT_CHARS
from .template import PromptTemplate
from .values import render_value

__all__ = ["MAX_PROMPT_CHARS", "PromptTemplate", "render_value"]
