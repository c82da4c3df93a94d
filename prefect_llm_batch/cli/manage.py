"""The commands that look after jobs in a state directory: ``status``, ``cancel``, ``jobs clean``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer

from .options import StateDirOption, fail, resolve_state_dir
from .summary import age_text, cost_text, human_size, none_sent

if TYPE_CHECKING:
    from ..store import JobRecord, JobStore


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
    if job_id is None:  # two plain lines a job: the full id never wraps or gets cut short
        records = list_jobs(root)
        outputs = pending_outputs(root) if records else {}
        now = time.time()
        for record in records:
            try:
                shown = describe_job(JobStore(root, record.job_id), record, outputs.get(record.job_id))
            except StateError as exc:
                shown = JobView(state=f"damaged ({exc})", rows_done="?", requests_done="?")
            typer.echo(
                f"{record.job_id}  {shown.state}  rows {shown.rows_done}/{record.rows}  requests "
                f"{shown.requests_done}/{record.unique_requests}  {age_text(now - record.created_at)} ago"
            )
            where = f"{record.provider} / {record.model}; source {record.source}"
            typer.echo(f"    output {shown.output or '-'}; {where}")
        if not records:
            typer.echo(f"no jobs in {root}")
        return
    from ..jobs import job_ref, progress

    store = JobStore(root, resolve_job_id(root, job_id))
    try:
        record = store.read_job()
        shown = describe_job(store, record, pending_outputs(root).get(record.job_id))
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
    console.print(f"job {record.job_id}: {shown.state}; output {shown.output or '-'}", soft_wrap=True)
    console.print(
        f"rows done {shown.rows_done}/{record.rows}, requests done {shown.requests_done}/"
        f"{record.unique_requests} ({record.cached_requests} from the cache)",
        soft_wrap=True,
    )
    if shown.cost:
        console.print(f"cost: {shown.cost}", soft_wrap=True)
    if record.chunks:
        console.print(table)
        console.print(described)
    else:
        console.print(none_sent(record))
    if store.is_cancelled():
        console.print("[yellow]cancelled by the user; run the job again to resume it[/yellow]")


class JobView(NamedTuple):
    """What ``status`` shows of one job (see :func:`describe_job`)."""

    state: str
    rows_done: str
    requests_done: str
    output: str | None = None
    cost: str | None = None


def pending_outputs(state_dir: str) -> dict[str, str]:
    """The output of each job submitted detached and not yet written, by job id."""
    from ..jobs.detached import read_pending_jobs

    return {p.job.ref.job_id: p.job.output for p in read_pending_jobs(state_dir) if p.job is not None}


def describe_job(store: JobStore, record: JobRecord, pending_output: str | None) -> JobView:
    """A job's state, output and progress, from its state directory (no HTTP).

    The state is ``cancelled`` (by the user), ``written`` (a run wrote its output), ``submitted
    (detached)`` (``collect`` writes it), or where its batches are: ``planned`` (none submitted),
    ``running``, ``ended`` (results not all downloaded) or ``collected`` (output not written yet).
    Rows are done once the output is written; requests once their batch reports them done, or
    when they came from the cache.

    Raises:
        StateError: A damaged state file (its name and the fix).
    """
    from ..jobs import JobSummary, ended

    written = store.read_summary()
    summary = JobSummary.model_validate_json(written) if written is not None else None
    chunks = [store.read_chunk(c.chunk_id) for c in record.chunks]
    first_round = {c.chunk_id: c.requests for c in record.chunks if c.round == 1}
    done = record.cached_requests + sum(
        min(first_round[s.chunk_id], (s.completed or 0) + (s.failed or 0))
        for s in chunks
        if s.chunk_id in first_round
    )
    if store.is_cancelled():
        state = "cancelled"
    elif summary is not None and all(s.collected for s in chunks):
        state = "written"
    elif pending_output is not None:
        state = "submitted (detached)"
    elif not any(s.batch_id for s in chunks):
        state = "planned"
    elif not all(ended(s) for s in chunks if s.batch_id):
        state = "running"
    else:
        state = "collected" if all(s.collected for s in chunks) else "ended"
    if summary is not None and state == "written":
        return JobView(
            state=state, rows_done=str(summary.rows), requests_done=str(record.unique_requests),
            output=summary.output, cost=cost_text(summary),
        )  # fmt: skip
    return JobView(
        state=state, rows_done="0", requests_done=str(done),
        output=pending_output or (summary.output if summary is not None else None),
    )  # fmt: skip


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
        if record.provider in ("simulator", "local"):
            typer.echo(f"{record.provider} jobs end with their run; nothing to cancel")
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
