# The two commands of the quick start are `make run` and `make test`; both begin with
# `make install`, which is fast when nothing changed (a stamp file tracks the lock).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FALLBACK := models/fallback/manifest.json
PRIMARY := models/primary/manifest.json
PYTEST_ARGS ?=
# Debian packages `make test` needs: the browser and its driver (web UI tests), promtool
# (alert rules), a CJK font and fc-list (without one, Chinese renders as empty boxes),
# systemd (systemd-analyze verifies the units; systemd-socket-activate runs `up` socket-
# activated; neither needs systemd running as PID 1).
APT_PACKAGES := chromium chromium-driver prometheus fonts-noto-cjk fontconfig systemd

.PHONY: install run test check format lock bench clean standin

install: $(STAMP) $(FALLBACK) $(PRIMARY)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The embedded models are committed; these rules rebuild one only when it is missing.
$(FALLBACK): | $(STAMP)
	$(BIN)/sentiguard train fallback

$(PRIMARY): | $(STAMP)
	$(BIN)/sentiguard train primary

# The base-size stand-in primary (random StructBERT-base encoder, fitted head, ~400 MB),
# cached outside git in $$SENTIGUARD_STANDIN_DIR or ~/.cache/sentiguard; tests marked
# base_model build it on first use, so `make test` needs nothing more. Prints its path.
standin: install
	$(BIN)/sentiguard train standin

run: install
	$(BIN)/sentiguard up --port 5000

check: $(STAMP)
	$(BIN)/ruff check sentiguard tests bench
	$(BIN)/ruff format --check sentiguard tests bench
	$(BIN)/mypy

test: install check
	@missing=""; \
	for tool in chromium chromedriver promtool systemd-analyze systemd-socket-activate; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	[ -n "$$(fc-list :lang=zh family 2>/dev/null)" ] || missing="$$missing fonts-noto-cjk"; \
	if [ -n "$$missing" ]; then \
	  echo "make test needs:$$missing (web UI tests in Chromium, with Chinese glyphs; alert rules checked by promtool; systemd units and socket activation)."; \
	  echo "Install them with: sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES)"; \
	  exit 1; fi
	$(BIN)/pytest $(PYTEST_ARGS)

format: $(STAMP)
	$(BIN)/ruff check --fix sentiguard tests bench
	$(BIN)/ruff format sentiguard tests bench

# Refresh the lock from the ranges in pyproject.toml (run by hand, then commit).
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^sentiguard' > requirements.lock

bench: install
	$(BIN)/python bench/fallback.py
	$(BIN)/python bench/primary.py
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) run logs .pytest_cache .mypy_cache .ruff_cache
