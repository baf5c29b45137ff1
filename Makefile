# The two commands: `make run` and `make test`. Everything else is a helper.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean sandbox

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start Switchman on the embedded default config (SQLite, sandbox providers on loopback)
run: $(STAMP)
	$(BIN)/switchman serve $(if $(CONFIG),--config $(CONFIG),)

sandbox: $(STAMP)
	$(BIN)/switchman sandbox

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy router strategies breakers metrics tests

unit: $(STAMP)
	$(BIN)/pytest -q

## test: lint, type-check and the whole suite
test: lint typecheck unit

## bench: benchmarks (not part of `make test`); writes docs/BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
