"""The job as data: what to ask, of which model, through which provider, under which limits.

Everything here is plain pydantic, with no I/O, so a job can be built, validated, hashed and
shown in the Prefect UI without touching the network.

Examples:
    >>> spec = JobSpec(prompt="Classify: {{ review }}", model="gpt-4o-mini")
    >>> spec.provider, spec.endpoint, spec.limits.max_requests_per_batch
    ('simulator', '/v1/chat/completions', 50000)
    >>> ErrorKind.BATCH_EXPIRED.retryable, ErrorKind.AUTH.retryable
    (True, False)
"""

from __future__ import annotations

import enum
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .errors import ConfigError

#: Bump when the request-key encoding changes; old cache entries then stop matching.
KEY_VERSION = 1

#: Provider names understood by this version. ``simulator`` is the bundled fake OpenAI server,
#: started for the run: no network, no key, no cost, and answers that are not a model's.
ProviderName = Literal["simulator", "openai", "anthropic", "azure", "gemini", "local"]

#: How a chat request asks for an answer following a JSON Schema (``response_format``):
#: ``openai`` sends ``{"type": "json_schema", "json_schema": {...}}`` (OpenAI, vLLM, Ollama);
#: ``json_object_schema`` sends ``{"type": "json_object", "schema": {...}}``, the shape llama.cpp's
#: servers take (they answer ``json_schema`` with HTTP 500). The ``local`` provider uses the latter.
SchemaStyle = Literal["openai", "json_object_schema"]

#: Base URL written into the request keys of simulator jobs, whatever port the simulator used.
SIMULATOR_KEY_BASE_URL = "simulator://local/v1"

#: Environment variables holding each real provider's key (as the official SDKs read them).
API_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "azure": "AZURE_OPENAI_API_KEY"}
#: Gemini: Google's SDK reads ``GOOGLE_API_KEY`` first, then ``GEMINI_API_KEY``.
API_KEY_ENV["gemini"] = "GOOGLE_API_KEY"
GEMINI_KEY_ENVS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")


def key_env_names(provider: str) -> tuple[str, ...]:
    """The environment variables a provider's key is read from, in order (none: no key needed).

    Examples:
        >>> key_env_names("gemini"), key_env_names("openai"), key_env_names("simulator")
        (('GOOGLE_API_KEY', 'GEMINI_API_KEY'), ('OPENAI_API_KEY',), ())
    """
    if provider == "gemini":
        return GEMINI_KEY_ENVS
    env = API_KEY_ENV.get(provider)
    return (env,) if env else ()


#: Endpoints (the ``endpoint`` of a batch and the ``url`` of its lines); the one definition.
#: How every batch line this package writes starts (the encoder puts ``custom_id`` first):
#: providers that rename the key on the wire (Gemini's ``key``) rely on it.
ID_HEAD = b'{"custom_id":"'
CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
#: OpenAI's Responses endpoint (bodies with ``input`` and ``instructions``; answers are Response objects).
RESPONSES_ENDPOINT = "/v1/responses"
#: OpenAI's moderations endpoint (bodies ``{"model", "input"}``; answers become typed score columns).
MODERATIONS_ENDPOINT = "/v1/moderations"
#: Anthropic's Messages endpoint (message batches carry their requests' bodies without a URL).
MESSAGES_ENDPOINT = "/v1/messages"

#: The endpoints a job can target, by the short names ``--endpoint`` and ``enrich_table`` take.
ENDPOINT_NAMES: dict[str, str] = {
    "chat/completions": CHAT_ENDPOINT,
    "embeddings": EMBEDDINGS_ENDPOINT,
    "responses": RESPONSES_ENDPOINT,
    "moderations": MODERATIONS_ENDPOINT,
}


def endpoint_path(name: str) -> str:
    """The endpoint path of a short endpoint name (a path is returned as it is).

    Raises:
        ValueError: Not one of :data:`ENDPOINT_NAMES`; the message lists them.

    Examples:
        >>> endpoint_path("responses"), endpoint_path("/v1/moderations")
        ('/v1/responses', '/v1/moderations')
    """
    if name in ENDPOINT_NAMES.values():
        return name
    if name not in ENDPOINT_NAMES:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINT_NAMES)}, not {name!r}")
    return ENDPOINT_NAMES[name]


