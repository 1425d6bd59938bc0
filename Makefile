# Every target that needs Python creates .venv on first use and installs everything into it:
# torch==2.13.0 first (the CPU build), then hf_ext with its `dev` and `apps` extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hf_ext_installed

.PHONY: install demo test test-slow test-all test-peer wheel-smoke lint format study clean poetry-corpus

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e ".[dev,apps]"
	$(PY) -m pip install --quiet --no-deps "torchscale>=0.2.0,<0.3"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m benchmarks.hallucination.demo

study: $(STAMP)
	$(PY) benchmarks/hallucination_study.py --workers 2

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -n 2 --dist loadfile -q

test-all: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q

# transformers' own test mixins (from its source distribution on PyPI, fetched once into ~/.cache/hf_ext/peer) on
# every hf_ext model type; its own directory and config, so `make test` never collects it (docs/conformance.md)
test-peer: $(STAMP)
	$(PY) -m pytest -c tests_peer/pytest.ini tests_peer -n 2 --dist loadfile -q -p no:cacheprovider

# hf_ext as users install it: the wheel built from this checkout, installed with its declared dependencies (torch==2.13.0,
# the CPU build, first) into a fresh virtualenv outside the checkout, and tests/wheel/smoke.py run from a temporary
# directory, so it can only import the installed hf_ext (import, Auto loads, model cards, a trainer step, the CLI).
# The build folder is removed first (setuptools would put stale files left in build/lib into the wheel); the
# virtualenv (2 GB) is deleted in the background, which takes minutes on a busy disk.
wheel-smoke:
	@set -e; tmp=$$(mktemp -d -t hf_ext_wheel_smoke.XXXXXX); trap '(rm -rf "$$tmp" &)' EXIT; start=$$(date +%s); \
	rm -rf build; \
	python3 -m venv "$$tmp/venv"; \
	pip="$$tmp/venv/bin/python -m pip"; \
	$$pip install --quiet --upgrade pip; \
	echo "wheel-smoke: virtualenv in $$(( $$(date +%s) - start )) s"; \
	$$pip wheel --quiet --no-deps --wheel-dir "$$tmp/dist" .; \
	$$pip install --quiet --no-compile torch==2.13.0; \
	$$pip install --quiet --no-compile "$$tmp"/dist/hf_ext-*.whl; \
	echo "wheel-smoke: $$(cd "$$tmp/dist" && ls) built and installed in $$tmp/venv in $$(( $$(date +%s) - start )) s"; \
	cd "$$tmp" && "$$tmp/venv/bin/python" "$(CURDIR)/tests/wheel/smoke.py"; \
	echo "wheel-smoke: passed in $$(( $$(date +%s) - start )) s"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf build dist *.egg-info .pytest_cache

# The chinese-poetry corpus (MIT) for Jiuge, fetched with npm into data/ (gitignored), never committed.
POETRY_DIR ?= data/chinese-poetry
POETRY_VERSION ?= 2.0.1
poetry-corpus: $(POETRY_DIR)/dist/songci

$(POETRY_DIR)/dist/songci:
	mkdir -p $(POETRY_DIR)
	cd $(POETRY_DIR) && npm pack --silent chinese-poetry@$(POETRY_VERSION)
	tar -xzf $(POETRY_DIR)/chinese-poetry-$(POETRY_VERSION).tgz -C $(POETRY_DIR) --strip-components=1
	rm -f $(POETRY_DIR)/chinese-poetry-$(POETRY_VERSION).tgz
