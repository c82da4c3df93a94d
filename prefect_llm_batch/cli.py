"""The ``prefect-llm-batch`` command.

Examples:
    Enrich a table against the bundled simulator (offline, free)::

        prefect-llm-batch run examples/reviews.csv out/reviews.parquet \\
            --prompt "Classify the sentiment of this review: {{ review }}" --model gpt-4o-mini

    The same against the real OpenAI Batch API (costs money; a batch can take up to 24 h)::

        OPENAI_API_KEY=... prefect-llm-batch run ... --provider openai
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer

from .spec import DEFAULT_MAX_ERROR_RATE, OPENAI_MAX_BATCH_BYTES, OPENAI_MAX_REQUESTS_PER_BATCH, ProviderName

#: Help of the source argument of ``run`` and ``estimate``.
SOURCE_HELP = (
    "Table to enrich: .csv, .parquet, .jsonl, or a directory of Parquet parts; a path or fsspec URL."
)

app = typer.Typer(
    name="prefect-llm-batch",
    help="Enrich tables with LLM answers through provider batch APIs, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


StateDirOption = Annotated[
    str | None,
    typer.Option(help="Job state directory (default: PREFECT_LLM_BATCH_STATE_DIR or ~/.local/state)."),
]


def parse_param(text: str) -> tuple[str, Any]:
    """Parse one ``--param key=value``: the value as JSON when it parses, else as a string.

    Examples:
        >>> parse_param("temperature=0.2"), parse_param("stop=[\\"\\\\n\\"]"), parse_param("user=ann")
        (('temperature', 0.2), ('stop', ['\\n']), ('user', 'ann'))
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"--param takes key=value, not {text!r}")
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


def _prefect_defaults() -> None:
    # The temporary local server needs more than the default 20 s on small machines.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")


@app.command()
def run(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    output: Annotated[str, typer.Argument(help="Parquet file to write (path or fsspec URL).")],
    prompt: Annotated[
        str, typer.Option(help="Jinja2 template over the row's columns, e.g. 'Summarise: {{ text }}'.")
    ],
    model: Annotated[str, typer.Option(help="Model name, e.g. gpt-4o-mini.")],
    system: Annotated[str | None, typer.Option(help="System prompt (also a template).")] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            help="JSON Schema file the answers must follow; each top-level property becomes a column."
        ),
    ] = None,
    column_prefix: Annotated[str, typer.Option(help="Prefix for the schema's typed columns.")] = "",
    id_column: Annotated[
        str | None, typer.Option(help="Unique, non-null column that identifies rows.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(help="Request parameter key=value (value parsed as JSON when it can be)."),
    ] = None,
    provider: Annotated[
        str,
        typer.Option(
            help="'simulator' (default: offline, free, made-up answers), 'openai' or 'anthropic' "
            "(real: needs OPENAI_API_KEY / ANTHROPIC_API_KEY, costs money, a batch can take 24 h)."
        ),
    ] = "simulator",
    base_url: Annotated[
        str | None,
        typer.Option(
            help="Base URL: OpenAI-compatible including /v1 (default OPENAI_BASE_URL); "
            "Anthropic without /v1 (default ANTHROPIC_BASE_URL)."
        ),
    ] = None,
    state_dir: Annotated[
        str | None,
        typer.Option(help="Job state directory, any fsspec URL (default: PREFECT_LLM_BATCH_STATE_DIR)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows (a trial run).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the output if it exists.")] = False,
    max_requests_per_batch: Annotated[
        int, typer.Option(help="Most requests per batch.")
    ] = OPENAI_MAX_REQUESTS_PER_BATCH,
    max_batch_bytes: Annotated[
        int, typer.Option(help="Largest batch input file, in bytes.")
    ] = OPENAI_MAX_BATCH_BYTES,
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
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Send rows whose prompt renders empty (else an error).")
    ] = False,
    invalid_utf8: Annotated[
        str,
        typer.Option(
            help="Text that is not UTF-8 in a CSV/JSONL source: error (default) or replace (U+FFFD)."
        ),
    ] = "error",
) -> None:
    """Enrich SOURCE with one answer per row and write OUTPUT (Parquet)."""
    if provider not in ("simulator", "openai", "anthropic", "azure"):
        raise typer.BadParameter(
            f"--provider must be simulator, openai, anthropic or azure, not {provider!r}"
        )
    if mode not in ("batch", "realtime", "auto"):
        raise typer.BadParameter(f"--mode must be batch, realtime or auto, not {mode!r}")
    if no_cache and refresh_cache:
        raise typer.BadParameter("--no-cache and --refresh-cache exclude each other")
    if invalid_utf8 not in ("error", "replace"):
        raise typer.BadParameter(f"--invalid-utf8 must be error or replace, not {invalid_utf8!r}")
    params = dict(parse_param(p) for p in param or [])
    from .errors import LLMBatchError
    from .jobs import JobRef, JobSummary, preflight
    from .jobs.realtime import Mode
    from .schemas import ResponseSchema
    from .spec import JobSpec

    try:
        response_format = _read_schema(schema) if schema is not None else None
        spec = JobSpec(
            prompt=prompt,
            system=system,
            model=model,
            params=params,
            id_column=id_column,
            response_schema=ResponseSchema(response_format).schema if response_format is not None else None,
            column_prefix=column_prefix,
            allow_empty=allow_empty,
            invalid_utf8=invalid_utf8,
        )
        preflight(source, spec)
    except LLMBatchError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:  # pydantic validation of the options
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None

    _prefect_defaults()
    from .flows import enrich_table

    try:
        summary = enrich_table(
            source=source,
            output=output,
            prompt=prompt,
            model=model,
            system=system,
            params=params,
            response_format=json.dumps(response_format) if response_format is not None else None,
            column_prefix=column_prefix,
            provider=cast(ProviderName, provider),
            base_url=base_url,
            id_column=id_column,
            state_dir=state_dir,
            limit=limit,
            overwrite=overwrite,
            max_requests_per_batch=max_requests_per_batch,
            max_batch_bytes=max_batch_bytes,
            poll_interval=poll_interval,
            max_error_rate=max_error_rate,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            cache="off" if no_cache else ("refresh" if refresh_cache else "use"),
            max_in_flight_batches=max_in_flight_batches,
            max_enqueued_tokens=max_enqueued_tokens,
            max_wait=max_wait,
            keep_input_files=keep_input_files,
            max_cost_usd=max_cost_usd,
            detached=detached,
            mode=cast(Mode, mode),
            realtime_concurrency=realtime_concurrency,
            realtime_rpm=realtime_rpm,
            realtime_tpm=realtime_tpm,
            allow_empty=allow_empty,
            invalid_utf8=cast(Literal["error", "replace"], invalid_utf8),
        )
    except LLMBatchError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    if isinstance(summary, JobRef):
        typer.echo(
            f"job {summary.job_id} submitted ({summary.chunks} batch(es)); run `prefect-llm-batch collect` "
            "(or the collect-jobs deployment) later to write the output"
        )
        return
    assert isinstance(summary, JobSummary)
    print_summary(summary)


