"""Where the tests find the repository's files, wherever a test module lives."""

from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parents[1]
#: The bundled examples.
EXAMPLES = REPO / "examples"
#: Test data committed with the tests.
FIXTURES = REPO / "tests" / "fixtures"
