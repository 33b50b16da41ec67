# meshwarden: `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all test demo lint typecheck unit bench protos clean

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

unit: $(STAMP)
	command -v nft >/dev/null && command -v iptables >/dev/null || apt-get install -y nftables iptables
	$(BIN)/pytest -n 2 --dist loadfile tests

test: lint typecheck unit

demo: $(STAMP)
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

protos: $(STAMP)
	$(BIN)/python -m meshwarden.protos._generate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
