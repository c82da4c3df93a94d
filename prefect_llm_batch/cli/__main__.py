"""``python -m prefect_llm_batch.cli``: the ``prefect-llm-batch`` command."""

import sys

from . import main

main()
sys.exit(0)
