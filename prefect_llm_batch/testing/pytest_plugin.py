"""A pytest plugin with a ``fake_provider`` fixture: a started :class:`FakeProviderServer`.

Enable it in your root ``conftest.py``::

    pytest_plugins = ["prefect_llm_batch.testing.pytest_plugin"]

then ask for the fixture (one fresh server per test)::

    def test_enrich(fake_provider, monkeypatch):
        monkeypatch.setenv("OPENAI_BASE_URL", fake_provider.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        ...
        assert fake_provider.stats.creates == 1

To change its behaviour, override ``fake_provider_config`` in a conftest or test module::

    @pytest.fixture
    def fake_provider_config():
        return FakeServerConfig(in_progress_seconds=0.5, expire_after_requests=10)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prefect_llm_batch.testing.server import FakeProviderServer, FakeServerConfig

__all__ = ["fake_provider", "fake_provider_config"]


@pytest.fixture
def fake_provider_config() -> FakeServerConfig:
    """Configuration of :func:`fake_provider`; override this fixture to change it."""
    return FakeServerConfig()


@pytest.fixture
def fake_provider(fake_provider_config: FakeServerConfig) -> Iterator[FakeProviderServer]:
    """A fake OpenAI batch provider listening on a free local port, stopped after the test."""
    with FakeProviderServer(fake_provider_config) as server:
        yield server
