"""The options ``run`` and ``estimate`` share, the job they describe, and the helpers every command uses.

Nothing heavy is imported at the top: `--help`, `status` and `cache info` stay fast; each command
imports what it uses, and Prefect only when a run goes through a Prefect server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer

if TYPE_CHECKING:
    from ..spec import JobSpec

#: The providers of ``--provider`` (``prefect_llm_batch.spec.ProviderName``; a test keeps them equal).
PROVIDERS = ("simulator", "openai", "anthropic", "azure", "gemini", "local")

#: Defaults of the planning options (``prefect_llm_batch.spec``'s; a test keeps them equal).
DEFAULT_MAX_REQUESTS_PER_BATCH = 50_000
DEFAULT_MAX_BATCH_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_ERROR_RATE = 0.1
#: Defaults of ``--input-file-expiry`` and ``--output-expiry`` (``prefect_llm_batch.spec``'s; a test keeps
#: them equal): 7 and 30 days.
DEFAULT_INPUT_FILE_EXPIRY = 7 * 24 * 3600
DEFAULT_OUTPUT_EXPIRY = 30 * 24 * 3600

#: Help of the source argument of ``run`` and ``estimate``.
SOURCE_HELP = (
    "Table to enrich: .csv, .parquet, .jsonl, or a directory of Parquet parts; a path or fsspec URL."
)


StateDirOption = Annotated[
    str | None,
    typer.Option(help="Job state directory (default: PREFECT_LLM_BATCH_STATE_DIR or ~/.local/state)."),
]
# The options that decide the plan, shared by `run` and `estimate` so that an estimate is the plan
# `run` sends with the same options.
PromptOption = Annotated[
    str, typer.Option(help="Jinja2 template over the row's columns, e.g. 'Summarise: {{ text }}'.")
]
ModelOption = Annotated[str, typer.Option(help="Model name, e.g. gpt-4o-mini (or --model-column).")]
ModelColumnOption = Annotated[
    str | None,
    typer.Option(
        help="Column naming each row's model, instead of --model: one batch per model, and "
        "response_model says which answered (compare models: one row per item and model)."
    ),
]
SystemOption = Annotated[str | None, typer.Option(help="System prompt (also a template).")]
SchemaOption = Annotated[
    Path | None,
    typer.Option(help="JSON Schema file the answers must follow; each top-level property becomes a column."),
]
ColumnPrefixOption = Annotated[str, typer.Option(help="Prefix for the schema's typed columns.")]
IdColumnOption = Annotated[str | None, typer.Option(help="Unique, non-null column that identifies rows.")]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(help="Request parameter key=value (value parsed as JSON when it can be)."),
]
ProviderOption = Annotated[
    str,
    typer.Option(
        help="'simulator' (default: offline, free, made-up answers), 'local' (a real small model on this "
        "machine through llama.cpp, offline; `make install-local`), or a real provider: 'openai', "
        "'anthropic', 'azure' or 'gemini' (needs OPENAI_API_KEY / ANTHROPIC_API_KEY / AZURE_OPENAI_API_KEY "
        "/ GOOGLE_API_KEY or GEMINI_API_KEY, costs money, a batch can take 24 h; Gemini's 48 h)."
    ),
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        help="Base URL: OpenAI-compatible including /v1 (default OPENAI_BASE_URL); "
        "Anthropic without /v1 (default ANTHROPIC_BASE_URL); Gemini without a version "
        "(default GOOGLE_GEMINI_BASE_URL)."
    ),
]
LocalModelOption = Annotated[
    str | None,
    typer.Option(help="With --provider local: the GGUF model file to serve (default: the bundled SmolLM2)."),
]
SchemaStyleOption = Annotated[
    str | None,
    typer.Option(
        help="How --schema is sent: openai (response_format json_schema; the default) or json_object_schema "
        "(json_object plus schema, what llama.cpp servers take; the default of --provider local)."
    ),
]
LimitOption = Annotated[int | None, typer.Option(help="Only the first N rows (a trial run).")]
MaxRequestsOption = Annotated[int, typer.Option(help="Most requests per batch (OpenAI allows 50,000).")]
MaxBytesOption = Annotated[
    int, typer.Option(help="Largest batch input file, in bytes (OpenAI allows 200 MB).")
]
EndpointOption = Annotated[
    str,
    typer.Option(
        help="chat/completions (default), responses (OpenAI's Responses API), embeddings, or moderations "
        "(columns flagged and one score per category)."
    ),
]
AllowEmptyOption = Annotated[
    bool, typer.Option("--allow-empty", help="Send rows whose prompt renders empty (else an error).")
]
CacheSystemPromptOption = Annotated[
    bool,
    typer.Option(
        "--cache-system-prompt",
        help="Mark the system prompt cacheable (Anthropic prompt caching; one system prompt for all rows).",
    ),
]
ImageColumnOption = Annotated[
    list[str] | None,
    typer.Option(
        "--image-column",
        help="A column of images sent with each row's prompt (repeatable): http(s) URLs, paths (relative "
        "to SOURCE's directory), fsspec URLs, data: URLs or bytes; PNG, JPEG, GIF or WEBP.",
    ),
]
AllowMissingImagesOption = Annotated[
    bool,
    typer.Option(
        "--allow-missing-images", help="A null image cell sends the row without it (else an error)."
    ),
]
InvalidUtf8Option = Annotated[
    str,
    typer.Option(help="Text that is not UTF-8 in a CSV/JSONL source: error (default) or replace (U+FFFD)."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` (one line, red, on stderr) and return the exit to raise.

    Exit code 2 is a usage error (an option, a path, a key: fix the command), 1 anything else.
    """
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def parse_param(text: str) -> tuple[str, Any]:
    """Parse one ``--param key=value``: the value as JSON when it parses, else as a string.

    Examples:
        >>> parse_param("temperature=0.2"), parse_param("stop=[\\"\\\\n\\"]"), parse_param("user=ann")
        (('temperature', 0.2), ('stop', ['\\n']), ('user', 'ann'))
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"--param takes key=value, not {text!r}")
    if not value:
        raise typer.BadParameter(
            f"--param {key.strip()}= has no value; for an empty string write {key.strip()}='\"\"'"
        )
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _read_schema(path: Path) -> dict[str, Any]:
    from ..errors import InputError

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the schema file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"the schema file {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"the schema file {path} must hold a JSON object")
    return value


def _one_line(exc: Exception) -> str:
    """A pydantic validation error as one line, with the CLI's names for the fields.

    Examples:
        >>> from pydantic import BaseModel, field_validator
        >>> class M(BaseModel):
        ...     params: dict[str, int]
        ...     @field_validator("params")
        ...     @classmethod
        ...     def no_model(cls, v: dict[str, int]) -> dict[str, int]:
        ...         raise ValueError("params may not set ['model']")
        >>> try:
        ...     M(params={"model": 1})
        ... except ValueError as exc:
        ...     _one_line(exc)
        "--param: params may not set ['model']"
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for error in errors():
        field = ".".join(str(p) for p in error.get("loc", ()))
        shown = {"params": "--param", "response_schema": "--schema"}.get(
            field, f"--{field.replace('_', '-')}"
        )
        parts.append(f"{shown}: {str(error.get('msg', '')).removeprefix('Value error, ')}")
    return "; ".join(parts) or str(exc)


