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
	$(BIN)/pip install -q $(CONSTRAINTS) -e '.[images,text,molecules,serve,music,responsible,dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	rm -rf runs/demo-gpt runs/demo-vae
	$(BIN)/python -m genforge train gpt-demo --run-dir runs/demo-gpt
	@echo "--- samples from runs/demo-gpt ---"
	$(BIN)/python -m genforge sample runs/demo-gpt --prompt "The " --max-new-tokens 300 --seed 0 --no-stream
	$(BIN)/python -m genforge train vae-digits model.conditional=true train.max_steps=800 --run-dir runs/demo-vae
	$(BIN)/python -m genforge sample runs/demo-vae --num-samples 100 --out runs/demo-vae/samples-by-class.png --seed 0
	$(BIN)/python -m genforge eval runs/demo-vae --num-samples 500 --iwae-k 20
	@echo "runs: runs/demo-gpt (text), runs/demo-vae (images: runs/demo-vae/samples-by-class.png)"

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
