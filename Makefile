# One command each: `make demo` generates text with the bundled model; `make test` runs the tests.
# Both create .venv on first use. torch is pinned to 2.13.0, the CPU build: PyTorch's CPU index
# is added to pip's indexes, and its 2.13.0+cpu outranks PyPI's 2.13.0 (the CUDA build on Linux).
# The index is probed once (5 s at most); where it cannot be reached it is left out, with one
# line saying so, and torch comes from pip's other sources (pip would otherwise retry it for a
# minute, printing dozens of lines). `make TORCH_INDEX= demo` leaves it out unasked. The package
# itself asks for torch>=2.4.
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

PROBE := import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method="HEAD"), timeout=5)

$(VENV)/.runtime: $(BIN)/activate pyproject.toml
	@index='$(TORCH_INDEX)'; \
	if [ -n "$$index" ] && ! $(BIN)/python -c '$(PROBE)' "$$index" 2>/dev/null; then \
		echo "PyTorch's CPU index ($$index) cannot be reached: torch comes from pip's other sources"; \
		index=; \
	fi; \
	cmd="$(BIN)/pip install -q $${index:+--extra-index-url $$index }$(TORCH)"; echo "$$cmd"; $$cmd
	$(BIN)/pip install -q -e .
	$(BIN)/python -m lmgen.kernels  # builds the CPU kernels once (lmgen/kernels)
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
