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
    table.add_row("batches", ", ".join(summary.batch_ids) or "none")
    table.add_row("tokens", f"{summary.input_tokens} in, {summary.output_tokens} out")
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
