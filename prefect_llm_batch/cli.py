"""The ``prefect-llm-batch`` command.

Examples:
    Enrich a table against the bundled simulator (offline, free)::

        prefect-llm-batch run examples/reviews.csv out/reviews.parquet \\
            --prompt "Classify the sentiment of this review: {{ review }}" --model gpt-4o-mini

    The same against the real OpenAI Batch API (costs money; a batch can take up to 24 h)::

        OPENAI_API_KEY=... prefect-llm-batch run ... --provider openai
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import typer

if TYPE_CHECKING:
    from .spec import JobSpec

# Nothing heavy is imported at the top: `--help`, `status` and `cache info` stay fast; each command
# imports what it uses, and Prefect only when a run goes through a Prefect server.

#: The providers of ``--provider`` (``prefect_llm_batch.spec.ProviderName``; a test keeps them equal).
PROVIDERS = ("simulator", "openai", "anthropic", "azure")

#: Defaults of the planning options (``prefect_llm_batch.spec``'s; a test keeps them equal).
DEFAULT_MAX_REQUESTS_PER_BATCH = 50_000
DEFAULT_MAX_BATCH_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_ERROR_RATE = 0.1

#: Help of the source argument of ``run`` and ``estimate``.
SOURCE_HELP = (
    "Table to enrich: .csv, .parquet, .jsonl, or a directory of Parquet parts; a path or fsspec URL."
)

#: What makes a run a tracked Prefect flow run, printed after a run without Prefect.
TRACKED_HINT = (
    "ran without Prefect (no Prefect server configured); for a tracked flow run in the Prefect UI: "
    "`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("prefect-llm-batch")
        except PackageNotFoundError:  # running from a source tree that is not installed
            from . import __version__ as shown
        typer.echo(f"prefect-llm-batch {shown}")
        raise typer.Exit()


app = typer.Typer(
    name="prefect-llm-batch",
    help="Enrich tables with LLM answers through provider batch APIs, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: fast, and option names are never cut short
)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Enrich tables with LLM answers through provider batch APIs, as Prefect flows."""


StateDirOption = Annotated[
    str | None,
    typer.Option(help="Job state directory (default: PREFECT_LLM_BATCH_STATE_DIR or ~/.local/state)."),
]
# The options that decide the plan, shared by `run` and `estimate` so that an estimate is the plan
# `run` sends with the same options.
PromptOption = Annotated[
    str, typer.Option(help="Jinja2 template over the row's columns, e.g. 'Summarise: {{ text }}'.")
]
ModelOption = Annotated[str, typer.Option(help="Model name, e.g. gpt-4o-mini.")]
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
        help="'simulator' (default: offline, free, made-up answers), or a real provider: 'openai', "
        "'anthropic' or 'azure' (needs OPENAI_API_KEY / ANTHROPIC_API_KEY / AZURE_OPENAI_API_KEY, "
        "costs money, a batch can take 24 h)."
    ),
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        help="Base URL: OpenAI-compatible including /v1 (default OPENAI_BASE_URL); "
        "Anthropic without /v1 (default ANTHROPIC_BASE_URL)."
    ),
]
LimitOption = Annotated[int | None, typer.Option(help="Only the first N rows (a trial run).")]
MaxRequestsOption = Annotated[int, typer.Option(help="Most requests per batch (OpenAI allows 50,000).")]
MaxBytesOption = Annotated[
    int, typer.Option(help="Largest batch input file, in bytes (OpenAI allows 200 MB).")
]
AllowEmptyOption = Annotated[
    bool, typer.Option("--allow-empty", help="Send rows whose prompt renders empty (else an error).")
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
    from .errors import InputError

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


def _check_choices(provider: str, invalid_utf8: str, mode: str = "batch") -> None:
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
) -> JobSpec:
    """The job the options describe: ``run`` and ``estimate`` build it here, so that the estimate
    plans exactly what ``run`` sends.

    Raises:
        typer.Exit: A bad option (code 2) or schema file (code 1), reported in one line.
    """
    from .errors import LLMBatchError
    from .schemas import ResponseSchema
    from .spec import BatchLimits, JobSpec

    params = dict(parse_param(p) for p in param or [])
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
        )
    except LLMBatchError as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:  # pydantic validation of the options
        raise fail(_one_line(exc), 2) from None


