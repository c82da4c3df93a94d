"""The commands that look after jobs in a state directory: ``status``, ``cancel``, ``jobs clean``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from .options import StateDirOption, fail, resolve_state_dir
from .summary import human_size


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


def status(
    job_id: Annotated[
        str | None, typer.Argument(help="A job id, or its first characters (default: list the jobs).")
    ] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Show the jobs of a state directory, or one job's batches and progress (no HTTP)."""
    from rich.console import Console
    from rich.table import Table

    from ..errors import StateError
    from ..registry import list_jobs
    from ..store import JobStore

    root = resolve_state_dir(state_dir)
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
    from ..jobs import job_ref, progress

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


def cancel(
    job_id: Annotated[
        str, typer.Argument(help="The job id, or its first characters (see `prefect-llm-batch status`).")
    ],
    state_dir: StateDirOption = None,
    wait: Annotated[bool, typer.Option(help="Wait until every batch has stopped.")] = False,
    poll_interval: Annotated[float, typer.Option(help="Seconds between checks with --wait.")] = 10.0,
) -> None:
    """Cancel the provider batches of a job. Finished rows are kept; running the job again resumes it."""
    from ..errors import LLMBatchError
    from ..jobs import cancel_job, ended, job_ref
    from ..providers import make_provider, target_for
    from ..store import JobStore

    root = resolve_state_dir(state_dir)
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


jobs_app = typer.Typer(help="Delete jobs from the state directory (the response cache keeps their answers).")


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
    from ..registry import clean_jobs

    root = resolve_state_dir(state_dir)
    report = clean_jobs(
        root, job_ids=job_ids or None, older_than_s=older_than * 86400 if older_than is not None else None,
        finished=finished, force=force,
    )  # fmt: skip
    for job_id, reason in report.kept.items():
        typer.echo(f"kept job {job_id}: {reason}")
    typer.echo(f"removed {len(report.removed)} job(s) from {root}, freeing {human_size(report.bytes)}")
