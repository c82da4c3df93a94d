"""The house's layering (DESIGN.md): the pure core imports only itself and a few data libraries,
and providers import only the core (and each other's public modules), read from the source."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import prefect_llm_batch

PACKAGE = Path(prefect_llm_batch.__file__).parent

#: The core's modules (a package counts with every module in it).
CORE = {"arrays", "costs", "errors", "images", "moderations", "prompts", "results", "schemas", "spec"}

#: What the core may import besides itself and the standard library.
CORE_LIBRARIES = {"jinja2", "jsonschema", "numpy", "orjson", "pyarrow", "pydantic"}

#: Imports from providers to outside the core that are known and wait for a home in the core or
#: in the provider: (provider module, imported module). Keep it empty.
KNOWN_PROVIDER_EXCEPTIONS: set[tuple[str, str]] = set()


def _modules(part: str) -> list[Path]:
    path = PACKAGE / part
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, relative imports made absolute."""
    name = _dotted(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                found.add(node.module)
    return found


def _part(module: str) -> str:
    """The house room of one of the package's modules (``prefect_llm_batch.keys.digest`` -> ``keys``)."""
    return module.split(".")[1] if module.count(".") else ""


@pytest.mark.parametrize("path", [p for part in sorted(CORE) for p in _modules(part)], ids=_dotted)
def test_the_core_imports_only_the_core_and_its_libraries(path: Path) -> None:
    outside = set()
    for module in _imports(path):
        top = module.split(".")[0]
        if top == "prefect_llm_batch":
            if _part(module) not in CORE:
                outside.add(module)
        elif top not in sys.stdlib_module_names and top not in CORE_LIBRARIES:
            outside.add(module)
    assert not outside, f"{_dotted(path)} imports {sorted(outside)} from outside the core"


@pytest.mark.parametrize("path", _modules("providers"), ids=_dotted)
def test_providers_import_only_the_core_from_the_package(path: Path) -> None:
    name = _dotted(path)
    outside = {
        module
        for module in _imports(path)
        if module.split(".")[0] == "prefect_llm_batch"
        and _part(module) not in CORE | {"providers"}
        and (name, module) not in KNOWN_PROVIDER_EXCEPTIONS
    }
    assert not outside, f"{name} imports {sorted(outside)}, which are not in the core"