def prefect_api_url() -> str | None:
    """The Prefect API this process would talk to, read without importing Prefect when it can be.

    In order: ``PREFECT_API_URL`` in the environment; Prefect's own settings when Prefect is
    imported already (a test harness, ``temporary_settings``); the active profile of
    ``profiles.toml`` (``PREFECT_PROFILES_PATH``, else ``$PREFECT_HOME/profiles.toml``, the
    profile named by ``PREFECT_PROFILE`` or the file's ``active``); ``[api] url`` of a
    ``prefect.toml`` in the working directory. None: no server is configured.
    """
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    if "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        return get_current_settings().api.url or None
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(profiles.read_text(encoding="utf-8"))
        name = os.environ.get("PREFECT_PROFILE") or data.get("active") or ""
        url = data.get("profiles", {}).get(name, {}).get("PREFECT_API_URL")
        if url:
            return str(url)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        data = tomllib.loads(Path("prefect.toml").read_text(encoding="utf-8"))
        url = data.get("api", {}).get("url")
        return str(url) if url else None
    except (OSError, ValueError, AttributeError):
        return None


def _before_work() -> None:
    """What a command that reads tables does first (see :mod:`prefect_llm_batch.memory`); the
    quick commands skip it (it imports numpy and pyarrow)."""
    from .memory import prefer_small_pages

    prefer_small_pages()


def _prefect_defaults() -> None:
    # The temporary local server needs more than the default 20 s on small machines.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")


def _log_to_stderr() -> None:
    """Show the library's INFO lines on stderr (a run without Prefect has no Prefect logger)."""
    import logging

    logger = logging.getLogger("prefect_llm_batch")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@app.command()