#: OpenAI documents these per batch input file.
OPENAI_MAX_REQUESTS_PER_BATCH = 50_000
OPENAI_MAX_BATCH_BYTES = 200 * 1024 * 1024

#: Bounds of OpenAI's ``expires_after`` (Files API) and ``output_expires_after`` (Batch API), in seconds.
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 2_592_000
#: Default life of an uploaded batch input file at the provider: 7 days (a batch runs 24 h at most;
#: the rest leaves room for resuming a job). Inputs are still deleted once collected.
DEFAULT_INPUT_FILE_EXPIRY = 7 * 24 * 3600
#: Default life of a batch's output and error files at the provider: 30 days (OpenAI's own default).
DEFAULT_OUTPUT_EXPIRY = 30 * 24 * 3600

#: Default share of rows allowed to fail before the flow run is marked failed.
DEFAULT_MAX_ERROR_RATE = 0.1


class ErrorKind(str, enum.Enum):
    """Why a row has no (good) answer. One fixed vocabulary; each kind is retryable or not.

    =======================  =========  ==================================================
    kind                     retryable  meaning
    =======================  =========  ==================================================
    ``invalid_request``      no         the provider rejected the request (HTTP 400/404/422)
    ``auth``                 no         HTTP 401/403
    ``insufficient_quota``   no         the account has no credit left
    ``rate_limited``         yes        HTTP 429 for the request
    ``server_error``         yes        HTTP 5xx or 408/409 for the request
    ``batch_expired``        yes        the batch window ended before the request ran
    ``batch_cancelled``      yes        the batch was cancelled before the request ran
    ``request_timeout``      yes        the provider timed the request out
    ``missing``              yes        the provider returned no (readable) line for the request
    ``conflicting_results``  yes        the provider returned lines with different answers for the
                                        request; none is used, nor cached (sent again, it may get one)
    ``parse_error``          no         the answer could not be parsed (e.g. invalid JSON)
    ``schema_violation``     no         the answer is JSON but does not fit the response schema
    ``refusal``              no         the model refused (``message.refusal``)
    ``content_filter``       no         the answer was stopped by a content filter
    ``length``               no         the answer was cut at ``max_tokens`` (text kept)
    =======================  =========  ==================================================
    """

    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    BATCH_EXPIRED = "batch_expired"
    BATCH_CANCELLED = "batch_cancelled"
    REQUEST_TIMEOUT = "request_timeout"
    MISSING = "missing"
    CONFLICTING_RESULTS = "conflicting_results"
    PARSE_ERROR = "parse_error"
    SCHEMA_VIOLATION = "schema_violation"
    REFUSAL = "refusal"
    CONTENT_FILTER = "content_filter"
    LENGTH = "length"

    @property
    def retryable(self) -> bool:
        """True when sending the same request again may give an answer."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.BATCH_EXPIRED,
        ErrorKind.BATCH_CANCELLED,
        ErrorKind.REQUEST_TIMEOUT,
        ErrorKind.MISSING,
        ErrorKind.CONFLICTING_RESULTS,
    }
)


def without_credentials(url: str) -> str:
    """``url`` without its userinfo (``user:password@``), otherwise as given: for messages.

    Examples:
        >>> without_credentials("https://me:pw@gw.example/v1?x=1")
        'https://gw.example/v1?x=1'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{tail}"


