"""What every batch provider offers: one small interface, one status vocabulary.

A provider owns all HTTP of its wire format. Its ``build_line`` / ``parse_line`` are pure;
the rest talks to the network and raises only :mod:`prefect_llm_batch.errors` errors.
Provider statuses are mapped to :class:`BatchStatus`; the raw status is kept, and an unknown
status is an error, never a guess.
"""

from __future__ import annotations

import enum
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
import pyarrow as pa

from ..errors import ConfigError, ProviderUnavailable
from ..images import Image
from ..results import RowResult, result_schema, results_to_table
from ..schemas import ResponseSchema
from ..spec import BatchLimits

#: Bytes of a result file parsed at once. A slice ends at a line end (a longer line makes a
#: longer slice), so parsing holds one slice of the file in memory, not the file.
RESULT_SLICE_BYTES = 32 << 20
#: Unreadable result lines named in :attr:`ResultLines.examples` (the rest are only counted).
UNREADABLE_EXAMPLES = 3


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


@dataclass
class ResultLines:
    """A batch's result lines as one table, and the lines that could not be read.

    A line that is not JSON (garbled, cut) or carries no ``custom_id`` cannot be matched to its
    request: it is left out and counted, and its request, having no line, becomes ``missing``
    (retried in the next round). The lines that parse are all used.

    Attributes:
        table: One row per readable line, in file order (duplicates and unknown ids included), of
            :data:`~prefect_llm_batch.results.RESULT_SCHEMA` (plus ``response_embedding`` for
            embeddings jobs).
        unreadable: How many lines could not be read.
        examples: Where the first :data:`UNREADABLE_EXAMPLES` of them are
            (``"line 7 of the output file of batch batch_1"``).
    """

    table: pa.Table
    unreadable: int = 0
    examples: list[str] = field(default_factory=list)

    @staticmethod
    def combine(parts: Iterable[ResultLines], *, embeddings: bool = False) -> ResultLines:
        """The parts one after the other (an empty table of the right schema for no parts).

        Examples:
            >>> one = ResultLines(results_to_table([RowResult("a")]), 1, ["line 2 of f"])
            >>> both = ResultLines.combine([one, ResultLines(results_to_table([RowResult("b")]))])
            >>> both.table.num_rows, both.unreadable, both.examples
            (2, 1, ['line 2 of f'])
        """
        parts = list(parts)
        tables = [p.table for p in parts]
        examples = [e for p in parts for e in p.examples][:UNREADABLE_EXAMPLES]
        return ResultLines(
            pa.concat_tables(tables) if tables else result_schema(embeddings).empty_table(),
            sum(p.unreadable for p in parts),
            examples,
        )


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
    #: True when :meth:`upload` takes ``expires_after`` and :meth:`create` ``output_expires_after``
    #: (seconds, anchored at the file's creation): the provider deletes the job's remote files by
    #: itself (OpenAI's Files and Batch APIs). False: the job does not pass them.
    expires_remote_files: bool = False

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

    def cache_system_prompt(self, body: dict[str, Any]) -> dict[str, Any]:
        """Return ``body`` with its system prompt marked cacheable (prompt caching). Pure.

        Raises:
            ConfigError: The provider has no prompt caching to ask for (the default).
        """
        raise ConfigError(
            f"cache_system_prompt: provider {self.name!r} has no prompt caching to ask for in a request; "
            "it is for 'anthropic' (nothing was sent)"
        )

    #: The largest image in bytes a request may carry (checked before anything is sent); None: no limit known.
    max_image_bytes: int | None = None
    #: True when ``http(s)`` image URLs may be passed to the provider as they are.
    accepts_image_urls: bool = True

    def add_images(self, body: dict[str, Any], images: list[Image]) -> dict[str, Any]:
        """Return ``body`` with ``images`` as image parts of its user message, after its text. Pure.

        Raises:
            ConfigError: The provider or endpoint takes no images (the default).
        """
        raise ConfigError(
            f"image_columns: provider {self.name!r} takes no images on {self.endpoint} (nothing was sent)"
        )

    @abstractmethod
    def build_line(self, custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Return the input line (a JSON object) of one request. Pure."""

    @abstractmethod
    def parse_line(self, line: dict[str, Any], batch_id: str | None) -> RowResult:
        """Turn one result line into a :class:`RowResult`. Pure."""

    def parse_results(
        self,
        data: bytes,
        batch_id: str | None,
        *,
        where: str = "a result file",
        embeddings: bool = False,
        unreadable: list[int] | None = None,
        first_line: int = 1,
    ) -> pa.Table:
        """Parse a result file (JSONL), or a slice of whole lines of one, into a table, one row
        per line in file order. Pure.

        This default decodes the lines one by one (:func:`decode_result_lines`) and gives each
        to :meth:`parse_line`; a provider may override it with a faster parser that returns
        the same table.

        Args:
            data: The file's bytes (blank lines are skipped).
            batch_id: The batch the file belongs to (``response_batch_id``).
            where: What the file is, for messages.
            embeddings: Add the ``response_embedding`` column (embeddings jobs).
            unreadable: If given, lines that cannot be read are skipped and their numbers
                appended here, instead of raising.
            first_line: The number of the first line of ``data`` (for messages).

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
        lines = decode_result_lines(data.splitlines(), where, unreadable=unreadable, first_line=first_line)
        return results_to_table((self.parse_line(line, batch_id) for line in lines), embeddings=embeddings)

    def parse_result_file(
        self, file: IO[bytes], batch_id: str | None, *, where: str, embeddings: bool = False
    ) -> ResultLines:
        """Parse a result file in slices of about :data:`RESULT_SLICE_BYTES` (whole lines each,
        :func:`line_slices`) with :meth:`parse_results`; lines that cannot be read are counted.

        Memory holds one slice of the file's raw bytes and the parsed rows (an Arrow table: the
        answers without their JSON envelope), never the file's bytes.

        Args:
            file: The file, open for reading in binary mode at its start.
            batch_id: The batch the file belongs to.
            where: What the file is, for messages (``"the output file of batch batch_1"``).
            embeddings: Add the ``response_embedding`` column (embeddings jobs).
        """
        tables: list[pa.Table] = []
        unreadable: list[int] = []
        first_line = 1
        for piece in line_slices(file, RESULT_SLICE_BYTES):
            tables.append(
                self.parse_results(
                    piece,
                    batch_id,
                    where=where,
                    embeddings=embeddings,
                    unreadable=unreadable,
                    first_line=first_line,
                )
            )
            first_line += piece.count(b"\n")
            del piece
        examples = [f"line {n} of {where}" for n in unreadable[:UNREADABLE_EXAMPLES]]
        table = pa.concat_tables(tables) if tables else result_schema(embeddings).empty_table()
        return ResultLines(table, len(unreadable), examples)

    def read_result_file(
        self, save: Callable[[IO[bytes]], None], batch_id: str | None, *, where: str, embeddings: bool = False
    ) -> ResultLines:
        """Download a result file to a local temporary file with ``save`` (which writes it in
        pieces), then parse it in slices (:meth:`parse_result_file`). The copy is deleted after."""
        with tempfile.TemporaryFile(prefix="prefect-llm-batch-results-") as file:
            save(file)
            file.seek(0)
            return self.parse_result_file(file, batch_id, where=where, embeddings=embeddings)

    def read_results(self, batch: BatchInfo, *, embeddings: bool = False) -> ResultLines:
        """Download and parse the results of an ended batch; lines that cannot be read are
        counted, not fatal.

        This default collects :meth:`iter_results`; providers with result files override it to
        stream each file to local storage and parse it in slices (:meth:`read_result_file`).

        Args:
            batch: The ended batch.
            embeddings: Add the ``response_embedding`` column (embeddings jobs).
        """
        return ResultLines(results_to_table(self.iter_results(batch), embeddings=embeddings))

    def download_results(self, batch: BatchInfo, *, embeddings: bool = False) -> pa.Table:
        """Download the results of an ended batch as one table, one row per readable result line
        (the table of :meth:`read_results`).

        Args:
            batch: The ended batch.
            embeddings: Add the ``response_embedding`` column (embeddings jobs).

        Returns:
            A table of :data:`~prefect_llm_batch.results.RESULT_SCHEMA` (plus
            ``response_embedding`` with ``embeddings``); duplicates and unknown ids included.
        """
        return self.read_results(batch, embeddings=embeddings).table

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


def decode_result_lines(
    lines: Iterable[bytes | str], where: str, *, unreadable: list[int] | None = None, first_line: int = 1
) -> Iterator[dict[str, Any]]:
    """Decode result lines (JSONL) one by one, skipping blank ones; each must carry a ``custom_id``.

    Args:
        lines: The raw lines.
        where: What they are, for messages (``"the output file of batch batch_1"``).
        unreadable: If given, a line that is not JSON or has no ``custom_id`` is skipped and its
            number appended here, instead of raising.
        first_line: The number of the first line (for messages).

    Raises:
        ProviderUnavailable: A line is not JSON or has no ``custom_id`` (downloading again may
            help), unless ``unreadable`` is given.

    Examples:
        >>> list(decode_result_lines([b'{"custom_id": "a"}', b""], "a test file"))
        [{'custom_id': 'a'}]
        >>> bad: list[int] = []
        >>> list(decode_result_lines([b'{"custom_id": "a"}', b'{"cust'], "f", unreadable=bad)), bad
        ([{'custom_id': 'a'}], [2])
    """
    for number, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if unreadable is None:
                raise ProviderUnavailable(f"line {number} of {where} is not JSON") from exc
            unreadable.append(number)
            continue
        if not isinstance(line, dict) or "custom_id" not in line:
            if unreadable is None:
                raise ProviderUnavailable(f"line {number} of {where} has no custom_id")
            unreadable.append(number)
            continue
        yield line


def line_slices(file: IO[bytes], size: int) -> Iterator[bytes]:
    """Read a file in slices of about ``size`` bytes, each ending at a line end (or the file's end).

    A line longer than ``size`` makes one longer slice. Memory: about two slices at the most.

    Examples:
        >>> import io
        >>> list(line_slices(io.BytesIO(b"ab\\ncdefg\\nh\\ni"), 4))
        [b'ab\\n', b'cdefg\\n', b'h\\n', b'i']
    """
    while True:
        piece = file.read(size)
        if not piece:
            return
        end = piece.rfind(b"\n") + 1
        while end == 0:  # no line end yet: a long line, or the last one
            more = file.read(size)
            if not more:
                break
            start = len(piece)
            piece += more
            end = piece.find(b"\n", start) + 1
        if 0 < end < len(piece):
            file.seek(end - len(piece), 1)  # the rest starts the next slice
            piece = piece[:end]
        yield piece
