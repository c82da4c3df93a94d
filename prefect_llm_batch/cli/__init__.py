"""The ``prefect-llm-batch`` command.

Examples:
    Enrich a table against the bundled simulator (offline, free)::

        prefect-llm-batch run examples/reviews.csv out/reviews.parquet \\
            --prompt "Classify the sentiment of this review: {{ review }}" --model gpt-4o-mini

    The same against the real OpenAI Batch API (costs money; a batch can take up to 24 h)::

        OPENAI_API_KEY=... prefect-llm-batch run ... --provider openai

The package holds one module per role: :mod:`.options` (the options ``run`` and ``estimate``
share, the job they describe), :mod:`.runs` (``run``, ``submit``, ``collect``), :mod:`.estimates`
(``estimate``), :mod:`.manage` (``status``, ``cancel``, ``jobs clean``), :mod:`.cache` (``cache``),
:mod:`.serve` (``fake-server``), :mod:`.summary` (what they print) and :mod:`.commands` (the
application). Nothing heavy is imported at the top: `--help`, `status` and `cache info` stay fast.
"""

from __future__ import annotations

from .commands import app, main
from .estimates import estimate, plan_estimate
from .manage import cancel, resolve_job_id, status
from .options import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_MAX_REQUESTS_PER_BATCH,
    PROVIDERS,
    build_spec,
    fail,
    parse_param,
)
from .runs import collect, prefect_api_url, run, submit
from .summary import print_summary

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_ERROR_RATE",
    "DEFAULT_MAX_REQUESTS_PER_BATCH",
    "PROVIDERS",
    "app",
    "build_spec",
    "cancel",
    "collect",
    "estimate",
    "fail",
    "main",
    "parse_param",
    "plan_estimate",
    "prefect_api_url",
    "print_summary",
    "resolve_job_id",
    "run",
    "status",
    "submit",
]