def refuse_credentials(url: str, provider: str, where: str = "base_url") -> str:
    """Return ``url``, or refuse it when it holds credentials (``https://user:password@host/v1``).

    Credentials in a URL would be stored with the job (its state files, Prefect's records) and
    shown wherever the URL is, and httpx would send them as Basic auth *instead of* the
    provider key. Keys go in the provider's environment variable or a credentials block.

    Args:
        url: A base URL.
        provider: The provider it is for (names its key's variable in the message).
        where: Where the URL came from (``base_url``, ``OPENAI_BASE_URL``...), for the message.

    Raises:
        ConfigError: The URL holds a user name or password; the message shows the URL without them.

    Examples:
        >>> refuse_credentials("https://gw.example/v1", "openai")
        'https://gw.example/v1'
        >>> try:
        ...     refuse_credentials("https://me:pw@gw.example/v1", "openai")
        ... except ConfigError as error:
        ...     print(str(error)[:60])
        base_url 'https://gw.example/v1' holds credentials (user:pas
    """
    try:
        parts = urlsplit(url)
        found = parts.username is not None or parts.password is not None
    except ValueError:
        found = "@" in url.partition("://")[2].partition("/")[0]
    if not found:
        return url
    env = API_KEY_ENV.get(provider)
    raise ConfigError(
        f"{where} {without_credentials(url)!r} holds credentials (user:password@ before the host); "
        "they would be stored with the job and shown in its logs, and sent instead of the API key. "
        "Remove them from the URL and pass the key through "
        + (f"{env} or a credentials block" if env else "a credentials block")
        + " (nothing was sent)"
    )


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_base_url(url: str) -> str:
    """Return the canonical spelling of a base URL, as used in request keys.

    Lower-cases scheme and host, drops user info, default ports, query, fragment and trailing
    slashes. User info is dropped so credentials embedded in a URL never reach keys or files.

    Args:
        url: A base URL such as ``https://api.openai.com/v1/``.

    Returns:
        The normalised URL.

    Examples:
        >>> normalise_base_url("HTTPS://user:pw@Api.OpenAI.com:443/v1/")
        'https://api.openai.com/v1'
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    netloc = host
    if parts.port is not None and _DEFAULT_PORTS.get(scheme) != parts.port:
        netloc = f"{host}:{parts.port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, "", ""))


class BatchLimits(BaseModel):
    """How big one provider batch may get. Defaults are OpenAI's documented limits.

    Examples:
        >>> BatchLimits(max_requests_per_batch=2).max_batch_bytes
        209715200
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_requests_per_batch: int = Field(OPENAI_MAX_REQUESTS_PER_BATCH, ge=1, le=OPENAI_MAX_REQUESTS_PER_BATCH)
    max_batch_bytes: int = Field(OPENAI_MAX_BATCH_BYTES, ge=1024, le=OPENAI_MAX_BATCH_BYTES)


