"""End-to-end tests of ``lmlab pretrain``: outputs, exact resume, Ctrl-C, NaN, failed saves, user errors."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import yaml

import lmlab.nn.linear as linear_module
from lmlab.cli import main
from lmlab.models import load_model
from lmlab.nn.linear import onednn_available
from lmlab.train import checkpoint as ckpt
from lmlab.train import objectives
from lmlab.train.log import read_metrics
from tests.conftest import prepare_word_soup

TINY = [
    "--model",
    "llama-tiny",
    "--d-model",
    "32",
    "--n-layer",
    "1",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--no-progress",
    "--warmup-steps",
    "3",
    "--log-interval",
    "1",
    "--eval-iters",
    "2",
    "--lr",
    "3e-3",
]


@pytest.fixture(autouse=True)
def _no_flops_probe(monkeypatch):
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_word_soup(tmp_path_factory.mktemp("data"))


def pretrain(data_dir: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", *TINY, "--data", str(data_dir), "--out", str(out), *extra])


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted 12-step run with dropout (so RNG state matters) and periodic evaluation."""
    out = tmp_path_factory.mktemp("ref") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("LMLAB_PEAK_FLOPS", "1e11")
    try:
        assert pretrain(data_dir, out, "--max-steps", "12", "--dropout", "0.1", "--eval-interval", "4") == 0
    finally:
        mp.undo()
    return out


def test_outputs(reference_run, data_dir):
    run = reference_run
    for name in ("config.yaml", "model.safetensors", "tokenizer.json", "metrics.jsonl", "state/latest.json"):
        assert (run / name).is_file(), name
    assert (run / "tokenizer.json").read_bytes() == (data_dir / "tokenizer.json").read_bytes()
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in ("loss", "lr", "tokens", "tokens_per_s", "mfu"):
        assert key in records[0], key
    assert records[-1]["tokens"] == 12 * 4 * 16
    evals = [r["step"] for r in records if "val_loss" in r]
    assert evals == [4, 8, 12] and all(r["val_bpb"] > 0 for r in records if "val_bpb" in r)
    assert records[-1]["loss"] < records[0]["loss"]
    # warmup then cosine: lr rises over 3 steps, then decays towards min_lr
    lrs = [r["lr"] for r in records]
    assert lrs[0] < lrs[1] < lrs[2] and lrs[2] > lrs[-1]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["vocab_size"] == json.loads((data_dir / "meta.json").read_text())["vocab_size"]
    assert "d_model=32" in saved["model_args"] and saved["block_size"] == 16
    model = load_model(run)
    assert model.config.d_model == 32 and model.config.n_layer == 1
    assert ckpt.latest_step(run) == 12


def test_exact_resume_is_bitwise(reference_run, data_dir, tmp_path):
    out = tmp_path / "run"
    args = ("--max-steps", "12", "--dropout", "0.1", "--eval-interval", "4")
    assert pretrain(data_dir, out, *args, "--stop-at-step", "5") == 0
    assert ckpt.latest_step(out) == 5 and max(losses(out)) == 5
    assert pretrain(data_dir, out, *args, "--resume") == 0
    assert losses(out) == losses(reference_run)  # bitwise: exact float equality
    ref, got = load_model(reference_run).state_dict(), load_model(out).state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # A bare --resume takes every other option from the run's config.yaml; nothing is left to do.
    assert main(["pretrain", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert ckpt.latest_step(out) == 12


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_exact_resume_on_the_onednn_matmul_route(data_dir, tmp_path, monkeypatch):
    """With every matmul on oneDNN (lmlab/nn/linear.py), a resumed run is still bitwise exact."""
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "onednn")
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 0)
    monkeypatch.setattr(linear_module, "WIDE_GRAD_MIN_ROWS", 0)
    args = ("--max-steps", "8", "--dropout", "0.1")
    assert pretrain(data_dir, tmp_path / "ref", *args) == 0
    assert pretrain(data_dir, tmp_path / "run", *args, "--stop-at-step", "3") == 0
    assert pretrain(data_dir, tmp_path / "run", *args, "--resume") == 0
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "aten")  # and the route changes the numbers, so it was taken
    assert pretrain(data_dir, tmp_path / "blas", *args) == 0
    assert losses(tmp_path / "blas") != losses(tmp_path / "ref")


