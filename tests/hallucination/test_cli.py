"""End to end through the real CLI: a tiny world, a tiny model trained on it, its hallucination evaluation."""

from __future__ import annotations

import json
import os

import pytest

from lmlab.errors import LmlabError
from lmlab.hallucination.experiment import evaluate_run, write_world
from lmlab.hallucination.world import BUCKETS, WorldSpec
from tests.conftest import run_cli
from tests.test_cli_errors import one_error_line

ENV = {"LMLAB_PEAK_FLOPS": "1e11", "OMP_NUM_THREADS": "1"}  # no FLOP/s probe in the subprocesses
WORLD = ["--often", "6", "--rarely", "6", "--never", "4", "--unknown-people", "3", "--often-mentions", "3",
         "--vocab-size", "300"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny world written by the CLI and a 2-step model trained on it (in process)."""
    from lmlab.hallucination.experiment import ModelSpec, train_model

    root = tmp_path_factory.mktemp("halluc")
    r = run_cli("hallucination", "world", "--out", root / "world", *WORLD, "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    os.environ.setdefault("LMLAB_PEAK_FLOPS", "1e11")
    train_model(root / "world", root / "run", ModelSpec(d_model=32, n_layer=1, n_head=2, block_size=64,
                                                        batch_size=4, steps=2), progress=False)
    return root, json.loads(r.stdout)


def test_world_command_writes_the_world_and_both_prepared_texts(tiny):
    root, summary = tiny
    assert summary["people"] == {"often": 6, "rarely": 6, "never": 4}
    assert summary["asked"] == 3 + 3 + 4
    assert summary["data-unknown"]["train_tokens"] > summary["data"]["train_tokens"]
    for name in ("world.json", "config.yaml", "corpus/train.txt", "corpus-unknown/val.txt",
                 "data/tokenizer.json", "data-unknown/train.bin"):
        assert (root / "world" / name).is_file(), name
    assert (root / "world" / "data" / "tokenizer.json").read_bytes() == \
        (root / "world" / "data-unknown" / "tokenizer.json").read_bytes()


def test_eval_command_reports_rates_by_bucket_and_detector_aurocs(tiny, tmp_path):
    root, _ = tiny
    r = run_cli("hallucination", "eval", "--ckpt", root / "run", "--world", root / "world",
                "--questions", "4", "--samples", "2", "--out", tmp_path / "ev", "--json", env=ENV)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["questions"] == 12
    for mode in ("closed_book", "open_book"):
        for bucket in (*BUCKETS, "all"):
            row = res[mode][bucket]
            assert row["n"] == (12 if bucket == "all" else 4)
            assert 0 <= row["hallucination_rate"] <= 1 and 0 <= row["accuracy"] <= 1
            assert row["hallucination_rate"] + row["accuracy"] <= 1 + 1e-9
    # a 2-step model is never right, so the detectors have no correct answer to rank hallucinations
    # against: their AUROC is undefined (None), not a made-up number
    det = res["detectors"]
    assert det["all"]["n"] == det["all"]["hallucinated"]
    for name in ("neg_logprob", "mean_entropy", "selfcheck_ngram_avg", "token_disagreement", "unsupported"):
        assert det["all"][name] is None
    assert set(res["retrieval_recall"]) == {"often", "rarely"}
    assert all(0 <= v <= 1 for v in res["retrieval_recall"].values())
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["questions"] == 12
    assert (tmp_path / "ev" / "config.yaml").is_file()


def test_eval_command_prints_the_table(tiny):
    root, _ = tiny
    text = run_cli("hallucination", "eval", "--ckpt", root / "run", "--world", root / "world",
                   "--questions", "2", "--no-detectors", env=ENV)
    assert text.returncode == 0, text.stderr
    assert "closed book" in text.stdout and "open book (BM25 k=3)" in text.stdout


def test_bad_input_gets_one_line_errors(tiny, tmp_path):
    root, _ = tiny
    line = one_error_line(run_cli("hallucination", "world", "--out", tmp_path / "w", "--often", "1", env=ENV))
    assert "--often must be at least 2" in line
    line = one_error_line(run_cli("hallucination", "eval", "--ckpt", root / "run", "--world", tmp_path,
                                  env=ENV))
    assert "no world.json" in line
    # the same checks in process (a CLI start each would be slow)
    with pytest.raises(LmlabError, match="already holds a world"):
        write_world(WorldSpec(), root / "world")
    with pytest.raises(LmlabError, match="--samples"):
        evaluate_run(root / "run", root / "world", samples=0)
    with pytest.raises(LmlabError, match="--k"):
        evaluate_run(root / "run", root / "world", k=0)


@pytest.mark.slow
def test_run_command_trains_both_models_and_reports_the_table(tmp_path):
    r = run_cli("hallucination", "run", "--out", tmp_path / "h", *WORLD, "--d-model", "32", "--n-layer", "1",
                "--n-head", "2", "--block-size", "64", "--batch-size", "4", "--steps", "3",
                "--questions", "3", "--samples", "2", "--no-progress", env=ENV)
    assert r.returncode == 0, r.stderr
    assert "unknown, closed book" in r.stdout and "detector AUROC (base" in r.stdout
    assert "detector AUROC (unknown" in r.stdout
    res = json.loads((tmp_path / "h" / "results.json").read_text())
    assert set(res) >= {"world", "train_base", "train_unknown", "base", "unknown"}
    assert res["train_base"]["step"] == res["train_unknown"]["step"] == 3
