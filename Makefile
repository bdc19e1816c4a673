# lmlab: `make demo` and `make test` do all setup on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU wheel; GPU users: install a CUDA torch into .venv first, then `make setup TORCH=`.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-slow test-browser lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install -q "$(TORCH)")
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: the lineage on Shakespeare. One BPE tokenizer; an n-gram, NPLM, LSTM, GPT-2 and
# LLaMA under one budget of work (the demo preset: 6e12 training FLOPs per neural model, fp32),
# so the table is the same on every machine up to float noise; report.md and lineage.png in
# runs/lineage. About 10 minutes on 2 CPU cores (AVX2); `--preset full` is about an hour.
demo: $(STAMP)
	$(BIN)/lmlab lineage --preset demo --precision fp32 --corpus shakespeare --prompt "ROMEO:" \
		--out runs/lineage --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10
	$(BIN)/lint-imports

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Only the playground's tests in real Chromium (Debian's chromium package, /usr/bin/chromium, driven by
# playwright; nothing downloads a browser). Without Chromium they skip with the reason.
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q -m browser tests/browser

lint: $(STAMP)
	$(BIN)/ruff check lmlab tests benchmarks
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
