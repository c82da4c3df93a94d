"""The requests of a job after de-duplication, built in one call (:func:`build_request_set`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from prefect_llm_batch.batchfile.encoder import RequestEncoder


@dataclass(frozen=True)
class RequestSet:
    """The requests of a job after de-duplication.

    Attributes:
        row_ids: The ``custom_id`` of every input row, in row order (duplicates repeat).
        unique_ids: Each distinct ``custom_id`` once, in order of first appearance.
        body_json: The canonical JSON of the body of each entry of ``unique_ids``, same order
            (the bytes the request key hashes, which lines embed as they are).
        first_row: The input row that first asked each entry of ``unique_ids``.
    """

    row_ids: list[str]
    unique_ids: list[str]
    body_json: list[bytes]
    first_row: list[int]

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The bodies as dicts (decoded on each access: for tests and small jobs)."""
        return [orjson.loads(body) for body in self.body_json]


def build_request_set(
    *,
    provider: str,
    base_url: str,
    endpoint: str,
    prompts: Sequence[str],
    systems: Sequence[str | None] | None = None,
    build_body: Callable[[str, str | None], dict[str, Any]],
) -> RequestSet:
    """Build one body per row, key it, and keep each distinct request once (all in memory).

    Jobs stream their rows through :class:`RequestEncoder` instead; this is the same in one call.

    Args:
        provider: Provider identity for the key (``"openai"``, ``"simulator"``...).
        base_url: Base URL for the key (normalised here).
        endpoint: The endpoint every request goes to.
        prompts: Rendered user prompt of every row.
        systems: Rendered system prompt of every row, or None.
        build_body: The provider's body builder, from (prompt, system) to a request body.

    Returns:
        The de-duplicated :class:`RequestSet`.

    Examples:
        >>> def chat(model, prompt, system=None):  # a chat-completions body, as a provider builds it
        ...     return {"model": model, "messages": [{"role": "user", "content": prompt}]}
        >>> rs = build_request_set(provider="openai", base_url="https://x/v1",
        ...     endpoint="/v1/chat/completions", prompts=["a", "b", "a"],
        ...     build_body=lambda prompt, system: chat("m", prompt, system))
        >>> len(rs.row_ids), len(rs.unique_ids), rs.row_ids[0] == rs.row_ids[2], rs.first_row
        (3, 2, True, [0, 1])
    """
    encoder = RequestEncoder(provider=provider, base_url=base_url, endpoint=endpoint, build_body=build_body)
    encoded = encoder.encode(prompts, systems)
    seen: set[str] = set()
    unique_ids: list[str] = []
    first_row: list[int] = []
    for row, cid in enumerate(encoded.custom_ids):
        if cid not in seen:
            seen.add(cid)
            unique_ids.append(cid)
            first_row.append(row)
    return RequestSet(
        row_ids=encoded.custom_ids,
        unique_ids=unique_ids,
        body_json=[encoded.body_json(row) for row in first_row],
        first_row=first_row,
    )