class JobSpec(BaseModel):
    """One enrichment job: a prompt template over a table's columns, a model, and where to send it.

    Attributes:
        prompt: Jinja2 template rendered once per row; the row's columns are its variables
            (``{{ review }}``), and ``row`` holds them all (``{{ row["odd name"] }}``).
        system: Optional system prompt, also a template over the row.
        model: Model name (for Azure: the deployment name); leave it empty with ``model_column``.
        model_column: Column naming each row's model (instead of ``model``): each row is sent to
            the model in its cell, in batches of one model each, and ``response_model`` says which
            answered. A null or empty cell is an error naming the row, before anything is sent.
            To ask several models the same prompt, give the table one row per (item, model).
        params: Extra body parameters passed through as given (``temperature``, ``max_tokens``...).
        provider: Where requests go: ``simulator`` (default; the bundled offline fake, which
            costs nothing and answers with made-up text) or ``openai`` (the real OpenAI Batch API, or
            any OpenAI-compatible service through ``base_url``; needs a key and costs money).
        base_url: API base URL including ``/v1`` (OpenAI convention); ``None`` reads
            ``OPENAI_BASE_URL`` or uses the provider's default. It may not hold credentials
            (``https://user:password@host``): keys go in the environment or a credentials block.
        endpoint: Endpoint every request of the job goes to.
        id_column: Optional column that identifies rows; must be unique and non-null when given.
        response_schema: Optional JSON Schema (an object) the answers must follow; each top-level
            property becomes a typed column. Build it with
            :meth:`prefect_llm_batch.schemas.ResponseSchema.from_user` from a pydantic model.
        column_prefix: Prefix for the typed answer columns (default none).
        limits: Batch size limits.
        allow_empty: Send rows whose prompt renders empty or only whitespace (by default they are
            an error naming the rows, before anything is sent).
        invalid_utf8: Text of a CSV or JSON Lines source that is not valid UTF-8: ``"error"``
            (default; names the column and the first bad row) or ``"replace"`` (bad bytes become
            U+FFFD).
        cache_system_prompt: Mark the system prompt cacheable (Anthropic prompt caching: the
            system block gets ``cache_control: {"type": "ephemeral"}``); worth it when every row
            shares one system prompt. Cache reads and writes count in ``response_input_tokens``.
        image_columns: Columns whose cells are images to send with each row's prompt (after its
            text, in this order): ``http(s)`` URLs (passed as they are, never fetched), local paths
            or fsspec URLs (relative paths: relative to the source table's directory), ``data:``
            URLs, or bytes (a binary column). Bytes must be PNG, JPEG, GIF or WEBP and go as base64,
            so the request key covers them (for a URL: the URL string). See
            :mod:`prefect_llm_batch.jobs.images`.
        allow_missing_images: A null cell of an image column means no image from it for that row
            (by default it is an error naming the row and column, before anything is sent).

    Examples:
        >>> JobSpec(prompt="{{ a }}", model="m", params={"temperature": 0}).params
        {'temperature': 0}
        >>> JobSpec(prompt="  ", model="m")
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for JobSpec
        prompt
          Value error, the prompt template is empty [type=value_error, input_value='  ', input_type=str]
        ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    system: str | None = None
    model: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    provider: ProviderName = "simulator"
    base_url: str | None = None
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations"] = (
        "/v1/chat/completions"
    )
    id_column: str | None = None
    response_schema: dict[str, Any] | None = None
    column_prefix: str = ""
    limits: BatchLimits = Field(default_factory=BatchLimits)
    allow_empty: bool = False
    invalid_utf8: Literal["error", "replace"] = "error"
    cache_system_prompt: bool = False
    model_column: str | None = Field(None, min_length=1)
    image_columns: list[str] = Field(default_factory=list)
    allow_missing_images: bool = False

    @model_validator(mode="after")
    def _one_model_source(self) -> JobSpec:
        if not self.model and self.model_column is None:
            raise ValueError("a model is needed: give model (one for every row) or model_column")
        if self.model and self.model_column is not None:
            raise ValueError(
                f"give model ({self.model!r}) or model_column ({self.model_column!r}), not both: "
                "with model_column each row names its model"
            )
        return self

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt template is empty")
        return value

    @field_validator("params")
    @classmethod
    def _params_not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = {"model", "messages", "stream", "response_format"} & set(value)
        if reserved:
            raise ValueError(
                f"params may not set {sorted(reserved)}: model, messages and the response format come "
                "from the job (use response_schema), and batch requests cannot stream"
            )
        return value

    @field_validator("image_columns")
    @classmethod
    def _image_columns_named_once(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated or not all(value):
            raise ValueError(f"image_columns must name each column once: {value!r}")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url_without_credentials(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else refuse_credentials(value, str(info.data.get("provider")))


class ProviderTarget(BaseModel):
    """Where a job's HTTP goes, and how its request keys name the provider (no secrets).

    Attributes:
        provider: The provider identity in request keys.
        base_url: Where HTTP requests go (includes ``/v1``).
        key_base_url: The base URL written into request keys (the simulator uses a fixed one; the
            local provider one naming its model file's digest).
        schema_style: How a response schema is sent (:data:`SchemaStyle`): a property of the
            server, not of the job. It changes the request bodies, and so their keys.

    Neither URL may hold credentials (``user:password@``): the target is stored with detached jobs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: ProviderName
    base_url: str
    key_base_url: str
    schema_style: SchemaStyle = "openai"

    @field_validator("base_url", "key_base_url")
    @classmethod
    def _without_credentials(cls, value: str, info: ValidationInfo) -> str:
        return refuse_credentials(value, str(info.data.get("provider")), info.field_name or "base_url")


#: What to do with the response cache: ``use`` it, ``refresh`` it (send everything, store the
#: answers), or leave it ``off`` (neither read nor write).
CacheMode = Literal["use", "refresh", "off"]


class RunOptions(BaseModel):
    """How a job runs (not what it asks): waiting, retrying, limits on what is in flight.

    Attributes:
        poll_interval: Seconds between status checks (providers advise 30-60 s).
        max_attempts: Rounds a request is sent in at most: rows whose error is retryable
            (``rate_limited``, ``server_error``, ``batch_expired``, ``batch_cancelled`` when the user
            did not cancel, ``request_timeout``, ``missing``, ``conflicting_results``) go into
            follow-up batches.
        retry_backoff: Seconds to wait before the second round; doubles for each further round.
        cache: Response cache mode.
        max_in_flight_batches: Most batches of this job running at once (None: no limit).
        max_enqueued_tokens: Most estimated prompt tokens of this job enqueued at once (None: no
            limit). Tokens are estimated as UTF-8 bytes of the request body / 4 (tokenizer files
            are not available offline); keep a margin below the provider's limit.
        max_wait: Seconds a batch may take from its creation before it is cancelled; its unrun
            requests are then retried in the next round (None: wait for the provider's own expiry).
        keep_input_files: Keep uploaded batch input files after their batch has ended.
        input_file_expiry: Seconds after its upload the provider deletes a batch input file by
            itself (``expires_after``, anchored at its creation; 3600 to 2592000; None: the
            provider's default, 30 days at OpenAI), so an abandoned job does not fill the
            organisation's file storage. Default 7 days.
        output_expiry: Seconds after their creation the provider deletes a batch's output and error
            files (``output_expires_after``; 3600 to 2592000; None: the provider's default). Default
            30 days. Providers without these fields (Anthropic) ignore both.
        max_cost_usd: The most the whole job may cost in USD, counting every batch it sent, earlier
            rounds and retries: a retry round that would cross it is not sent (its rows keep their
            retryable errors and the summary says why). None: no limit.
        prices: USD per 1M batch tokens ``{"model-prefix": (input, output)}`` over the built-in
            table, for ``max_cost_usd``.

    Examples:
        >>> RunOptions().max_attempts, RunOptions().cache
        (3, 'use')
        >>> RunOptions().input_file_expiry, RunOptions().output_expiry
        (604800, 2592000)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    poll_interval: float = Field(30.0, ge=0)
    max_attempts: int = Field(3, ge=1, le=20)
    retry_backoff: float = Field(60.0, ge=0)
    cache: CacheMode = "use"
    max_in_flight_batches: int | None = Field(None, ge=1)
    max_enqueued_tokens: int | None = Field(None, ge=1)
    max_wait: float | None = Field(None, gt=0)
    keep_input_files: bool = False
    input_file_expiry: int | None = Field(
        DEFAULT_INPUT_FILE_EXPIRY, ge=MIN_EXPIRY_SECONDS, le=MAX_EXPIRY_SECONDS
    )
    output_expiry: int | None = Field(DEFAULT_OUTPUT_EXPIRY, ge=MIN_EXPIRY_SECONDS, le=MAX_EXPIRY_SECONDS)
    max_cost_usd: float | None = Field(None, ge=0)
    prices: dict[str, tuple[float, float]] | None = None

    @classmethod
    def for_provider(
        cls,
        provider: str,
        *,
        poll_interval: float | None = None,
        retry_backoff: float | None = None,
        **rest: Any,
    ) -> RunOptions:
        """Options with the provider's defaults where none is given: real providers poll every 30 s
        and wait 60 s before a retry round; the simulator, whose batches end in seconds, and the local
        model's server, 0.5 s and 0.

        Examples:
            >>> [RunOptions.for_provider(p).poll_interval for p in ("simulator", "openai")]
            [0.5, 30.0]
        """
        simulated = provider in ("simulator", "local")  # servers of this run: nothing to wait for
        return cls(
            poll_interval=poll_interval if poll_interval is not None else (0.5 if simulated else 30.0),
            retry_backoff=retry_backoff if retry_backoff is not None else (0.0 if simulated else 60.0),
            **rest,
        )
