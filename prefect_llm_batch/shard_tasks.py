"""A sharded job in a flow: its per-shard steps as Prefect tasks, on Dask workers or threads.

The CPU steps of each shard (``fingerprint-shard-N``, ``prepare-shard-N``, ``collect-shard-N``,
``write-shard-N``) are submitted to a task runner: a :class:`prefect_dask.DaskTaskRunner` on an
existing cluster (``dask_address``) or on a ``LocalCluster`` of ``dask_workers`` processes, or,
without Dask, the flow's own thread pool. The poller (submits and status checks, which only wait on
the provider) runs in the flow, so waiting never holds a Dask worker.

Workers get the provider key as the flow's other tasks do: from the credentials block passed to
them, or from their own environment (``OPENAI_API_KEY``...); a ``LocalCluster`` inherits the
flow's environment. The simulator's per-run key, which exists only in the flow's process, is
passed to the tasks as a secret value (never a flow parameter, so never stored by Prefect).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from pydantic import SecretStr

from . import artifacts, jobs
from .blocks import ProviderCredentials
from .budgets import job_budget
from .jobs import JobSummary, collect_chunks
from .jobs.budget import Budget, own_limits
from .jobs.dataset import write_shard
from .jobs.sharded import ShardSteps, prepare_shard, run_sharded, shard_content_fingerprint
from .providers import api_key_for, simulator_key
from .shards import DEFAULT_SHARD_ROWS, Shard
from .spec import JobSpec, ProviderTarget, RunOptions
from .store import JobStore
from .tasks import _RETRIED, provider_for

#: Submits a task with its parameters to a task runner, returning its future.
Submit = Callable[..., PrefectFuture[Any]]


@contextlib.contextmanager
def _provider(
    target: ProviderTarget, spec: JobSpec, credentials: ProviderCredentials | None, key: SecretStr | None
) -> Iterator[Any]:
    """The provider client of a shard task (in a worker, the simulator's key comes with the task)."""
    with contextlib.ExitStack() as stack:
        if key is not None and target.provider == "simulator":
            stack.enter_context(simulator_key(target.base_url, key.get_secret_value()))
        yield stack.enter_context(provider_for(target, spec, credentials))


@task(name="fingerprint-shard", task_run_name="fingerprint-shard-{shard.index}", cache_policy=NONE)
def fingerprint_shard(
    shard: Shard, storage_options: dict[str, Any] | None = None, spec: JobSpec | None = None
) -> str:
    """Hash the bytes of a shard's row groups, and its image files' sizes and times when ``spec``
    has image columns (see :func:`~prefect_llm_batch.jobs.sharded.shard_content_fingerprint`)."""
    return shard_content_fingerprint(shard, spec, storage_options)


@task(name="prepare-shard", task_run_name="prepare-shard-{shard.index}", cache_policy=NONE)
def prepare_shard_task(
    shard: Shard,
    job: jobs.JobIdentity,
    fingerprint: str,
    spec: JobSpec,
    target: ProviderTarget,
    state_dir: str,
    options: RunOptions,
    credentials: ProviderCredentials | None = None,
    key: SecretStr | None = None,
    storage_options: dict[str, Any] | None = None,
) -> jobs.JobRef:
    """Render, key and plan one shard as a job of its own (no HTTP)."""
    with _provider(target, spec, credentials, key) as provider:
        ref = prepare_shard(
            shard, job, fingerprint, spec, provider, target, state_dir=state_dir, cache=options.cache,
            storage_options=storage_options,
        )  # fmt: skip
    get_run_logger().info(
        "%s: %d rows, %d unique requests, %d batch(es)",
        shard.describe(),
        ref.rows,
        ref.unique_requests,
        ref.chunks,
    )
    return ref


@task(name="collect-shard", task_run_name="collect-shard-{index}", **_RETRIED)
def collect_shard_task(
    ref: jobs.JobRef,
    index: int,
    chunks: list[int],
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    credentials: ProviderCredentials | None = None,
    key: SecretStr | None = None,
) -> None:
    """Download and store the results of a shard's ended batches, under the shard's lease."""
    with _provider(target, spec, credentials, key) as provider, JobStore(ref.state_dir, ref.job_id).lease():
        collect_chunks(ref, chunks, provider, options)


@task(name="write-shard", task_run_name="write-shard-{index}", cache_policy=NONE)
def write_shard_task(
    ref: jobs.JobRef,
    index: int,
    earlier: list[jobs.JobRef],
    parts: str,
    parser: Callable[[str], Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> JobSummary:
    """Copy the shard's borrowed answers and write its part of the output dataset."""
    return write_shard(
        ref, index, earlier, parts, overwrite=True, parser=parser, storage_options=storage_options
    )


@dataclass
class TaskShardSteps:
    """The shard steps (:class:`~prefect_llm_batch.jobs.sharded.ShardSteps`) as Prefect tasks
    submitted with ``submit`` (a task runner's), all shards at once.

    Args:
        submit: ``runner.submit`` of a task runner (Dask), or a thread-pool submit.
        spec: The job.
        target: Where its HTTP goes.
        options: How it runs.
        state_dir: The state directory.
        provider: The poller's provider client (in the flow).
        credentials: The provider's credentials block (else the workers' environment).
        key: The simulator's per-run key (simulator only).
        parser: Parses answers for a response schema.
        storage_options: fsspec options of the source, state and output.
        budget: The provider budget shared with other jobs (a Prefect server), if any.
    """

    submit: Submit
    spec: JobSpec
    target: ProviderTarget
    options: RunOptions
    state_dir: str
    provider: Any
    credentials: ProviderCredentials | None = None
    key: SecretStr | None = None
    parser: Callable[[str], Any] | None = None
    storage_options: dict[str, Any] | None = None
    budget: Budget | None = None

    def _all(self, futures: list[PrefectFuture[Any]]) -> list[Any]:
        for future in futures:
            future.wait()
        return [future.result() for future in futures]

    def fingerprint(self, shards: list[Shard]) -> list[str]:
        """``fingerprint-shard-N`` of every shard."""
        return self._all(
            [
                self.submit(
                    fingerprint_shard,
                    {"shard": s, "storage_options": self.storage_options, "spec": self.spec},
                )
                for s in shards
            ]
        )

    def prepare(
        self, shards: list[Shard], job: jobs.JobIdentity, fingerprints: list[str]
    ) -> list[jobs.JobRef]:
        """``prepare-shard-N`` of every shard."""
        common = {
            "job": job, "spec": self.spec, "target": self.target, "state_dir": self.state_dir,
            "options": self.options, "credentials": self.credentials, "key": self.key,
            "storage_options": self.storage_options,
        }  # fmt: skip
        return self._all(
            [
                self.submit(prepare_shard_task, {"shard": s, "fingerprint": fp, **common})
                for s, fp in zip(shards, fingerprints, strict=True)
            ]
        )

    def collect(self, pairs: list[tuple[jobs.JobRef, list[int]]]) -> None:
        """``collect-shard-N`` of every shard whose round ended."""
        self._all(
            [
                self.submit(
                    collect_shard_task,
                    {
                        "ref": ref,
                        "index": _index(ref),
                        "chunks": chunks,
                        "spec": self.spec,
                        "target": self.target,
                        "options": self.options,
                        "credentials": self.credentials,
                        "key": self.key,
                    },
                )
                for ref, chunks in pairs
            ]
        )

    def write(self, refs: list[jobs.JobRef], parts: str) -> list[JobSummary]:
        """``write-shard-N`` of every shard."""
        return self._all(
            [
                self.submit(
                    write_shard_task,
                    {
                        "ref": ref,
                        "index": i,
                        "earlier": refs[:i],
                        "parts": parts,
                        "parser": self.parser,
                        "storage_options": self.storage_options,
                    },
                )
                for i, ref in enumerate(refs)
            ]
        )

    def tick_steps(self, ref: jobs.JobRef) -> jobs.TickSteps:
        """The poller's steps: plain calls in the flow (they only wait on the provider)."""
        return jobs.PlainSteps(ref, self.provider, self.options, budget=self.budget, wait_for_budget=False)


def _index(ref: jobs.JobRef) -> int:
    """A shard's index, from its job id (``{job_id}-{index:05d}``)."""
    return int(ref.job_id.rsplit("-", 1)[1])


def publish_shards(job_id: str, summaries: list[JobSummary]) -> None:
    """A table artifact of the shards: rows, answers, errors, batches and tokens of each."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key=artifacts.artifact_key(job_id) + "-shards",
        table=[
            {
                "shard": i,
                "job": s.job_id,
                "rows": s.rows,
                "ok": s.ok_rows,
                "errors": s.error_rows,
                "batches": len(s.batch_ids),
                "input tokens": s.input_tokens,
                "output tokens": s.output_tokens,
            }
            for i, s in enumerate(summaries)
        ],
        description=f"Shards of job {job_id}",
    )


def shard_steps_for(
    submit: Submit,
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    state_dir: str,
    provider: Any,
    credentials: ProviderCredentials | None,
    key: str | None,
    parser: Callable[[str], Any] | None,
    storage_options: dict[str, Any] | None,
) -> ShardSteps:
    """:class:`TaskShardSteps` (the simulator's key as a secret value)."""
    secret = SecretStr(key) if key is not None and target.provider == "simulator" else None
    budget = job_budget(target.provider, spec.model, options)
    return TaskShardSteps(
        submit,
        spec,
        target,
        options,
        state_dir,
        provider,
        credentials,
        secret,
        parser,
        storage_options,
        budget,
    )


@contextlib.contextmanager
def own_worker_environment() -> Iterator[None]:
    """While a run's local cluster starts: Dask's nanny neither rewrites this process' environment
    nor gives the workers its tuning variables, and the workers do not profile.

    A nanny writes ``distributed.nanny.pre-spawn-environ`` (``OMP_NUM_THREADS=1``,
    ``MALLOC_TRIM_THRESHOLD_=65536``, ...) into ``os.environ`` of the process that starts it (here, the
    user's flow run) and its workers inherit them: Arrow then sizes its thread pool to one thread, and
    glibc returns freed memory at once (so big arrays are paid for at first touch again and again).
    The run's workers get the environment of the flow run instead (and ``local_cluster_kwargs``'s).

    Its workers also run without Dask's statistical profiler (``distributed.worker.profile``), which
    samples the running task's stack every 10 ms for a dashboard the run's cluster does not have:
    measured, it is ~10% of a worker's CPU on prepare and write (``benchmarks/shards.py``).
    """
    import dask
    import distributed  # noqa: F401  (its configuration defaults)

    quiet = {key: None for key in dask.config.get("distributed.nanny.pre-spawn-environ")}
    with dask.config.set(
        {"distributed.nanny.pre-spawn-environ": quiet, "distributed.worker.profile.enabled": False}
    ):
        yield


def local_cluster_kwargs(workers: int) -> dict[str, Any]:
    """The ``LocalCluster`` of a run: ``workers`` processes of one Dask thread each, no dashboard,
    and Arrow's thread pool sized to the machine's share per worker.

    Dask starts workers with ``OMP_NUM_THREADS=1`` (``distributed.nanny.pre-spawn-environ``), which
    Arrow reads for its CPU thread pool: a lone worker would decode and encode Parquet on one thread
    where the same job in one process uses every core. The cluster is the run's own, so its
    workers get ``cpu_count // workers`` instead.

    Examples:
        >>> local_cluster_kwargs(2)["n_workers"], local_cluster_kwargs(2)["threads_per_worker"]
        (2, 1)
    """
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "env": {"OMP_NUM_THREADS": str(threads)},
    }


@contextlib.contextmanager
def task_submitter(engine: str, dask_address: str | None = None, dask_workers: int = 2) -> Iterator[Submit]:
    """How shard tasks are submitted: to a Dask cluster (``engine="dask"``: the one at
    ``dask_address``, else a ``LocalCluster`` of ``dask_workers`` processes, one thread each,
    closed afterwards), or to the flow's own task runner (``engine="process"``)."""
    if engine != "dask":
        yield lambda task_, parameters: task_.submit(**parameters)
        return
    from prefect_dask.task_runners import DaskTaskRunner

    runner = (
        DaskTaskRunner(address=dask_address)
        if dask_address
        else DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(dask_workers))
    )
    with contextlib.ExitStack() as stack:
        if not dask_address:
            stack.enter_context(own_worker_environment())
        stack.enter_context(runner)
        yield lambda task_, parameters: runner.submit(task_, parameters)


def run_in_shards(
    source: str,
    spec: JobSpec,
    target: ProviderTarget,
    options: RunOptions,
    *,
    state_dir: str,
    output: str,
    overwrite: bool = False,
    parser: Callable[[str], Any] | None = None,
    credentials: ProviderCredentials | None = None,
    engine: str = "dask",
    dask_address: str | None = None,
    dask_workers: int = 2,
    rows_per_shard: int | None = None,
    single_file: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> JobSummary:
    """Run a job as shards from a flow (see :func:`~prefect_llm_batch.jobs.sharded.run_sharded`):
    the per-shard steps as tasks on ``engine``, the poller in the flow; publish the shards' table
    and the job's summary as artifacts."""
    log = get_run_logger()
    key = api_key_for(target, credentials.api_key.get_secret_value() if credentials is not None else None)
    progress: dict[str, Any] = {}
    written: list[JobSummary] = []

    def on_poll(pending: list[jobs.JobRef]) -> None:
        if not progress and pending:
            job_id = pending[0].job_id.rsplit("-", 1)[0]
            progress.update(id=artifacts.start_progress(job_id), total=None)
        if progress:
            total = progress["total"] = progress["total"] or len(pending)
            done = 100.0 * (total - len(pending)) / total if total else 100.0
            artifacts.set_progress(progress["id"], min(done, artifacts.COLLECTED))

    with (
        provider_for(target, spec, credentials) as provider,
        task_submitter(engine, dask_address, dask_workers) as submit,
    ):
        steps = shard_steps_for(
            submit, spec, target, options, state_dir, provider, credentials, key, parser, storage_options
        )
        summary = run_sharded(
            source, spec, provider, target, options, steps, state_dir=state_dir, output=output,
            rows_per_shard=rows_per_shard or DEFAULT_SHARD_ROWS, overwrite=overwrite, single_file=single_file,
            storage_options=storage_options, on_poll=on_poll,
            on_written=written.extend,
        )  # fmt: skip
    if progress:
        artifacts.set_progress(progress["id"], 100.0)
    budget = steps.budget if isinstance(steps, TaskShardSteps) else None
    summary = summary.model_copy(update={"budget": budget.describe() if budget else own_limits(options)})
    publish_shards(summary.job_id, written)
    log.info(
        "job %s: %d rows in %d shard(s) written to %s", summary.job_id, summary.rows, len(written), output
    )
    artifacts.publish_summary(summary)
    return summary
