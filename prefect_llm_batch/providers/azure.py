"""Azure OpenAI batch jobs: the OpenAI Batch API with Azure's URLs, auth header and line URLs.

Azure OpenAI speaks the OpenAI batch wire format (see :mod:`.openai`) with these differences,
all handled here:

* **URLs.** ``endpoint_url`` is the resource endpoint ``https://<resource>.openai.azure.com``
  (the ``AZURE_OPENAI_ENDPOINT`` convention). With an ``api_version`` (``OPENAI_API_VERSION``,
  e.g. ``2024-10-21``) calls go to ``{endpoint_url}/openai/files`` and ``/openai/batches`` and
  every call carries ``?api-version=...``. Without one, the newer v1 API is used:
  ``{endpoint_url}/openai/v1/files`` and ``/openai/v1/batches``, with no ``api-version``.
* **Auth.** The key is sent as ``api-key: <key>`` (``AZURE_OPENAI_API_KEY``), never as
  ``Authorization: Bearer``.
* **Lines.** Each line's ``url``, and the batch's ``endpoint`` at create, have no ``/v1``:
  ``/chat/completions`` (``/embeddings`` for embedding jobs). The body's ``model`` is the
  **deployment name**: the job's ``model`` value is sent as given, so set it to the name of a
  *Global Batch* (or *Data Zone Batch*) deployment, not to the underlying model name.
* **Statuses.** Some answers capitalise statuses (``Validating``); they are normalised
  (case, ``InProgress`` / ``in progress`` / ``in-progress`` spellings, ``canceled``). An
  unknown status is still an error.
* **Error files.** Successful jobs may carry a zero-byte error file; it yields no results.
* **Limits.** Azure takes 100,000 requests per file, but :class:`~prefect_llm_batch.spec.BatchLimits`
  caps at OpenAI's 50,000, so the OpenAI defaults are kept (chunks are merely smaller than needed).

Request keys use the job's endpoint (``/v1/chat/completions``), as for OpenAI, and a key base
URL of ``{endpoint_url}/openai`` (or ``.../openai/v1``), so answers cached from one service are
never served to another.

Examples:
    >>> p = AzureOpenAIBatchProvider(api_key="test-key", endpoint_url="https://res.openai.azure.com/",
    ...                              api_version="2024-10-21")
    >>> p.build_line("k1", {"model": "my-gpt-4o-batch"})
    {'custom_id': 'k1', 'method': 'POST', 'url': '/chat/completions', 'body': {'model': 'my-gpt-4o-batch'}}
    >>> p.key_base_url, p.endpoint, p.wire_endpoint
    ('https://res.openai.azure.com/openai', '/v1/chat/completions', '/chat/completions')
    >>> p.close()
    >>> azure_urls("https://RES.openai.azure.com", None)
    ('https://RES.openai.azure.com/openai/v1', 'https://res.openai.azure.com/openai/v1')
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

from ..errors import ConfigError, ProviderRejected
from ..spec import CHAT_ENDPOINT, BatchLimits, ProviderTarget, normalise_base_url, refuse_credentials
from .base import BatchInfo, BatchStatus
from .openai import OpenAIBatchProvider

#: Environment variable of the key (as the official SDK reads it).
KEY_ENV = "AZURE_OPENAI_API_KEY"
#: Environment variable of the resource endpoint ``https://<resource>.openai.azure.com``.
ENDPOINT_ENV = "AZURE_OPENAI_ENDPOINT"
#: Environment variable of the API version (``2024-10-21``...); unset selects the v1 API.
API_VERSION_ENV = "OPENAI_API_VERSION"
#: ``api_version`` value that explicitly selects the v1 API (``/openai/v1``, no ``api-version``).
V1 = "v1"

_STATUSES = {s.value: s for s in BatchStatus}
#: Spelling variants that mean the same status (US spellings).
_STATUS_ALIASES = {"canceled": BatchStatus.CANCELLED, "canceling": BatchStatus.CANCELLING}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\s\-]+")
#: A trailing ``/openai`` or ``/openai/v1`` someone may have included in the endpoint.
_OPENAI_SUFFIX = re.compile(r"/openai(/v1)?$", re.IGNORECASE)


def _resource_root(endpoint_url: str) -> str:
    """The resource endpoint without trailing slashes, query, or a trailing ``/openai[/v1]``."""
    parts = urlsplit(endpoint_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"the Azure OpenAI endpoint must be an http(s) URL such as https://<resource>.openai.azure.com "
            f"(set {ENDPOINT_ENV}); got {normalise_base_url(endpoint_url)!r}"
        )
    path = _OPENAI_SUFFIX.sub("", parts.path.rstrip("/")).rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def azure_urls(endpoint_url: str, api_version: str | None) -> tuple[str, str]:
    """Where requests go, and the base URL of request keys, for a resource endpoint.

    Args:
        endpoint_url: The resource endpoint ``https://<resource>.openai.azure.com`` (a trailing
            ``/openai`` or ``/openai/v1`` is tolerated).
        api_version: The API version; ``None``, ``""`` or ``"v1"`` select the v1 API.

    Returns:
        ``(base_url, key_base_url)``: ``{endpoint}/openai`` or ``{endpoint}/openai/v1``; the
        key one is normalised (lower-case host, no credentials).

    Raises:
        ConfigError: The endpoint is not an http(s) URL.

    Examples:
        >>> azure_urls("https://res.openai.azure.com/openai/", "2024-10-21")
        ('https://res.openai.azure.com/openai', 'https://res.openai.azure.com/openai')
    """
    root = _resource_root(endpoint_url)
    base = f"{root}/openai" if _versioned(api_version) else f"{root}/openai/v1"
    return base, normalise_base_url(base)


def _versioned(api_version: str | None) -> bool:
    return bool(api_version) and api_version != V1


def azure_target(endpoint_url: str | None = None, api_version: str | None = None) -> ProviderTarget:
    """The target of an Azure OpenAI resource, read as the official SDK does.

    ``endpoint_url``, else ``AZURE_OPENAI_ENDPOINT``; ``api_version``, else ``OPENAI_API_VERSION``,
    else the v1 API (pass ``api_version="v1"`` to force it when ``OPENAI_API_VERSION`` is set).
    The target's ``base_url`` is ``{endpoint}/openai?api-version=...`` or ``{endpoint}/openai/v1``;
    :meth:`AzureOpenAIBatchProvider.from_target` reads it back.

    Raises:
        ConfigError: No endpoint is given or set in ``AZURE_OPENAI_ENDPOINT``.
    """
    url = endpoint_url or os.environ.get(ENDPOINT_ENV) or ""
    if not url.strip():
        raise ConfigError(
            f"the azure provider needs the resource endpoint: set {ENDPOINT_ENV} "
            "(https://<resource>.openai.azure.com)"
        )
    refuse_credentials(url, "azure", "base_url" if endpoint_url else ENDPOINT_ENV)
    version = api_version or os.environ.get(API_VERSION_ENV) or None
    base, key_base = azure_urls(url, version)
    if _versioned(version):
        base = f"{base}?api-version={version}"
    # Validated at run time against spec.ProviderName, which must list "azure"; model_validate
    # type-checks whether or not it does yet (no cast or type: ignore to go stale).
    return ProviderTarget.model_validate({"provider": "azure", "base_url": base, "key_base_url": key_base})


def split_target_base_url(base_url: str) -> tuple[str, str | None]:
    """Read ``(endpoint_url, api_version)`` back from an :func:`azure_target` base URL.

    Examples:
        >>> split_target_base_url("https://res.openai.azure.com/openai?api-version=2024-10-21")
        ('https://res.openai.azure.com', '2024-10-21')
        >>> split_target_base_url("https://res.openai.azure.com/openai/v1")
        ('https://res.openai.azure.com', None)
    """
    parts = urlsplit(base_url)
    versions = parse_qs(parts.query).get("api-version")
    return _resource_root(base_url), (versions[0] if versions else None)


def _wire_endpoint(endpoint: str) -> str:
    """The job endpoint as Azure's lines and create want it: no ``/v1`` prefix."""
    return endpoint.removeprefix("/v1")


