# meshwarden: `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all test demo lint typecheck unit bench protos clean console

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	scripts/link-tree
	cd build/typecheck && ../../$(BIN)/lint-imports ../../pyproject.toml

typecheck: $(STAMP)
	scripts/link-tree
	$(BIN)/mypy

# The web console's graph library, from npm at the version web/package-lock.json pins (with its
# integrity hash), copied into the package data; nothing generated is committed.
CONSOLE_VENDOR := meshwarden/console/vendor/cytoscape.min.js

console: $(CONSOLE_VENDOR)

$(CONSOLE_VENDOR): web/package.json web/package-lock.json
	command -v npm >/dev/null || apt-get install -y npm
	mkdir -p build/web meshwarden/console/vendor
	cp web/package.json web/package-lock.json build/web/
	cd build/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	cp build/web/node_modules/cytoscape/dist/cytoscape.min.js $@

unit: $(STAMP) console
	command -v nft >/dev/null && command -v iptables >/dev/null || apt-get install -y nftables iptables
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y chromium; }
	$(BIN)/pytest -n 2 --dist loadfile tests

test: lint typecheck unit

demo: $(STAMP) console
	$(BIN)/meshwarden demo

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_identities.py
	$(BIN)/python bench/bench_dataplane.py
	$(BIN)/python bench/bench_propagation.py
	$(BIN)/python bench/bench_differential.py
	$(BIN)/python bench/bench_tracing.py
	$(BIN)/python bench/bench_ext_authz.py
	$(BIN)/python bench/bench_packet_filter.py
	$(BIN)/python bench/bench_reload.py
	$(BIN)/python bench/bench_replicas.py
	$(BIN)/python bench/bench_console.py

protos: $(STAMP)
	$(BIN)/python -m meshwarden.protos._generate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
