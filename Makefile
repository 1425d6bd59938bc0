# Every target that needs Python creates .venv on first use and installs everything into it:
# torch==2.13.0 first (the CPU build), then hf_ext with its `dev` and `apps` extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hf_ext_installed

.PHONY: install demo test test-slow test-all test-peer lint format study clean poetry-corpus

install: $(STAMP)

$(STAMP): pyproject.toml
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