def run(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    output: Annotated[str, typer.Argument(help="Parquet file to write (path or fsspec URL).")],
    prompt: PromptOption,
    model: ModelOption,
    system: SystemOption = None,
    schema: SchemaOption = None,
    column_prefix: ColumnPrefixOption = "",
    id_column: IdColumnOption = None,
    param: ParamOption = None,
    provider: ProviderOption = "simulator",
    base_url: BaseUrlOption = None,
    state_dir: Annotated[
        str | None,
        typer.Option(help="Job state directory, any fsspec URL (default: PREFECT_LLM_BATCH_STATE_DIR)."),
    ] = None,
    limit: LimitOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the output if it exists.")] = False,
    max_requests_per_batch: MaxRequestsOption = DEFAULT_MAX_REQUESTS_PER_BATCH,
    max_batch_bytes: MaxBytesOption = DEFAULT_MAX_BATCH_BYTES,
    poll_interval: Annotated[
        float | None, typer.Option(help="Seconds between status checks (default 30; 0.5 for the simulator).")
    ] = None,
    max_error_rate: Annotated[
        float, typer.Option(help="Fail the run when more than this share of rows failed.")
    ] = DEFAULT_MAX_ERROR_RATE,
    max_attempts: Annotated[
        int, typer.Option(help="Rounds a request is sent in at most (rows with retryable errors are resent).")
    ] = 3,
    retry_backoff: Annotated[
        float | None,
        typer.Option(help="Seconds before the second round, doubling per round (default 60; 0 simulator)."),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the response cache.")
    ] = False,
    refresh_cache: Annotated[
        bool, typer.Option("--refresh-cache", help="Send every request again and store the new answers.")
    ] = False,
    max_in_flight_batches: Annotated[
        int | None, typer.Option(help="Most batches of this job running at once.")
    ] = None,
    max_enqueued_tokens: Annotated[
        int | None,
        typer.Option(help="Most estimated prompt tokens enqueued at once (estimate: body bytes / 4)."),
    ] = None,
    max_wait: Annotated[
        float | None,
        typer.Option(help="Seconds a batch may run before it is cancelled and its rows retried."),
    ] = None,
    keep_input_files: Annotated[
        bool, typer.Option(help="Keep uploaded batch input files after their batch ended.")
    ] = False,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="Refuse to send a job whose estimated batch cost is higher.")
    ] = None,
    detached: Annotated[
        bool,
        typer.Option(
            help="Submit the batches and return; `prefect-llm-batch collect` finishes the job later."
        ),
    ] = False,
    mode: Annotated[
        str,
        typer.Option(
            help="batch (default), realtime (request by request, for servers without a batch API) or auto "
            "(realtime for <= 100 requests or when the server has no batch API)."
        ),
    ] = "batch",
    realtime_concurrency: Annotated[int, typer.Option(help="Most realtime requests in flight.")] = 16,
    realtime_rpm: Annotated[
        float | None, typer.Option(help="Realtime requests per minute to keep under.")
    ] = None,
    realtime_tpm: Annotated[
        float | None, typer.Option(help="Realtime tokens per minute to keep under.")
    ] = None,
    allow_empty: AllowEmptyOption = False,
    invalid_utf8: InvalidUtf8Option = "error",
) -> None:
    """Enrich SOURCE with one answer per row and write OUTPUT (Parquet).

    With a Prefect server configured (PREFECT_API_URL, or a profile that sets it), the run is an
    `enrich-table` flow run shown in the Prefect UI; without one it runs the same job in this
    process, without Prefect, and says so.
    """
    _check_choices(provider, invalid_utf8, mode)
    _before_work()
    if no_cache and refresh_cache:
        raise typer.BadParameter("--no-cache and --refresh-cache exclude each other")
    spec = build_spec(
        prompt=prompt, model=model, system=system, schema=schema, column_prefix=column_prefix,
        id_column=id_column, param=param, provider=provider, base_url=base_url,
        max_requests_per_batch=max_requests_per_batch, max_batch_bytes=max_batch_bytes,
        allow_empty=allow_empty, invalid_utf8=invalid_utf8,
    )  # fmt: skip
    from .errors import CostLimitExceeded, LLMBatchError
    from .jobs import JobRef, JobSummary, preflight
    from .jobs.checks import check_before_start
    from .jobs.realtime import Mode

    root = _state_dir(state_dir)
    try:  # every check that needs no provider, before Prefect is imported
        check_before_start(
            source, output, root, where="cli", provider=provider, model=model, overwrite=overwrite,
            detached=detached, mode=mode, max_cost_usd=max_cost_usd,
        )  # fmt: skip
    except LLMBatchError as exc:
        raise fail(str(exc), 2) from None
    try:
        preflight(source, spec)
    except LLMBatchError as exc:
        raise fail(str(exc)) from None

    cache = "off" if no_cache else ("refresh" if refresh_cache else "use")
    realtime = {"concurrency": realtime_concurrency, "requests_per_minute": realtime_rpm,
                "tokens_per_minute": realtime_tpm}  # fmt: skip
    tracked = prefect_api_url() is not None
    try:
        if tracked and max_cost_usd is not None:  # the cap, before a flow run starts (no HTTP)
            from .jobs import check_cost

            check_cost(plan_estimate(source, spec, root, limit), max_cost_usd)
        if tracked:
            summary = _run_flow(
                source, output, spec, schema, provider, state_dir, limit, overwrite, poll_interval,
                max_error_rate, max_attempts, retry_backoff, cache, max_in_flight_batches,
                max_enqueued_tokens, max_wait, keep_input_files, max_cost_usd, detached, mode, realtime,
            )  # fmt: skip
        else:
            from .local import run_table
            from .spec import RunOptions

            options = RunOptions.for_provider(
                provider, poll_interval=poll_interval, retry_backoff=retry_backoff, max_attempts=max_attempts,
                cache=cast(Any, cache), max_in_flight_batches=max_in_flight_batches,
                max_enqueued_tokens=max_enqueued_tokens, max_wait=max_wait, keep_input_files=keep_input_files,
            )  # fmt: skip
            _log_to_stderr()
            summary = run_table(
                source, output, spec, options, state_dir=root, limit=limit, overwrite=overwrite,
                max_error_rate=max_error_rate, max_cost_usd=max_cost_usd, detached=detached,
                mode=cast(Mode, mode), realtime_limits=realtime,
                on_change=lambda p: typer.echo(f"  {p.describe()}", err=True), where="cli",
            )  # fmt: skip
    except CostLimitExceeded as exc:
        raise fail(str(exc), 2) from None
    except LLMBatchError as exc:
        raise fail(str(exc)) from None
    if isinstance(summary, JobRef):
        typer.echo(
            f"job {summary.job_id} submitted ({summary.chunks} batch(es)); run `prefect-llm-batch collect` "
            "(or the collect-jobs deployment) later to write the output"
        )
    else:
        assert isinstance(summary, JobSummary)
        print_summary(summary)
    if not tracked:
        typer.echo(TRACKED_HINT)


