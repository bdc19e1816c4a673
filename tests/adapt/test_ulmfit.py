"""``lmlab ulmfit`` end to end: stages 2 and 3 as real runs with their tricks on, the ablation switches,
resuming an interrupted stage exactly, and bad input; tiny LSTMs on a fake sentiment archive."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lmlab.train.loop as loop_module
from lmlab.cli import main
from lmlab.data.labelled import get_labelled
from lmlab.data.prepare import prepare
from lmlab.models.registry import build_model, get_preset, save_model
from lmlab.train.log import read_metrics

SMALL = ["--device", "cpu", "--precision", "fp32", "--no-progress", "--log-interval", "1",
         "--lm-batch-size", "4", "--lm-max-len", "16", "--lm-epochs", "0.1", "--batch-size", "16",
         "--max-len", "32", "--head-hidden", "8"]


pytestmark = pytest.mark.usefixtures("sentiment_env")  # tests/adapt/conftest.py


@pytest.fixture(scope="module")
def general_lm(archive, tmp_path_factory) -> Path:
    """Stage 1 stand-in: a random two-layer LSTM LM with the char tokenizer of the movies' train text."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LMLAB_SENTIMENT_ARCHIVE", str(archive))
    root = tmp_path_factory.mktemp("lm")
    try:
        prepare("sentiment-movies", root / "prep", kind="char")
    finally:
        mp.undo()
    vocab = json.loads((root / "prep" / "meta.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    run = root / "run"
    run.mkdir()
    save_model(build_model(get_preset("lstm-tiny", vocab_size=vocab, n_layer=2)), run)
    (run / "tokenizer.json").write_bytes((root / "prep" / "tokenizer.json").read_bytes())
    return run


def ulmfit(*args) -> int:
    return main(["ulmfit", *SMALL, *map(str, args)])


@pytest.fixture(scope="module")
def reference(general_lm, archive, tmp_path_factory, one_torch_thread) -> tuple[Path, dict]:
    """One uninterrupted ULMFiT run with every trick on, and its --json summary."""
    out = tmp_path_factory.mktemp("ulmfit") / "u"
    mp = pytest.MonkeyPatch()
    mp.setenv("LMLAB_SENTIMENT_ARCHIVE", str(archive))
    try:
        assert ulmfit("--ckpt", general_lm, "--data", "sentiment-movies", "--out", out) == 0
    finally:
        mp.undo()
    return out, json.loads((out / "ulmfit.json").read_text())


def test_three_stages_run_with_every_trick(reference, general_lm):
    out, record = reference
    stage2, stage3 = out / "stage2-lm", out / "stage3-classifier"
    assert set(record) == {"stage2-lm", "stage3-classifier"}
    # stage 2 continues the general LM on the train text with STLR and discriminative rates
    lm_cfg = yaml.safe_load((stage2 / "config.yaml").read_text())
    assert lm_cfg["init"] == str(general_lm)
    assert lm_cfg["optim"]["schedule"] == "stlr" and lm_cfg["optim"]["discriminative_lr"] == 2.6
    assert lm_cfg["optim"]["lr"] == 4e-3 and lm_cfg["gradual_unfreeze"] == 0
    lm_metrics = read_metrics(stage2)
    assert lm_metrics[0]["lr"] == pytest.approx(4e-3 / 32)  # STLR starts at lr / ratio
    # stage 3: a classifier on the stage-2 LM, one more layer group unfrozen per epoch
    clf_cfg = yaml.safe_load((stage3 / "config.yaml").read_text())
    assert clf_cfg["ckpt"] == str(stage2) and clf_cfg["task"] == "classify"
    n_train = len(get_labelled("sentiment-movies").examples("train"))
    per_epoch = math.ceil(n_train / 16)
    groups = 1 + 2 + 1  # embedding, two LSTM layers, task head (+ the LM's unused softmax)
    assert clf_cfg["gradual_unfreeze"] == per_epoch and clf_cfg["max_steps"] == groups * per_epoch
    assert clf_cfg["optim"]["schedule"] == "stlr" and clf_cfg["optim"]["discriminative_lr"] == 2.6
    logged = {r["step"]: r["unfrozen_groups"] for r in read_metrics(stage3) if "unfrozen_groups" in r}
    assert logged[1] == 1 and logged[per_epoch + 1] == 2 and logged[groups * per_epoch] == groups
    # the stage-3 classifier holds the stage-2 LM's embedding, trained further from there
    lm_emb = load_file(stage2 / "model.safetensors")["emb.weight"]
    assert not torch.equal(lm_emb, load_file(general_lm / "model.safetensors")["emb.weight"])
    test = record["stage3-classifier"]["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and "confusion" in test


def test_cli_json_and_ablation_switches(general_lm, cli, tmp_path):
    out = tmp_path / "ablation"
    r = cli("ulmfit", *SMALL, "--ckpt", general_lm, "--data", "sentiment-movies", "--out", out, "--json",
            "--no-stage2", "--no-discriminative-lr", "--no-stlr", "--no-gradual-unfreeze", "--epochs", "1",
            env={"OMP_NUM_THREADS": "1"})  # a tiny LSTM runs fastest on one thread of a shared CPU
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["tricks"] == {"stage2": False, "discriminative_lr": False, "stlr": False,
                                 "gradual_unfreeze": False}
    assert summary["stage2"] is None and not (out / "stage2-lm").exists()
    assert summary["accuracy"] == summary["stage3"]["test"]["accuracy"]
    clf_cfg = yaml.safe_load((out / "stage3-classifier" / "config.yaml").read_text())
    assert clf_cfg["ckpt"] == str(general_lm) and clf_cfg["gradual_unfreeze"] == 0
    assert clf_cfg["optim"]["schedule"] == "constant" and clf_cfg["optim"]["discriminative_lr"] == 0.0
    assert {r["lr"] for r in read_metrics(out / "stage3-classifier") if "lr" in r} == {1e-2}
    assert yaml.safe_load((out / "config.yaml").read_text())["stlr"] is False


def test_interrupted_stage_resumes_exactly(reference, general_lm, tmp_path, monkeypatch, one_torch_thread):
    """Ctrl-C during stage 3 saves it; --resume skips stage 2 and ends where an uninterrupted run ends."""
    ref_out, _ = reference
    real = loop_module.Trainer._train_step
    calls = {"n": 0}

    def interrupting(self, *a, **kw):
        calls["n"] += 1
        first = calls.setdefault("stage3", calls["n"]) if self.out_dir.name == "stage3-classifier" else -9
        if first + 2 == calls["n"]:
            signal.raise_signal(signal.SIGINT)  # the step finishes, is saved, then the stage stops
        return real(self, *a, **kw)

    monkeypatch.setattr(loop_module.Trainer, "_train_step", interrupting)
    out = tmp_path / "u"
    assert ulmfit("--ckpt", general_lm, "--data", "sentiment-movies", "--out", out) == 130
    assert set(json.loads((out / "ulmfit.json").read_text())) == {"stage2-lm"}
    monkeypatch.setattr(loop_module.Trainer, "_train_step", real)
    lm_bytes = (out / "stage2-lm" / "model.safetensors").read_bytes()
    assert ulmfit("--out", out, "--resume") == 0
    assert (out / "stage2-lm" / "model.safetensors").read_bytes() == lm_bytes  # not trained again

    def losses(run: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}

    assert losses(out / "stage3-classifier") == losses(ref_out / "stage3-classifier")
    ref = load_file(ref_out / "stage3-classifier" / "model.safetensors")
    got = load_file(out / "stage3-classifier" / "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_bad_input(general_lm, tmp_path, capsys):
    out = tmp_path / "u"
    assert ulmfit("--data", "sentiment-movies", "--out", out) == 2
    assert "needs --ckpt" in capsys.readouterr().err
    assert ulmfit("--out", out, "--resume") == 2
    assert "no ULMFiT run to resume" in capsys.readouterr().err
    out.mkdir()
    (out / "ulmfit.json").write_text("{}")
    assert ulmfit("--ckpt", general_lm, "--data", "sentiment-movies", "--out", out) == 2
    assert "already holds ULMFiT runs" in capsys.readouterr().err
    nplm = tmp_path / "nplm"
    nplm.mkdir()
    save_model(build_model(get_preset("nplm-tiny", vocab_size=40)), nplm)
    (nplm / "tokenizer.json").write_bytes((general_lm / "tokenizer.json").read_bytes())
    assert ulmfit("--ckpt", nplm, "--data", "sentiment-movies", "--out", tmp_path / "n") == 2
    err = capsys.readouterr().err
    assert "no task head" in err and len(err.strip().splitlines()) == 1


def test_resume_refuses_other_options(reference, capsys):
    out, _ = reference
    assert ulmfit("--out", out, "--resume", "--lr", "0.5") == 2
    assert "--lr is 0.5 now but 0.01" in capsys.readouterr().err
