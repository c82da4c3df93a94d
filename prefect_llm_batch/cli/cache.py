"""The ``cache`` commands: inspect or clear the response cache."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import StateDirOption, resolve_state_dir
from .summary import human_size

cache_app = typer.Typer(help="Inspect or clear the response cache (it holds answers to your prompts).")


@cache_app.command("info")
def cache_info(state_dir: StateDirOption = None) -> None:
    """How many answers the cache holds, and where."""
    from ..cache import ResponseCache

    cache = ResponseCache(resolve_state_dir(state_dir))
    segments, answers, size = cache.stats()
    typer.echo(f"{cache.base}: {answers} answers in {segments} segment(s), {size / 1e6:.1f} MB")


@cache_app.command("clear")
def cache_clear(
    state_dir: StateDirOption = None,
    older_than: Annotated[float | None, typer.Option(help="Only segments older than this many days.")] = None,
) -> None:
    """Delete cached answers (all, or those older than --older-than days); jobs keep their results."""
    from ..cache import ResponseCache

    cache = ResponseCache(resolve_state_dir(state_dir))
    removed = cache.clear(older_than * 86400 if older_than is not None else None)
    typer.echo(f"removed {removed.files} segment(s) from {cache.base}, freeing {human_size(removed.bytes)}")
