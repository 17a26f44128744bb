# lowbit: the two commands every fresh machine needs, and a few more.
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
export LOWBIT_CACHE ?= $(HOME)/.cache/lowbit

.PHONY: demo test build gemma vocab nvrtc

build:
	$(CARGO) build --release -p lowbit

gemma:
	@$(PYTHON) --version >/dev/null
	@PYTHON=$(PYTHON) bash scripts/fetch-gemma.sh >/dev/null

# The shared llama.cpp vocab GGUFs were damaged by a UTF-8 round trip; rebuild them into the cache.
vocab:
	@$(PYTHON) scripts/gen_tokenizer_fixtures.py repair-vocab >/dev/null

# Fetch Gemma-3-270M (GGUF Q4_K_M) once, run it, measure its perplexity, print a table.
demo: build gemma
	@PYTHON=$(PYTHON) bash scripts/demo.sh

# The test suite CI runs: debug build (kernels optimized), Gemma fetched once into the cache.
# NVRTC from PyPI lets the suite compile every CUDA kernel to PTX on machines without a GPU.
nvrtc:
	@$(PYTHON) -m pip install --quiet --disable-pip-version-check nvidia-cuda-nvrtc==13.0.88

test: gemma vocab nvrtc
	LOWBIT_REQUIRE_DATA=1 PYTHON=$(PYTHON) $(CARGO) test --workspace
