# One command each: `make demo` generates text with the bundled model; `make test` runs the tests.
# Both create .venv on first use. torch is pinned to 2.13.0, the CPU build: PyTorch's CPU index
# is added to pip's indexes, and its 2.13.0+cpu outranks PyPI's 2.13.0 (the CUDA build on Linux).
# Where that index cannot be reached, pip retries it (about a minute) and takes torch from its
# other sources; `make TORCH_INDEX= demo` leaves it out. The package itself asks for torch>=2.4.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PROMPT ?= ROMEO:

.PHONY: demo test test-slow test-browser lint bench gallery report serve clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/pip install -q -e .
	$(BIN)/python -m lmgen.kernels  # builds the CPU decode kernel once (lmgen/kernels)
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/pip install -q $(TORCH) -e '.[dev]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/lmgen generate "$(PROMPT)" --max-new-tokens 120 --strategy sample --seed 1

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(VENV)/.dev lint
	$(BIN)/python -m pytest -q -n 2

test-slow: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m slow

# The playground's browser test drives Debian's Chromium headless (never a downloaded browser).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(VENV)/.dev
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
	$(BIN)/python -m pytest -q -m browser

# The full benchmark (an hour or more on 2 cores); it rewrites the committed page and its data.
bench: $(VENV)/.dev
	$(BIN)/python -m bench --out docs/benchmarks.md --json docs/benchmarks.json

gallery: $(VENV)/.runtime
	$(BIN)/python scripts/make_gallery.py

# docs/decoding-report.md: lmgen compare on the bundled model and held-out Hamlet (50 prompts x
# the default strategies, 128 tokens; minutes on two cores), with MAUVE.
report: $(VENV)/.runtime
	$(BIN)/pip install -q -e '.[compare,mauve]'
	$(BIN)/python scripts/make_report.py

serve: $(VENV)/.runtime
	$(BIN)/lmgen serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
