"""Seeded generators of the benchmark inputs: a realistic table and realistic provider output files.

Everything is a pure function of ``(rows, seed)`` and is cached under ``benchmarks/.data/``
(git-ignored), so a second run of the suite does not pay for generation. Bump
:data:`FORMAT_VERSION` when a generator changes: cached files of older versions are then ignored.

The table (:func:`make_table`) has the columns a data engineer would point a job at:

=============  ==================  ===================================================
column         type                values
=============  ==================  ===================================================
``id``         int64               1..N
``title``      string              ~40 characters of text (12-80)
``body``       string              ~300 characters of text (40-1500, gamma-distributed),
                                   about 2% of the words non-ASCII (accents, CJK, emoji)
``category``   string              one of 12 product categories
``rating``     int64               1-5, about 3% nulls
``price``      float64             log-normal, two decimals
``created_at`` timestamp[us]       a moment of 2024
=============  ==================  ===================================================

About 2% of the rows repeat the ``title`` and ``body`` of an earlier row (the same review posted
twice), so request de-duplication has work to do.

The provider output (:func:`ensure_results`) is what the OpenAI Batch API returns for the
table's unique requests: one chat-completions result line of ~600 bytes per request, shuffled,
with about 1% of the requests in a separate error file (half ``400`` error envelopes, half
top-level ``batch_expired`` errors), plus the ``custom_id`` of every input row (duplicates share
one). The ``custom_id`` s are synthetic (43 URL-safe base64 characters, like the package's), so
the files do not depend on the code under test.

Run ``python benchmarks/data.py --rows 1000 --parts 4`` to generate (or find) the files and print
their paths.

Examples:
    >>> table = make_table(5, seed=1)
    >>> table.num_rows, table.column_names[:3]
    (5, ['id', 'title', 'body'])
    >>> make_table(5, seed=1).equals(table)
    True
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

#: Bump when a generator's output changes, so that stale cached files are not reused.
FORMAT_VERSION = 1

#: Where generated files are cached (git-ignored).
DATA_DIR = Path(__file__).resolve().parent / ".data"

#: The prompt template of every benchmark job: two string columns, ~400-byte prompts.
TEMPLATE = (
    "Classify the sentiment of this product review as positive, negative or mixed.\n"
    "Title: {{ title }}\nReview: {{ body }}"
)
#: Model named in every request.
MODEL = "gpt-4o-mini"
#: Model named in the answers (providers answer with the dated snapshot).
ANSWER_MODEL = "gpt-4o-mini-2024-07-18"

#: Share of rows that repeat an earlier row's title and body.
DUPLICATE_SHARE = 0.02
#: Share of ``rating`` values that are null.
NULL_RATING_SHARE = 0.03
#: Share of requests whose result is in the error file.
ERROR_SHARE = 0.01


def _words(text: str) -> list[str]:
    """A word list written as text."""
    return text.split()


_WORDS = _words(
    "the a and it is was this that for with not but very my i they you of to in on at as so "
    "product order delivery price quality battery screen sound size color fit box package "
    "seller support service refund return warranty update app setup manual cable charger "
    "great good fine nice love loved like liked perfect excellent amazing recommend happy "
    "bad poor broken slow terrible awful disappointed worst waste useless wrong cheap "
    "works worked working stopped arrived came took days weeks month after before again "
    "really quite too much more less bit little lot easy hard simple fast loud quiet bright "
    "would could should will can did does do have has had been be are were just also only "
    "still even never always sometimes first second last time times one two three five "
    "my husband wife kids son daughter friend gift christmas birthday kitchen office car "
    "light heavy small large comfortable sturdy flimsy plastic metal glass wood leather"
)
_UNICODE_WORDS = _words(
    "café naïve über crème brûlée jalapeño piñata façade déjà résumé Zürich São Paulo "
    "日本 製品 とても 良い 不错 质量 très bien größe señal 👍 🙂 🔋 ★★★★☆"
)
_CATEGORIES = (
    "electronics",
    "home",
    "kitchen",
    "garden",
    "toys",
    "books",
    "sports",
    "beauty",
    "automotive",
    "office",
    "pets",
    "fashion",
)
_LABELS = ("positive", "negative", "mixed")


@dataclass(frozen=True)
class ResultFiles:
    """Provider output for the unique requests of a generated table.

    Attributes:
        output: The output file (successful lines, shuffled).
        error: The error file (400 envelopes and ``batch_expired`` lines, shuffled).
        row_ids: Parquet file with one column, ``custom_id``, one row per input row.
        rows: Input rows.
        requests: Unique requests (lines in both files together).
        error_lines: Lines in the error file.
    """

    output: Path
    error: Path
    row_ids: Path
    rows: int
    requests: int
    error_lines: int


def table_path(rows: int, seed: int = 0, parts: int = 1) -> Path:
    """Where :func:`ensure_table` caches a table (a file, or a directory of ``parts`` files)."""
    name = f"table-{rows}-s{seed}"
    if parts > 1:
        return DATA_DIR / f"v{FORMAT_VERSION}" / f"{name}-k{parts}"
    return DATA_DIR / f"v{FORMAT_VERSION}" / f"{name}.parquet"


def results_dir(rows: int, seed: int = 0) -> Path:
    """Where :func:`ensure_results` caches the provider output of a table."""
    return DATA_DIR / f"v{FORMAT_VERSION}" / f"results-{rows}-s{seed}"


def canonical_rows(rows: int, seed: int) -> np.ndarray:
    """For every row, the first row with the same ``title`` and ``body`` (itself when unique).

    Examples:
        >>> canon = canonical_rows(1000, seed=0)
        >>> bool((canon <= np.arange(1000)).all()), bool((canon[canon] == canon).all())
        (True, True)
    """
    rng = np.random.default_rng([seed, 1])
    duplicate = rng.random(rows) < DUPLICATE_SHARE
    duplicate[0] = False
    picks = rng.random(rows)
    canon = np.arange(rows, dtype=np.int64)
    for index in np.flatnonzero(duplicate).tolist():
        canon[index] = canon[int(picks[index] * index)]
    return canon


def _corpus(rng: np.random.Generator, words: int) -> str:
    """Review-like text: Zipf-ish common words, some sentence ends, ~2% non-ASCII words."""
    vocab = list(_WORDS) + [f"{word}." for word in _WORDS[:60]] + list(_UNICODE_WORDS)
    weights = np.concatenate(
        [
            1.0 / np.arange(1, len(_WORDS) + 1) ** 0.6,
            np.full(60, 0.02),
            np.zeros(len(_UNICODE_WORDS)),
        ]
    )
    weights *= 0.98 / weights.sum()
    weights[-len(_UNICODE_WORDS) :] = 0.02 / len(_UNICODE_WORDS)
    picks = rng.choice(len(vocab), size=words, p=weights)
    return " ".join(vocab[i] for i in picks.tolist())


def _slices(corpus: str, rng: np.random.Generator, lengths: np.ndarray) -> list[str]:
    """Pieces of ``corpus`` of about the given lengths, starting and ending on word boundaries."""
    starts = rng.integers(0, len(corpus) - int(lengths.max()) - 2, size=len(lengths))
    pieces = []
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        begin = corpus.find(" ", start) + 1
        end = corpus.rfind(" ", begin, begin + length)
        pieces.append(corpus[begin : end if end > begin else begin + length])
    return pieces


def make_table(rows: int, seed: int = 0) -> pa.Table:
    """Generate the benchmark table (see the module docstring); the same arguments, the same table.

    Args:
        rows: Number of rows.
        seed: Seed of every random choice.

    Returns:
        The table.
    """
    rng = np.random.default_rng([seed, 0])
    corpus = _corpus(rng, max(200_000, min(rows * 8, 4_000_000)))
    title_lengths = np.clip(rng.normal(40, 10, rows), 12, 80).astype(np.int64)
    body_lengths = np.clip(rng.gamma(6.0, 50.0, rows), 40, 1500).astype(np.int64)
    titles = _slices(corpus, rng, title_lengths)
    bodies = _slices(corpus, rng, body_lengths)
    canon = canonical_rows(rows, seed)
    for index in np.flatnonzero(canon != np.arange(rows)).tolist():
        source = int(canon[index])
        titles[index], bodies[index] = titles[source], bodies[source]
    rating = rng.integers(1, 6, rows)
    rating_nulls = rng.random(rows) < NULL_RATING_SHARE
    start = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
    created = start + rng.integers(0, 366 * 86_400 * 1_000_000, rows)
    return pa.table(
        {
            "id": pa.array(np.arange(1, rows + 1, dtype=np.int64)),
            "title": pa.array(titles, pa.string()),
            "body": pa.array(bodies, pa.string()),
            "category": pa.array(np.array(_CATEGORIES)[rng.integers(0, len(_CATEGORIES), rows)], pa.string()),
            "rating": pa.array(rating, pa.int64(), mask=rating_nulls),
            "price": pa.array(np.round(rng.lognormal(3.0, 1.0, rows), 2)),
            "created_at": pa.array(created, pa.timestamp("us")),
        }
    )


def ensure_table(rows: int, seed: int = 0, parts: int = 1) -> Path:
    """Generate the table once and cache it as Parquet; return its path.

    Args:
        rows: Number of rows.
        seed: Seed (see :func:`make_table`).
        parts: With more than 1, a directory of that many Parquet files (``part-00000.parquet``...)
            holding consecutive slices of the same table.

    Returns:
        The Parquet file, or the directory of part files.
    """
    path = table_path(rows, seed, parts)
    if path.exists():
        return path
    table = make_table(rows, seed)
    if parts <= 1:
        _write_parquet(table, path)
        return path
    staging = path.with_name(path.name + ".tmp")
    staging.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, rows, parts + 1).astype(np.int64).tolist()
    for index, (begin, end) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(table.slice(begin, end - begin), staging / f"part-{index:05d}.parquet")
    os.replace(staging, path)
    return path


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def synthetic_custom_id(seed: int, request: int) -> str:
    """The ``custom_id`` of unique request number ``request``: 43 URL-safe base64 characters.

    Examples:
        >>> cid = synthetic_custom_id(0, 7)
        >>> len(cid), cid == synthetic_custom_id(0, 7), cid == synthetic_custom_id(1, 7)
        (43, True, False)
    """
    digest = hashlib.sha256(f"bench:{seed}:{request}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def make_result_lines(requests: int, seed: int = 0) -> tuple[list[bytes], list[bytes], list[str]]:
    """Generate provider result lines for ``requests`` unique requests.

    Args:
        requests: Number of unique requests.
        seed: Seed of every random choice.

    Returns:
        ``(output_lines, error_lines, custom_ids)``: encoded lines (newline included), each list
        shuffled, and the ``custom_id`` of each request in request order.

    Examples:
        >>> output, errors, ids = make_result_lines(300, seed=0)
        >>> len(output) + len(errors), len(ids), sorted(orjson.loads(output[0]))
        (300, 300, ['custom_id', 'error', 'id', 'response'])
    """
    rng = np.random.default_rng([seed, 2])
    corpus = _corpus(rng, 200_000)
    ids = [synthetic_custom_id(seed, request) for request in range(requests)]
    failing = rng.random(requests) < ERROR_SHARE
    expired = rng.random(requests) < 0.5
    labels = rng.integers(0, len(_LABELS), requests).tolist()
    reasons = _slices(corpus, rng, np.clip(rng.normal(40, 25, requests), 8, 200).astype(np.int64))
    prompt_tokens = rng.integers(60, 260, requests).tolist()
    hex_ids = rng.bytes(34 * requests).hex()
    created = 1_735_689_600 + rng.integers(0, 86_400, requests)
    output: list[bytes] = []
    errors: list[bytes] = []
    for request, cid in enumerate(ids):
        hexes = hex_ids[request * 68 : (request + 1) * 68]
        line_id = f"batch_req_{hexes[:24]}"
        request_id = f"req_{hexes[24:56]}"
        if failing[request]:
            if expired[request]:
                line = {
                    "id": line_id,
                    "custom_id": cid,
                    "response": None,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                }
            else:
                line = {
                    "id": line_id,
                    "custom_id": cid,
                    "response": {
                        "status_code": 400,
                        "request_id": request_id,
                        "body": {
                            "error": {
                                "message": "Invalid 'messages[0].content': string too long.",
                                "type": "invalid_request_error",
                                "param": "messages[0].content",
                                "code": "string_above_max_length",
                            }
                        },
                    },
                    "error": None,
                }
            errors.append(orjson.dumps(line) + b"\n")
            continue
        content = f"{_LABELS[labels[request]]}: {reasons[request]}"
        completion_tokens = len(content) // 4 + 1
        line = {
            "id": line_id,
            "custom_id": cid,
            "response": {
                "status_code": 200,
                "request_id": request_id,
                "body": {
                    "id": f"chatcmpl-{hexes[56:68]}{hexes[:17]}",
                    "object": "chat.completion",
                    "created": int(created[request]),
                    "model": ANSWER_MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens[request],
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens[request] + completion_tokens,
                    },
                    "system_fingerprint": "fp_0ba0d124f1",
                },
            },
            "error": None,
        }
        output.append(orjson.dumps(line) + b"\n")
    order = rng.permutation(len(output)).tolist()
    output = [output[i] for i in order]
    order = rng.permutation(len(errors)).tolist()
    errors = [errors[i] for i in order]
    return output, errors, ids


def ensure_results(rows: int, seed: int = 0) -> ResultFiles:
    """Generate the provider output of :func:`ensure_table`'s table once, cache it, return the paths.

    Args:
        rows: Rows of the table (requests are its unique rows).
        seed: Seed (the table's).

    Returns:
        The paths and counts.
    """
    directory = results_dir(rows, seed)
    done = directory / "done.json"
    if not done.exists():
        canon = canonical_rows(rows, seed)
        unique_rows = np.flatnonzero(canon == np.arange(rows))
        request_of_row = np.zeros(rows, dtype=np.int64)
        request_of_row[unique_rows] = np.arange(len(unique_rows))
        request_of_row = request_of_row[canon]
        output, errors, ids = make_result_lines(len(unique_rows), seed)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "output.jsonl").write_bytes(b"".join(output))
        (directory / "error.jsonl").write_bytes(b"".join(errors))
        row_ids = pa.array(ids, pa.string()).take(pa.array(request_of_row))
        _write_parquet(pa.table({"custom_id": row_ids}), directory / "rows.parquet")
        counts = {"rows": rows, "requests": len(ids), "error_lines": len(errors)}
        done.write_bytes(orjson.dumps(counts))
    counts = orjson.loads(done.read_bytes())
    return ResultFiles(
        output=directory / "output.jsonl",
        error=directory / "error.jsonl",
        row_ids=directory / "rows.parquet",
        rows=int(counts["rows"]),
        requests=int(counts["requests"]),
        error_lines=int(counts["error_lines"]),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Generate (or find) the files for ``--rows`` and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1, help="also write the table as this many files")
    parser.add_argument("--parts-only", action="store_true", help="only the partitioned table")
    args = parser.parse_args(argv)
    if args.parts_only:
        print(ensure_table(args.rows, args.seed, args.parts))
        return
    print(ensure_table(args.rows, args.seed))
    if args.parts > 1:
        print(ensure_table(args.rows, args.seed, args.parts))
    files = ensure_results(args.rows, args.seed)
    print(files.output, files.error, files.row_ids, sep="\n")
    print(f"{files.rows} rows, {files.requests} unique requests, {files.error_lines} error lines")


if __name__ == "__main__":
    main()
