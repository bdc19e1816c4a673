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
from lmlab.errors import LmlabError
from lmlab.models import load_model
from lmlab.nn.linear import cpu_matmul_backend
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


def _onednn_route_missing() -> str | None:
    """Why this machine cannot take the oneDNN matmul route, or None when it can."""
    if linear_module._ONEDNN_LINEAR is None:
        return "this torch build has no oneDNN linear op (torch.ops.mkldnn._linear_pointwise)"
    if not torch.backends.mkldnn.is_available():
        return "oneDNN (mkldnn) is not available on this CPU / torch build"
    return None


@pytest.mark.parametrize("route", ["aten", "onednn"])
def test_exact_resume_on_each_matmul_route(route, data_dir, tmp_path, monkeypatch):
    """On either matmul route (lmlab/nn/linear.py), every matmul on it, a resumed run is bitwise exact."""
    if route == "onednn" and (missing := _onednn_route_missing()):
        pytest.skip(f"no oneDNN matmul route here: {missing}")
    monkeypatch.setenv("LMLAB_CPU_MATMUL", route)
    assert cpu_matmul_backend() == route
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 0)
    monkeypatch.setattr(linear_module, "WIDE_GRAD_MIN_ROWS", 0)
    calls = {"n": 0}
    real = linear_module._ONEDNN_LINEAR

    def counted(*args):
        calls["n"] += 1
        return real(*args)

    if real is not None:
        monkeypatch.setattr(linear_module, "_ONEDNN_LINEAR", counted)
    args = ("--max-steps", "8", "--dropout", "0.1")
    assert pretrain(data_dir, tmp_path / "ref", *args) == 0
    # the route was really taken: every matmul on oneDNN, or none
    assert calls["n"] > 0 if route == "onednn" else calls["n"] == 0
    assert pretrain(data_dir, tmp_path / "run", *args, "--stop-at-step", "3") == 0
    assert pretrain(data_dir, tmp_path / "run", *args, "--resume") == 0
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    assert sorted(losses(tmp_path / "ref")) == list(range(1, 9))


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


def test_deterministic_runs_in_separate_processes_are_identical(data_dir, tmp_path, cli):
    """The same command twice, each in a fresh process (new heap layout, hash seed), logs the same losses."""
    args = ["pretrain", *TINY, "--data", data_dir, "--max-steps", "4", "--eval-iters", "0", "--deterministic"]
    for name in ("a", "b"):
        r = cli(*args, "--out", tmp_path / name, env={"LMLAB_PEAK_FLOPS": "1e11"})
        assert r.returncode == 0, r.stderr
    assert sorted(losses(tmp_path / "a")) == [1, 2, 3, 4]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["deterministic"] is True


def test_deterministic_resume_matches_an_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    """With dropout and the real CPU peak-FLOP/s probe (it draws random matrices), stop + resume is exact,
    and the resumed session trains with the thread count the checkpoint was written with."""
    from lmlab.train import mfu as peak_probe

    monkeypatch.delenv("LMLAB_PEAK_FLOPS")
    args = ("--max-steps", "6", "--dropout", "0.1", "--eval-iters", "0", "--deterministic")
    threads = torch.get_num_threads()
    seen: list[int] = []
    real = objectives.causal_lm_loss

    def recording(model, batch):
        seen.append(torch.get_num_threads())
        return real(model, batch)

    monkeypatch.setattr(objectives, "causal_lm_loss", recording)
    try:
        peak_probe._PEAK_CACHE.clear()
        assert pretrain(data_dir, tmp_path / "ref", *args) == 0
        peak_probe._PEAK_CACHE.clear()
        assert pretrain(data_dir, tmp_path / "run", *args, "--stop-at-step", "3") == 0
        peak_probe._PEAK_CACHE.clear()
        torch.set_num_threads(threads + 1)  # the resumed session starts with another thread count
        seen.clear()
        assert pretrain(data_dir, tmp_path / "run", *args, "--resume") == 0
        assert seen and set(seen) == {threads}
        assert torch.get_num_threads() == threads + 1  # restored after the run
    finally:
        torch.set_num_threads(threads)
        peak_probe._PEAK_CACHE.clear()
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is restored too


def test_half_written_metrics_line_is_dropped_on_resume(reference_run, data_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 13, "loss": 2.71')  # the process died mid-write
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 13))
    assert pretrain(data_dir, out, "--max-steps", "14", "--dropout", "0.1", "--eval-interval", "4",
                    "--resume") == 0
    assert "half-written last line" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 15))
    assert losses(out).items() >= losses(reference_run).items()
    # a damaged line that is not the last one is an error naming it
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n")
    with pytest.raises(LmlabError, match=r"metrics.jsonl:2 is not a JSON object"):
        read_metrics(out)


def test_kill_9_at_random_moments_then_resume(data_dir, tmp_path):
    """SIGKILL a run at a few seeded random moments after a checkpoint exists; --resume finishes it."""
    import os
    import random
    import subprocess
    import sys
    import time

    rng = random.Random(9)
    out = tmp_path / "run"
    env = {**os.environ, "LMLAB_PEAK_FLOPS": "1e11", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lmlab.cli", "pretrain", *TINY, "--data", str(data_dir), "--out", str(out),
           "--max-steps", "20", "--save-interval", "1", "--eval-iters", "0"]
    kills = 0
    for attempt in range(2):
        proc = subprocess.Popen(cmd + (["--resume"] if attempt else []), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            latest = out / "state" / "latest.json"
            start = ckpt.latest_step(out) or 0
            deadline = time.monotonic() + 120
            while proc.poll() is None and (ckpt.latest_step(out) or 0) <= start:
                assert time.monotonic() < deadline, "no checkpoint written"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.15))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert latest.is_file()
    assert kills >= 1
    assert pretrain(data_dir, out, "--max-steps", "20", "--save-interval", "1", "--eval-iters", "0",
                    "--resume") == 0
    assert ckpt.latest_step(out) == 20
    loaded = ckpt.load_checkpoint(out)  # verifies sizes and checksums
    assert loaded.trainer_state["step"] == 20
    load_model(out)
    records = read_metrics(out)
    assert [rec["step"] for rec in records] == list(range(1, 21))
    assert all(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    # what killed saves left behind (staging folders, temporary files) is cleared by later saves
    assert not [p.name for p in (out / "state").iterdir() if p.name.startswith(".")]
    assert not list(out.glob(".*.tmp"))