def _run_flow(
    source: str,
    output: str,
    spec: JobSpec,
    schema: Path | None,
    provider: str,
    state_dir: str | None,
    limit: int | None,
    overwrite: bool,
    poll_interval: float | None,
    max_error_rate: float,
    max_attempts: int,
    retry_backoff: float | None,
    cache: str,
    max_in_flight_batches: int | None,
    max_enqueued_tokens: int | None,
    max_wait: float | None,
    keep_input_files: bool,
    max_cost_usd: float | None,
    detached: bool,
    mode: str,
    realtime: dict[str, Any],
) -> Any:
    """Run the job as an ``enrich-table`` flow run (Prefect is imported here, and only here)."""
    _prefect_defaults()
    from .flows import enrich_table

    return enrich_table(
        source=source,
        output=output,
        prompt=spec.prompt,
        model=spec.model,
        system=spec.system,
        params=spec.params,
        response_format=json.dumps(spec.response_schema) if schema is not None else None,
        column_prefix=spec.column_prefix,
        provider=cast(Any, provider),
        base_url=spec.base_url,
        id_column=spec.id_column,
        state_dir=state_dir,
        limit=limit,
        overwrite=overwrite,
        max_requests_per_batch=spec.limits.max_requests_per_batch,
        max_batch_bytes=spec.limits.max_batch_bytes,
        poll_interval=poll_interval,
        max_error_rate=max_error_rate,
        max_attempts=max_attempts,
        retry_backoff=retry_backoff,
        cache=cast(Any, cache),
        max_in_flight_batches=max_in_flight_batches,
        max_enqueued_tokens=max_enqueued_tokens,
        max_wait=max_wait,
        keep_input_files=keep_input_files,
        max_cost_usd=max_cost_usd,
        detached=detached,
        mode=cast(Any, mode),
        realtime_concurrency=realtime["concurrency"],
        realtime_rpm=realtime["requests_per_minute"],
        realtime_tpm=realtime["tokens_per_minute"],
        allow_empty=spec.allow_empty,
        invalid_utf8=spec.invalid_utf8,
    )


def _submit(**options: Any) -> None:
    """Submit SOURCE's batches and return at once; `prefect-llm-batch collect` writes OUTPUT later.

    Takes the arguments and options of `run`: it is `run --detached`.
    """
    run(**options, detached=True)


