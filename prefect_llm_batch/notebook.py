"""``enrich``: a DataFrame in, the same DataFrame with answer columns out, for notebooks.

Runs the job in this process (no Prefect server needed), with a progress bar, and works inside
Jupyter, whose event loop is already running (everything here is synchronous). The same state
directory, cache and resume rules as the ``enrich_table`` flow apply: running the same cell again
after a kernel restart resumes the job instead of paying again. For that, the DataFrame is saved
under its content hash in ``{state_dir}/inputs/`` (remove it with the state directory: it holds
your data).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from .files import exists, write_parquet_atomic
from .jobs import JobSummary, Progress
from .jobs.checks import check_before_start, check_output
from .jobs.driver import run_job
from .jobs.images import image_path
from .jobs.realtime import realtime_client
from .providers import api_key_for, make_provider
from .schemas import ResponseSchema
from .simulator import open_target
from .spec import (
    BatchLimits,
    CacheMode,
    JobSpec,
    ProviderName,
    RunOptions,
)
from .store import default_state_dir


class _Bar:
    """A progress bar: rich's in a terminal, and in Jupyter when ``ipywidgets`` is installed (the
    ``notebook`` extra); else, in Jupyter, :class:`TextProgress` (rich would only warn there)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.progress: Any = None
        self.task: Any = None
        self.text: TextProgress | None = None

    def __enter__(self) -> _Bar:
        if not self.show:
            return self
        from rich.console import Console

        if Console().is_jupyter and importlib.util.find_spec("ipywidgets") is None:
            from IPython.display import display

            self.text = TextProgress(display)
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.progress.start()
        self.task = self.progress.add_task("requests", total=None)
        return self

    def update(self, p: Progress) -> None:
        if self.text is not None:
            self.text.update(p)
        if self.progress is not None:
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(p.statuses.items()))
            self.progress.update(self.task, total=p.requests, completed=p.requests_done, description=statuses)

    def __exit__(self, *exc: object) -> None:
        if self.text is not None and not self.text.updated and exc[0] is None:
            self.text.handle.update(_Text("requests: no batch to wait for"))
        if self.progress is not None:
            self.progress.stop()


class TextProgress:
    """A plain-text progress line that one notebook output updates in place (no widgets).

    Args:
        display: ``IPython.display.display``, or any function that shows an object and, with
            ``display_id=True``, returns a handle whose ``update`` replaces it.

    Examples:
        >>> class Handle:
        ...     def update(self, obj): print(obj)
        >>> bar = TextProgress(lambda obj, display_id: Handle(), width=10)
        >>> bar.update(Progress(batches=2, batches_ended=1, requests=20, requests_done=15,
        ...                     statuses={"completed": 1, "in_progress": 1}))
        requests [#######---]  15/20  batches 1/2 ended (completed 1, in_progress 1)
    """

    def __init__(self, display: Callable[..., Any], width: int = 30) -> None:
        self.width = width
        self.updated = False
        self.handle: Any = display(_Text("requests: planning"), display_id=True)

    @staticmethod
    def line(p: Progress, width: int = 30) -> str:
        """The progress as one line of text."""
        filled = width * p.requests_done // p.requests if p.requests else 0
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(p.statuses.items()))
        return (
            f"requests [{'#' * filled}{'-' * (width - filled)}] {p.requests_done:>3}/{p.requests}  "
            f"batches {p.batches_ended}/{p.batches} ended ({statuses})"
        )

    def update(self, p: Progress) -> None:
        """Show ``p`` in place of the previous line."""
        self.handle.update(_Text(self.line(p, self.width)))
        self.updated = True


class _Text(str):
    """Text that Jupyter shows as is (a plain ``str`` would show with its quotes)."""

    def __repr__(self) -> str:
        return str(self)


def absolute_image_paths(table: pa.Table, columns: list[str], base: str) -> pa.Table:
    """``table`` with the relative local paths of its text image columns joined to ``base``
    (URLs, ``data:`` URLs, absolute paths, bytes and nulls as they are; a column that is missing
    is left for the job to name).

    Examples:
        >>> t = absolute_image_paths(pa.table({"img": ["a.png", "/x/b.png", "https://h/c.png", None]}),
        ...                          ["img"], "/work")
        >>> t.column("img").to_pylist()
        ['/work/a.png', '/x/b.png', 'https://h/c.png', None]
    """
    for column in columns:
        if column not in table.column_names:
            continue
        index = table.column_names.index(column)
        values = table.column(index)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            continue
        cells = [
            cell if not isinstance(cell, str) else (image_path(cell, base) or cell)
            for cell in values.to_pylist()
        ]
        table = table.set_column(index, table.field(index), pa.array(cells, type=values.type))
    return table