@app.command(
    "submit",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def submit(ctx: typer.Context) -> None:
    """Submit SOURCE's batches and return at once; `prefect-llm-batch collect` writes OUTPUT later.

    Takes exactly the arguments and options of `run` (see `prefect-llm-batch run --help`): it is
    `run --detached`.
    """
    typer.main.get_command(app).main(args=["run", *ctx.args, "--detached"], standalone_mode=False)


@app.command()
def collect(state_dir: StateDirOption = None) -> None:
    """Finish the jobs submitted with --detached whose batches have ended (never waits)."""
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


@app.command()
def estimate(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    prompt: Annotated[str, typer.Option(help="Jinja2 template over the row's columns.")],
    model: Annotated[str, typer.Option(help="Model name, e.g. gpt-4o-mini.")],
    system: Annotated[str | None, typer.Option(help="System prompt (also a template).")] = None,
    param: Annotated[list[str] | None, typer.Option(help="Request parameter key=value.")] = None,
    provider: Annotated[str, typer.Option(help="openai, anthropic or simulator.")] = "openai",
    base_url: Annotated[str | None, typer.Option(help="Base URL (see `run --help`).")] = None,
    state_dir: StateDirOption = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
    expected_output_tokens: Annotated[
        int, typer.Option(help="Output tokens assumed per request when no max_tokens param is set.")
    ] = 100,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Send rows whose prompt renders empty (else an error).")
    ] = False,
    invalid_utf8: Annotated[
        str,
        typer.Option(
            help="Text that is not UTF-8 in a CSV/JSONL source: error (default) or replace (U+FFFD)."
        ),
    ] = "error",
) -> None:
    """Rows, unique requests, cache hits, estimated tokens and batch cost, before anything is sent.

    Nothing goes over the network and no key is needed: the job is planned in the state
    directory (a later `run` with the same options reuses the plan).
    """
    from .costs import BATCH_PRICES
    from .errors import LLMBatchError
    from .jobs import estimate as estimate_job
    from .jobs import prepare
    from .providers import make_provider, target_for
    from .spec import SIMULATOR_KEY_BASE_URL, JobSpec, ProviderTarget

    try:
        if invalid_utf8 not in ("error", "replace"):
            raise typer.BadParameter(f"--invalid-utf8 must be error or replace, not {invalid_utf8!r}")
        spec = JobSpec(
            prompt=prompt,
            system=system,
            model=model,
            params=dict(parse_param(p) for p in param or []),
            allow_empty=allow_empty,
            invalid_utf8=cast(Literal["error", "replace"], invalid_utf8),
        )
        if provider == "simulator":
            target = ProviderTarget(
                provider="simulator", base_url=SIMULATOR_KEY_BASE_URL, key_base_url=SIMULATOR_KEY_BASE_URL
            )
        else:
            target = target_for(provider, base_url)
        with make_provider(target, api_key="not-used-for-estimates") as client:  # builds bodies only
            ref = prepare(source, spec, client, target, state_dir=_state_dir(state_dir), limit=limit)
        result = estimate_job(ref, spec.params, expected_output_tokens=expected_output_tokens)
    except LLMBatchError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(result.describe())
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


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id (default: list the jobs).")] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Show the jobs of a state directory, or one job's batches and progress (no HTTP)."""
    from rich.console import Console
    from rich.table import Table

    from .errors import StateError
    from .jobs import job_ref, progress
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
    store = JobStore(root, job_id)
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
    job_id: Annotated[str, typer.Argument(help="The job id (see `prefect-llm-batch status`).")],
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
    store = JobStore(root, job_id)
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
    from .memory import prefer_small_pages

    prefer_small_pages()  # before any work: see prefect_llm_batch.memory
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
