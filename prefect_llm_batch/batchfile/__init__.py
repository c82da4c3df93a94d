"""Batch input files (pure): request bodies, JSONL lines per endpoint, chunk packing under limits.

:class:`RequestEncoder` builds the bodies (with a provider's body builder), keys
(:mod:`~prefect_llm_batch.keys`) and batch input lines of many rows at once, in Arrow;
:func:`build_request_set` is the same in one call, de-duplicated. :func:`encode_line` writes one
JSONL line, :func:`fixed_width_ids` reads the ``custom_id`` s back out of a batch file this
package wrote. :class:`ChunkPacker` and :func:`plan_chunks` split the lines into batches under
the provider's request and byte limits (:class:`~prefect_llm_batch.spec.BatchLimits`).

Modules:

* :mod:`~prefect_llm_batch.batchfile.bodies`: request bodies and their shapes (fixed JSON around
  the texts);
* :mod:`~prefect_llm_batch.batchfile.encoder`: :class:`RequestEncoder` and what it returns;
* :mod:`~prefect_llm_batch.batchfile.request_set`: :func:`build_request_set`, :class:`RequestSet`;
* :mod:`~prefect_llm_batch.batchfile.lines`: JSONL lines, a provider's line layout, reading ids back;
* :mod:`~prefect_llm_batch.batchfile.chunks`: :class:`ChunkPacker`, :func:`plan_chunks`.
"""

from __future__ import annotations

from prefect_llm_batch.batchfile.bodies import json_string_contents
from prefect_llm_batch.batchfile.chunks import ChunkPacker, ChunkPlan, plan_chunks
from prefect_llm_batch.batchfile.encoder import EncodedRequests, LaidOutRequests, RequestEncoder, Texts
from prefect_llm_batch.batchfile.lines import encode_line, fixed_width_ids
from prefect_llm_batch.batchfile.request_set import RequestSet, build_request_set

__all__ = [
    "ChunkPacker",
    "ChunkPlan",
    "EncodedRequests",
    "LaidOutRequests",
    "RequestEncoder",
    "RequestSet",
    "Texts",
    "build_request_set",
    "encode_line",
    "fixed_width_ids",
    "json_string_contents",
    "plan_chunks",
]
