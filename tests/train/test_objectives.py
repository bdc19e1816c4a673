"""``lmlab pretrain --objective``: every objective trains a tiny model end to end through the CLI.

Each run's loss must fall and its validation report the objective's own loss (bits per byte
only for the causal objective); exact resume holds as for the decoders; an objective that does
not fit the model, or data without the special tokens, is a one-line error naming the fix.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.data.prepare import prepare
from lmlab.train.log import read_metrics

COMMON = ["--block-size", "32", "--batch-size", "8", "--precision", "fp32", "--device", "cpu",
          "--no-progress", "--warmup-steps", "5", "--log-interval", "1", "--eval-iters", "2", "--lr", "3e-3",
          "--d-model", "32", "--n-layer", "1"]
# objective -> the tiny preset it trains in these tests
RUNS = {
    "blank-infilling": "gpt2-tiny",
}


@pytest.fixture(autouse=True)
def _no_flops_probe(monkeypatch):
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")


@pytest.fixture(scope="module")
def mask_data(tmp_path_factory) -> Path:
    """Char-level data of random sentences, prepared with --mask-tokens."""
    root = tmp_path_factory.mktemp("mask-data")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while birds sing in green trees".split()
    docs = [" ".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "."
                     for _ in range(20)) for _ in range(40)]
    (root / "corpus.txt").write_text("\n\n".join(docs), encoding="utf-8")
    prepare(str(root / "corpus.txt"), root / "prep", kind="char", mask_tokens=True)
    return root / "prep"


def pretrain(data: Path, out: Path, objective: str, *extra: str) -> int:
    return main(["pretrain", "--model", RUNS[objective], "--objective", objective, *COMMON,
                 "--data", str(data), "--out", str(out), *extra])


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


@pytest.mark.parametrize("objective", sorted(RUNS))
def test_each_objective_trains_and_its_loss_falls(objective, mask_data, tmp_path):
    out = tmp_path / "run"
    assert pretrain(mask_data, out, objective, "--max-steps", "40", "--eval-interval", "20") == 0
    records = read_metrics(out)
    first, last = [r["loss"] for r in records[:5]], [r["loss"] for r in records[-5:]]
    assert sum(last) / 5 < 0.8 * sum(first) / 5
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [20, 40] and evals[-1]["val_loss"] < evals[0]["val_loss"] + 0.5
    assert all("val_bpb" not in r for r in records)  # bits per byte is for the causal objective only
    assert "objective: " + objective in (out / "config.yaml").read_text()


def test_blank_infilling_resumes_exactly(mask_data, tmp_path):
    args = ("--max-steps", "8", "--dropout", "0.1", "--eval-interval", "4")
    assert pretrain(mask_data, tmp_path / "ref", "blank-infilling", *args) == 0
    assert pretrain(mask_data, tmp_path / "run", "blank-infilling", *args, "--stop-at-step", "3") == 0
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0
    assert losses(tmp_path / "run") == losses(tmp_path / "ref") and len(losses(tmp_path / "ref")) == 8


def test_an_objective_that_does_not_fit_names_those_that_do(mask_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--model", "gpt2-tiny", "--objective", "mlm", *COMMON, "--data", str(mask_data),
                 "--out", str(out), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "mlm objective does not fit a decoder model" in err and "causal, blank-infilling" in err
    assert not out.exists()


def test_data_without_the_special_tokens_names_the_prepare_option(data_dir_plain, tmp_path, capsys):
    assert main(["pretrain", "--model", "gpt2-tiny", "--objective", "blank-infilling", *COMMON,
                 "--data", str(data_dir_plain), "--out", str(tmp_path / "run"), "--max-steps", "2"]) == 2
    assert "lmlab data prepare --mask-tokens" in capsys.readouterr().err


@pytest.fixture(scope="module")
def data_dir_plain(tmp_path_factory) -> Path:
    from tests.conftest import prepare_word_soup

    return prepare_word_soup(tmp_path_factory.mktemp("plain"))
