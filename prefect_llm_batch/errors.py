"""The error tree of prefect-llm-batch.

Every error raised on purpose by this package derives from :class:`LLMBatchError` and is
marked either :class:`Transient` (worth retrying: the same call may succeed later) or
:class:`Terminal` (retrying cannot help: fix the input, the key or the quota first).
Prefect tasks drive ``retry_condition_fn`` from that marker (see :func:`is_transient`).

::

    LLMBatchError
     ├── Transient
     │    ├── ProviderUnavailable      408/409/5xx, network errors on idempotent calls
     │    ├── RateLimited              429 (not insufficient_quota); carries retry_after
     │    ├── AmbiguousCreate          a create whose outcome is unknown (timeout after sending)
     │    └── BatchRetryable           a batch that ended in a retryable way (token_limit_exceeded)
     └── Terminal
          ├── InputError               bad input: names the row, column or field
          │    ├── TemplateError       a template that does not compile or render
          │    └── TableError          a table that cannot be read, or an output that exists
          ├── ConfigError              a bad option or a missing API key
          ├── ProviderRejected         401/403/404/400 and insufficient_quota, quoting the provider
          ├── BatchFailed              a batch that failed validation (quotes errors.data)
          ├── BatchCancelled           a batch cancelled by the user
          ├── StateError               the job state directory is unusable or inconsistent
          ├── JobLocked                another run of the same job holds its lease
          ├── CostLimitExceeded        the estimate is over max_cost_usd (nothing was sent)
          └── ErrorRateExceeded        more rows failed than max_error_rate allows (output was written)

Messages never contain secrets. Providers quote response bodies, never request headers, and
provider text may still quote the request (gateways echo headers, bodies or URLs): it is
redacted at the provider boundary (:func:`prefect_llm_batch.providers.http.redact`) before it
reaches an exception, a log, a Prefect state or a file. Removed are the keys the provider was
given, the values of ``Authorization`` / ``x-api-key`` / ``api-key`` headers, ``Bearer`` and
``sk-...`` tokens, and URL userinfo: in HTTP error answers (and the httpx errors they are chained
from), batch ``errors.data``, per-line errors of result files, and realtime error answers.
All errors are picklable (Prefect persists exceptions): every constructor argument is
kept in ``self.args``.

Examples:
    >>> from prefect_llm_batch.errors import RateLimited, is_transient
    >>> err = RateLimited("429 from POST /v1/batches", retry_after=2.0)
    >>> is_transient(err), err.retry_after
    (True, 2.0)
    >>> import pickle
    >>> pickle.loads(pickle.dumps(err)).retry_after
    2.0
"""

from __future__ import annotations

from typing import Any


class LLMBatchError(Exception):
    """Root of every error this package raises on purpose."""

    def __init__(self, message: str, *args: Any) -> None:
        super().__init__(message, *args)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Transient(LLMBatchError):
    """The same operation may succeed if tried again later."""


class Terminal(LLMBatchError):
    """Trying again cannot help; something must change first."""


class ProviderUnavailable(Transient):
    """The provider answered 408/409/5xx or could not be reached on an idempotent call."""

    def __init__(
        self, message: str, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code, retry_after)
        self.status_code = status_code
        self.retry_after = retry_after


class RateLimited(Transient):
    """The provider answered 429 for a reason that passes (not ``insufficient_quota``)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after)
        self.retry_after = retry_after


class AmbiguousCreate(Transient):
    """A create call was sent but its outcome is unknown; resolve by listing, never by creating again."""


class BatchRetryable(Transient):
    """A batch ended in a way that a later resubmission can fix (e.g. ``token_limit_exceeded``)."""

    def __init__(self, message: str, batch_id: str | None = None, code: str | None = None) -> None:
        super().__init__(message, batch_id, code)
        self.batch_id = batch_id
        self.code = code


class InputError(Terminal):
    """The input (table, template, options) is wrong; the message names the row, column or field."""


class TemplateError(InputError):
    """A prompt template does not compile, or does not render for some row."""


class TableError(InputError):
    """A table cannot be read or written as asked."""


class ConfigError(Terminal):
    """An option is invalid or a required setting (such as an API key) is missing."""


class ProviderRejected(Terminal):
    """The provider refused the call (401/403/400/404, ``insufficient_quota``); its message is quoted."""

    def __init__(self, message: str, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message, status_code, code)
        self.status_code = status_code
        self.code = code


class BatchFailed(Terminal):
    """A batch failed validation; the provider's ``errors.data`` is quoted."""

    def __init__(self, message: str, batch_id: str | None = None, code: str | None = None) -> None:
        super().__init__(message, batch_id, code)
        self.batch_id = batch_id
        self.code = code


class BatchCancelled(Terminal):
    """A batch was cancelled by the user."""


class StateError(Terminal):
    """The job state directory cannot be used (unreadable, inconsistent, or of another version)."""


class JobLocked(Terminal):
    """Another run of the same job holds its lease (one runner per job)."""


class CostLimitExceeded(Terminal):
    """A job's cost estimate exceeds ``max_cost_usd``; nothing was sent."""


class ErrorRateExceeded(Terminal):
    """More rows failed than ``max_error_rate`` allows. The output was written before this was raised."""

    def __init__(self, message: str, failed: int = 0, total: int = 0, output: str | None = None) -> None:
        super().__init__(message, failed, total, output)
        self.failed = failed
        self.total = total
        self.output = output


def is_transient(exc: BaseException) -> bool:
    """Tell whether an exception is worth retrying.

    Args:
        exc: Any exception.

    Returns:
        True for :class:`Transient` errors, False for everything else.

    Examples:
        >>> is_transient(ProviderUnavailable("503")), is_transient(ConfigError("no key"))
        (True, False)
    """
    return isinstance(exc, Transient)
