"""From provider answers to typed output columns joined back to the input rows (pure).

A provider turns each result line into one :class:`RowResult`, keyed by ``custom_id``.
:func:`join_results` then maps every input row to its result through the row's request key
(never through line order), marks rows with no result as ``missing``, and appends the fixed
output columns. The output schema never depends on which rows failed:

=============================  =========  ==============================================
column                         type       holds
=============================  =========  ==============================================
``response``                   string     the answer text (kept for ``length``)
``response_error_kind``        string     an :class:`~prefect_llm_batch.spec.ErrorKind` value
``response_error``             string     a short human message
``response_input_tokens``      int64      prompt tokens of the request that answered the row
``response_output_tokens``     int64      completion tokens of that request
``response_finish_reason``     string     ``stop``, ``length``, ``content_filter``...
``response_model``             string     the model that answered
``response_batch_id``          string     the provider batch that carried the request
``response_cached``            bool       true when the answer came from the response cache
``response_attempts``          int64      times this job sent the request (0 when cached)
=============================  =========  ==============================================

Then ``response_cache_read_tokens`` and ``response_cache_write_tokens`` (int64): of the input
tokens, those read from and written to the provider's prompt cache (Anthropic
``cache_read_input_tokens`` / ``cache_creation_input_tokens``; OpenAI reports reads only, as
``cached_tokens``); null when the provider reports nothing.

With a response schema, :func:`parse_structured` adds one typed column per top-level property
(after the columns above, optionally prefixed); a row whose answer is not valid JSON
(``parse_error``) or does not fit the schema (``schema_violation``) keeps its raw text in
``response`` and has nulls in the typed columns.

Rows that share a request share its answer and its token counts: sum the token columns over
distinct requests, not rows, to get what was billed (the job summary does this).

Examples:
    >>> import pyarrow as pa
    >>> table = pa.table({"q": ["a", "b"]})
    >>> ok = RowResult(custom_id="k1", response="yes", input_tokens=3, output_tokens=1)
    >>> out = join_results(table, ["k1", "k2"], [ok])
    >>> out.column_names[:3], out["response"].to_pylist(), out["response_error_kind"].to_pylist()
    (['q', 'response', 'response_error_kind'], ['yes', None], [None, 'missing'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .schemas import ResponseSchema, SchemaViolation
from .spec import ErrorKind

#: Longest error message kept in ``response_error``.
MAX_ERROR_CHARS = 500

OUTPUT_FIELDS: tuple[pa.Field[Any], ...] = (
    pa.field("response", pa.string()),
    pa.field("response_error_kind", pa.string()),
    pa.field("response_error", pa.string()),
    pa.field("response_input_tokens", pa.int64()),
    pa.field("response_output_tokens", pa.int64()),
    pa.field("response_finish_reason", pa.string()),
    pa.field("response_model", pa.string()),
    pa.field("response_batch_id", pa.string()),
    pa.field("response_cached", pa.bool_()),
    pa.field("response_attempts", pa.int64()),
    pa.field("response_cache_read_tokens", pa.int64()),
    pa.field("response_cache_write_tokens", pa.int64()),
)
#: Result columns added after the first versions: a job's state or a cache segment written before
#: them lacks them, and reads them as nulls (:func:`with_later_columns`).
LATER_FIELDS: tuple[pa.Field[Any], ...] = OUTPUT_FIELDS[-2:]
OUTPUT_COLUMNS: tuple[str, ...] = tuple(f.name for f in OUTPUT_FIELDS)
RESULT_SCHEMA = pa.schema([pa.field("custom_id", pa.string()), *OUTPUT_FIELDS])


@dataclass
class RowResult:
    """The normalised outcome of one request (one ``custom_id``)."""

    custom_id: str
    response: str | None = None
    error_kind: ErrorKind | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    model: str | None = None
    batch_id: str | None = None
    cached: bool = False
    attempts: int | None = None
    embedding: list[float] | None = None
    #: Of ``input_tokens``, those read from the provider's prompt cache.
    cache_read_tokens: int | None = None
    #: Of ``input_tokens``, those written to the provider's prompt cache.
    cache_write_tokens: int | None = None

    @property
    def ok(self) -> bool:
        """True when the request produced an answer without error."""
        return self.error_kind is None


def short(message: str) -> str:
    """Trim a message to :data:`MAX_ERROR_CHARS` characters.

    Examples:
        >>> len(short("x" * 1000))
        500
    """
    message = " ".join(message.split())
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


def error_kind_for_status(status: int, code: str | None = None, error_type: str | None = None) -> ErrorKind:
    """Map an HTTP status (plus the provider's error code/type) to an :class:`ErrorKind`.

    Examples:
        >>> error_kind_for_status(429, "rate_limit_exceeded").value
        'rate_limited'
        >>> error_kind_for_status(429, "insufficient_quota").value
        'insufficient_quota'
        >>> error_kind_for_status(503).value, error_kind_for_status(401).value
        ('server_error', 'auth')
    """
    if code == "insufficient_quota" or error_type == "insufficient_quota":
        return ErrorKind.INSUFFICIENT_QUOTA
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (401, 403):
        return ErrorKind.AUTH
    if status in (408, 409) or status >= 500:
        return ErrorKind.SERVER_ERROR
    return ErrorKind.INVALID_REQUEST


#: Top-level ``error.code`` values of requests that never ran.
NEVER_RAN_CODES: dict[str, ErrorKind] = {
    "batch_expired": ErrorKind.BATCH_EXPIRED,
    "batch_cancelled": ErrorKind.BATCH_CANCELLED,
    "request_timeout": ErrorKind.REQUEST_TIMEOUT,
}


def cached_tokens(usage: Any, details: str) -> int | None:
    """OpenAI's ``usage.{details}.cached_tokens`` (the prompt tokens read from its prompt cache;
    ``prompt_tokens_details`` in chat completions, ``input_tokens_details`` in Responses), or None.

    Examples:
        >>> cached_tokens({"prompt_tokens_details": {"cached_tokens": 7}}, "prompt_tokens_details")
        7
        >>> cached_tokens({"prompt_tokens": 7}, "prompt_tokens_details") is None
        True
    """
    section = usage.get(details) if isinstance(usage, dict) else None
    return _int_or_none(section.get("cached_tokens")) if isinstance(section, dict) else None


def with_later_columns(table: pa.Table) -> pa.Table:
    """A results table with the :data:`LATER_FIELDS` it lacks added as nulls (state and cache
    segments written before those columns existed); any other table is returned as it is.

    Examples:
        >>> old = pa.table({"custom_id": ["k"], "response_input_tokens": pa.array([3], pa.int64())})
        >>> with_later_columns(old).column_names[-1], with_later_columns(pa.table({"x": [1]})).num_columns
        ('response_cache_write_tokens', 1)
    """
    if not any(name in table.column_names for name in OUTPUT_COLUMNS):
        return table
    for field in LATER_FIELDS:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table


def parse_chat_completion(custom_id: str, body: dict[str, Any], batch_id: str | None = None) -> RowResult:
    """Turn a successful chat-completions response body into a :class:`RowResult`.

    ``message.refusal`` becomes ``refusal``; ``finish_reason`` ``length`` keeps the cut text and
    is marked ``length``; ``content_filter`` is marked ``content_filter``; a body without a
    choice or content is a ``parse_error``.

    Examples:
        >>> body = {"model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        ...         "usage": {"prompt_tokens": 5, "completion_tokens": 1,
        ...                   "prompt_tokens_details": {"cached_tokens": 3}}}
        >>> r = parse_chat_completion("k", body)
        >>> r.response, r.error_kind, r.input_tokens, r.output_tokens, r.cache_read_tokens
        ('hi', None, 5, 1, 3)
    """
    usage = body.get("usage") or {}
    result = RowResult(
        custom_id=custom_id,
        input_tokens=_int_or_none(usage.get("prompt_tokens")),
        output_tokens=_int_or_none(usage.get("completion_tokens")),
        cache_read_tokens=cached_tokens(usage, "prompt_tokens_details"),
        model=body.get("model") if isinstance(body.get("model"), str) else None,
        batch_id=batch_id,
    )
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        result.error_kind, result.error = ErrorKind.PARSE_ERROR, "the response has no choices"
        return result
    choice = choices[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    result.finish_reason = finish if isinstance(finish, str) else None
    content = message.get("content") if isinstance(message, dict) else None
    refusal = message.get("refusal") if isinstance(message, dict) else None
    if isinstance(content, str):
        result.response = content
    if refusal:
        result.error_kind, result.error = ErrorKind.REFUSAL, short(f"the model refused: {refusal}")
    elif finish == "content_filter":
        result.error_kind, result.error = (
            ErrorKind.CONTENT_FILTER,
            "the answer was stopped by a content filter",
        )
    elif finish == "length":
        result.error_kind = ErrorKind.LENGTH
        result.error = "the answer was cut at the token limit (max_tokens); the partial text is kept"
    elif not isinstance(content, str):
        result.error_kind, result.error = ErrorKind.PARSE_ERROR, "the response message has no text content"
    return result


#: ``error.code`` values of a failed Response object that are worth sending again.
_RETRYABLE_RESPONSE_CODES: dict[str, ErrorKind] = {
    "server_error": ErrorKind.SERVER_ERROR,
    "rate_limit_exceeded": ErrorKind.RATE_LIMITED,
    "vector_store_timeout": ErrorKind.SERVER_ERROR,
}
#: ``incomplete_details.reason`` of a Response object -> (finish reason, error kind).
_INCOMPLETE_REASONS: dict[str, tuple[str, ErrorKind]] = {
    "max_output_tokens": ("length", ErrorKind.LENGTH),
    "content_filter": ("content_filter", ErrorKind.CONTENT_FILTER),
}


def parse_response(custom_id: str, body: dict[str, Any], batch_id: str | None = None) -> RowResult:
    """Turn a Responses API ``response`` object into a :class:`RowResult`.

    The answer is the text of every ``output_text`` part of the ``message`` items of ``output``
    (other items, such as ``reasoning``, are skipped); a ``refusal`` part becomes ``refusal``.
    ``status`` ``incomplete`` keeps the partial text and is marked by
    ``incomplete_details.reason`` (``max_output_tokens`` -> ``length``, ``content_filter`` ->
    ``content_filter``, any other reason -> ``length`` naming it); ``failed`` maps ``error.code``
    (``server_error``, ``rate_limit_exceeded``: retryable; the rest ``invalid_request``);
    ``cancelled`` is ``batch_cancelled``. Usage is ``usage.input_tokens`` / ``output_tokens``.

    Examples:
        >>> body = {"object": "response", "model": "m", "status": "completed", "output": [
        ...     {"type": "reasoning", "summary": []},
        ...     {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}],
        ...     "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}}
        >>> r = parse_response("k", body)
        >>> r.response, r.error_kind, r.finish_reason, r.input_tokens, r.output_tokens
        ('hi', None, 'stop', 5, 1)
        >>> body.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
        >>> parse_response("k", body).error_kind.value
        'length'
    """
    usage = body.get("usage") or {}
    result = RowResult(
        custom_id=custom_id,
        input_tokens=_int_or_none(usage.get("input_tokens")),
        output_tokens=_int_or_none(usage.get("output_tokens")),
        cache_read_tokens=cached_tokens(usage, "input_tokens_details"),
        model=body.get("model") if isinstance(body.get("model"), str) else None,
        batch_id=batch_id,
    )
    texts: list[str] = []
    refusals: list[str] = []
    output = body.get("output")
    for item in output if isinstance(output, list) else []:
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        content = item.get("content")
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                refusals.append(part["refusal"])
    if texts:
        result.response = "".join(texts)
    status = body.get("status")
    if status in (None, "completed"):
        result.finish_reason = "stop"
    elif status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        reason = reason if isinstance(reason, str) else "unknown"
        result.finish_reason, result.error_kind = _INCOMPLETE_REASONS.get(reason, (reason, ErrorKind.LENGTH))
        result.error = (
            "the answer was stopped by a content filter"
            if result.error_kind is ErrorKind.CONTENT_FILTER
            else f"the answer is incomplete ({reason}); the partial text is kept"
        )
        return result
    elif status == "failed":
        error = body.get("error")
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or "failed")
        result.finish_reason = "failed"
        result.error_kind = _RETRYABLE_RESPONSE_CODES.get(code, ErrorKind.INVALID_REQUEST)
        result.error = short(f"{code}: {error.get('message') or 'the response failed'}")
        return result
    elif status == "cancelled":
        result.finish_reason = "cancelled"
        result.error_kind, result.error = ErrorKind.BATCH_CANCELLED, "the response was cancelled"
        return result
    else:
        result.error_kind = ErrorKind.PARSE_ERROR
        result.error = short(f"the response has the unexpected status {status!r}")
        return result
    if refusals:
        result.error_kind, result.error = ErrorKind.REFUSAL, short(f"the model refused: {' '.join(refusals)}")
    elif not texts:
        result.error_kind, result.error = ErrorKind.PARSE_ERROR, "the response has no output_text"
    return result


def parse_embedding(custom_id: str, body: dict[str, Any], batch_id: str | None = None) -> RowResult:
    """Turn a successful embeddings response body into a :class:`RowResult` (one input per request).

    Examples:
        >>> r = parse_embedding("k", {"model": "m", "data": [{"index": 0, "embedding": [0.5, -1.0]}],
        ...                           "usage": {"prompt_tokens": 3, "total_tokens": 3}})
        >>> r.embedding, r.input_tokens, r.error_kind
        ([0.5, -1.0], 3, None)
    """
    usage = body.get("usage") or {}
    result = RowResult(
        custom_id=custom_id,
        input_tokens=_int_or_none(usage.get("prompt_tokens")),
        model=body.get("model") if isinstance(body.get("model"), str) else None,
        batch_id=batch_id,
    )
    data = body.get("data")
    vector = (
        data[0].get("embedding") if isinstance(data, list) and data and isinstance(data[0], dict) else None
    )
    if not isinstance(vector, list) or not all(isinstance(v, (int, float)) for v in vector):
        result.error_kind, result.error = ErrorKind.PARSE_ERROR, "the response has no embedding vector"
        return result
    result.embedding = [float(v) for v in vector]
    return result


#: Vector width of OpenAI's embedding models when no ``dimensions`` parameter is sent.
EMBEDDING_WIDTHS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
EMBEDDING_COLUMN = "response_embedding"


def embedding_type(model: str, params: dict[str, Any]) -> pa.DataType:
    """Arrow type of ``response_embedding``: a fixed-size list of float32 when the width is known
    (a ``dimensions`` parameter, or a model in :data:`EMBEDDING_WIDTHS`), else a list of float32.

    Examples:
        >>> str(embedding_type("text-embedding-3-small", {"dimensions": 8}))
        'fixed_size_list<item: float>[8]'
        >>> str(embedding_type("my-local-model", {}))
        'list<item: float>'
    """
    width = params.get("dimensions")
    if not isinstance(width, int):
        width = next((w for name, w in EMBEDDING_WIDTHS.items() if model.startswith(name)), None)
    return pa.list_(pa.float32(), width) if isinstance(width, int) and width > 0 else pa.list_(pa.float32())


def embedding_column(results: Iterable[RowResult]) -> pa.Array[Any]:
    """The embeddings of results as a list<float32> array (null where there is none)."""
    return pa.array([r.embedding for r in results], pa.list_(pa.float32()))


def cast_embeddings(results: pa.Table, data_type: pa.DataType) -> pa.Table:
    """Cast a results table's ``response_embedding`` to its final type; a vector of another
    width becomes a ``parse_error`` row instead of failing the job."""
    vectors = results.column(EMBEDDING_COLUMN).combine_chunks()
    if isinstance(data_type, pa.FixedSizeListType):
        lengths = pc.list_value_length(vectors)
        wrong = pc.fill_null(pc.not_equal(lengths, pa.scalar(data_type.list_size, pa.int32())), False)
        if pc.any(wrong).as_py():
            kinds = pc.if_else(
                wrong, pa.scalar(ErrorKind.PARSE_ERROR.value), results.column("response_error_kind")
            )
            message = f"the embedding does not have {data_type.list_size} dimensions"
            errors = pc.if_else(wrong, pa.scalar(message), results.column("response_error"))
            results = results.set_column(
                results.schema.get_field_index("response_error_kind"), "response_error_kind", kinds
            )
            results = results.set_column(
                results.schema.get_field_index("response_error"), "response_error", errors
            )
            vectors = pc.if_else(wrong, pa.nulls(len(vectors), vectors.type), vectors)
    index = results.schema.get_field_index(EMBEDDING_COLUMN)
    return results.set_column(index, pa.field(EMBEDDING_COLUMN, data_type), vectors.cast(data_type))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def result_schema(embeddings: bool = False) -> pa.Schema:
    """:data:`RESULT_SCHEMA`, plus ``response_embedding`` (list of float32) for embeddings jobs."""
    if not embeddings:
        return RESULT_SCHEMA
    return RESULT_SCHEMA.append(pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32())))


def results_to_table(results: Iterable[RowResult], *, embeddings: bool = False) -> pa.Table:
    """Collect row results into an Arrow table of :data:`RESULT_SCHEMA` (plus
    ``response_embedding``, a list of float32, for embeddings jobs).

    Examples:
        >>> results_to_table([RowResult("k", response="a")]).num_rows
        1
    """
    columns: dict[str, list[Any]] = {name: [] for name in RESULT_SCHEMA.names}
    vectors: list[list[float] | None] = []
    for r in results:
        vectors.append(r.embedding)
        columns["custom_id"].append(r.custom_id)
        columns["response"].append(r.response)
        columns["response_error_kind"].append(r.error_kind.value if r.error_kind else None)
        columns["response_error"].append(r.error)
        columns["response_input_tokens"].append(r.input_tokens)
        columns["response_output_tokens"].append(r.output_tokens)
        columns["response_finish_reason"].append(r.finish_reason)
        columns["response_model"].append(r.model)
        columns["response_batch_id"].append(r.batch_id)
        columns["response_cached"].append(r.cached)
        columns["response_attempts"].append(r.attempts)
        columns["response_cache_read_tokens"].append(r.cache_read_tokens)
        columns["response_cache_write_tokens"].append(r.cache_write_tokens)
    table = pa.table(columns, schema=RESULT_SCHEMA)
    if embeddings:
        table = table.append_column(EMBEDDING_COLUMN, pa.array(vectors, pa.list_(pa.float32())))
    return table


def empty_results() -> pa.Table:
    """An empty table of :data:`RESULT_SCHEMA`."""
    return RESULT_SCHEMA.empty_table()


def parse_structured(
    results: pa.Table,
    schema: ResponseSchema,
    *,
    parser: Callable[[str], Any] | None = None,
    column_prefix: str = "",
) -> pa.Table:
    """Parse the answers of a results table against a schema and append the typed columns.

    Only rows without an error are parsed. Invalid JSON (or a ``parser`` that raises) becomes
    ``parse_error``; JSON that does not fit becomes ``schema_violation`` naming the path.

    Args:
        results: A table of :data:`RESULT_SCHEMA` (one row per request).
        schema: The response schema.
        parser: Optional function from the answer text to a dict (default: JSON).
        column_prefix: Prefix of the typed column names.

    Returns:
        ``results`` with updated error columns and one typed column per schema property.

    Examples:
        >>> schema = ResponseSchema({"type": "object", "properties": {"n": {"type": "integer"}}})
        >>> res = results_to_table([RowResult("a", response='{"n": 2}'),
        ...     RowResult("b", response='{"n": "x"}'), RowResult("c", response="oops")])
        >>> out = parse_structured(res, schema)
        >>> out["n"].to_pylist(), out["response_error_kind"].to_pylist()
        ([2, None, None], [None, 'schema_violation', 'parse_error'])
    """
    loads = parser or orjson.loads
    texts = results.column("response").combine_chunks()
    kinds = results.column("response_error_kind").combine_chunks()
    messages = results.column("response_error").combine_chunks()
    # Each distinct answer text is parsed and checked once (classification jobs repeat a handful
    # of answers a million times); rows then take their text's outcome in Arrow.
    eligible = pc.and_(pc.is_null(kinds), pc.is_valid(texts))
    distinct = pc.unique(pc.filter(texts, eligible))
    values: list[dict[str, Any] | None] = []
    failures: list[str | None] = []
    failure_messages: list[str | None] = []
    for text in distinct.to_pylist():
        try:
            parsed = loads(str(text))
        except Exception as exc:  # a user's parser may raise anything
            values.append(None)
            failures.append(ErrorKind.PARSE_ERROR.value)
            failure_messages.append(short(f"the answer is not valid JSON: {exc}"))
            continue
        try:
            values.append(schema.convert(parsed))
            failures.append(None)
            failure_messages.append(None)
        except SchemaViolation as exc:
            values.append(None)
            failures.append(ErrorKind.SCHEMA_VIOLATION.value)
            failure_messages.append(short(f"the answer does not fit the schema: {exc}"))
    where = pc.if_else(eligible, pc.index_in(texts, value_set=distinct), pa.scalar(None, pa.int32()))
    failed = pa.array(failures, pa.string()).take(where)
    out = results.set_column(
        results.schema.get_field_index("response_error_kind"),
        "response_error_kind",
        pc.coalesce(failed, kinds),
    )
    out = out.set_column(
        out.schema.get_field_index("response_error"),
        "response_error",
        pc.coalesce(pa.array(failure_messages, pa.string()).take(where), messages),
    )
    arrays = schema.to_arrays(values)
    for (name, data_type), array in zip(schema.arrow_fields(), arrays, strict=True):
        out = out.append_column(pa.field(column_prefix + name, data_type), array.take(where))
    return out


def join_results(
    table: pa.Table, row_ids: Sequence[str] | pa.Array[Any], results: Iterable[RowResult] | pa.Table
) -> pa.Table:
    """Append the output columns to ``table``, each row taking the result of its ``custom_id``.

    Vectorised: rows are matched to results with an Arrow hash lookup, not per-row Python.
    A row whose ``custom_id`` has no result gets ``response_error_kind = "missing"``.

    Args:
        table: The input table (its columns are kept unchanged, in order).
        row_ids: The ``custom_id`` of each input row.
        results: Row results (or a table of :data:`RESULT_SCHEMA`, possibly followed by typed
            answer columns from :func:`parse_structured`); a ``custom_id`` may appear once only.

    Returns:
        ``table`` with the :data:`OUTPUT_FIELDS` columns (then any typed answer columns) appended.

    Raises:
        ValueError: ``row_ids`` does not have one entry per row, or a result id repeats.
    """
    result_table = results if isinstance(results, pa.Table) else results_to_table(results)
    result_table = normalise_results(result_table)
    ids = row_ids if isinstance(row_ids, pa.Array) else pa.array(list(row_ids), type=pa.string())
    if len(ids) != table.num_rows:
        raise ValueError(f"{len(ids)} row ids for {table.num_rows} rows")
    return join_at(table, result_table, result_positions(ids, result_table))


def normalise_results(result_table: pa.Table) -> pa.Table:
    """A results table with :data:`RESULT_SCHEMA`'s columns first and typed, then any others."""
    extra = [f for f in result_table.schema if f.name not in RESULT_SCHEMA.names]
    return result_table.select([*RESULT_SCHEMA.names, *(f.name for f in extra)]).cast(
        pa.schema([*RESULT_SCHEMA, *extra])
    )


def result_positions(
    row_ids: pa.Array[Any], result_table: pa.Table, *, check_unique: bool = True
) -> pa.Array[Any]:
    """For every row id, the position of its result in ``result_table`` (null when it has none).

    One hash lookup for all rows: compute it once, then :func:`join_at` slices of rows.

    Args:
        row_ids: The ``custom_id`` of every row.
        result_table: One result per ``custom_id``.
        check_unique: Check that no result id repeats (a second hash of the ids; callers that
            built ``result_table`` one result per id skip it).

    Raises:
        ValueError: A result id repeats.

    Examples:
        >>> res = results_to_table([RowResult("k2"), RowResult("k1")])
        >>> result_positions(pa.array(["k1", "k3", "k1"]), res).to_pylist()
        [1, None, 1]
    """
    result_ids = result_table.column("custom_id").combine_chunks()
    if check_unique and len(pc.unique(result_ids)) != len(result_ids):
        raise ValueError("a custom_id has more than one result")
    return pc.index_in(row_ids, value_set=result_ids)


def join_at(table: pa.Table, result_table: pa.Table, positions: pa.Array[Any]) -> pa.Table:
    """Append the output columns to ``table``, row ``i`` taking result ``positions[i]``.

    ``result_table`` is a :func:`normalise_results` table; a null position is a ``missing`` row.
    """
    extra = [f for f in result_table.schema if f.name not in RESULT_SCHEMA.names and f.name != "custom_id"]
    missing = pc.is_null(positions)
    taken = result_table.take(positions)
    out = table
    for field in [*OUTPUT_FIELDS, *extra]:
        column = taken.column(field.name).combine_chunks()
        if field.name == "response_error_kind":
            column = pc.if_else(missing, pa.scalar(ErrorKind.MISSING.value), column)
        elif field.name == "response_error":
            column = pc.if_else(
                missing, pa.scalar("the provider returned no result for this request"), column
            )
        out = out.append_column(field, column)
    return out


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    """The output schema for an input schema: input fields, then :data:`OUTPUT_FIELDS`.

    Examples:
        >>> output_schema(pa.schema([("a", pa.int64())])).names[:2]
        ['a', 'response']
    """
    return pa.schema([*input_schema, *OUTPUT_FIELDS], metadata=input_schema.metadata)  # type: ignore[arg-type]
