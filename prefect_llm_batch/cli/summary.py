"""What the commands print for people: a finished job's summary, sizes."""

from __future__ import annotations

from typing import Any


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
    table.add_row("batches", ", ".join(summary.batch_ids) or none_sent(summary))
    table.add_row("tokens", f"{summary.input_tokens} in, {summary.output_tokens} out")
    table.add_row("cost", cost_text(summary))
    if summary.budget:
        table.add_row("provider budget", summary.budget)
    if getattr(summary, "stopped", ""):
        table.add_row("stopped", summary.stopped)
    table.add_row("state", summary.state_dir)
    console = Console()
    console.print(table)
    if summary.provider == "simulator":
        console.print("[yellow]These answers come from the bundled simulator, not from a model.[/yellow]")


def human_size(count: int) -> str:
    """Bytes for people: ``1.5 MB``, ``12 kB``, ``300 bytes``.

    Examples:
        >>> human_size(1_500_000), human_size(12_000), human_size(300)
        ('1.5 MB', '12 kB', '300 bytes')
    """
    if count >= 1_000_000:
        return f"{count / 1e6:.1f} MB"
    if count >= 1_000:
        return f"{count / 1e3:.0f} kB"
    return f"{count} bytes"


def cost_text(summary: Any) -> str:
    """A finished job's cost, estimated before sending and for the tokens billed (batch prices).

    Examples:
        >>> from types import SimpleNamespace
        >>> cost_text(SimpleNamespace(estimated_cost_usd=0.0021, cost_usd=0.0009, model="gpt-4o-mini",
        ...     provider="openai"))
        '$0.0021 estimated, $0.0009 for the tokens billed (batch prices)'
    """
    from ..costs import describe_usd

    text = (
        f"{describe_usd(summary.estimated_cost_usd, summary.model)} estimated, "
        f"{describe_usd(summary.cost_usd, summary.model)} for the tokens billed (batch prices)"
    )
    if summary.provider == "simulator":
        text += "; the simulator itself is free"
    return text


def none_sent(summary: Any) -> str:
    """What the batches row says when a job sent none.

    Examples:
        >>> from types import SimpleNamespace
        >>> none_sent(SimpleNamespace(unique_requests=3, cached_requests=3, rows=5))
        'none: every request was answered from the cache'
    """
    if summary.unique_requests and summary.cached_requests >= summary.unique_requests:
        return "none: every request was answered from the cache"
    return "none"


def age_text(seconds: float) -> str:
    """How long ago, for people: ``45 s``, ``12 min``, ``5 h``, ``3 d``.

    Examples:
        >>> age_text(45), age_text(720), age_text(5 * 3600), age_text(3 * 86400)
        ('45 s', '12 min', '5 h', '3 d')
    """
    if seconds < 60:
        return f"{max(0, int(seconds))} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"
