# lmlab: `make demo` and `make test` do all setup on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU wheel; GPU users: install a CUDA torch into .venv first, then `make setup TORCH=`.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(if $(TORCH),$(BIN)/python -m pip install -q "$(TORCH)")
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The main job: the lineage on Shakespeare. One BPE tokenizer; an n-gram, NPLM, LSTM, GPT-2 and
# LLaMA each get 90 s of training on CPU; table, plot, samples and report.md in runs/lineage.
demo: $(STAMP)
	$(BIN)/lmlab lineage --corpus shakespeare --budget 90 --prompt "ROMEO:" --out runs/lineage --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check lmlab tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