def check_choices(provider: str, invalid_utf8: str, mode: str = "batch") -> None:
    """Refuse a ``--provider``, ``--mode`` or ``--invalid-utf8`` outside its choices.

    Raises:
        typer.BadParameter: The option, its choices and the value given.
    """
    if provider not in PROVIDERS:
        raise typer.BadParameter(
            f"--provider must be {', '.join(PROVIDERS[:-1])} or {PROVIDERS[-1]}, not {provider!r}"
        )
    if mode not in ("batch", "realtime", "auto"):
        raise typer.BadParameter(f"--mode must be batch, realtime or auto, not {mode!r}")
    if invalid_utf8 not in ("error", "replace"):
        raise typer.BadParameter(f"--invalid-utf8 must be error or replace, not {invalid_utf8!r}")


def build_spec(
    *,
    prompt: str,
    model: str,
    system: str | None,
    schema: Path | None,
    column_prefix: str,
    id_column: str | None,
    param: list[str] | None,
    provider: str,
    base_url: str | None,
    max_requests_per_batch: int,
    max_batch_bytes: int,
    allow_empty: bool,
    invalid_utf8: str,
    cache_system_prompt: bool = False,
    endpoint: str = "chat/completions",
    model_column: str | None = None,
    image_columns: list[str] | None = None,
    allow_missing_images: bool = False,
) -> JobSpec:
    """The job the options describe: ``run`` and ``estimate`` build it here, so that the estimate
    plans exactly what ``run`` sends.

    Raises:
        typer.Exit: A bad option (code 2) or schema file (code 1), reported in one line.
    """
    from ..errors import LLMBatchError
    from ..schemas import ResponseSchema
    from ..spec import BatchLimits, JobSpec, endpoint_path

    params = dict(parse_param(p) for p in param or [])
    try:
        path = endpoint_path(endpoint)
    except ValueError as exc:
        raise fail(f"--{exc}", 2) from None
    try:
        response_format = _read_schema(schema) if schema is not None else None
        return JobSpec(
            prompt=prompt,
            system=system,
            model=model,
            params=params,
            id_column=id_column,
            response_schema=ResponseSchema(response_format).schema if response_format is not None else None,
            column_prefix=column_prefix,
            provider=cast(Any, provider),
            base_url=base_url,
            limits=BatchLimits(
                max_requests_per_batch=max_requests_per_batch, max_batch_bytes=max_batch_bytes
            ),
            allow_empty=allow_empty,
            invalid_utf8=cast(Literal["error", "replace"], invalid_utf8),
            cache_system_prompt=cache_system_prompt,
            endpoint=cast(Any, path),
            model_column=model_column,
            image_columns=image_columns or [],
            allow_missing_images=allow_missing_images,
        )
    except LLMBatchError as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:  # pydantic validation of the options
        raise fail(_one_line(exc), 2) from None


def before_work() -> None:
    """What a command that reads tables does first (see :mod:`prefect_llm_batch.memory`); the
    quick commands skip it (it imports numpy and pyarrow)."""
    from ..memory import prefer_small_pages

    prefer_small_pages()


def resolve_state_dir(state_dir: str | None) -> str:
    """The ``--state-dir`` given, else the default (``PREFECT_LLM_BATCH_STATE_DIR`` or ~/.local/state)."""
    from ..store import default_state_dir

    return state_dir or default_state_dir()
