"""Faults the tests ask for: failing calls (:meth:`~FakeProviderServer.fail_next`) and spoilt
result lines (:meth:`~FakeProviderServer.spoil_next_result_line`).

Spoilt result lines: :meth:`FakeProviderServer.spoil_next_result_line` makes the next result
file written (an OpenAI output file, or an Anthropic batch's results) carry one bad line, once:
``garble`` (not JSON any more), ``cut`` (cut halfway, as a broken download leaves it),
``conflict`` (followed by a second line for the same ``custom_id`` with a different answer) or
``duplicate`` (followed by an identical copy).

Examples:
    >>> result_bytes([_LineFault("cut", 0)], [{"custom_id": "a"}])
    b'{"custom\\n'
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from prefect_llm_batch.testing.config import ANTHROPIC_ROUTES, LineFault
from prefect_llm_batch.testing.wire import (
    _ANTHROPIC_ERROR_MESSAGES,
    _DEFAULT_ERROR_MESSAGES,
    _anthropic_error_type,
    _ApiError,
    _error_type,
    _hex,
)

if TYPE_CHECKING:
    from prefect_llm_batch.testing.state import _State


@dataclass(frozen=True)
class _LineFault:
    kind: LineFault
    line: int


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: float | None
    code: str | None
    message: str | None


def take_fault(state: _State, key: str) -> None:
    """Raise the error a pending :meth:`~FakeProviderServer.fail_next` fault of ``key`` asks for, if any."""
    with state.lock:
        queue = state.faults.get(key)
        if not queue:
            return
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.pop(0)
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["retry-after"] = f"{fault.retry_after:g}"
        if key not in ANTHROPIC_ROUTES:
            headers["retry-after-ms"] = str(round(fault.retry_after * 1000))
    if key in ANTHROPIC_ROUTES:
        message = fault.message or _ANTHROPIC_ERROR_MESSAGES.get(
            fault.status, _DEFAULT_ERROR_MESSAGES.get(fault.status, f"Simulated HTTP {fault.status}.")
        )
        raise _ApiError(
            fault.status, message, type=fault.code or _anthropic_error_type(fault.status), headers=headers
        )
    message = fault.message or _DEFAULT_ERROR_MESSAGES.get(fault.status, f"Simulated HTTP {fault.status}.")
    code = fault.code
    if code is None and fault.status == 429:
        code = "rate_limit_exceeded"
    error_type = "insufficient_quota" if code == "insufficient_quota" else _error_type(fault.status)
    raise _ApiError(fault.status, message, type=error_type, code=code, headers=headers)


async def sit_out_stall(state: _State, seconds: float) -> None:
    """Wait ``seconds`` before a stalled create answers (:meth:`~FakeProviderServer.stall_next_create`),
    cut short when the server stops."""
    deadline = time.monotonic() + seconds
    while not state.stopping.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def result_bytes(line_faults: list[_LineFault], lines: list[dict[str, Any]]) -> bytes:
    """Encode result lines as JSONL, spoiling one line if a line fault is pending (and spending it)."""
    encoded = [orjson.dumps(line) for line in lines]
    fault = line_faults.pop(0) if line_faults and lines else None
    if fault is not None:
        at = min(fault.line, len(lines) - 1)
        if fault.kind == "garble":
            third = len(encoded[at]) // 3  # raw NULs are JSON nowhere, inside strings neither
            encoded[at] = encoded[at][:third] + b"\x00#garbled#\x00" + encoded[at][2 * third :]
        elif fault.kind == "cut":
            encoded[at] = encoded[at][: len(encoded[at]) // 2]
        elif fault.kind == "duplicate":
            encoded.insert(at + 1, encoded[at])
        else:  # conflict: the first line from `at` on whose answer can be changed
            for index in [*range(at, len(lines)), *range(at)]:
                other = _other_answer(lines[index])
                if other is not None:
                    encoded.insert(index + 1, orjson.dumps(other))
                    break
    return b"".join(line + b"\n" for line in encoded)


def _other_answer(line: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of a successful result line (OpenAI chat or Anthropic message) with another answer text."""
    other: Any = orjson.loads(orjson.dumps(line))
    if isinstance(other.get("response"), dict):  # OpenAI
        choices = (other["response"].get("body") or {}).get("choices") or []
        message = choices[0].get("message") if choices else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return None
        message["content"] += " (a different answer)"
        other["id"] = f"batch_req_{_hex()}"
        return dict(other)
    result = other.get("result") or {}
    blocks = (result.get("message") or {}).get("content") or []
    if result.get("type") != "succeeded" or not blocks:
        return None
    if blocks[0].get("type") == "text":
        blocks[0]["text"] += " (a different answer)"
    elif blocks[0].get("type") == "tool_use":
        blocks[0]["input"] = {"different": True}
    else:
        return None
    return dict(other)
