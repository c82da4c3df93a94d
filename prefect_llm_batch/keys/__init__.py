"""Request keys (pure): digests and ``custom_id`` s, de-duplication, and the key index.

A **request key** identifies what is asked, and of whom: the SHA-256 of the canonical JSON
(sorted keys, no whitespace, UTF-8) of ``{"key_version", "provider", "base_url", "endpoint",
"body"}``. Two rows that render the same body share one key, so the request is sent once and
its answer fanned back out to both. The key includes the provider and the normalised base URL,
so an answer from the simulator can never be served to a job against a real provider.

A **custom_id** is the key in a fixed-length, provider-safe spelling: the 32 digest bytes in
unpadded URL-safe base64, always 43 characters of ``[A-Za-z0-9_-]``; valid for OpenAI,
Anthropic and Together alike. Rows reach their answers through it, never through line order.

Modules: :mod:`~prefect_llm_batch.keys.digest` (the key of a request and its ``custom_id``
spelling), :mod:`~prefect_llm_batch.keys.dedup` (the distinct keys of a job, slice by slice),
:mod:`~prefect_llm_batch.keys.index` (``custom_id`` s decoded back to digests, and an index from
digests to results). Their public names are importable from here.

Examples:
    >>> body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    >>> cid = custom_id("openai", "https://api.openai.com/v1", "/v1/chat/completions", body)
    >>> len(cid), cid == custom_id("openai", "https://API.openai.com/v1/", "/v1/chat/completions", body)
    (43, True)
    >>> cid == custom_id("simulator", "https://api.openai.com/v1", "/v1/chat/completions", body)
    False
"""

from .dedup import DigestSet, first_new
from .digest import (
    canonical_json,
    custom_id,
    custom_id_array,
    custom_id_from_digest,
    hash_rows,
    key_parts,
    no_cyclic_gc,
    request_digest,
    split_fixed_width,
)
from .index import CUSTOM_ID_CHARS, Digests, ResultIndex, decode_custom_ids

__all__ = [
    "CUSTOM_ID_CHARS",
    "DigestSet",
    "Digests",
    "ResultIndex",
    "canonical_json",
    "custom_id",
    "custom_id_array",
    "custom_id_from_digest",
    "decode_custom_ids",
    "first_new",
    "hash_rows",
    "key_parts",
    "no_cyclic_gc",
    "request_digest",
    "split_fixed_width",
]
