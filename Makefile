# `make demo` runs the whole factory on one machine; `make test` runs the test suite.
# Both create .venv and install what they need on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
# llama.cpp built for the CPU it is built on turns on AMX on Intel Xeons that have it, and ggml's AMX
# kernels crash there on the first prompt of more than one token; on x86-64 the teacher is built for
# AVX2 instead (every x86-64 server CPU of the last decade has it). Set LLAMA_CMAKE_ARGS to override.
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
LLAMA_VERSION := 0.3.36
# The teacher's native build (5-13 min on 2 cores) is cached once per machine, keyed by its version, the
# build flags, the CPU architecture and the Python: pip's own wheel cache ignores CMAKE_ARGS.
WHEEL_CACHE ?= $(HOME)/.cache/synth-factory/wheels
LLAMA_KEY := $(shell printf '%s|%s|%s|%s' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' "$$(uname -m)" "$$($(PY) -c 'import sys; print(sys.implementation.cache_tag)')" | sha256sum | cut -c1-16)
LLAMA_WHEELS := $(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_KEY)

.PHONY: demo test test-fast lint bench docs install browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so the `torch>=2.11` requirement takes it (not a CUDA build)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { mkdir -p $(LLAMA_WHEELS).tmp && \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS).tmp 'llama-cpp-python==$(LLAMA_VERSION)' && \
	  rm -rf $(LLAMA_WHEELS) && mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); }
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/pip install -q --find-links $(LLAMA_WHEELS) --only-binary llama-cpp-python 'llama-cpp-python[server]==$(LLAMA_VERSION)'
	$(BIN)/pip install -q -e '.[teacher,corpus,s3,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/factory demo --out runs/demo

# the review page's browser test drives Debian's Chromium (no browser download works offline); as root on
# Debian it is installed once, elsewhere the test says why it skips
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; } || \
	  echo "chromium not installed: the review page's browser test will skip"

# the suite as two lanes side by side (one per core), then the time per directory and the slowest tests
test: $(STAMP) browser lint
	$(BIN)/python -m tests.split

# the edit loop: everything but the end-to-end tests on real parts (teacher, Ray, torchrun)
test-fast: $(STAMP) lint
	$(BIN)/python -m tests.split -m "not slow"

# ruff (configured in pyproject.toml): pyflakes, pycodestyle's errors, import order
lint: $(STAMP)
	$(BIN)/ruff check factory train tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# the guide (docs/guide, MkDocs with the Material theme) into runs/docs; --strict: a broken link or anchor, or a
# page left out of the nav, fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -f docs/mkdocs.yml -d $(CURDIR)/runs/docs

clean:
	rm -rf runs .pytest_cache