_RUN = inspect.signature(run, eval_str=True)
_submit.__signature__ = _RUN.replace(  # type: ignore[attr-defined]
    parameters=[p for p in _RUN.parameters.values() if p.name != "detached"]
)
_submit.__annotations__ = {p.name: p.annotation for p in _submit.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command("submit")(_submit)


@app.command()
def collect(state_dir: StateDirOption = None) -> None:
    """Finish the jobs submitted with --detached whose batches have ended (never waits)."""
    _before_work()
    _prefect_defaults()
    from .errors import LLMBatchError
    from .flows import collect_jobs

    try:
        finished = collect_jobs(state_dir=state_dir)
    except LLMBatchError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for summary in finished:
        print_summary(summary)
    typer.echo(f"{len(finished)} job(s) finished")


def plan_estimate(
    source: str, spec: JobSpec, state_dir: str, limit: int | None, expected_output_tokens: int = 100
) -> Any:
    """Plan the job in the state directory, as ``run`` plans it, and estimate it (no HTTP, no key)."""
    from .jobs import estimate as estimate_job
    from .jobs import prepare
    from .providers import make_provider, target_for
    from .spec import SIMULATOR_KEY_BASE_URL, ProviderTarget

    if spec.provider == "simulator":  # the simulator's requests are keyed by this URL, whatever its port
        target = ProviderTarget(
            provider="simulator", base_url=SIMULATOR_KEY_BASE_URL, key_base_url=SIMULATOR_KEY_BASE_URL
        )
    else:
        target = target_for(spec.provider, spec.base_url)
    with make_provider(  # builds bodies only
        target, api_key="not-used-for-estimates", limits=spec.limits, endpoint=spec.endpoint
    ) as client:
        ref = prepare(source, spec, client, target, state_dir=state_dir, limit=limit)
    return estimate_job(ref, spec.params, expected_output_tokens=expected_output_tokens)


@app.command()
def estimate(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    prompt: PromptOption,
    model: ModelOption,
    system: SystemOption = None,
    schema: SchemaOption = None,
    column_prefix: ColumnPrefixOption = "",
    id_column: IdColumnOption = None,
    param: ParamOption = None,
    provider: ProviderOption = "simulator",
    base_url: BaseUrlOption = None,
    state_dir: StateDirOption = None,
    limit: LimitOption = None,
    max_requests_per_batch: MaxRequestsOption = DEFAULT_MAX_REQUESTS_PER_BATCH,
    max_batch_bytes: MaxBytesOption = DEFAULT_MAX_BATCH_BYTES,
    expected_output_tokens: Annotated[
        int, typer.Option(help="Output tokens assumed per request when no max_tokens param is set.")
    ] = 100,
    allow_empty: AllowEmptyOption = False,
    invalid_utf8: InvalidUtf8Option = "error",
) -> None:
    """Rows, unique requests, cache hits, estimated tokens and batch cost, before anything is sent.

    Nothing goes over the network and no key is needed: the job is planned in the state
    directory, as `run` with the same options plans it (that run reuses the plan).
    """
    _check_choices(provider, invalid_utf8)
    _before_work()
    spec = build_spec(
        prompt=prompt, model=model, system=system, schema=schema, column_prefix=column_prefix,
        id_column=id_column, param=param, provider=provider, base_url=base_url,
        max_requests_per_batch=max_requests_per_batch, max_batch_bytes=max_batch_bytes,
        allow_empty=allow_empty, invalid_utf8=invalid_utf8,
    )  # fmt: skip
    from .costs import BATCH_PRICES
    from .errors import LLMBatchError

    try:
        result = plan_estimate(source, spec, _state_dir(state_dir), limit, expected_output_tokens)
    except LLMBatchError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"job {result.job_id}: {result.describe()}")
    if result.cost_usd is None:
        typer.echo(
            f"known models: {', '.join(sorted(BATCH_PRICES))} (prices at batch rates, USD per 1M tokens)"
        )


def print_summary(summary: Any) -> None:
    """Print a one-screen summary of a finished job."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"job {summary.job_id}", show_header=False)
    table.add_row("output", summary.output)
    table.add_row("provider / model", f"{summary.provider} / {summary.model}")
    table.add_row("mode", f"{summary.mode} ({summary.mode_reason})" if summary.mode_reason else summary.mode)
    table.add_row(
        "rows",
        f"{summary.rows} ({summary.unique_requests} unique requests, "
        f"{summary.cached_requests} from the cache, {summary.rounds} round(s))",
    )
    table.add_row("answered", str(summary.ok_rows))
    errors = ", ".join(f"{k}: {v}" for k, v in summary.errors_by_kind.items()) or "none"
    table.add_row("errors", f"{summary.error_rows} ({errors})")
    if summary.unreadable_lines:
        table.add_row("unreadable result lines", f"{summary.unreadable_lines} (their rows were sent again)")
    table.add_row("batches", ", ".join(summary.batch_ids) or "none")
    table.add_row("tokens", f"{summary.input_tokens} in, {summary.output_tokens} out")
    table.add_row("state", summary.state_dir)
    console = Console()
    console.print(table)
    if summary.provider == "simulator":
        console.print("[yellow]These answers come from the bundled simulator, not from a model.[/yellow]")


def _state_dir(state_dir: str | None) -> str:
    from .store import default_state_dir

    return state_dir or default_state_dir()


def resolve_job_id(state_dir: str, prefix: str) -> str:
    """The job of ``state_dir`` whose id is ``prefix`` or starts with it.

    Raises:
        typer.Exit: Code 2 after one line: no such job, or the prefix fits several.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(f"{state_dir.rstrip('/')}/jobs")
    ids = (
        [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)] if fs.exists(root) else []
    )
    if prefix in ids:
        return prefix
    matches = sorted(i for i in ids if prefix and i.startswith(prefix))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise fail(f"no job {prefix} in {state_dir}", 2)
    raise fail(f"job id {prefix} is ambiguous in {state_dir}: {', '.join(matches)}; give more of it", 2)


