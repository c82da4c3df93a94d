"""What every batch provider offers: one small interface, one status vocabulary.

A provider owns all HTTP of its wire format. Its ``build_line`` / ``parse_line`` are pure;
the rest talks to the network and raises only :mod:`prefect_llm_batch.errors` errors.
Provider statuses are mapped to :class:`BatchStatus`; the raw status is kept, and an unknown
status is an error, never a guess.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from ..errors import ProviderUnavailable
from ..results import RowResult, results_to_table
from ..schemas import ResponseSchema
from ..spec import BatchLimits


class BatchStatus(str, enum.Enum):
    """Where a provider batch is in its life."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """True once the batch will not change any more."""
        return self in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)

    @property
    def has_results(self) -> bool:
        """True when result files can be downloaded (possibly partial ones)."""
        return self in (BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


@dataclass
class BatchInfo:
    """A provider batch as last seen."""

    id: str
    status: BatchStatus
    raw_status: str
    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: float | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def first_error_code(self) -> str | None:
        """The ``code`` of the first entry of ``errors``, if any."""
        return str(self.errors[0].get("code")) if self.errors and self.errors[0].get("code") else None

    def error_summary(self) -> str:
        """The provider's validation errors as one line (at most five quoted)."""
        parts = []
        for err in self.errors[:5]:
            line = f" (line {err['line']})" if err.get("line") is not None else ""
            parts.append(f"{err.get('code')}: {err.get('message')}{line}")
        more = f" and {len(self.errors) - 5} more" if len(self.errors) > 5 else ""
        return "; ".join(parts) + more if parts else "no error details given"


