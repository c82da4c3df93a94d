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
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from .spec import DEFAULT_MAX_ERROR_RATE, OPENAI_MAX_BATCH_BYTES, OPENAI_MAX_REQUESTS_PER_BATCH, ProviderName

app = typer.Typer(
    name="prefect-llm-batch",
    help="Enrich tables with LLM answers through provider batch APIs, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
    source: Annotated[
        str, typer.Argument(help="Table to enrich: .csv, .parquet or .jsonl; a path or fsspec URL.")
    ],
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
            help="'simulator' (default: offline, free, made-up answers) or 'openai' (real, costs money)."
        ),
    ] = "simulator",
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL including /v1 (default: OPENAI_BASE_URL).")
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
) -> None:
    """Enrich SOURCE with one answer per row and write OUTPUT (Parquet)."""
    if provider not in ("simulator", "openai"):
        raise typer.BadParameter(f"--provider must be 'simulator' or 'openai', not {provider!r}")
    params = dict(parse_param(p) for p in param or [])
    from .errors import LLMBatchError
    from .jobs import preflight
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
        )
    except LLMBatchError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    print_summary(summary)


def print_summary(summary: Any) -> None:
    """Print a one-screen summary of a finished job."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"job {summary.job_id}", show_header=False)
    table.add_row("output", summary.output)
    table.add_row("provider / model", f"{summary.provider} / {summary.model}")
    table.add_row("rows", f"{summary.rows} ({summary.unique_requests} unique requests)")
    table.add_row("answered", str(summary.ok_rows))
    errors = ", ".join(f"{k}: {v}" for k, v in summary.errors_by_kind.items()) or "none"
    table.add_row("errors", f"{summary.error_rows} ({errors})")
    table.add_row("batches", ", ".join(summary.batch_ids) or "none")
    table.add_row("tokens", f"{summary.input_tokens} in, {summary.output_tokens} out")
    table.add_row("state", summary.state_dir)
    console = Console()
    console.print(table)
    if summary.provider == "simulator":
        console.print("[yellow]These answers come from the bundled simulator, not from a model.[/yellow]")


@app.command("fake-server")
def fake_server(
    port: Annotated[int, typer.Option(help="Port to listen on (127.0.0.1).")] = 8765,
    validating_seconds: Annotated[float, typer.Option(help="Seconds each batch spends validating.")] = 1.0,
    in_progress_seconds: Annotated[float, typer.Option(help="Seconds each batch spends in progress.")] = 5.0,
    finalizing_seconds: Annotated[float, typer.Option(help="Seconds each batch spends finalizing.")] = 1.0,
) -> None:
    """Serve the fake OpenAI-compatible batch API on 127.0.0.1 (base URL http://127.0.0.1:PORT/v1)."""
    from .testing import FakeServerConfig, serve

    typer.echo(f"fake OpenAI batch API on http://127.0.0.1:{port}/v1 (any Bearer key); Ctrl-C stops it")
    serve(
        port,
        FakeServerConfig(
            validating_seconds=validating_seconds,
            in_progress_seconds=in_progress_seconds,
            finalizing_seconds=finalizing_seconds,
        ),
    )


def main() -> None:
    """Entry point of the ``prefect-llm-batch`` console script."""
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
