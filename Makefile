# The two commands: `make run` and `make test`. Everything else is a helper.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench bench-deps clean sandbox system-deps constraints

# $(call install,VENV,PIP_ARGS): a virtualenv at VENV with Switchman and its dev extras.
define install
	$(PY) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet $(2) -e '.[dev]'
endef

# constraints.txt pins every installed version to the set the suite last passed with:
# pyproject.toml's ranges alone let a fresh clone pick up a release CI never ran.
$(STAMP): pyproject.toml constraints.txt
	$(call install,$(VENV),-c constraints.txt)
	touch $(STAMP)

## constraints: re-resolve the newest versions pyproject.toml allows and pin them
## (then run `make test` before committing the new constraints.txt)
RESOLVE := $(VENV).resolve
constraints:
	rm -rf $(RESOLVE)
	$(call install,$(RESOLVE),)
	{ grep '^#' constraints.txt; $(RESOLVE)/bin/pip freeze --exclude-editable; } \
	  > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf $(RESOLVE)

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

## system-deps: Debian packages some tests drive for real (promtool/Prometheus, Chromium)
## and the benchmark's nginx peer
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null \
	    || ! command -v chromium >/dev/null \
	    || ! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }; then \
	  echo "installing Debian packages: prometheus chromium nginx"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends prometheus chromium nginx >/dev/null; \
	fi

## test: lint, type-check and the whole suite
test: system-deps lint typecheck unit

## bench: benchmarks (not part of `make test`); writes docs/BENCHMARKS.md (~16 min; 16.5–18
## min from a fresh clone, with .venv and LiteLLM installs; BENCH_ARGS=--quick for a ~5 min
## smoke run). LiteLLM goes into .bench/litellm-venv. Then update the README's Benchmarks
## figures: tests/unit/test_readme_figures.py fails while one is not in the new report.
bench: $(STAMP) bench-deps
	$(BIN)/python -m tests.bench.run $(BENCH_ARGS)

## bench-deps: only the Debian package the benchmark needs (nginx, the plain-proxy peer)
bench-deps:
	@if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then \
	  echo "installing Debian package: nginx"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends nginx >/dev/null; \
	fi

clean:
	rm -rf $(VENV) .bench .mypy_cache .ruff_cache .pytest_cache build *.egg-info
