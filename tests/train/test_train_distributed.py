"""Data parallelism: a 2-process torchrun run on CPU (gloo) follows the single-process loss curve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.models import load_model
from lmlab.train import checkpoint as ckpt
from lmlab.train.log import read_metrics
from tests.conftest import prepare_word_soup

COMMON = [
    "--model",
    "llama-tiny",
    "--d-model",
    "32",
    "--n-layer",
    "1",
    "--block-size",
    "16",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--no-progress",
    "--warmup-steps",
    "2",
    "--lr",
    "3e-3",
    "--log-interval",
    "1",
    "--eval-iters",
    "2",
    "--max-steps",
    "6",
    "--grad-accum",
    "2",
]


HAMLET_WORDS = "to be or not to be that is the question whether tis nobler in the mind"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_word_soup(tmp_path_factory.mktemp("data"), HAMLET_WORDS, seed=1, docs=30,
                             words_per_doc=120)


def torchrun(data_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMLAB_PEAK_FLOPS": "1e11", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "lmlab.cli",
        "pretrain",
        *COMMON,
        "--batch-size",
        "2",
        "--data",
        str(data_dir),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def single(data_dir: Path, out: Path, monkeypatch) -> list[dict]:
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")
    assert main(["pretrain", *COMMON, "--batch-size", "4", "--data", str(data_dir), "--out", str(out)]) == 0
    return read_metrics(out)


def check_same_curve(ddp: list[dict], ref: list[dict]) -> None:
    assert [r["step"] for r in ddp] == [r["step"] for r in ref] == list(range(1, 7))
    for a, b in zip(ddp, ref):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
        assert a["tokens"] == b["tokens"]
    assert abs(ddp[-1]["val_loss"] - ref[-1]["val_loss"]) < 1e-5


def test_ddp_matches_single_process(data_dir, tmp_path, monkeypatch):
    proc = torchrun(data_dir, tmp_path / "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained step 6") == 1  # only rank 0 reports
    ref = single(data_dir, tmp_path / "single", monkeypatch)
    check_same_curve(read_metrics(tmp_path / "ddp"), ref)
    # The checkpoint is portable: one process resumes the 2-process run (same global batch).
    assert (
        main(
            [
                "pretrain",
                *COMMON,
                "--batch-size",
                "4",
                "--max-steps",
                "8",
                "--data",
                str(data_dir),
                "--out",
                str(tmp_path / "ddp"),
                "--resume",
            ]
        )
        == 0
    )
    assert ckpt.latest_step(tmp_path / "ddp") == 8


@pytest.mark.slow
def test_fsdp_matches_single_process(data_dir, tmp_path, monkeypatch):
    proc = torchrun(data_dir, tmp_path / "fsdp", "--fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = single(data_dir, tmp_path / "single", monkeypatch)
    check_same_curve(read_metrics(tmp_path / "fsdp"), ref)


def test_fsdp_two_processes_quick(data_dir, tmp_path, monkeypatch):
    """Fast FSDP check (gloo, 2 CPU processes, 2 steps): the same losses as one process with the
    same global batch, and its checkpoint holds the full (gathered) weights of that run."""
    quick = ("--max-steps", "2", "--grad-accum", "1", "--eval-iters", "0")
    proc = torchrun(data_dir, tmp_path / "fsdp", "--fsdp", *quick)
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")
    single_args = ["pretrain", *COMMON, "--batch-size", "4", "--data", str(data_dir), *quick]
    assert main([*single_args, "--out", str(tmp_path / "single")]) == 0
    got, ref = read_metrics(tmp_path / "fsdp"), read_metrics(tmp_path / "single")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2]
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 and a["tokens"] == b["tokens"] for a, b in zip(got, ref))
    assert ckpt.load_checkpoint(tmp_path / "fsdp").trainer_state["world_size"] == 2
    sharded, whole = load_model(tmp_path / "fsdp").state_dict(), load_model(tmp_path / "single").state_dict()
    assert sharded.keys() == whole.keys()
    assert all(torch.allclose(sharded[k], whole[k], atol=1e-5) for k in whole)
