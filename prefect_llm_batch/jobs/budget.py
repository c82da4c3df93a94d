"""A budget shared beyond one job (the protocol; ``prefect_llm_batch.budgets`` holds it in Prefect).

A job keeps within its own ``max_enqueued_tokens`` / ``max_in_flight_batches`` by counting its
own running batches (:func:`~prefect_llm_batch.jobs.submit.wait_for_capacity`). A :class:`Budget`
is shared with other jobs and shards: before a batch is created its estimated tokens are taken
from it (waiting while it is full), the leases are renewed at every poll while the batch runs,
and given back once it has ended. The lease ids live in the chunk's state, so a resumed run
renews or releases what an earlier one took.
"""

from __future__ import annotations

from typing import Protocol

from ..spec import RunOptions

#: What a summary says when no shared budget holds the job (a run without a Prefect server).
OWN_LIMITS = "this job's own limits only (no Prefect server holds a budget shared with other jobs)"


def own_limits(options: RunOptions) -> str:
    """What a summary says of a job without a shared budget: its own limits, if it has any.

    Examples:
        >>> own_limits(RunOptions()), own_limits(RunOptions(max_in_flight_batches=2))[:26]
        ('', "this job's own limits only")
    """
    if options.max_enqueued_tokens is None and options.max_in_flight_batches is None:
        return ""
    return OWN_LIMITS


class Budget(Protocol):
    """Provider capacity shared by every job and shard of a provider and model."""

    def try_acquire(self, tokens: int) -> list[str] | None:
        """Take ``tokens`` enqueued tokens and one in-flight batch: the lease ids, or None (nothing
        taken) while the budget is full."""

    def renew(self, leases: list[str]) -> None:
        """Keep leases alive."""

    def release(self, leases: list[str]) -> None:
        """Give leases back."""

    def describe(self) -> str:
        """How the budget is held, for summaries."""