class BatchProvider(ABC):
    """A provider batch API. Instances own an HTTP client: use them as context managers.

    One instance is shared by threads: :func:`~prefect_llm_batch.jobs.collect_chunks` calls
    ``retrieve``, ``download_results`` and ``delete_file`` from two threads at once, and
    ``jobs.prepare`` calls ``build_body`` from a thread of its own. Keep no
    per-call state on the instance (an ``httpx.Client`` is safe to share).
    """

    #: Identity of the provider in request keys (``"openai"``, ``"simulator"``...).
    name: str
    #: Size limits of one batch.
    limits: BatchLimits
    #: True when :meth:`find_batch` answers only with a batch proven to be the caller's (its
    #: metadata and input file are the caller's); False when batches carry neither (Anthropic),
    #: so a found batch is a candidate: the caller adopts it provisionally, never cancels it,
    #: and counts it as its own only once its results carry the caller's request ids.
    proves_adoption: bool = True

    @property
    @abstractmethod
    def key_base_url(self) -> str:
        """The base URL used in request keys (normalised, without credentials)."""

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """The endpoint requests go to, as written in request keys."""

    @abstractmethod
    def build_body(
        self,
        model: str,
        prompt: str,
        system: str | None,
        params: dict[str, Any],
        schema: ResponseSchema | None = None,
    ) -> dict[str, Any]:
        """Return the request body of one prompt (what the request key hashes). Pure.

        With a ``schema``, the body asks for structured answers in the provider's way.
        """

    @abstractmethod
    def build_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Return the input line (a JSON object) of one request. Pure."""

    @abstractmethod
    def parse_line(self, line: dict[str, Any], batch_id: str | None) -> RowResult:
        """Turn one result line into a :class:`RowResult`. Pure."""

    def parse_results(
        self, data: bytes, batch_id: str | None, *, where: str = "a result file", embeddings: bool = False
    ) -> pa.Table:
        """Parse a whole result file (JSONL) into a table, one row per line in file order. Pure.

        This default decodes the lines one by one (:func:`decode_result_lines`) and gives each
        to :meth:`parse_line`; a provider may override it with a faster parser that returns
        the same table.

        Args:
            data: The file's bytes (blank lines are skipped).
            batch_id: The batch the file belongs to (``response_batch_id``).
            where: What the file is, for messages.
            embeddings: Add the ``response_embedding`` column (embeddings jobs).

        Returns:
            A table of :data:`~prefect_llm_batch.results.RESULT_SCHEMA` (plus
            ``response_embedding`` with ``embeddings``), as
            :func:`~prefect_llm_batch.results.results_to_table` makes it.

        Raises:
            ProviderUnavailable: A line is not JSON or has no ``custom_id``.

        Examples:
            >>> from prefect_llm_batch.providers.anthropic import AnthropicBatchProvider
            >>> p = AnthropicBatchProvider(api_key="test-key")
            >>> data = b'{"custom_id": "k1", "result": {"type": "expired"}}\\n\\n'
            >>> p.parse_results(data, "msgbatch_1").to_pydict()["response_error_kind"]
            ['batch_expired']
            >>> p.close()
        """
        lines = decode_result_lines(data.splitlines(), where)
        return results_to_table((self.parse_line(line, batch_id) for line in lines), embeddings=embeddings)

    def download_results(self, batch: BatchInfo, *, embeddings: bool = False) -> pa.Table:
        """Download the results of an ended batch as one table, one row per result line.

        This default collects :meth:`iter_results`; providers with result files override it to
        parse each file whole with :meth:`parse_results`.

        Args:
            batch: The ended batch.
            embeddings: Add the ``response_embedding`` column (embeddings jobs).

        Returns:
            A table of :data:`~prefect_llm_batch.results.RESULT_SCHEMA` (plus
            ``response_embedding`` with ``embeddings``); duplicates and unknown ids included.
        """
        return results_to_table(self.iter_results(batch), embeddings=embeddings)

    @abstractmethod
    def upload(self, data: bytes, filename: str) -> str | None:
        """Store a batch input file (JSONL of :meth:`build_line` lines) where the provider needs it.

        Returns:
            The file id, or None for providers that take requests inline at create.
        """

    @abstractmethod
    def create(
        self, data: bytes, input_file_id: str | None, metadata: dict[str, str], *, requests: int
    ) -> BatchInfo:
        """Create a batch from an uploaded file (``input_file_id``) or inline ``data``.

        Raises :class:`~prefect_llm_batch.errors.AmbiguousCreate` when the outcome is unknown:
        the caller must then look for it with :meth:`find_batch`, never create blindly.
        """

    @abstractmethod
    def find_batch(
        self,
        metadata: dict[str, str],
        created_after: float | None = None,
        *,
        requests: int | None = None,
        exclude: Collection[str] = (),
        input_file_id: str | None = None,
    ) -> BatchInfo | None:
        """Return the newest batch created by :meth:`create` with ``metadata`` (and, when given,
        from ``input_file_id``), looking back to ``created_after``, never one in ``exclude``
        (owned by other chunks of the job, or already found not to be the caller's).

        Providers without batch metadata (:attr:`proves_adoption` False) may match on ``requests``
        and time: their answer is a candidate, not a proof."""

    @abstractmethod
    def retrieve(self, batch_id: str) -> BatchInfo:
        """Fetch a batch's current state."""

    @abstractmethod
    def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel a batch."""

    @abstractmethod
    def iter_results(self, batch: BatchInfo) -> Iterator[RowResult]:
        """Download the output and error files of an ended batch and yield one result per line."""

    @abstractmethod
    def delete_file(self, file_id: str) -> None:
        """Delete an uploaded file (input files once their batch has ended)."""

    @abstractmethod
    def close(self) -> None:
        """Release the HTTP client."""

    def __enter__(self) -> BatchProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_result_lines(lines: Iterable[bytes | str], where: str) -> Iterator[dict[str, Any]]:
    """Decode result lines (JSONL) one by one, skipping blank ones; each must carry a ``custom_id``.

    Args:
        lines: The raw lines.
        where: What they are, for messages (``"the output file of batch batch_1"``).

    Raises:
        ProviderUnavailable: A line is not JSON or has no ``custom_id`` (downloading again may help).

    Examples:
        >>> list(decode_result_lines([b'{"custom_id": "a"}', b""], "a test file"))
        [{'custom_id': 'a'}]
    """
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderUnavailable(f"line {number} of {where} is not JSON") from exc
        if not isinstance(line, dict) or "custom_id" not in line:
            raise ProviderUnavailable(f"line {number} of {where} has no custom_id")
        yield line
