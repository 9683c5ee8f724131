# tandem: `make demo` runs the whole system on the embedded default; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-stamp

.PHONY: demo test lint pytest install services-prereq bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

install: $(STAMP)

# redis-server must be on PATH: install it from Debian's packages when missing and we are root.
services-prereq:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: install it (apt-get install redis-server, brew install redis)"; exit 1; \
	  fi; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: install services-prereq
	$(BIN)/pytest

test: lint pytest

demo: install services-prereq
	$(BIN)/tandem demo

bench: install services-prereq
	$(BIN)/tandem bench store --write benchmarks/RESULTS.md
	$(BIN)/tandem bench publish --write benchmarks/RESULTS.md
	$(BIN)/tandem bench materialize --write benchmarks/RESULTS.md
	$(BIN)/tandem bench freshness --write benchmarks/RESULTS.md
	$(BIN)/tandem bench api --write benchmarks/RESULTS.md
	$(BIN)/tandem bench batch --write benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache
