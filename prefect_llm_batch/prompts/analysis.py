"""What a compiled template's tree says: whether it is plain text and ``{{ column }}`` parts (so
it renders without Jinja), and which columns it reads through ``row``.

Examples:
    >>> from prefect_llm_batch.prompts.sandbox import ENVIRONMENT
    >>> plain_parts(ENVIRONMENT.parse("Say {{ a }}!"))
    ('Say ', PlainColumn(name='a'), '!')
    >>> sorted(row_keys(ENVIRONMENT.parse("{{ row['a b'] }} {{ row.c }} {{ row.items() }}")))
    ['a b', 'c']
"""

from __future__ import annotations

import dataclasses

from jinja2 import nodes

__all__ = ["PlainColumn", "plain_parts", "row_keys"]


@dataclasses.dataclass(frozen=True)
class PlainColumn:
    """A plain ``{{ name }}`` substitution in a template made only of text and substitutions."""

    name: str


def plain_parts(tree: nodes.Template) -> tuple[str | PlainColumn, ...] | None:
    """The template as text and ``{{ name }}`` parts, or None when it does more than that."""
    parts: list[str | PlainColumn] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(child.data)
            elif isinstance(child, nodes.Name) and child.ctx == "load" and child.name != "row":
                parts.append(PlainColumn(child.name))
            else:
                return None
    return tuple(parts)


def row_keys(tree: nodes.Template) -> set[str]:
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
