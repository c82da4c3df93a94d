"""Test helpers: a fake OpenAI-compatible batch provider served over real HTTP.

Point any OpenAI client (or this package's providers) at :attr:`FakeProviderServer.base_url`
with any API key. Batches move through ``validating -> in_progress -> finalizing -> completed``
as configured, answers are deterministic (:mod:`prefect_llm_batch.testing.answers`: a sentiment
label or ``"[simulated] ..."``, which only this simulator produces), and markers such as
``[[fake:500]]`` in a prompt make single rows fail (see :mod:`prefect_llm_batch.testing.server`).

For pytest, enable the ``fake_provider`` fixture with
``pytest_plugins = ["prefect_llm_batch.testing.pytest_plugin"]`` in your root ``conftest.py``.

Examples:
    >>> import json, urllib.request
    >>> with FakeProviderServer(FakeServerConfig(in_progress_seconds=0.1)) as server:
    ...     req = urllib.request.Request(
    ...         server.base_url + "/chat/completions",
    ...         data=json.dumps({"model": "gpt-4o-mini",
    ...                          "messages": [{"role": "user", "content": "Sentiment: great!"}]}).encode(),
    ...         headers={"Authorization": "Bearer sk-anything", "Content-Type": "application/json"},
    ...     )
    ...     json.load(urllib.request.urlopen(req))["choices"][0]["message"]["content"]
    'positive'
"""

from prefect_llm_batch.testing.answers import MARKERS, default_answer
from prefect_llm_batch.testing.server import (
    ROUTES,
    FakeBatch,
    FakeFile,
    FakeProviderServer,
    FakeServerConfig,
    ServerStats,
    create_app,
    serve,
)

__all__ = [
    "MARKERS",
    "ROUTES",
    "FakeBatch",
    "FakeFile",
    "FakeProviderServer",
    "FakeServerConfig",
    "ServerStats",
    "create_app",
    "default_answer",
    "serve",
]
