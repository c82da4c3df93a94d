"""Test helpers: a fake batch provider speaking the OpenAI and Anthropic wire formats over real HTTP.

Point any OpenAI client (or this package's providers) at :attr:`FakeProviderServer.base_url`
with any API key, and any Anthropic client at :attr:`FakeProviderServer.anthropic_base_url`
(same server, same port). OpenAI batches move through ``validating -> in_progress ->
finalizing -> completed`` as configured and run ``/v1/chat/completions`` or ``/v1/embeddings``
requests; Anthropic message batches go ``in_progress -> ended``. Answers are deterministic
(:mod:`prefect_llm_batch.testing.answers`: a sentiment label or ``"[simulated] ..."``, which only
this simulator produces; embeddings are unit vectors seeded by the input, sized by
:data:`EMBEDDING_DIMENSIONS`), and markers such as ``[[fake:500]]`` or ``[[fake:invalid_json]]``
in a prompt make single rows fail (see :data:`MARKERS` and
:mod:`prefect_llm_batch.testing.completions`). :attr:`FakeServerConfig.stall_in` and
:meth:`FakeProviderServer.stall_batches` keep batches in one status until released or
cancelled; :meth:`FakeProviderServer.creates_for` counts the batches created for a job.

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
    >>> EMBEDDING_DIMENSIONS["text-embedding-3-small"], len(default_embedding("any-model", "hi"))
    (1536, 256)
"""

from prefect_llm_batch.testing.answers import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    EMBEDDING_DIMENSIONS,
    MARKERS,
    default_answer,
    default_embedding,
)
from prefect_llm_batch.testing.server import (
    ROUTES,
    FakeBatch,
    FakeFile,
    FakeMessageBatch,
    FakeProviderServer,
    FakeServerConfig,
    ServerStats,
    StallStatus,
    create_app,
    serve,
)

__all__ = [
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "EMBEDDING_DIMENSIONS",
    "MARKERS",
    "ROUTES",
    "FakeBatch",
    "FakeFile",
    "FakeMessageBatch",
    "FakeProviderServer",
    "FakeServerConfig",
    "ServerStats",
    "StallStatus",
    "create_app",
    "default_answer",
    "default_embedding",
    "serve",
]
