"""Provider budgets shared by every shard and every job of a provider and model: Prefect global
concurrency limits, held with leases.

A provider limits what one organisation has queued: tokens enqueued in batches not yet ended
(OpenAI's "enqueued tokens" per model) and batches in flight. A job keeps within its own
``max_enqueued_tokens`` / ``max_in_flight_batches``; shards of one job, and jobs running at the same
time, share the organisation's budget, so they take it from two Prefect global concurrency limits,
created when missing::

    llm-batch:{provider}:{model}:enqueued-tokens   limit: max_enqueued_tokens
    llm-batch:{provider}:{model}:batches           limit: max_in_flight_batches

(see :func:`limit_names`; an administrator may create them first, or change their limits in the UI:
an existing limit is used as it is). Before a batch is created its estimated tokens (and one batch)
are taken with a lease (while the budget is full, the submit waits, polling, and tries again); the
lease is renewed at every poll while the batch runs and released once it has ended. A run that dies
stops renewing: its leases expire after :data:`LEASE_SECONDS` and give the budget back.
``token_limit_exceeded`` and HTTP 429 are still handled as before (the budget is an estimate; the
provider has the last word).

Without a Prefect API (a run without a server), :func:`prefect_budget` gives None: each job keeps to
its own limits only, and its summary says so.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from uuid import UUID

from .spec import RunOptions

logger = logging.getLogger("prefect_llm_batch")

#: How long a lease lives without renewal: a few poll intervals (renewed at every poll).
LEASE_SECONDS = 15 * 60.0


def limit_names(provider: str, model: str) -> tuple[str, str]:
    """The names of the enqueued-token and in-flight-batch limits of a provider and model.

    Examples:
        >>> limit_names("openai", "gpt-4o-mini")
        ('llm-batch:openai:gpt-4o-mini:enqueued-tokens', 'llm-batch:openai:gpt-4o-mini:batches')
        >>> limit_names("openai", "org/model v2")[1]
        'llm-batch:openai:org-model-v2:batches'
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", model)
    return f"llm-batch:{provider}:{safe}:enqueued-tokens", f"llm-batch:{provider}:{safe}:batches"


class PrefectBudget:
    """The shared budget of a provider and model, held in Prefect global concurrency limits.

    Args:
        provider: The provider's name.
        model: The model.
        max_enqueued_tokens: The enqueued-token limit to create when missing (None: no token budget).
        max_in_flight_batches: The in-flight-batch limit to create when missing (None: none).
        client: A synchronous Prefect client (default: a new one per call).
    """

    shared = True

    def __init__(
        self,
        provider: str,
        model: str,
        *,
        max_enqueued_tokens: int | None,
        max_in_flight_batches: int | None,
        client: Any | None = None,
    ) -> None:
        self.tokens_name, self.batches_name = limit_names(provider, model)
        self._wanted = {self.tokens_name: max_enqueued_tokens, self.batches_name: max_in_flight_batches}
        self._client = client
        self._limits: dict[str, int] = {}

    def describe(self) -> str:
        """How the budget is held, for summaries and logs."""
        names = ", ".join(name for name in self._limits) or "none"
        return (
            f"shared with every job of this provider and model (Prefect global concurrency limits: {names})"
        )

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is not None:
            return getattr(self._client, method)(*args, **kwargs)
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return getattr(client, method)(*args, **kwargs)

    def ensure_limits(self) -> dict[str, int]:
        """Create the limits that are missing; return each limit in use (name: slots)."""
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectNotFound

        for name, wanted in self._wanted.items():
            if wanted is None:
                continue
            try:
                found = self._call("read_global_concurrency_limit_by_name", name)
            except ObjectNotFound:
                self._call(
                    "create_global_concurrency_limit", GlobalConcurrencyLimitCreate(name=name, limit=wanted)
                )
                logger.info("created the Prefect global concurrency limit %s (%d)", name, wanted)
                self._limits[name] = wanted
                continue
            self._limits[name] = int(found.limit)
            if found.limit != wanted:
                logger.info("the Prefect global concurrency limit %s is %d (kept as set)", name, found.limit)
        return dict(self._limits)

    def try_acquire(self, tokens: int) -> list[str] | None:
        """Take ``tokens`` enqueued tokens and one in-flight batch, or nothing while either limit is full.

        A batch bigger than the whole token budget takes all of it (it runs alone).

        Returns:
            The lease ids (one per limit), to renew and release; None when the budget is full.
        """
        from prefect.exceptions import PrefectHTTPStatusError

        if not self._limits:
            self.ensure_limits()
        leases: list[str] = []
        for name, slots in ((self.tokens_name, max(1, tokens)), (self.batches_name, 1)):
            if name not in self._limits:
                continue
            try:
                response = self._call(
                    "increment_concurrency_slots_with_lease",
                    names=[name], slots=min(slots, self._limits[name]), mode="concurrency",
                    lease_duration=LEASE_SECONDS,
                )  # fmt: skip
            except PrefectHTTPStatusError as exc:
                self.release(leases)
                if exc.response.status_code == 423:
                    return None
                raise
            leases.append(str(response.json()["lease_id"]))
        return leases

    def renew(self, leases: list[str]) -> None:
        """Keep leases alive (a lease that expired meanwhile is gone: nothing to do)."""
        from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

        for lease in leases:
            try:
                self._call("renew_concurrency_lease", UUID(lease), lease_duration=LEASE_SECONDS)
            except (ObjectNotFound, PrefectHTTPStatusError) as exc:
                logger.debug("lease %s could not be renewed: %s", lease, exc)

    def release(self, leases: list[str]) -> None:
        """Give leases back (one already gone is skipped)."""
        from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

        for lease in leases:
            try:
                self._call("release_concurrency_slots_with_lease", UUID(lease))
            except (ObjectNotFound, PrefectHTTPStatusError) as exc:
                logger.debug("lease %s could not be released: %s", lease, exc)


def job_budget(provider: str, model: str, options: RunOptions) -> PrefectBudget | None:
    """:func:`prefect_budget` for a job's ``max_enqueued_tokens`` and ``max_in_flight_batches``."""
    return prefect_budget(
        provider, model, max_enqueued_tokens=options.max_enqueued_tokens,
        max_in_flight_batches=options.max_in_flight_batches,
    )  # fmt: skip


def prefect_budget(
    provider: str, model: str, *, max_enqueued_tokens: int | None, max_in_flight_batches: int | None
) -> PrefectBudget | None:
    """The shared budget when a Prefect API is configured and a limit is asked for; else None
    (each job keeps to its own limits)."""
    if max_enqueued_tokens is None and max_in_flight_batches is None:
        return None
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    budget = PrefectBudget(
        provider, model, max_enqueued_tokens=max_enqueued_tokens, max_in_flight_batches=max_in_flight_batches
    )
    budget.ensure_limits()
    return budget
