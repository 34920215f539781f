# stepstream: `make run` serves on embedded defaults, `make test` runs the suite.
# Both build their own virtual environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTO_OUT := client

.PHONY: run test protos lint bench cluster venv assets chromium clean

# The web view's browser libraries (uPlot), pinned in web-assets/package-lock.json, copied into
# the Python package as static files (gitignored: built, never committed).
VENDOR := service/stepstream_server/web/static/vendor
$(VENDOR)/.installed: web-assets/package.json web-assets/package-lock.json
	cd web-assets && npm ci --no-audit --no-fund --silent
	mkdir -p $(VENDOR)
	cp web-assets/node_modules/uplot/dist/uPlot.iife.min.js web-assets/node_modules/uplot/dist/uPlot.min.css $(VENDOR)/
	touch $@

assets: $(VENDOR)/.installed

# The browser tests drive Debian's Chromium (never a downloaded browser): install it when missing.
chromium:
	@test -x /usr/bin/chromium || { \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./client -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

run: venv assets
	$(BIN)/stepstream serve $(ARGS)

test: venv assets chromium
	$(BIN)/pytest $(PYTEST_ARGS)

# Regenerates the Python code and type stubs for protos/ into client/stepstream/v1.
protos: venv
	$(PY) scripts/gen_protos.py $(PROTO_OUT)

lint: venv
	$(PY) scripts/proto_deps.py build/protodeps
	$(BIN)/buf lint
	$(BIN)/ruff check service client tests bench scripts
	$(BIN)/ruff format --check service client tests bench scripts
	$(BIN)/mypy service/stepstream_server client/stepstream

bench: venv assets chromium
	$(PY) -m bench $(ARGS)

# A local 3-replica demo: this machine's PostgreSQL and a Redis Cluster from the embedded binary.
cluster: venv
	$(PY) scripts/cluster_demo.py $(ARGS)

clean:
	rm -rf $(VENV) $(VENDOR) web-assets/node_modules build dist .pytest_cache .mypy_cache .ruff_cache
