"""The commands that run jobs: ``run``, ``submit`` (``run --detached``) and ``collect``."""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from .estimates import plan_estimate
from .options import (
    DEFAULT_INPUT_FILE_EXPIRY,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_MAX_REQUESTS_PER_BATCH,
    DEFAULT_OUTPUT_EXPIRY,
    SOURCE_HELP,
    AllowEmptyOption,
    AllowMissingImagesOption,
    BaseUrlOption,
    CacheSystemPromptOption,
    ColumnPrefixOption,
    EndpointOption,
    IdColumnOption,
    ImageColumnOption,
    InvalidUtf8Option,
    LimitOption,
    LocalModelOption,
    MaxBytesOption,
    MaxRequestsOption,
    ModelColumnOption,
    ModelOption,
    ParamOption,
    PromptOption,
    ProviderOption,
    SchemaOption,
    SchemaStyleOption,
    StateDirOption,
    SystemOption,
    before_work,
    build_spec,
    check_choices,
    fail,
    resolve_state_dir,
)
from .summary import print_summary

if TYPE_CHECKING:
    from ..spec import JobSpec

#: What makes a run a tracked Prefect flow run, printed after a run without Prefect.
TRACKED_HINT = (
    "ran without Prefect (no Prefect server configured); for a tracked flow run in the Prefect UI: "
    "`prefect server start`, then `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
)


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


