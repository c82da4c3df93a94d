# Two entry points for a fresh machine: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINTED := prefect_llm_batch tests examples conftest.py $(wildcard benchmarks)

# Quiet, offline-friendly Prefect defaults (see README "Running offline").
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 60

.PHONY: install demo test lint check bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

# LIVE=1 sends the demo to the real OpenAI Batch API (needs OPENAI_API_KEY, costs money, may take hours).
demo: install
	$(BIN)/prefect-llm-batch run examples/reviews.csv out/reviews.parquet \
		--prompt "Classify the sentiment of this review as positive, negative or mixed. Answer with one word. Review: {{ review }}" \
		--model gpt-4o-mini --id-column review_id --max-requests-per-batch 80 --overwrite \
		$(if $(LIVE),--provider openai,--provider simulator)
	$(BIN)/python examples/show_output.py out/reviews.parquet

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

check: lint test

# Performance: prepare/collect/end to end against naive baselines and floors (see benchmarks/RESULTS.md).
bench: install
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/shards.py

# A small version (seconds) that CI runs so the suite cannot rot; the sharded one starts two local
# Dask clusters (about a minute).
bench-quick: install
	$(BIN)/python benchmarks/run.py --quick
	$(BIN)/python benchmarks/shards.py --quick

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
