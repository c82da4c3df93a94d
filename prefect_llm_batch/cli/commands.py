"""The ``prefect-llm-batch`` application: its commands, in the order ``--help`` lists them."""

from __future__ import annotations

from typing import Annotated

import typer

from .cache import cache_app
from .estimates import estimate
from .manage import cancel, jobs_app, status
from .runs import collect, run, submit
from .serve import fake_server


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("prefect-llm-batch")
        except PackageNotFoundError:  # running from a source tree that is not installed
            from .. import __version__ as shown
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


def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Enrich tables with LLM answers through provider batch APIs, as Prefect flows."""


app.callback()(_main)
app.command()(run)
app.command("submit")(submit)
app.command()(collect)
app.command()(estimate)
app.command()(status)
app.command()(cancel)
app.add_typer(cache_app, name="cache")
app.add_typer(jobs_app, name="jobs")
app.command("fake-server")(fake_server)


def main() -> None:
    """Entry point of the ``prefect-llm-batch`` console script."""
    app()
