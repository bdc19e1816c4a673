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

# The main job: prepare Shakespeare, pretrain a small LLaMA for 3 minutes on CPU,
# report validation bits per byte and print a sample.
DEMO_DATA := runs/data/shakespeare-bpe4096
DEMO_RUN := runs/demo-llama-small
demo: $(STAMP)
	$(BIN)/lmlab data prepare --corpus shakespeare --tokenizer bpe --vocab-size 4096 --out $(DEMO_DATA)
	$(BIN)/lmlab pretrain --model llama-small --data $(DEMO_DATA) --out $(DEMO_RUN) --overwrite \
		--time-budget 180 --block-size 128 --batch-size 16 --lr 2e-3 --warmup-steps 20 --log-interval 20
	$(BIN)/lmlab eval --ckpt $(DEMO_RUN) --data $(DEMO_DATA)
	$(BIN)/lmlab generate --ckpt $(DEMO_RUN) --prompt "ROMEO:" --max-new-tokens 80 --temperature 0.8 --top-k 50 --seed 1

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check lmlab tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
