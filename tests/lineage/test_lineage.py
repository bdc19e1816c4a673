"""`lmlab lineage`: the whole lineage end to end on a tiny corpus, its n-gram search, and bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from lmlab.lineage.ngram_entry import sample_ngram, search_ngram
from lmlab.ngram.model import corpus_from_ids, train_ngram
from lmlab.ngram.token_lm import TokenNgramLM


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """Twelve short documents of random sentences over a small vocabulary, as one .txt file."""
    rng = random.Random(0)
    words = "the king and queen of a castle spoke to my lord in fair verona where we lay our scene".split()
    def doc() -> str:
        return "\n".join(" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(60))

    docs = [doc() for _ in range(12)]
    path = tmp_path_factory.mktemp("lineage") / "plays.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


# One thread and a fixed peak FLOP/s: tiny models run fastest so on a shared CPU, and no CPU probe runs.
ENV = {"OMP_NUM_THREADS": "1", "LMLAB_PEAK_FLOPS": "1e11"}
MODELS = "ngram,nplm,lstm,llama"
# 30 steps of 8 windows of 32 tokens for every neural model.
TINY = ("--vocab-size", "300", "--size", "tiny", "--block-size", "32", "--batch-size", "8", "--evals", "3",
        "--eval-iters", "2", "--ngram-orders", "2,3", "--sample-tokens", "12", "--prompt", "the king",
        "--device", "cpu", "--precision", "fp32", "--no-progress", "--models", MODELS)
TOKENS = 30 * 8 * 32


def lineage_cli(*args: object, timeout: int = 600):
    """Run `lmlab lineage` in a subprocess with the test environment."""
    from tests.conftest import run_cli

    return run_cli("lineage", *map(str, args), env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def token_run(tiny_corpus: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A whole tiny lineage under a token budget: its folder and the JSON it printed."""
    out = tmp_path_factory.mktemp("token-run") / "lineage"
    r = lineage_cli("--corpus", tiny_corpus, *TINY, "--budget-tokens", TOKENS, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_lineage_token_budget_end_to_end(token_run) -> None:
    out, result = token_run
    names = [m["name"] for m in result["models"]]
    assert names == ["ngram", "nplm", "lstm", "llama"]
    assert result["settings"]["budget_kind"] == "tokens" and result["settings"]["precision"] == "fp32"
    for m in result["models"]:
        assert m["params"] > 0 and m["tokens_seen"] > 0
        assert 0 < m["val_bpb"] < 20 and m["val_ppl"] > 1
        assert isinstance(m["sample"], str)
        if m["name"] != "ngram":  # the same steps and tokens for every neural model, whatever the machine
            assert m["steps"] == 30 and m["tokens_seen"] == TOKENS
            assert m["train_flops"] == pytest.approx(TOKENS * m["flops_per_token"])
            saved = yaml.safe_load((out / m["name"] / "config.yaml").read_text())
            assert saved["max_steps"] == 30 and saved["time_budget"] is None and saved["eval_interval"] == 10
            assert Path(saved["data"]) == out / "data"  # not the temporary folder it was built in
    ngram = result["models"][0]
    assert len(ngram["search"]) == 8  # a work budget does not cut the search short: 2 orders x 4 smoothings
    assert ngram["train_flops"] is None
    # the chosen n-gram is saved as a run the server loads, its sample drawn from that same model
    from lmlab.ngram.token_lm import load_token_ngram

    card = json.loads((out / "ngram" / "ngram.json").read_text())
    assert (card["order"], card["smoothing"], card["val_bpb"]) == (ngram["order"], ngram["smoothing"],
                                                                    ngram["val_bpb"])
    assert (out / "ngram" / "tokenizer.json").read_bytes() == (out / "data" / "tokenizer.json").read_bytes()
    lm = load_token_ngram(out / "ngram")
    assert sum(lm.model.ngram_counts()) == ngram["params"]
    assert lm.vocab_size == result["settings"]["vocab_size"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["eval_stride"] == 16  # half the block: every token has 16+ tokens of context
    for m in saved["models"][1:]:  # curves against FLOPs at 1/3, 2/3 and all of the steps
        assert [p["step"] for p in m["curve"]] == [10, 20, 30]
        assert [p["flops"] for p in m["curve"]] == pytest.approx([s * 256 * m["flops_per_token"]
                                                                  for s in (10, 20, 30)])
        assert all(0 < p["val_bpb"] < 20 for p in m["curve"])
    for name in ("report.md", "lineage.png", "config.yaml", "data/tokenizer.json", "llama/model.safetensors"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    report = (out / "report.md").read_text()
    assert "| model |" in report and "lineage.png" in report and "the king" in report
    assert "sliding by 16" in report and "7,680 training tokens" in report
    assert "saved as ngram/model.arpa" in report
    # A second run into the same folder is refused without --overwrite.
    again = lineage_cli("--corpus", out.parent / "nothing.txt", "--budget-tokens", TOKENS, "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_same_seed_budget_and_fp32_give_the_same_bpb(token_run, tiny_corpus: Path, tmp_path: Path) -> None:
    _, first = token_run
    r = lineage_cli("--corpus", tiny_corpus, *TINY, "--budget-tokens", TOKENS, "--out", tmp_path / "again",
                    "--json")
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    assert [m["val_bpb"] for m in second["models"]] == [m["val_bpb"] for m in first["models"]]


def test_flops_budget_gives_each_model_its_own_steps() -> None:
    from lmlab.lineage.budget import Budget
    from lmlab.lineage.entries import ENTRIES
    from lmlab.lineage.run import LineageConfig, _plan

    cfg = LineageConfig(size="tiny", block_size=32, batch_size=8)
    budget = Budget("flops", 2e9)
    plans = [_plan(cfg, ENTRIES[name], 300, budget) for name in ("nplm", "lstm", "llama")]
    for plan in plans:  # whole steps of 256 tokens nearest to the budget, by each model's own count
        assert plan.tokens_per_step == 256
        assert plan.max_steps == round(2e9 / plan.flops_per_token / 256)
        assert abs(plan.max_steps * 256 * plan.flops_per_token - 2e9) <= 128 * plan.flops_per_token
    assert len({plan.max_steps for plan in plans}) == 3
    assert _plan(cfg, ENTRIES["nplm"], 300, Budget("tokens", 2560)).max_steps == 10
    assert _plan(cfg, ENTRIES["nplm"], 300, Budget("seconds", 5)).max_steps is None


def test_time_budget_still_works(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = lineage_cli("--corpus", tiny_corpus, *TINY[:-2], "--models", "gpt2", "--budget", "1", "--evals", "2",
                    "--sample-tokens", "0", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    (m,) = json.loads(r.stdout)["models"]
    assert m["steps"] >= 1 and m["train_flops"] == pytest.approx(m["tokens_seen"] * m["flops_per_token"])
    assert yaml.safe_load((out / "gpt2" / "config.yaml").read_text())["time_budget"] == 1


def test_kill_during_overwrite_leaves_the_old_run(token_run, tiny_corpus: Path, tmp_path: Path) -> None:
    """SIGKILL a run that --overwrite's an old one midway: the old run is whole and untouched."""
    old, _ = token_run
    out = tmp_path / "lineage"
    shutil.copytree(old, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cmd = [sys.executable, "-m", "lmlab.cli", "lineage", "--corpus", str(tiny_corpus), *TINY,
           "--budget-tokens", str(1000 * TOKENS), "--out", str(out), "--overwrite"]
    proc = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        # midway: the n-gram is done and the first neural model is training in the temporary folder
        while proc.poll() is None and not list(tmp_path.glob(".lineage.new-*/nplm/metrics.jsonl")):
            assert time.monotonic() < deadline, "the new run never started training"
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


# Ctrl-C while a model trains (the trainer stops it); SIGTERM once the data is prepared (outside the trainer)
@pytest.mark.parametrize("sig, marker", [(signal.SIGINT, "nplm/metrics.jsonl"),
                                         (signal.SIGTERM, "data/meta.json")])
def test_interrupt_during_overwrite_leaves_the_old_run(token_run, tiny_corpus: Path,
                                                      tmp_path: Path, sig: int, marker: str) -> None:
    old, _ = token_run
    out = tmp_path / "lineage"
    shutil.copytree(old, out)
    results = (out / "results.json").read_bytes()
    cmd = [sys.executable, "-m", "lmlab.cli", "lineage", "--corpus", str(tiny_corpus), *TINY,
           "--budget-tokens", str(1000 * TOKENS), "--out", str(out), "--overwrite"]
    proc = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not list(tmp_path.glob(f".lineage.new-*/{marker}")):
            assert time.monotonic() < deadline, f"the new run never wrote {marker}"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert (out / "results.json").read_bytes() == results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lineage"]  # the temporary folder is gone


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], "--budget must be a positive"),
    (["--budget-tokens", "-5"], "--budget-tokens must be a positive"),
    ([], "give exactly one budget (got none)"),
    (["--budget", "5", "--budget-flops", "1e12"], "give exactly one budget (got --budget-flops, --budget)"),
    (["--preset", "huge"], "unknown lineage preset 'huge'"),
    (["--budget", "5", "--models", "ngram,transformerxl"], "unknown lineage model"),
    (["--budget", "5", "--ngram-smoothings", "magic"], "unknown n-gram smoothing"),
    (["--budget", "5", "--ngram-orders", "0"], "orders >= 1"),
    (["--budget", "5", "--block-size", "32", "--eval-stride", "33"], "--eval-stride must be between 1 and"),
])
def test_lineage_bad_input(cli, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    r = cli("lineage", "--out", out, *args)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()


def test_refuses_inputs_inside_out_and_out_as_a_file(cli, token_run, tmp_path: Path) -> None:
    old, _ = token_run
    out = tmp_path / "lineage"
    shutil.copytree(old, out)
    corpus = out / "plays.txt"
    corpus.write_text("to be or not to be\n" * 50, encoding="utf-8")
    cases = [
        (["--data", out / "data", "--out", out], f"--data {out / 'data'} lies inside --out {out}"),
        (["--corpus", corpus, "--out", out], f"--corpus {corpus} lies inside --out {out}"),
        (["--out", corpus], f"--out {corpus} is a file"),
    ]
    for args, message in cases:
        r = cli("lineage", "--budget-tokens", "1000", "--overwrite", *args)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert (out / "results.json").read_bytes() == (old / "results.json").read_bytes()


def test_presets_fill_defaults_and_yield_to_flags() -> None:
    from lmlab.lineage.budget import PRESETS, apply_preset, budget_of
    from lmlab.lineage.run import LineageConfig

    demo = apply_preset(LineageConfig(preset="demo"))
    assert budget_of(demo).kind == "flops" and demo.precision == "fp32" and demo.size == "mini"
    assert budget_of(demo).value == PRESETS["demo"][1]["budget_flops"]
    mine = apply_preset(LineageConfig(preset="full", budget_tokens=5000, precision="bf16"))
    assert budget_of(mine).kind == "tokens" and mine.precision == "bf16"


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("preset", ["nplm-tiny", "nplm-small", "lstm-tiny", "gru-tiny", "rnn-tiny"])
def test_flops_per_token_matches_the_counted_matmuls(preset: str) -> None:
    """The budget's FLOPs per token of the NPLM and recurrent LMs agree with torch's FLOP counter over
    one training step (within 5%; biases count as 6 FLOPs each but are not matmuls). Decoders use
    PaLM's count of lmlab.scaling.flops (tests/test_scaling_flops.py)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lmlab.models.registry import build_model, get_preset
    from lmlab.train.parts import training_parts

    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=512))
    block = model.config.block_size
    tokens = np.random.default_rng(0).integers(0, 512, 20_000)
    objective, batches = training_parts(model, tokens, block_size=block, batch_size=4, seed=0)
    batch = batches.next()
    # oneDNN runs a whole LSTM as one op the counter cannot see; without it the matmuls are counted
    with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
        loss = objective(model, batch)
        (loss[0] if isinstance(loss, tuple) else loss).backward()
    counted = counter.get_total_flops() / batch["input_ids"].numel()
    assert counted == pytest.approx(model.flops_per_token(block), rel=0.05)


def test_budget_too_small_leaves_nothing(cli, tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = cli("lineage", "--corpus", tiny_corpus, "--vocab-size", "300", "--budget", "0.000001",
            "--size", "tiny", "--models", "gpt2", "--block-size", "32", "--device", "cpu", "--no-progress",
            "--out", out)
    assert r.returncode == 2 and "too small to take one step" in r.stderr and "gpt2" in r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_token_budget_below_one_step_is_refused(cli, tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = cli("lineage", "--corpus", tiny_corpus, *TINY, "--budget-tokens", "100", "--out", out)
    assert r.returncode == 2 and "nplm: --budget-tokens 100 is too small to take one step" in r.stderr
    assert not list(tmp_path.iterdir())


def test_ngram_search_picks_the_best_dev_candidate() -> None:
    rng = np.random.default_rng(0)
    # A Markov chain of order 2 over 30 symbols with a document end every ~400 tokens.
    ids = [1, 2]
    for _ in range(30_000):
        ids.append(3 + (ids[-1] * 7 + ids[-2] * 3 + int(rng.integers(0, 2))) % 30)
    ids = np.array(ids)
    ids[rng.choice(len(ids), 60, replace=False)] = 0
    found = search_ngram(ids, 0, 1.0, [1, 2, 3], ["mkn", "witten-bell"], budget=60)
    assert len(found.candidates) == 6
    best = min(found.candidates, key=lambda c: c["dev_bpb"])
    assert (found.order, found.smoothing) == (best["order"], best["smoothing"])
    assert found.order >= 2  # a unigram model cannot be best on an order-2 chain


def test_ngram_search_stops_at_the_budget_after_one_candidate() -> None:
    ids = np.arange(2000) % 17 + 1
    found = search_ngram(ids, 0, 1.0, [1, 2, 3], ["mkn", "kn"], budget=0.0)
    assert len(found.candidates) == 1


def test_sample_ngram_follows_a_deterministic_chain() -> None:
    ids = np.array([5, 6, 7, 8] * 200 + [0])
    model = train_ngram(corpus_from_ids(ids, 0), 3, "mkn", discount_fallback=True)
    lm = TokenNgramLM(model, 0, 10)
    new = sample_ngram(lm, [5, 6], 8, seed=0, temperature=0.05)
    assert new == [7, 8, 5, 6, 7, 8, 5, 6]
    assert sample_ngram(lm, [5, 6], 8, temperature=0) == new  # temperature 0: greedy
    assert sample_ngram(lm, [5, 6], 8, temperature=50, top_k=1) == new  # top-k 1: greedy too
    # an end-of-text in the prompt starts a new document, which the chain always opens with 5
    assert sample_ngram(lm, [5, 6, 0], 2, temperature=0) == [5, 6]
    # sampling stops at end-of-text: a chain that always ends after 3 4
    short = TokenNgramLM(train_ngram(corpus_from_ids(np.array([3, 4, 0] * 50), 0), 2, "mkn",
                                     discount_fallback=True), 0, 10)
    assert sample_ngram(short, [3], 5, temperature=0) == [4]
