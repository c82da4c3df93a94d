"""Prefect blocks: provider credentials (stored encrypted, shown as ``********``) and a saved job.

Registered through the ``prefect.collections`` entry point (any Prefect server started after
installing this package knows them), or by hand on a running server with
``prefect block register -m prefect_llm_batch.blocks``.

==========================  ================================  ========================================
class                       block type slug                   holds
==========================  ================================  ========================================
``OpenAIBatchCredentials``  ``llm-batch-openai-credentials``  an OpenAI (or compatible) key, base URL
``LLMBatchJob``             ``llm-batch-job``                 a job defined once (in the UI): prompt,
                                                              model, params, provider, credentials
==========================  ================================  ========================================

The names differ from ``prefect-openai``'s ``OpenAI Credentials`` on purpose, so both collections
can be installed side by side.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, HttpUrl, SecretStr, model_validator

from .errors import ConfigError, TemplateError
from .prompts import PromptTemplate
from .providers import anthropic_target, gemini_target, make_provider, openai_target
from .providers.base import BatchProvider
from .spec import BatchLimits, JobSpec, ProviderName, ProviderTarget

__all__ = ["AnthropicBatchCredentials", "GeminiBatchCredentials", "LLMBatchJob", "OpenAIBatchCredentials"]

#: OpenAI's mark as Prefect hosts it for its own prefect-openai blocks (a PNG scaled to 250 px).
OPENAI_LOGO_URL = (
    "https://images.ctfassets.net/gm98wzqotmnx/QE8JwcbZBmIfiognXDLcY/"
    "2bcd4c759f877d37159f576101218b49/open-ai-logo-8B9BFEDC26-seeklogo.com.png?h=250"
)
#: Anthropic's mark, on the same image host (a PNG scaled to 250 px).
ANTHROPIC_LOGO_URL = "https://images.ctfassets.net/gm98wzqotmnx/anthropic-logo/anthropic.png?h=250"
#: Gemini's mark, on the same image host.
GEMINI_LOGO_URL = "https://images.ctfassets.net/gm98wzqotmnx/gemini-logo/gemini.png?h=250"
#: The provider's guide to the API these blocks drive (until the project has a public home).
DOCUMENTATION_URL = "https://platform.openai.com/docs/guides/batch"


class OpenAIBatchCredentials(CredentialsBlock):
    """Credentials for the OpenAI Batch API, or any OpenAI-compatible service.

    The key is a ``SecretStr``: Prefect stores it encrypted, and the UI, ``repr`` and logs show
    ``********``. ``get_client()`` returns a new client for the provider.

    Attributes:
        api_key: The API key, sent as ``Authorization: Bearer``.
        base_url: Base URL including ``/v1``; empty for ``https://api.openai.com/v1``
            (or ``OPENAI_BASE_URL`` when set).

    Examples:
        >>> creds = OpenAIBatchCredentials(api_key="sk-test")
        >>> creds
        OpenAIBatchCredentials(api_key=SecretStr('**********'), base_url=None)
        >>> with creds.get_client() as provider:
        ...     provider.key_base_url
        'https://api.openai.com/v1'
    """

    _block_type_name = "LLM Batch OpenAI Credentials"
    _block_type_slug = "llm-batch-openai-credentials"
    _logo_url = HttpUrl(OPENAI_LOGO_URL)
    _documentation_url = HttpUrl(DOCUMENTATION_URL)
    _code_example = """\
        ```python
        from prefect_llm_batch.blocks import OpenAIBatchCredentials

        credentials = OpenAIBatchCredentials.load("BLOCK_NAME")
        with credentials.get_client() as provider:
            ...
        ```"""

    # Validation errors would otherwise echo the raw input, key included.
    model_config = ConfigDict(hide_input_in_errors=True)

    api_key: SecretStr = Field(
        default=...,
        title="API Key",
        description="The OpenAI (or compatible service) API key.",
    )
    base_url: str | None = Field(
        default=None,
        title="Base URL",
        description="Base URL including /v1, for OpenAI-compatible services. Empty means api.openai.com.",
    )

    def get_client(
        self,
        limits: BatchLimits | None = None,
        *,
        target: ProviderTarget | None = None,
        endpoint: str | None = None,
        **options: Any,
    ) -> BatchProvider:
        """Return a **new** batch provider client using these credentials.

        Each call builds its own client (no shared state); close it after use, or use it as a
        context manager. The flows' tasks get their clients here, one per task run.

        Args:
            limits: Batch size limits (default OpenAI's).
            target: Where the requests go (the job's resolved target: an ``openai`` or ``azure``
                server, or the simulator); default ``base_url``, else ``OPENAI_BASE_URL``, else OpenAI.
            endpoint: The endpoint of the job's requests (default chat completions).
            **options: Passed to the provider (timeouts, retries, backoff).

        Returns:
            A provider for ``target``.

        Raises:
            ConfigError: ``target`` is another provider's (this key is not sent there).
        """
        return _client(self, target or openai_target(self.base_url), limits, endpoint, options)


class AnthropicBatchCredentials(CredentialsBlock):
    """Credentials for Anthropic's Message Batches API.

    The key is a ``SecretStr``: Prefect stores it encrypted, and the UI, ``repr`` and logs show
    ``********``. ``get_client()`` returns a new client for the provider.

    Attributes:
        api_key: The API key, sent as ``x-api-key``.
        base_url: Base URL **without** ``/v1``; empty for ``https://api.anthropic.com`` (or
            ``ANTHROPIC_BASE_URL`` when set).

    Examples:
        >>> creds = AnthropicBatchCredentials(api_key="test-key")
        >>> with creds.get_client() as provider:
        ...     provider.endpoint
        '/v1/messages'
    """

    _block_type_name = "LLM Batch Anthropic Credentials"
    _block_type_slug = "llm-batch-anthropic-credentials"
    _logo_url = HttpUrl(ANTHROPIC_LOGO_URL)
    _documentation_url = HttpUrl("https://docs.anthropic.com/en/docs/build-with-claude/batch-processing")
    _code_example = """\
        ```python
        from prefect_llm_batch.blocks import AnthropicBatchCredentials

        credentials = AnthropicBatchCredentials.load("BLOCK_NAME")
        with credentials.get_client() as provider:
            ...
        ```"""

    model_config = ConfigDict(hide_input_in_errors=True)

    api_key: SecretStr = Field(default=..., title="API Key", description="The Anthropic API key.")
    base_url: str | None = Field(
        default=None, title="Base URL", description="Base URL without /v1. Empty means api.anthropic.com."
    )

    def get_client(
        self,
        limits: BatchLimits | None = None,
        *,
        target: ProviderTarget | None = None,
        endpoint: str | None = None,
        **options: Any,
    ) -> BatchProvider:
        """Return a **new** Anthropic batch provider client using these credentials.

        Args:
            limits: Batch size limits.
            target: Where the requests go (an ``anthropic`` server or the simulator); default
                ``base_url``, else ``ANTHROPIC_BASE_URL``, else Anthropic.
            endpoint: The endpoint of the job's requests (chat completions, sent as Messages).
            **options: Passed to the provider (timeouts, retries, backoff).

        Returns:
            A provider for ``target``.

        Raises:
            ConfigError: ``target`` is another provider's (this key is not sent there).
        """
        return _client(self, target or anthropic_target(self.base_url), limits, endpoint, options)


class GeminiBatchCredentials(CredentialsBlock):
    """Credentials for the Gemini API batch mode (Gemini Developer API; not Vertex AI).

    The key is a ``SecretStr``: Prefect stores it encrypted, and the UI, ``repr`` and logs show
    ``********``. ``get_client()`` returns a new client for the provider.

    Attributes:
        api_key: The API key, sent as ``x-goog-api-key``.
        base_url: Base URL **without** a version; empty for
            ``https://generativelanguage.googleapis.com`` (or ``GOOGLE_GEMINI_BASE_URL`` when set).

    Examples:
        >>> creds = GeminiBatchCredentials(api_key="fake-key-gemini")
        >>> with creds.get_client() as provider:
        ...     provider.name
        'gemini'
    """

    _block_type_name = "LLM Batch Gemini Credentials"
    _block_type_slug = "llm-batch-gemini-credentials"
    _logo_url = HttpUrl(GEMINI_LOGO_URL)
    _documentation_url = HttpUrl("https://ai.google.dev/gemini-api/docs/batch-mode")
    _code_example = """\
        ```python
        from prefect_llm_batch.blocks import GeminiBatchCredentials

        credentials = GeminiBatchCredentials.load("BLOCK_NAME")
        with credentials.get_client() as provider:
            ...
        ```"""

    model_config = ConfigDict(hide_input_in_errors=True)

    api_key: SecretStr = Field(default=..., title="API Key", description="The Gemini API key.")
    base_url: str | None = Field(
        default=None,
        title="Base URL",
        description="Base URL without a version. Empty means generativelanguage.googleapis.com.",
    )

    def get_client(
        self,
        limits: BatchLimits | None = None,
        *,
        target: ProviderTarget | None = None,
        endpoint: str | None = None,
        **options: Any,
    ) -> BatchProvider:
        """Return a **new** Gemini batch provider client using these credentials.

        Args:
            limits: Batch size limits.
            target: Where the requests go (a ``gemini`` server or the simulator); default
                ``base_url``, else ``GOOGLE_GEMINI_BASE_URL``, else Google.
            endpoint: The endpoint of the job's requests (chat completions, sent as GenerateContent).
            **options: Passed to the provider (timeouts, retries, backoff).

        Raises:
            ConfigError: ``target`` is another provider's (this key is not sent there).
        """
        return _client(self, target or gemini_target(self.base_url), limits, endpoint, options)


class LLMBatchJob(Block):
    """An enrichment job saved once (in the UI or from code) and reused by deployments and notebooks.

    It holds what to ask and where to send it; the table, the output and the state directory are
    given per run. The fields are checked when the block is built, so a bad template or reserved
    parameter fails when the block is saved, not hours later in a scheduled run.

    Attributes:
        prompt: Jinja2 template rendered per row, e.g. ``"Classify: {{ review }}"``.
        system: Optional system prompt (also a template).
        model: Model name (empty with ``model_column``).
        model_column: Column naming each row's model, instead of ``model`` (one batch per model).
        image_columns: Columns holding one image per row each (a URL, a path relative to the
            table's directory, an fsspec URL or bytes), sent after the prompt's text.
        allow_missing_images: A null image cell means no image from that column for that row
            (else an error naming the row, before anything is sent).
        params: Extra request parameters (``temperature``, ``max_tokens``...).
        provider: ``simulator`` (offline fake, free), ``openai``, ``anthropic`` or ``azure`` (real,
            costs money).
        base_url: The provider's base URL (OpenAI-compatible ones include ``/v1``); empty uses the
            credentials', else the provider's.
        id_column: Column that identifies rows (unique, non-null); named in error messages.
        response_schema: Optional JSON Schema (an object) the answers must follow.
        credentials: The provider's credentials block (``LLM Batch OpenAI Credentials`` for
            ``openai`` and ``azure``, ``LLM Batch Anthropic Credentials`` for ``anthropic``); empty
            reads the provider's environment variable (``OPENAI_API_KEY``...).

    Examples:
        >>> job = LLMBatchJob(prompt="Sentiment of: {{ review }}", model="gpt-4o-mini",
        ...     params={"temperature": 0}, id_column="review_id")
        >>> spec = job.to_spec()
        >>> spec.provider, spec.model, spec.params
        ('simulator', 'gpt-4o-mini', {'temperature': 0})
        >>> real = LLMBatchJob(prompt="{{ text }}", model="gpt-4o-mini", provider="openai",
        ...     credentials=OpenAIBatchCredentials(api_key="sk-test", base_url="https://gw.example/v1"))
        >>> real.credentials.api_key
        SecretStr('**********')
        >>> real.to_spec().base_url
        'https://gw.example/v1'
        >>> LLMBatchJob(prompt="{{ review }", model="gpt-4o-mini")
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for LLMBatchJob
          Value error, prompt has a syntax error on line 1: ...
    """

    _block_type_name = "LLM Batch Job"
    _block_type_slug = "llm-batch-job"
    _logo_url = HttpUrl(OPENAI_LOGO_URL)
    _documentation_url = HttpUrl(DOCUMENTATION_URL)
    _code_example = """\
        ```python
        from prefect_llm_batch.blocks import LLMBatchJob

        from prefect_llm_batch.flows import run_llm_batch_job

        job = LLMBatchJob.load("BLOCK_NAME")
        run_llm_batch_job(job, source="reviews.csv", output="reviews.parquet")
        ```"""

    # Validation errors would otherwise echo the raw input, nested credentials included.
    model_config = ConfigDict(hide_input_in_errors=True)

    prompt: str = Field(
        default=...,
        description="Jinja2 template rendered once per row; the row's columns are its variables.",
    )
    system: str | None = Field(default=None, description="Optional system prompt, also a template.")
    model: str = Field(
        default="", description="Model name, e.g. gpt-4o-mini (empty when a model column names each row's)."
    )
    model_column: str | None = Field(
        default=None,
        description="Column naming each row's model, instead of Model (one batch per model).",
    )
    image_columns: list[str] = Field(
        default_factory=list,
        description=(
            "Columns holding one image per row each (a URL, a path relative to the table's folder, "
            "an fsspec URL or bytes), sent after the prompt's text."
        ),
    )
    allow_missing_images: bool = Field(
        default=False,
        description="Send a row whose image cell is empty without that image (else an error naming the row).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra request parameters passed through as given (temperature, max_tokens...).",
    )
    provider: ProviderName = Field(
        default="simulator",
        description=(
            "simulator (the bundled offline fake: free, made-up answers), or openai, anthropic or "
            "azure (real: costs money)."
        ),
    )
    base_url: str | None = Field(
        default=None,
        title="Base URL",
        description=(
            "The provider's base URL (OpenAI-compatible ones include /v1). Empty uses the "
            "credentials', else the provider's."
        ),
    )
    id_column: str | None = Field(
        default=None, description="Column that identifies rows (unique, non-null); named in errors."
    )
    response_schema: dict[str, Any] | None = Field(
        default=None,
        description="Optional JSON Schema (an object) the answers must follow; one column per property.",
    )
    credentials: OpenAIBatchCredentials | AnthropicBatchCredentials | GeminiBatchCredentials | None = Field(
        default=None,
        description=(
            "The provider's credentials: OpenAI's for openai and azure, Anthropic's for anthropic. "
            "Empty reads the provider's environment variable (OPENAI_API_KEY...)."
        ),
    )

    @model_validator(mode="after")
    def _valid_job(self) -> LLMBatchJob:
        spec = self.to_spec()
        try:
            if self.credentials is not None and self.provider != "simulator":
                check_credentials_fit(self.credentials, self.provider)
            PromptTemplate(spec.prompt)
            if spec.system is not None:
                PromptTemplate(spec.system, name="system prompt")
        except (TemplateError, ConfigError) as exc:
            raise ValueError(str(exc)) from exc
        return self

    def to_spec(self, limits: BatchLimits | None = None) -> JobSpec:
        """The job as a :class:`~prefect_llm_batch.spec.JobSpec` (no secrets in it).

        Args:
            limits: Batch size limits (default OpenAI's).

        Returns:
            The spec; its ``base_url`` is this block's, else the credentials'.

        Raises:
            pydantic.ValidationError: A field is not valid (empty prompt, reserved parameter...).
        """
        base_url = self.base_url or (self.credentials.base_url if self.credentials is not None else None)
        return JobSpec(
            prompt=self.prompt,
            system=self.system,
            model=self.model,
            model_column=self.model_column,
            image_columns=self.image_columns,
            allow_missing_images=self.allow_missing_images,
            params=self.params,
            provider=self.provider,
            base_url=base_url,
            id_column=self.id_column,
            response_schema=self.response_schema,
            limits=limits or BatchLimits(),
        )


#: Either provider's credentials block.
ProviderCredentials = OpenAIBatchCredentials | AnthropicBatchCredentials | GeminiBatchCredentials


def check_credentials_fit(credentials: ProviderCredentials, provider: str) -> None:
    """Refuse to use one provider's credentials block for another real provider.

    Args:
        credentials: The block.
        provider: The real provider the key would be sent to.

    Raises:
        ConfigError: The block is another provider's (the message names both, never the key).
    """
    own = "anthropic" if isinstance(credentials, AnthropicBatchCredentials) else "openai"
    own = "gemini" if isinstance(credentials, GeminiBatchCredentials) else own
    if own != {"anthropic": "anthropic", "gemini": "gemini"}.get(provider, "openai"):
        right = {"anthropic": "Anthropic", "gemini": "Gemini"}.get(provider, "OpenAI")
        raise ConfigError(
            f"an {credentials.get_block_type_name()} block cannot be used with the {provider} provider "
            f"(its key is not sent there); use an LLM Batch {right} Credentials block"
        )


def _client(
    credentials: ProviderCredentials,
    target: ProviderTarget,
    limits: BatchLimits | None,
    endpoint: str | None,
    options: dict[str, Any],
) -> BatchProvider:
    """A new provider for ``target`` with the block's key (the simulator takes any block)."""
    if target.provider != "simulator":
        check_credentials_fit(credentials, target.provider)
    key = credentials.api_key.get_secret_value()
    return make_provider(target, api_key=key, limits=limits, endpoint=endpoint, **options)
