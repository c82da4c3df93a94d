"""Prefect blocks: provider credentials, stored encrypted and shown as ``********``.

Registered through the ``prefect.collections`` entry point, or by hand with
``prefect block register -m prefect_llm_batch.blocks``.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from .providers import make_provider, openai_target
from .providers.base import BatchProvider
from .spec import BatchLimits


class OpenAIBatchCredentials(Block):
    """Credentials for the OpenAI Batch API, or any OpenAI-compatible service.

    Attributes:
        api_key: The API key, sent as ``Authorization: Bearer``.
        base_url: Base URL including ``/v1``; empty for ``https://api.openai.com/v1``
            (or ``OPENAI_BASE_URL`` when set).

    Examples:
        >>> creds = OpenAIBatchCredentials(api_key="test-key")
        >>> creds.api_key
        SecretStr('**********')
        >>> provider = creds.get_client()
        >>> provider.key_base_url
        'https://api.openai.com/v1'
        >>> provider.close()
    """

    _block_type_name = "LLM Batch OpenAI Credentials"
    _block_type_slug = "llm-batch-openai-credentials"
    _logo_url = HttpUrl("https://cdn.openai.com/API/logo-assets/openai-logomark.png")
    _documentation_url = HttpUrl("https://platform.openai.com/docs/guides/batch")

    api_key: SecretStr = Field(default=..., description="The OpenAI (or compatible service) API key.")
    base_url: str | None = Field(
        default=None,
        description="Base URL including /v1, for OpenAI-compatible services. Empty means api.openai.com.",
    )

    def get_client(self, limits: BatchLimits | None = None, **options: Any) -> BatchProvider:
        """Return a **new** batch provider client using these credentials (close it after use)."""
        return make_provider(
            openai_target(self.base_url), api_key=self.api_key.get_secret_value(), limits=limits, **options
        )
