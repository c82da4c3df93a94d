"""Batch providers: one module per wire format behind :class:`~.base.BatchProvider`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ..errors import ConfigError
from ..spec import (
    API_KEY_ENV,
    CHAT_ENDPOINT,
    MESSAGES_ENDPOINT,
    BatchLimits,
    ProviderTarget,
    key_env_names,
    refuse_credentials,
)
from .anthropic import DEFAULT_BASE_URL as ANTHROPIC_DEFAULT_BASE_URL
from .anthropic import AnthropicBatchProvider
from .azure import AzureOpenAIBatchProvider, azure_target
from .base import BatchInfo, BatchProvider, BatchStatus
from .gemini import DEFAULT_BASE_URL as GEMINI_DEFAULT_BASE_URL
from .gemini import GeminiBatchProvider
from .openai import DEFAULT_BASE_URL, OpenAIBatchProvider

__all__ = [
    "AnthropicBatchProvider",
    "AzureOpenAIBatchProvider",
    "BatchInfo",
    "BatchProvider",
    "BatchStatus",
    "GeminiBatchProvider",
    "OpenAIBatchProvider",
    "anthropic_target",
    "azure_target",
    "gemini_target",
    "make_provider",
    "openai_target",
    "target_for",
]

#: Environment variables holding each real provider's key (as the official SDKs read them).
KEY_ENV = API_KEY_ENV

#: The key sent to a simulator target whose server this process did not start (the CLI's
#: estimates, which send nothing); it is not a secret. A running simulator accepts only its own key.
SIMULATOR_API_KEY = "simulator-key"

#: Base URL of each running simulator -> the key generated for it (per run; :func:`simulator_key`).
_SIMULATOR_KEYS: dict[str, str] = {}


def openai_target(base_url: str | None = None) -> ProviderTarget:
    """The target of the real OpenAI API (or a compatible service), as the official SDK reads it:
    ``base_url``, else ``OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.

    Examples:
        >>> openai_target("https://gateway.example/v1/").key_base_url
        'https://gateway.example/v1/'
    """
    url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    refuse_credentials(url, "openai", "base_url" if base_url else "OPENAI_BASE_URL")
    return ProviderTarget(provider="openai", base_url=url, key_base_url=url)


def anthropic_target(base_url: str | None = None) -> ProviderTarget:
    """The target of Anthropic's API: ``base_url``, else ``ANTHROPIC_BASE_URL``, else
    ``https://api.anthropic.com`` (no ``/v1``, as the official SDK reads it).

    Examples:
        >>> anthropic_target("https://proxy.example").base_url
        'https://proxy.example'
    """
    url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT_BASE_URL
    refuse_credentials(url, "anthropic", "base_url" if base_url else "ANTHROPIC_BASE_URL")
    return ProviderTarget(provider="anthropic", base_url=url, key_base_url=url)


def gemini_target(base_url: str | None = None) -> ProviderTarget:
    """The target of the Gemini API: ``base_url``, else ``GOOGLE_GEMINI_BASE_URL``, else
    ``https://generativelanguage.googleapis.com`` (no version suffix, as Google's SDK reads it).

    Examples:
        >>> gemini_target("https://proxy.example").base_url
        'https://proxy.example'
    """
    url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or GEMINI_DEFAULT_BASE_URL
    refuse_credentials(url, "gemini", "base_url" if base_url else "GOOGLE_GEMINI_BASE_URL")
    return ProviderTarget(provider="gemini", base_url=url, key_base_url=url)


def target_for(provider: str, base_url: str | None = None) -> ProviderTarget:
    """The target of a real provider by name (``openai`` or ``anthropic``).

    Raises:
        ConfigError: An unknown provider name.
    """
    if provider == "openai":
        return openai_target(base_url)
    if provider == "anthropic":
        return anthropic_target(base_url)
    if provider == "azure":
        return azure_target(base_url)
    if provider == "gemini":
        return gemini_target(base_url)
    raise ConfigError(f"unknown provider {provider!r}; use simulator, openai, anthropic, azure or gemini")


@contextlib.contextmanager
def simulator_key(base_url: str, key: str) -> Iterator[None]:
    """While the block runs, :func:`api_key_for` gives ``key`` for the simulator (or local model
    server) at ``base_url`` (:func:`prefect_llm_batch.simulator.open_target` runs one with a key
    generated per run).

    Examples:
        >>> target = ProviderTarget(provider="simulator", base_url="http://127.0.0.1:1/v1",
        ...                         key_base_url="simulator://local/v1")
        >>> with simulator_key(target.base_url, "simulator-abc"):
        ...     api_key_for(target)
        'simulator-abc'
        >>> api_key_for(target)
        'simulator-key'
    """
    _SIMULATOR_KEYS[base_url] = key
    try:
        yield
    finally:
        _SIMULATOR_KEYS.pop(base_url, None)


def api_key_for(target: ProviderTarget, api_key: str | None = None) -> str:
    """The key to use for a target: ``api_key``, else the provider's environment variable; for a
    simulator started by :func:`prefect_llm_batch.simulator.open_target`, the key generated for it
    (``api_key`` is ignored).

    Raises:
        ConfigError: A real provider and no key (the message names the variable).
    """
    if target.provider in ("simulator", "local"):  # both are servers this process started
        return _SIMULATOR_KEYS.get(target.base_url) or api_key or SIMULATOR_API_KEY
    env = KEY_ENV[target.provider]
    key = api_key or os.environ.get(env) or ""
    if target.provider == "gemini":  # GOOGLE_API_KEY, else GEMINI_API_KEY (Google's SDK order)
        key = api_key or next((v for v in map(os.environ.get, key_env_names("gemini")) if v), "")
        env = " or ".join(key_env_names("gemini"))
    if not key:
        raise ConfigError(
            f"the {target.provider} provider needs an API key: set {env} (or use the default "
            "--provider simulator to try things offline)"
        )
    return key


def make_provider(
    target: ProviderTarget,
    *,
    api_key: str | None = None,
    limits: BatchLimits | None = None,
    endpoint: str | None = None,
    **options: object,
) -> BatchProvider:
    """Build a new provider client for a target.

    Args:
        target: Where to send requests.
        api_key: The key; ``None`` reads ``OPENAI_API_KEY`` or ``ANTHROPIC_API_KEY`` (not needed
            for the simulator).
        limits: Batch size limits.
        endpoint: The endpoint of the job's requests (default chat completions).
        **options: Passed to the provider class (timeouts, retries, backoff).

    Raises:
        ConfigError: No key is available for a real provider.
    """
    key = api_key_for(target, api_key)
    if target.provider == "azure":
        return AzureOpenAIBatchProvider.from_target(
            target, api_key=key, limits=limits, endpoint=endpoint or CHAT_ENDPOINT, **options
        )
    if target.provider == "gemini":
        if endpoint not in (None, CHAT_ENDPOINT):
            raise ConfigError(f"the gemini provider has no {endpoint} batches; use openai for embeddings")
        return GeminiBatchProvider(
            api_key=key,
            base_url=target.base_url,
            key_base_url=target.key_base_url,
            limits=limits,
            **options,  # type: ignore[arg-type]
        )
    if target.provider == "anthropic":
        if endpoint not in (None, CHAT_ENDPOINT, MESSAGES_ENDPOINT):
            raise ConfigError(f"the anthropic provider has no {endpoint} batches; use openai for embeddings")
        return AnthropicBatchProvider(
            api_key=key,
            base_url=target.base_url,
            key_base_url=target.key_base_url,
            limits=limits,
            **options,  # type: ignore[arg-type]
        )
    return OpenAIBatchProvider(
        api_key=key,
        base_url=target.base_url,
        name=target.provider,
        key_base_url=target.key_base_url,
        limits=limits,
        endpoint=endpoint or CHAT_ENDPOINT,
        schema_style=target.schema_style,
        **options,  # type: ignore[arg-type]
    )
