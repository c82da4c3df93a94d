"""Batch providers: one module per wire format behind :class:`~.base.BatchProvider`."""

from __future__ import annotations

import os

from ..errors import ConfigError
from ..spec import BatchLimits, ProviderTarget
from .base import BatchInfo, BatchProvider, BatchStatus
from .openai import DEFAULT_BASE_URL, OpenAIBatchProvider

__all__ = [
    "BatchInfo",
    "BatchProvider",
    "BatchStatus",
    "OpenAIBatchProvider",
    "make_provider",
    "openai_target",
]

#: The key the simulator accepts; it is not a secret.
SIMULATOR_API_KEY = "simulator-key"


def openai_target(base_url: str | None = None) -> ProviderTarget:
    """The target of the real OpenAI API (or a compatible service), as the official SDK reads it:
    ``base_url``, else ``OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.

    Examples:
        >>> openai_target("https://gateway.example/v1/").key_base_url
        'https://gateway.example/v1/'
    """
    url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    return ProviderTarget(provider="openai", base_url=url, key_base_url=url)


def make_provider(
    target: ProviderTarget,
    *,
    api_key: str | None = None,
    limits: BatchLimits | None = None,
    **options: object,
) -> BatchProvider:
    """Build a new provider client for a target.

    Args:
        target: Where to send requests.
        api_key: The key; ``None`` reads ``OPENAI_API_KEY`` (not needed for the simulator).
        limits: Batch size limits.
        **options: Passed to the provider class (timeouts, retries, backoff).

    Raises:
        ConfigError: No key is available for a real provider.
    """
    if target.provider == "simulator":
        key = api_key or SIMULATOR_API_KEY
    else:
        key = api_key or os.environ.get("OPENAI_API_KEY") or ""
        if not key:
            raise ConfigError(
                "the openai provider needs an API key: set OPENAI_API_KEY (or use the default "
                "--provider simulator to try things offline)"
            )
    return OpenAIBatchProvider(
        api_key=key,
        base_url=target.base_url,
        name=target.provider,
        key_base_url=target.key_base_url,
        limits=limits,
        **options,  # type: ignore[arg-type]
    )