class AzureOpenAIBatchProvider(OpenAIBatchProvider):
    """Azure OpenAI batch jobs (Global Batch deployments).

    Args:
        api_key: The resource key (sent as ``api-key``; ``AZURE_OPENAI_API_KEY``). Never logged or stored.
        endpoint_url: The resource endpoint ``https://<resource>.openai.azure.com``
            (``AZURE_OPENAI_ENDPOINT``).
        api_version: The API version (``OPENAI_API_VERSION``, e.g. ``2024-10-21``), sent as the
            ``api-version`` query parameter of every call; ``None`` (or ``"v1"``) uses the v1 API
            at ``/openai/v1`` without one.
        name: Provider identity in request keys.
        key_base_url: Base URL written into request keys (default ``{endpoint_url}/openai``, plus
            ``/v1`` for the v1 API).
        limits: Batch size limits (Azure allows 100,000 requests per file, but ``BatchLimits``
            caps at 50,000; the defaults are kept).
        endpoint: The job's endpoint as written in request keys (``/v1/chat/completions`` or
            ``/v1/embeddings``); lines and the create call use it without ``/v1``.
        **options: Retries, backoff, timeouts, transport and sleep, as for
            :class:`~prefect_llm_batch.providers.openai.OpenAIBatchProvider`.

    Raises:
        ConfigError: No key, no endpoint, an endpoint that is not an http(s) URL, or an unknown endpoint.
    """

    #: Azure's Files and Batch APIs document their own expiry bounds, not verified here: the job
    #: sends no ``expires_after`` / ``output_expires_after`` to Azure (input files are still deleted
    #: once collected).
    expires_remote_files = False

    def __init__(
        self,
        *,
        api_key: str,
        endpoint_url: str,
        api_version: str | None,
        name: str = "azure",
        key_base_url: str | None = None,
        limits: BatchLimits | None = None,
        endpoint: str = CHAT_ENDPOINT,
        **options: Any,
    ) -> None:
        if not api_key:
            raise ConfigError(f"no API key: set {KEY_ENV} or pass a credentials block")
        if not endpoint_url or not endpoint_url.strip():
            raise ConfigError(
                f"no Azure OpenAI endpoint: set {ENDPOINT_ENV} (https://<resource>.openai.azure.com)"
            )
        base_url, default_key_base = azure_urls(endpoint_url, api_version)
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            name=name,
            endpoint=endpoint,
            key_base_url=key_base_url or default_key_base,
            limits=limits,
            **options,
        )
        self._api_version = api_version if _versioned(api_version) else None
        # Azure authenticates with ``api-key``; replacing the headers drops the parent's Bearer one.
        self._client.headers = httpx.Headers({"api-key": api_key})
        if self._api_version:
            self._client.params = httpx.QueryParams({"api-version": self._api_version})

    @classmethod
    def from_target(
        cls,
        target: ProviderTarget,
        *,
        api_key: str,
        limits: BatchLimits | None = None,
        endpoint: str | None = None,
        **options: Any,
    ) -> AzureOpenAIBatchProvider:
        """Build a provider for an :func:`azure_target` (its ``base_url`` carries the api-version).

        Args:
            target: The target.
            api_key: The key.
            limits: Batch size limits.
            endpoint: The job's endpoint (default chat completions).
            **options: Retries, timeouts, transport (as for the constructor).
        """
        endpoint_url, api_version = split_target_base_url(target.base_url)
        return cls(
            api_key=api_key,
            endpoint_url=endpoint_url,
            api_version=api_version,
            name=target.provider,
            key_base_url=target.key_base_url,
            limits=limits,
            endpoint=endpoint or CHAT_ENDPOINT,
            **options,
        )

    @property
    def api_version(self) -> str | None:
        """The ``api-version`` sent with every call, or None for the v1 API."""
        return self._api_version

    @property
    def wire_endpoint(self) -> str:
        """The endpoint as written in lines and at create (``/chat/completions``)."""
        return _wire_endpoint(self.endpoint)

    @staticmethod
    def batch_info(raw: dict[str, Any]) -> BatchInfo:
        """Map a batch object to :class:`BatchInfo`, normalising Azure's status spellings.

        Examples:
            >>> AzureOpenAIBatchProvider.batch_info({"id": "b", "status": "InProgress"}).status.value
            'in_progress'
            >>> AzureOpenAIBatchProvider.batch_info({"id": "b", "status": "Validating"}).raw_status
            'Validating'
        """
        raw_status = str(raw.get("status"))
        key = _SEPARATORS.sub("_", _CAMEL.sub("_", raw_status.strip())).lower()
        status = _STATUSES.get(key) or _STATUS_ALIASES.get(key)
        if status is None:
            raise ProviderRejected(
                f"batch {raw.get('id')} has the unknown status {raw_status!r}; refusing to guess"
            )
        info = OpenAIBatchProvider.batch_info({**raw, "status": status.value})
        info.raw_status = raw_status
        return info