@app.command()
def status(
    job_id: Annotated[
        str | None, typer.Argument(help="A job id, or its first characters (default: list the jobs).")
    ] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Show the jobs of a state directory, or one job's batches and progress (no HTTP)."""
    from rich.console import Console
    from rich.table import Table

    from .errors import StateError
    from .registry import list_jobs
    from .store import JobStore

    root = _state_dir(state_dir)
    console = Console()
    if job_id is None:
        table = Table("job", "created", "provider / model", "rows", "batches", "source")
        for record in list_jobs(root):
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created_at))
            table.add_row(
                record.job_id, created, f"{record.provider} / {record.model}", str(record.rows),
                str(len(record.chunks)), record.source,
            )  # fmt: skip
        console.print(table)
        return
    from .jobs import job_ref, progress

    store = JobStore(root, resolve_job_id(root, job_id))
    try:
        record = store.read_job()
        table = Table("chunk", "round", "requests", "batch", "status", "done", "collected")
        for plan in record.chunks:
            chunk = store.read_chunk(plan.chunk_id)
            done = f"{(chunk.completed or 0) + (chunk.failed or 0)}/{plan.requests}"
            table.add_row(
                str(plan.chunk_id), str(plan.round), str(plan.requests), chunk.batch_id or "-",
                chunk.status or "not submitted", done, "yes" if chunk.collected else "no",
            )  # fmt: skip
        described = progress(job_ref(record, root)).describe()
    except StateError as exc:  # a damaged or missing file: its name and the fix, no traceback
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    console.print(table)
    console.print(described)
    if store.is_cancelled():
        console.print("[yellow]cancelled by the user; run the job again to resume it[/yellow]")


@app.command()
def cancel(
    job_id: Annotated[
        str, typer.Argument(help="The job id, or its first characters (see `prefect-llm-batch status`).")
    ],
    state_dir: StateDirOption = None,
    wait: Annotated[bool, typer.Option(help="Wait until every batch has stopped.")] = False,
    poll_interval: Annotated[float, typer.Option(help="Seconds between checks with --wait.")] = 10.0,
) -> None:
    """Cancel the provider batches of a job. Finished rows are kept; running the job again resumes it."""
    from .errors import LLMBatchError
    from .jobs import cancel_job, ended, job_ref
    from .providers import make_provider, target_for
    from .store import JobStore

    root = _state_dir(state_dir)
    store = JobStore(root, resolve_job_id(root, job_id))
    try:
        record = store.read_job()
        if record.provider == "simulator":
            typer.echo("simulator jobs end with their run; nothing to cancel")
            return
        with make_provider(target_for(record.provider, record.base_url)) as provider:
            cancelled = cancel_job(job_ref(record, root), provider)
            typer.echo(
                f"cancel requested for {len(cancelled)} batch(es): {', '.join(cancelled) or 'none running'}"
            )
            while wait:
                states = [store.read_chunk(c.chunk_id) for c in record.chunks]
                running = [s for s in states if s.batch_id and not ended(s)]
                if not running:
                    typer.echo("every batch has stopped")
                    break
                time.sleep(poll_interval)
                for state in running:
                    assert state.batch_id is not None
                    info = provider.retrieve(state.batch_id)
                    state.status, state.raw_status = info.status.value, info.raw_status
                    store.write_chunk(state)
    except LLMBatchError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


