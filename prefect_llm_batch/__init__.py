"""prefect-llm-batch: enrich tables with LLM answers through provider batch APIs, as Prefect flows.

The pure core (:mod:`~prefect_llm_batch.spec`, :mod:`~prefect_llm_batch.prompts`,
:mod:`~prefect_llm_batch.results`), the request keys (:mod:`~prefect_llm_batch.keys`) and the
batch files (:mod:`~prefect_llm_batch.batchfile`) import neither Prefect nor httpx. Public names
below are imported lazily, so ``import prefect_llm_batch`` stays cheap.

Examples:
    >>> import prefect_llm_batch
    >>> prefect_llm_batch.JobSpec(prompt="{{ text }}", model="gpt-4o-mini").provider
    'simulator'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "JobSpec": "prefect_llm_batch.spec",
    "BatchLimits": "prefect_llm_batch.spec",
    "ErrorKind": "prefect_llm_batch.spec",
    "LLMBatchError": "prefect_llm_batch.errors",
    "enrich_table": "prefect_llm_batch.flows",
    "enrich": "prefect_llm_batch.notebook",
    "JobSummary": "prefect_llm_batch.jobs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_llm_batch' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