def test_ctrl_c_saves_and_resumes_exactly(reference_run, data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = objectives.causal_lm_loss

    def interrupting(model, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # during step 7: the step finishes, is saved, then the run exits
            signal.raise_signal(signal.SIGINT)
        return real(model, batch)

    monkeypatch.setattr(objectives, "causal_lm_loss", interrupting)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup/background shells
    out = tmp_path / "run"
    args = ("--max-steps", "12", "--dropout", "0.1", "--eval-interval", "4")
    assert pretrain(data_dir, out, *args) == 130
    assert ckpt.latest_step(out) == 7
    monkeypatch.setattr(objectives, "causal_lm_loss", real)
    assert pretrain(data_dir, out, *args, "--resume") == 0
    assert losses(out) == losses(reference_run)
    assert signal.getsignal(signal.SIGINT) is before  # the trainer restored the handler it found


def test_nan_loss_stops_and_keeps_last_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = objectives.causal_lm_loss

    def poisoned(model, batch):
        calls["n"] += 1
        loss = real(model, batch)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(objectives, "causal_lm_loss", poisoned)
    out = tmp_path / "run"
    assert pretrain(data_dir, out, "--max-steps", "10", "--save-interval", "5", "--eval-iters", "0") == 2
    err = capsys.readouterr().err
    assert "nan at step 7" in err and "step 5" in err
    assert ckpt.latest_step(out) == 5
    loaded = ckpt.load_checkpoint(out)  # verifies checksums
    weights = load_model(loaded.weights_path).state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert all(torch.equal(weights[k], v) for k, v in load_model(out).state_dict().items())


def test_failed_save_keeps_previous_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save
    saves = {"n": 0}

    def disk_full(obj, f, *a, **k):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    assert pretrain(data_dir, out, "--max-steps", "8", "--save-interval", "4", "--eval-iters", "0") == 2
    assert "No space left on device" in capsys.readouterr().err
    assert ckpt.latest_step(out) == 4
    loaded = ckpt.load_checkpoint(out)
    assert loaded.trainer_state["step"] == 4
    assert sorted(p.name for p in (out / "state").iterdir()) == sorted(
        ["latest.json", loaded.weights_path.parent.name]
    )
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert (
        pretrain(data_dir, out, "--max-steps", "8", "--save-interval", "4", "--eval-iters", "0", "--resume")
        == 0
    )
    assert ckpt.latest_step(out) == 8


def test_damaged_checkpoint_is_reported(reference_run, tmp_path, capsys, data_dir):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    weights = ckpt.load_checkpoint(out).weights_path
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    assert pretrain(data_dir, out, "--max-steps", "20", "--resume") == 2
    assert "damaged" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--model", "no-such-model"), "unknown model preset"),
        (("--vocab-size", "50"), "smaller than the data's"),
        (("--time-budget", "0.000001"), "too small to take one step"),
        ((), "no training length"),
    ],
)
def test_user_errors(data_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    length = () if message == "no training length" else ("--max-steps", "3")
    assert pretrain(data_dir, out, *length, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_resume_rules(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(data_dir, out, "--resume", "--max-steps", "3") == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    assert pretrain(data_dir, out, "--max-steps", "2", "--eval-iters", "0") == 0
    assert pretrain(data_dir, out, "--max-steps", "2") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert pretrain(data_dir, out, "--max-steps", "4", "--resume", "--d-model", "48") == 2
    err = capsys.readouterr().err
    assert "model config differs" in err and "d_model" in err
    assert pretrain(data_dir, out, "--max-steps", "2", "--overwrite", "--eval-iters", "0") == 0


def test_init_from_weights_and_grad_accum(data_dir, reference_run, tmp_path):
    out = tmp_path / "run"
    rc = main(
        [
            "pretrain",
            "--init",
            str(reference_run),
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--block-size",
            "16",
            "--batch-size",
            "2",
            "--grad-accum",
            "2",
            "--max-steps",
            "2",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--no-progress",
            "--log-interval",
            "1",
            "--eval-iters",
            "1",
            "--lr",
            "1e-5",
            "--warmup-steps",
            "0",
        ]
    )
    assert rc == 0
    first = read_metrics(out)[0]
    # starting from trained weights, the first loss is far below a random init's ln(vocab)
    vocab = json.loads((data_dir / "meta.json").read_text())["vocab_size"]
    assert first["loss"] < 0.9 * torch.log(torch.tensor(float(vocab))).item()
    assert first["tokens"] == 2 * 2 * 16
    assert (
        main(
            [
                "pretrain",
                "--init",
                str(reference_run),
                "--data",
                str(data_dir),
                "--out",
                str(tmp_path / "r2"),
                "--block-size",
                "32",
                "--max-steps",
                "2",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "pretrain",
                "--init",
                str(reference_run),
                "--data",
                str(data_dir),
                "--out",
                str(tmp_path / "r3"),
                "--d-model",
                "64",
                "--max-steps",
                "2",
            ]
        )
        == 2
    )


def test_grad_checkpointing_gives_the_same_losses(data_dir, tmp_path):
    args = ("--max-steps", "3", "--eval-iters", "0")
    assert pretrain(data_dir, tmp_path / "a", *args) == 0
    assert pretrain(data_dir, tmp_path / "b", *args, "--grad-checkpointing") == 0
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)
