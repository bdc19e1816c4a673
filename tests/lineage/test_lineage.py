"""`lmlab lineage`: the whole lineage end to end on a tiny corpus, its n-gram search, and bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from lmlab.lineage.ngram_entry import sample_ngram, search_ngram
from lmlab.ngram.model import corpus_from_ids, train_ngram


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


def test_lineage_end_to_end(cli, tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "lineage"
    r = cli("lineage", "--corpus", tiny_corpus, "--vocab-size", "300", "--budget", "3", "--size", "tiny",
            "--block-size", "32", "--batch-size", "8", "--evals", "3", "--eval-iters", "2",
            "--ngram-orders", "2,3", "--sample-tokens", "12", "--prompt", "the king", "--device", "cpu",
            "--no-progress", "--out", out, "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    names = [m["name"] for m in result["models"]]
    assert names == ["ngram", "nplm", "lstm", "gpt2", "llama"]
    for m in result["models"]:
        assert m["params"] > 0 and m["tokens_seen"] > 0
        assert 0 < m["val_bpb"] < 20 and m["val_ppl"] > 1
        assert isinstance(m["sample"], str)
        if m["name"] != "ngram":  # trained under the shared time budget (no wall-clock assertion)
            assert m["train_seconds"] > 0 and m["steps"] >= 1
            assert yaml.safe_load((out / m["name"] / "config.yaml").read_text())["time_budget"] == 3
    ngram = result["models"][0]
    assert ngram["order"] in (2, 3) and len(ngram["search"]) >= 1
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["eval_stride"] == 16  # half the block: every token has 16+ tokens of context
    curves = {m["name"]: m["curve"] for m in saved["models"]}
    assert all(len(curves[n]) >= 2 for n in ("nplm", "lstm", "gpt2", "llama"))  # periodic + final validation
    for name in ("report.md", "lineage.png", "config.yaml", "data/tokenizer.json", "llama/model.safetensors"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| model |" in report and "lineage.png" in report and "the king" in report
    assert "sliding by 16" in report
    # A second run into the same folder is refused without --overwrite.
    again = cli("lineage", "--corpus", tiny_corpus, "--budget", "3", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], "--budget must be a positive"),
    (["--budget", "5", "--models", "ngram,transformerxl"], "unknown lineage model"),
    (["--budget", "5", "--ngram-smoothings", "magic"], "unknown n-gram smoothing"),
    (["--budget", "5", "--ngram-orders", "0"], "orders >= 1"),
    (["--budget", "5", "--block-size", "32", "--eval-stride", "33"], "--eval-stride must be between 1 and"),
])
def test_lineage_bad_input(cli, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    r = cli("lineage", "--out", out, *args)
    assert r.returncode == 2 and message in r.stderr
    assert not out.exists()


def test_budget_too_small_leaves_nothing(cli, tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = cli("lineage", "--corpus", tiny_corpus, "--vocab-size", "300", "--budget", "0.000001",
            "--size", "tiny", "--models", "gpt2", "--block-size", "32", "--device", "cpu", "--no-progress",
            "--out", out)
    assert r.returncode == 2 and "too small to take one step" in r.stderr and "gpt2" in r.stderr
    assert not out.exists()


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
    new = sample_ngram(model, [5, 6], 0, 8, seed=0, temperature=0.05)
    assert new == [7, 8, 5, 6, 7, 8, 5, 6]