def enrich(
    df: pd.DataFrame,
    prompt: str,
    model: str = "",
    *,
    model_column: str | None = None,
    image_columns: list[str] | None = None,
    allow_missing_images: bool = False,
    system: str | None = None,
    params: dict[str, Any] | None = None,
    response_format: dict[str, Any] | str | type[BaseModel] | None = None,
    column_prefix: str = "",
    parser: Callable[[str], Any] | None = None,
    provider: ProviderName = "simulator",
    base_url: str | None = None,
    api_key: str | None = None,
    state_dir: str | None = None,
    poll_interval: float | None = None,
    max_attempts: int = 3,
    cache: CacheMode = "use",
    max_requests_per_batch: int = 50_000,
    progress: bool = True,
    return_summary: bool = False,
    allow_empty: bool = False,
    local_model: str | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, JobSummary]:
    """Enrich a DataFrame with one answer per row through a provider batch API.

    Args:
        df: The rows to enrich; its index is kept.
        prompt: Jinja2 template over the columns, e.g. ``"Summarise: {{ review }}"``.
        model: Model name (or ``model_column``).
        model_column: Column naming each row's model, instead of ``model`` (one batch per model;
            ``response_model`` says which answered). To compare models, give ``df`` one row per
            (item, model), e.g. ``df.merge(pd.DataFrame({"model": models}), how="cross")``.
        image_columns: Columns whose cells are images sent with each row's prompt: an
            ``http(s)`` URL (passed as is), a ``data:`` URL, bytes, an fsspec URL, or a local
            path. A relative local path is relative to the current directory when ``enrich``
            is called (``df`` is saved in the state directory, so it is made absolute first;
            the returned DataFrame keeps the paths as given). Images are part of the job:
            a file changed in place is sent again.
        allow_missing_images: A null image cell means the row has no image from that column
            (else it is an error naming the row, before anything is sent).
        system: Optional system prompt (a template too).
        params: Extra request parameters.
        response_format: A pydantic model, JSON Schema (dict or JSON text): typed answer columns.
        column_prefix: Prefix of the typed columns.
        parser: Optional function from answer text to a dict.
        provider: ``simulator`` (default, offline, made-up answers), ``local`` (a small real model
            on this machine, in realtime; ``make install-local``), ``openai`` or ``anthropic``.
        base_url: Provider base URL (see the flow).
        api_key: The key; default ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``.
        state_dir: Job state and response cache (default as the flow's).
        poll_interval: Seconds between status checks (default 30; 0.5 for the simulator).
        max_attempts: Rounds a request is sent in at most.
        cache: ``use``, ``refresh`` or ``off``.
        local_model: With ``provider="local"``: the GGUF model file (default: the bundled SmolLM2).
        max_requests_per_batch: Most requests per batch.
        progress: Show a progress bar.
        return_summary: Also return the :class:`~prefect_llm_batch.jobs.JobSummary`.
        allow_empty: Send rows whose prompt renders empty or only whitespace (else an error
            naming them, before anything is sent).

    Returns:
        ``df`` with the answer columns appended (and the summary when asked for).

    Raises:
        JobLocked: Another run (another kernel, a flow) is running the same job; this one changed
            nothing.

    Examples:
        >>> import pandas as pd
        >>> out = enrich(pd.DataFrame({"text": ["I love it", "awful"]}),
        ...              "Sentiment of: {{ text }}", "gpt-4o-mini", progress=False)  # doctest: +SKIP
        >>> out["response"].tolist()  # doctest: +SKIP
        ['positive', 'negative']
    """
    state = state_dir or default_state_dir()
    # before anything is written or started: a missing key is named as enrich(api_key=...)
    check_before_start(state, None, state, where="python", provider=provider, model=model, api_key=api_key)
    schema = ResponseSchema.from_user(response_format) if response_format is not None else None
    spec = JobSpec(
        prompt=prompt,
        system=system,
        model=model,
        model_column=model_column,
        image_columns=list(image_columns or []),
        allow_missing_images=allow_missing_images,
        params=params or {},
        provider=provider,
        base_url=base_url,
        response_schema=schema.schema if schema is not None else None,
        column_prefix=column_prefix,
        limits=BatchLimits(max_requests_per_batch=max_requests_per_batch),
        allow_empty=allow_empty,
    )
    options = RunOptions.for_provider(
        provider, poll_interval=poll_interval, max_attempts=max_attempts, cache=cache
    )
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    # The input is written under its content hash, so a rerun finds the same source and job.
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()
    if spec.image_columns:  # relative image paths are the caller's, not the state directory's
        here = os.getcwd()
        table = absolute_image_paths(table, spec.image_columns, here)
        hashed += f"\nimages relative to {here}".encode()
    digest = hashlib.sha256(hashed + ",".join(map(str, df.columns)).encode()).hexdigest()[:24]
    source = f"{state.rstrip('/')}/inputs/{digest}.parquet"
    if not exists(source):
        write_parquet_atomic(table, source, overwrite=True, private=True)  # state: owner-only
    with (
        tempfile.TemporaryDirectory() as scratch,
        open_target(provider, base_url, simulator_seconds=0.6, local_model=local_model) as target,
        make_provider(target, api_key=api_key) as client,
        _Bar(progress) as bar,
    ):
        output = str(Path(scratch) / "out.parquet")
        check_output(source, output, state)  # before anything is sent, as the flows do
        # One lease from planning to the output: another kernel running the same cell meanwhile
        # gets JobLocked and changes nothing.
        summary = run_job(
            source, spec, client, target, options, state_dir=state, output=output, parser=parser,
            on_change=bar.update,
            realtime_client=(  # the local model's server has no batch API
                realtime_client(client, target, api_key_for(target, api_key), max_concurrency=None)
                if target.provider == "local"
                else None
            ),
        )  # fmt: skip
        result = pq.read_table(output).to_pandas()
    answers = result.drop(columns=list(df.columns))
    answers.index = df.index
    enriched = pd.concat([df, answers], axis=1)
    return (enriched, summary) if return_summary else enriched