cache_app = typer.Typer(help="Inspect or clear the response cache (it holds answers to your prompts).")
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info(state_dir: StateDirOption = None) -> None:
    """How many answers the cache holds, and where."""
    from .cache import ResponseCache

    cache = ResponseCache(_state_dir(state_dir))
    segments, answers, size = cache.stats()
    typer.echo(f"{cache.base}: {answers} answers in {segments} segment(s), {size / 1e6:.1f} MB")


@cache_app.command("clear")
def cache_clear(
    state_dir: StateDirOption = None,
    older_than: Annotated[float | None, typer.Option(help="Only segments older than this many days.")] = None,
) -> None:
    """Delete cached answers (all, or those older than --older-than days); jobs keep their results."""
    from .cache import ResponseCache

    cache = ResponseCache(_state_dir(state_dir))
    removed = cache.clear(older_than * 86400 if older_than is not None else None)
    typer.echo(f"removed {removed.files} segment(s) from {cache.base}, freeing {_size(removed.bytes)}")


def _size(count: int) -> str:
    """Bytes for people: ``1.5 MB``, ``12 kB``, ``300 bytes``.

    Examples:
        >>> _size(1_500_000), _size(12_000), _size(300)
        ('1.5 MB', '12 kB', '300 bytes')
    """
    if count >= 1_000_000:
        return f"{count / 1e6:.1f} MB"
    if count >= 1_000:
        return f"{count / 1e3:.0f} kB"
    return f"{count} bytes"


jobs_app = typer.Typer(help="Delete jobs from the state directory (the response cache keeps their answers).")
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("clean")
def jobs_clean(
    job_ids: Annotated[
        list[str] | None, typer.Argument(help="Only these jobs (see `prefect-llm-batch status`).")
    ] = None,
    state_dir: StateDirOption = None,
    older_than: Annotated[
        float | None, typer.Option(help="Only jobs none of whose files changed for this many days.")
    ] = None,
    finished: Annotated[
        bool, typer.Option("--finished", help="Only jobs whose batches are all collected.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Delete jobs with batches not collected, or pending, too (nothing is cancelled)."
        ),
    ] = False,
) -> None:
    """Delete jobs (all, or those matching every option given), except jobs a run holds now and
    jobs with batches submitted and not collected, or pending (unless --force).

    Their cached answers stay: running a deleted job again pays only for what the cache does not
    answer. With --force, a deleted job's batches still running at the provider are neither
    cancelled nor collected (`prefect-llm-batch cancel JOB_ID` first).
    """
    from .registry import clean_jobs

    root = _state_dir(state_dir)
    report = clean_jobs(
        root, job_ids=job_ids or None, older_than_s=older_than * 86400 if older_than is not None else None,
        finished=finished, force=force,
    )  # fmt: skip
    for job_id, reason in report.kept.items():
        typer.echo(f"kept job {job_id}: {reason}")
    typer.echo(f"removed {len(report.removed)} job(s) from {root}, freeing {_size(report.bytes)}")


@app.command("fake-server")
def fake_server(
    port: Annotated[int, typer.Option(help="Port to listen on (127.0.0.1).")] = 8765,
    validating_seconds: Annotated[float, typer.Option(help="Seconds each batch spends validating.")] = 1.0,
    in_progress_seconds: Annotated[float, typer.Option(help="Seconds each batch spends in progress.")] = 5.0,
    finalizing_seconds: Annotated[float, typer.Option(help="Seconds each batch spends finalizing.")] = 1.0,
) -> None:
    """Serve the fake OpenAI-compatible batch API on 127.0.0.1 (base URL http://127.0.0.1:PORT/v1)."""
    from .simulator import serve_simulator

    typer.echo(f"fake OpenAI batch API on http://127.0.0.1:{port}/v1 (any Bearer key); Ctrl-C stops it")
    serve_simulator(
        port,
        validating_seconds=validating_seconds,
        in_progress_seconds=in_progress_seconds,
        finalizing_seconds=finalizing_seconds,
    )


def main() -> None:
    """Entry point of the ``prefect-llm-batch`` console script."""
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
