# `make demo` and `make test` work on a fresh machine with only Python and pip.
# If the system Python already has torch (e.g. a CUDA build on a GPU machine), the
# venv reuses it; otherwise torch is pinned by constraints.txt (the CPU wheel here).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HAS_TORCH := $(shell $(PY) -c "import torch" 2>/dev/null && echo yes)
VENV_FLAGS := $(if $(HAS_TORCH),--system-site-packages,)
CONSTRAINTS := $(if $(HAS_TORCH),,-c constraints.txt)

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(CONSTRAINTS) -e '.[images,dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python -m genforge train gpt-demo --run-dir runs/demo-gpt
	@echo "--- samples from runs/demo-gpt ---"
	$(BIN)/python -m genforge sample runs/demo-gpt --prompt "The " --max-new-tokens 300 --seed 0 --no-stream

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
