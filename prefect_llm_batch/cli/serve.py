"""The ``fake-server`` command: the bundled fake OpenAI batch API on a local port."""

from __future__ import annotations

from typing import Annotated

import typer


def fake_server(
    port: Annotated[int, typer.Option(help="Port to listen on (127.0.0.1).")] = 8765,
    validating_seconds: Annotated[float, typer.Option(help="Seconds each batch spends validating.")] = 1.0,
    in_progress_seconds: Annotated[float, typer.Option(help="Seconds each batch spends in progress.")] = 5.0,
    finalizing_seconds: Annotated[float, typer.Option(help="Seconds each batch spends finalizing.")] = 1.0,
) -> None:
    """Serve the fake OpenAI-compatible batch API on 127.0.0.1 (base URL http://127.0.0.1:PORT/v1)."""
    from ..simulator import serve_simulator

    typer.echo(f"fake OpenAI batch API on http://127.0.0.1:{port}/v1 (any Bearer key); Ctrl-C stops it")
    serve_simulator(
        port,
        validating_seconds=validating_seconds,
        in_progress_seconds=in_progress_seconds,
        finalizing_seconds=finalizing_seconds,
    )
