"""The simulator: the bundled fake provider (:mod:`prefect_llm_batch.testing`) run for a job or served
on a port. The only module outside tests that imports :mod:`prefect_llm_batch.testing`.

Examples:
    >>> with open_target("openai", "https://gateway.example/v1") as target:
    ...     target.provider, target.base_url
    ('openai', 'https://gateway.example/v1')
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import cast

from .providers import simulator_key, target_for
from .spec import SIMULATOR_KEY_BASE_URL, ProviderTarget, SchemaStyle

__all__ = ["open_target", "serve_simulator"]


@contextlib.contextmanager
def open_target(
    provider: str,
    base_url: str | None = None,
    *,
    simulator_seconds: float = 1.5,
    local_model: str | None = None,
    schema_style: str | None = None,
) -> Iterator[ProviderTarget]:
    """Yield where a job's HTTP goes. For ``simulator``, the bundled fake server runs for the
    duration (batches spend ``simulator_seconds`` in progress, plus a little validating and
    finalizing); its request keys use a fixed base URL, so its answers are cached across runs.
    It accepts only a key generated for this run, which
    :func:`~prefect_llm_batch.providers.api_key_for` gives the run's providers (no other key, a
    user's real one included, is ever sent to it). For ``local``, llama.cpp's server runs for the
    duration with the GGUF file ``local_model`` (default: the bundled SmolLM2), a key generated for
    the run and the schema style llama.cpp takes
    (:class:`~prefect_llm_batch.local_model.LocalModelServer`; stopped by its PID, on errors too).
    Other providers: :func:`~prefect_llm_batch.providers.target_for`. ``schema_style`` (``openai``
    or ``json_object_schema``, see ``spec.SchemaStyle``) overrides the target's.
    """
    if provider == "local":
        from .local_model import LocalModelServer, check_gguf, local_key_base_url

        model = check_gguf(local_model)
        key_base_url = local_key_base_url(model)
        with LocalModelServer(model) as local, simulator_key(local.base_url, local.api_key):
            yield ProviderTarget(
                provider="local",
                base_url=local.base_url,
                key_base_url=key_base_url,
                schema_style=cast(SchemaStyle, schema_style or "json_object_schema"),
            )
        return
    if provider == "simulator":
        from .testing import FakeProviderServer, FakeServerConfig  # only when asked: uvicorn is heavy

        pause = simulator_seconds / 3
        key = f"simulator-{secrets.token_urlsafe(24)}"
        config = FakeServerConfig(
            validating_seconds=pause,
            in_progress_seconds=simulator_seconds,
            finalizing_seconds=pause,
            api_key=key,
        )
        with FakeProviderServer(config) as server, simulator_key(server.base_url, key):
            yield ProviderTarget(
                provider="simulator", base_url=server.base_url, key_base_url=SIMULATOR_KEY_BASE_URL
            )
        return
    target = target_for(provider, base_url)
    if schema_style is not None:
        target = ProviderTarget(**{**target.model_dump(), "schema_style": schema_style})
    yield target


def serve_simulator(
    port: int, *, validating_seconds: float, in_progress_seconds: float, finalizing_seconds: float
) -> None:
    """Serve the fake provider on ``127.0.0.1:port`` in the foreground until interrupted (any key)."""
    from .testing import FakeServerConfig, serve

    serve(
        port,
        FakeServerConfig(
            validating_seconds=validating_seconds,
            in_progress_seconds=in_progress_seconds,
            finalizing_seconds=finalizing_seconds,
        ),
    )
