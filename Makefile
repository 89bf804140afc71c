# clawd — two commands set everything up: `make run` and `make test`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
HOME_DIR ?= .clawd-home
STAMP   := $(VENV)/.installed

.PHONY: run demo test lint typecheck bench clean system-deps install-systemd

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Starts the daemon on the JSON backend with a home under the checkout.
run: $(STAMP)
	@if [ ! -f $(HOME_DIR)/config.json ]; then \
	    mkdir -p $(HOME_DIR) && chmod 700 $(HOME_DIR) && \
	    $(BIN)/python scripts/dev-config.py config.example.json $(HOME_DIR)/config.json && \
	    echo "created $(HOME_DIR)/config.json from config.example.json (mDNS on loopback only)"; fi
	CLAW_HOME=$(abspath $(HOME_DIR)) $(BIN)/clawd run

# Five simulated peers on loopback, clawd watching them through a scripted outage story
# (PostgreSQL if its binaries are installed, else JSON); Ctrl-C stops everything it started.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py $(DEMO_ARGS)

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check clawd tests $(wildcard bench)
	$(BIN)/ruff format --check clawd tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# As root: venv in /opt/clawd, user clawd, home /var/lib/clawd, systemd unit.
install-systemd:
	bash scripts/install-systemd.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
