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
from lmlab.data.prepare import load_prepared, prepare
from lmlab.train.log import read_metrics

COMMON = ["--block-size", "32", "--batch-size", "8", "--precision", "fp32", "--device", "cpu",
          "--no-progress", "--warmup-steps", "5", "--log-interval", "1", "--eval-iters", "2", "--lr", "3e-3",
          "--d-model", "32", "--n-layer", "1"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest on a busy CPU
# objective -> the tiny preset it trains in these tests
RUNS = {
    "mlm": "roberta-micro",
    "mlm+nsp": "bert-micro",
    "span-corruption": "t5-tiny",
    "denoise": "bart-tiny",
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
    if objective.startswith("mlm"):  # masked-token accuracy logged in training and validation
        assert 0 <= records[-1]["mlm_accuracy"] <= 1 and evals[-1]["val_mlm_accuracy"] > 0
    if objective == "mlm+nsp":
        assert "nsp_accuracy" in records[-1] and 0 <= evals[-1]["val_nsp_accuracy"] <= 1


def test_auto_picks_each_family_its_own_objective(mask_data, tmp_path):
    naturals = {"bert-micro": "mlm+nsp", "roberta-micro": "mlm", "t5-tiny": "span-corruption",
                "bart-tiny": "denoise", "gpt2-tiny": "causal"}
    for preset, natural in naturals.items():
        out = tmp_path / preset
        assert main(["pretrain", "--model", preset, *COMMON, "--data", str(mask_data), "--out", str(out),
                     "--max-steps", "1", "--eval-iters", "0"]) == 0
        assert f"objective: {natural}" in (out / "config.yaml").read_text()
    # a new run takes the data tokenizer's special ids (RoBERTa's positions skip its padding)
    pad = load_prepared(mask_data).tokenizer().pad_id
    assert f"pad_id={pad}" in (tmp_path / "roberta-micro" / "config.yaml").read_text()
    assert f"pad_token_id={pad}" in (tmp_path / "t5-tiny" / "config.yaml").read_text()


@pytest.mark.parametrize("objective", ["mlm+nsp", "span-corruption", "blank-infilling"])
def test_resume_is_exact(objective, mask_data, tmp_path):
    """An encoder, an encoder-decoder and GLM's decoder: stop, resume, the same losses bit for bit."""
    args = ("--max-steps", "8", "--dropout", "0.1", "--eval-interval", "4")
    assert pretrain(mask_data, tmp_path / "ref", objective, *args) == 0
    assert pretrain(mask_data, tmp_path / "run", objective, *args, "--stop-at-step", "3") == 0
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0
    assert losses(tmp_path / "run") == losses(tmp_path / "ref") and len(losses(tmp_path / "ref")) == 8
    assert metric(tmp_path / "run", "val_loss") == metric(tmp_path / "ref", "val_loss")


def metric(run: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run) if key in r and r["step"] in (4, 8)}


def test_an_objective_that_does_not_fit_names_those_that_do(mask_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--model", "gpt2-tiny", "--objective", "mlm", *COMMON, "--data", str(mask_data),
                 "--out", str(out), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "mlm objective does not fit a decoder model" in err and "causal, blank-infilling" in err
    assert not out.exists()
    assert main(["pretrain", "--model", "roberta-micro", "--objective", "mlm+nsp", *COMMON,
                 "--data", str(mask_data), "--out", str(out), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "does not fit an encoder model; objectives that fit it: mlm " in err  # RoBERTa has no NSP head


def test_data_without_the_special_tokens_names_the_prepare_option(data_dir_plain, tmp_path, capsys):
    assert main(["pretrain", "--model", "gpt2-tiny", "--objective", "blank-infilling", *COMMON,
                 "--data", str(data_dir_plain), "--out", str(tmp_path / "run"), "--max-steps", "2"]) == 2
    assert "lmlab data prepare --mask-tokens" in capsys.readouterr().err


@pytest.fixture(scope="module")
def data_dir_plain(tmp_path_factory) -> Path:
    from tests.conftest import prepare_word_soup

    return prepare_word_soup(tmp_path_factory.mktemp("plain"))


def _tiny(preset: str, **kw):
    import torch

    from lmlab.models import build_model, get_preset

    torch.manual_seed(0)
    return build_model(get_preset(preset, vocab_size=50, block_size=16, d_model=32, n_layer=1, **kw))


def test_encoder_objectives_equal_a_direct_computation():
    import torch
    import torch.nn.functional as F

    from lmlab.train import objectives

    model = _tiny("bert-micro").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (3, 16), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    inputs = ids.masked_fill(labels != -100, 4)
    segments = (torch.arange(16) > 7).long().expand(3, 16)
    batch = {"input_ids": inputs, "labels": labels, "token_type_ids": segments,
             "next_sentence_label": torch.tensor([0, 1, 1])}
    hidden = model.hidden_states(inputs, None, batch["token_type_ids"])
    logits = model.mlm_logits(hidden)[labels != -100]
    accuracy = (logits.argmax(-1) == labels[labels != -100]).float().mean()
    loss, metrics = objectives.mlm_loss(model, batch)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels[labels != -100]))
    torch.testing.assert_close(metrics["mlm_accuracy"], accuracy)
    nsp_logits = model.nsp_logits(hidden)
    nsp = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
    total, metrics = objectives.mlm_nsp_loss(model, batch)
    torch.testing.assert_close(total, loss + nsp)
    torch.testing.assert_close(metrics["nsp_accuracy"],
                               (nsp_logits.argmax(-1) == batch["next_sentence_label"]).float().mean())
    assert not model.mlm._forward_hooks and not model.blocks[-1]._forward_hooks  # the hooks are gone


def test_seq2seq_objective_is_teacher_forced_behind_the_start_token():
    import torch

    from lmlab.nn.losses import token_cross_entropy
    from lmlab.train import objectives

    model = _tiny("bart-tiny", pad_token_id=1, eos_token_id=2, decoder_start_token_id=2).eval()
    g = torch.Generator().manual_seed(0)
    inputs, labels = torch.randint(3, 50, (2, 10), generator=g), torch.randint(3, 50, (2, 7), generator=g)
    decoder_inputs = torch.cat([torch.full((2, 1), 2), labels[:, :-1]], dim=1)
    expected = token_cross_entropy(model(inputs, decoder_inputs), labels)
    got = objectives.seq2seq_loss(model, {"input_ids": inputs, "labels": labels})
    torch.testing.assert_close(got, expected)
