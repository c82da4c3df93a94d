"""Test setup: an isolated Prefect home and one temporary Prefect server for the session."""

from __future__ import annotations

import os
import tempfile

# Before anything imports prefect: a fresh home, so no cached results leak between runs.
_HOME = tempfile.mkdtemp(prefix="plb-prefect-home-")
os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# Tests must never reach a real provider, whatever the developer's shell exports.
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
    os.environ.pop(_var, None)

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

pytest_plugins = ["prefect_llm_batch.testing.pytest_plugin", "tests.s3"]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server for tests that run flows (started once, on first use)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=60),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def state_dir(tmp_path: pytest.TempPathFactory) -> str:
    """A fresh job state directory."""
    return str(tmp_path / "state")  # type: ignore[operator]