def run(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    output: Annotated[str, typer.Argument(help="Parquet file to write (path or fsspec URL).")],
    prompt: PromptOption,
    model: ModelOption = "",
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
    input_file_expiry: Annotated[
        int | None,
        typer.Option(
            help="Seconds before the provider deletes an uploaded input file (3600-2592000; OpenAI)."
        ),
    ] = DEFAULT_INPUT_FILE_EXPIRY,
    output_expiry: Annotated[
        int | None,
        typer.Option(help="Seconds the provider keeps a batch's output files (3600-2592000; OpenAI)."),
    ] = DEFAULT_OUTPUT_EXPIRY,
    max_cost_usd: Annotated[
        float | None,
        typer.Option(
            help="Refuse to send a job whose estimated batch cost is higher; a retry round that would take "
            "the job's spend over it is not sent."
        ),
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
    realtime_concurrency: Annotated[
        int | None,
        typer.Option(help="Most realtime requests in flight (default 16; 1 for --provider local)."),
    ] = None,
    realtime_rpm: Annotated[
        float | None, typer.Option(help="Realtime requests per minute to keep under.")
    ] = None,
    realtime_tpm: Annotated[
        float | None, typer.Option(help="Realtime tokens per minute to keep under.")
    ] = None,
    allow_empty: AllowEmptyOption = False,
    invalid_utf8: InvalidUtf8Option = "error",
    cache_system_prompt: CacheSystemPromptOption = False,
    model_column: ModelColumnOption = None,
    endpoint: EndpointOption = "chat/completions",
    image_column: ImageColumnOption = None,
    allow_missing_images: AllowMissingImagesOption = False,
    engine: Annotated[
        str,
        typer.Option(
            help="process (default) or dask: run a Parquet SOURCE as shards on a Dask cluster; OUTPUT is "
            "then a directory of Parquet parts with a _manifest.json."
        ),
    ] = "process",
    dask_address: Annotated[
        str | None, typer.Option(help="Scheduler of an existing Dask cluster (default: a local cluster).")
    ] = None,
    dask_workers: Annotated[int, typer.Option(help="Worker processes of the local Dask cluster.")] = 2,
    rows_per_shard: Annotated[
        int | None, typer.Option(help="Rows per shard (default 1,000,000); without --engine dask: threads.")
    ] = None,
    single_file: Annotated[
        bool, typer.Option(help="With shards, write one Parquet file at OUTPUT instead of a dataset.")
    ] = False,
    local_model: LocalModelOption = None,
    schema_style: SchemaStyleOption = None,
) -> None:
    """Enrich SOURCE with one answer per row and write OUTPUT (Parquet).

    With a Prefect server configured (PREFECT_API_URL, or a profile that sets it), the run is an
    `enrich-table` flow run shown in the Prefect UI; without one it runs the same job in this
    process, without Prefect, and says so.
    """
    check_choices(provider, invalid_utf8, mode)
    if engine not in ("process", "dask"):
        raise fail(f"--engine must be process or dask, not {engine!r}", 2)
    sharded = engine == "dask" or rows_per_shard is not None
    if sharded and (limit is not None or detached or mode != "batch"):
        raise fail("shards run whole and in batch mode: --limit, --detached and --mode are not for them", 2)
    if schema_style not in (None, "openai", "json_object_schema"):
        raise fail(f"--schema-style must be openai or json_object_schema, not {schema_style!r}", 2)
    if local_model is not None and provider != "local":
        raise fail("--local-model is for --provider local", 2)
    if sharded and provider == "local":
        raise fail("--provider local runs in realtime mode, in one process: not in shards", 2)
    before_work()
    if no_cache and refresh_cache:
        raise typer.BadParameter("--no-cache and --refresh-cache exclude each other")
    spec = build_spec(
        prompt=prompt, model=model, system=system, schema=schema, column_prefix=column_prefix,
        id_column=id_column, param=param, provider=provider, base_url=base_url,
        max_requests_per_batch=max_requests_per_batch, max_batch_bytes=max_batch_bytes,
        allow_empty=allow_empty, invalid_utf8=invalid_utf8, cache_system_prompt=cache_system_prompt,
        endpoint=endpoint, model_column=model_column, image_columns=image_column,
        allow_missing_images=allow_missing_images,
    )  # fmt: skip
    from ..errors import CostLimitExceeded, LLMBatchError
    from ..jobs import JobRef, JobSummary, preflight
    from ..jobs.checks import check_before_start
    from ..jobs.realtime import Mode

    root = resolve_state_dir(state_dir)
    try:  # every check that needs no provider, before Prefect is imported
        check_before_start(
            source, output, root, where="cli", provider=provider, model=model, overwrite=overwrite,
            detached=detached, mode=mode, max_cost_usd=max_cost_usd,
        )  # fmt: skip
    except LLMBatchError as exc:
        raise fail(str(exc), 2) from None
    try:  # the local model's server and file, before a row is read
        from ..local_model import check_local

        check_local(provider, local_model)
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
    shards = {"engine": engine, "dask_address": dask_address, "dask_workers": dask_workers,
              "rows_per_shard": rows_per_shard, "single_file": single_file}  # fmt: skip
    try:
        if tracked and max_cost_usd is not None:  # the cap, before a flow run starts (no HTTP)
            from ..jobs import check_cost

            check_cost(plan_estimate(source, spec, root, limit), max_cost_usd)
        if tracked or sharded:  # (shards are Prefect tasks: a temporary server when none is configured)
            summary = _run_flow(
                source, output, spec, schema, provider, state_dir, limit, overwrite, poll_interval,
                max_error_rate, max_attempts, retry_backoff, cache, max_in_flight_batches,
                max_enqueued_tokens, max_wait, keep_input_files, max_cost_usd, detached, mode, realtime,
                shards if sharded else {}, input_file_expiry=input_file_expiry, output_expiry=output_expiry,
                local_model=local_model, schema_style=schema_style,
            )  # fmt: skip
        else:
            from ..local import run_table
            from ..spec import RunOptions

            options = RunOptions.for_provider(
                provider, poll_interval=poll_interval, retry_backoff=retry_backoff, max_attempts=max_attempts,
                cache=cast(Any, cache), max_in_flight_batches=max_in_flight_batches,
                max_enqueued_tokens=max_enqueued_tokens, max_wait=max_wait, keep_input_files=keep_input_files,
                input_file_expiry=input_file_expiry, output_expiry=output_expiry, max_cost_usd=max_cost_usd,
            )  # fmt: skip
            _log_to_stderr()
            summary = run_table(
                source, output, spec, options, state_dir=root, limit=limit, overwrite=overwrite,
                max_error_rate=max_error_rate, max_cost_usd=max_cost_usd, detached=detached,
                mode=cast(Mode, mode), realtime_limits=realtime,
                on_change=lambda p: typer.echo(f"  {p.describe()}", err=True), where="cli",
                local_model=local_model, schema_style=schema_style,
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
    if not tracked and not sharded:
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
    shards: dict[str, Any],
    *,
    input_file_expiry: int | None = DEFAULT_INPUT_FILE_EXPIRY,
    output_expiry: int | None = DEFAULT_OUTPUT_EXPIRY,
    local_model: str | None = None,
    schema_style: str | None = None,
) -> Any:
    """Run the job as an ``enrich-table`` flow run (Prefect is imported here, and only here)."""
    _prefect_defaults()
    from ..flows import enrich_table
    from ..spec import ENDPOINT_NAMES

    return enrich_table(
        source=source,
        output=output,
        prompt=spec.prompt,
        model=spec.model,
        model_column=spec.model_column,
        system=spec.system,
        params=spec.params,
        endpoint=next(name for name, path in ENDPOINT_NAMES.items() if path == spec.endpoint),
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
        input_file_expiry=input_file_expiry,
        output_expiry=output_expiry,
        max_cost_usd=max_cost_usd,
        detached=detached,
        mode=cast(Any, mode),
        realtime_concurrency=realtime["concurrency"],
        realtime_rpm=realtime["requests_per_minute"],
        realtime_tpm=realtime["tokens_per_minute"],
        allow_empty=spec.allow_empty,
        invalid_utf8=spec.invalid_utf8,
        cache_system_prompt=spec.cache_system_prompt,
        image_columns=spec.image_columns,
        allow_missing_images=spec.allow_missing_images,
        local_model=local_model,
        schema_style=cast(Any, schema_style),
        **shards,
    )


def submit(**options: Any) -> None:
    """Submit SOURCE's batches and return at once; `prefect-llm-batch collect` writes OUTPUT later.

    Takes the arguments and options of `run`: it is `run --detached`.
    """
    run(**options, detached=True)


_RUN = inspect.signature(run, eval_str=True)
submit.__signature__ = _RUN.replace(  # type: ignore[attr-defined]
    parameters=[p for p in _RUN.parameters.values() if p.name != "detached"]
)
submit.__annotations__ = {p.name: p.annotation for p in submit.__signature__.parameters.values()}  # type: ignore[attr-defined]


def collect(state_dir: StateDirOption = None) -> None:
    """Finish the jobs submitted with --detached whose batches have ended (never waits)."""
    before_work()
    _prefect_defaults()
    from ..errors import LLMBatchError
    from ..flows import collect_jobs

    try:
        finished = collect_jobs(state_dir=state_dir)
    except LLMBatchError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for summary in finished:
        print_summary(summary)
    typer.echo(f"{len(finished)} job(s) finished")
