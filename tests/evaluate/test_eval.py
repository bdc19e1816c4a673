"""Perplexity and bits per byte: the computation (lmlab.evaluate.perplexity) and ``lmlab eval``."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab.cli import main
from lmlab.data.prepare import load_prepared, prepare
from lmlab.evaluate import evaluate_perplexity
from lmlab.models import build_model, get_preset, save_model


class Uniform(torch.nn.Module):
    """Predicts every token with probability 1/V: the loss is exactly ln V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.vocab)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(2)
    words = "all the world is a stage and all the men and women merely players".split()
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(100)) for _ in range(30))
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    prepare(str(root / "corpus.txt"), root / "prep", kind="char")
    return root / "prep"


def tiny_decoder(vocab: int):
    torch.manual_seed(0)
    return build_model(
        get_preset("llama-tiny", vocab_size=vocab, block_size=16, n_layer=1, d_model=32)
    ).eval()


def test_uniform_model_gives_ln_v():
    tokens = np.arange(101, dtype=np.uint16) % 50
    r = evaluate_perplexity(Uniform(50), tokens, block_size=16, batch_size=3, split_bytes=400)
    assert r.full_pass and r.tokens == 100 and r.windows == 7  # six full windows and a 4-token tail
    assert r.loss == pytest.approx(math.log(50)) and r.perplexity == pytest.approx(50)
    assert r.bits_per_byte == pytest.approx(100 * math.log(50) / math.log(2) / 400)
    part = evaluate_perplexity(
        Uniform(50), tokens, block_size=16, max_windows=2, split_bytes=400, bytes_per_token=2.5
    )
    assert not part.full_pass and part.tokens == 32
    assert part.bits_per_byte == pytest.approx(math.log(50) / math.log(2) / 2.5)


def test_matches_direct_computation():
    model = tiny_decoder(40)
    tokens = np.random.default_rng(0).integers(0, 40, size=45).astype(np.uint16)
    r = evaluate_perplexity(model, tokens, block_size=16, batch_size=2, split_bytes=90)
    ids = torch.from_numpy(tokens.astype(np.int64))
    nats = 0.0
    with torch.no_grad():
        for s in range(0, 44, 16):
            x, y = ids[s : s + 16], ids[s + 1 : s + 17]
            x = x[: len(y)]
            nats += F.cross_entropy(model(x[None])[0], y, reduction="sum").item()
    assert r.tokens == 44 and r.nats == pytest.approx(nats, rel=1e-6)
    assert r.bits_per_byte == pytest.approx(nats / math.log(2) / 90, rel=1e-6)
    with pytest.raises(Exception, match="exceeds the model's context"):
        evaluate_perplexity(model, tokens, block_size=32)


def saved_run(data_dir: Path, tmp_path: Path):
    """A run folder with a tiny decoder for ``data_dir``'s tokenizer; returns (run, model, data)."""
    data = load_prepared(data_dir)
    run = tmp_path / "run"
    run.mkdir()
    model = tiny_decoder(data.vocab_size)
    save_model(model, run / "model.safetensors")
    shutil.copy(data_dir / "tokenizer.json", run / "tokenizer.json")
    return run, model, data


def test_eval_cli(data_dir, tmp_path, capsys):
    run, model, data = saved_run(data_dir, tmp_path)
    assert main(["eval", "--ckpt", str(run), "--data", str(data_dir), "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = evaluate_perplexity(
        model, data.val, block_size=16, split_bytes=data.meta["splits"]["val"]["bytes"]
    )
    assert out["full_pass"] and out["tokens"] == len(data.val) - 1
    assert out["loss"] == pytest.approx(direct.loss, rel=1e-6)
    assert out["bits_per_byte"] == pytest.approx(
        direct.nats / math.log(2) / data.meta["splits"]["val"]["bytes"]
    )
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(run / "model.safetensors"),
                "--data",
                str(data_dir),
                "--device",
                "cpu",
                "--max-tokens",
                "64",
                "--split",
                "train",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert text.startswith("train: loss ") and "partial pass" in text and "64 tokens" in text
    small = tmp_path / "small.safetensors"
    save_model(tiny_decoder(20), small)
    assert main(["eval", "--ckpt", str(small), "--data", str(data_dir), "--device", "cpu"]) == 2
    assert "smaller than the data's" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(tmp_path / "missing"), "--data", str(data_dir)]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    prepare(str(data_dir.parent / "corpus.txt"), tmp_path / "bytes", kind="byte")
    shutil.copy(tmp_path / "bytes" / "tokenizer.json", run / "tokenizer.json")
    assert main(["eval", "--ckpt", str(run), "--data", str(data_dir), "--device", "cpu"]) == 2
    assert "differs from the data's" in capsys.readouterr().err


def test_sliding_windows_match_direct_computation():
    """With --stride each window after the first scores only its last `stride` tokens."""
    model = tiny_decoder(40)
    tokens = np.random.default_rng(1).integers(0, 40, size=50).astype(np.uint16)
    r = evaluate_perplexity(model, tokens, block_size=16, batch_size=3, stride=4, split_bytes=100)
    ids = torch.from_numpy(tokens.astype(np.int64))
    nats, count, s = 0.0, 0, 0
    with torch.no_grad():
        while True:
            first = 1 if s == 0 else s + 16 - 4 + 1  # first target this window scores
            if first > 49:
                break
            x, y = ids[s : s + 16], ids[s + 1 : s + 17]
            logp = F.log_softmax(model(x[: len(y)][None])[0], dim=-1)
            for t in range(first, min(s + 16, 49) + 1):  # target t sits at row t - s - 1
                nats -= logp[t - s - 1, ids[t]].item()
                count += 1
            s = 4 if s == 0 else s + 4
    assert r.full_pass and r.tokens == count == 49
    assert r.nats == pytest.approx(nats, rel=1e-5)
    same = evaluate_perplexity(model, tokens, block_size=16, stride=16)
    plain = evaluate_perplexity(model, tokens, block_size=16)
    assert same.nats == pytest.approx(plain.nats, rel=1e-6) and same.windows == plain.windows
    uniform = evaluate_perplexity(Uniform(50), np.arange(101, dtype=np.uint16) % 50, block_size=16, stride=5)
    assert uniform.tokens == 100 and uniform.loss == pytest.approx(math.log(50))


def test_eval_cli_stride(data_dir, tmp_path, capsys):
    run, model, data = saved_run(data_dir, tmp_path)
    args = ["eval", "--ckpt", str(run), "--data", str(data_dir), "--device", "cpu"]
    assert main([*args, "--stride", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = evaluate_perplexity(model, data.val, block_size=16, stride=4)
    assert out["stride"] == 4 and out["full_pass"] and out["tokens"] == len(data.val) - 1
    assert out["loss"] == pytest.approx(direct.loss, rel=1e-6)
    assert main([*args, "--stride", "4"]) == 0
    assert "sliding by 4" in capsys.readouterr().out
    for bad in ("0", "17"):
        assert main([*args, "--stride", bad]) == 2
        assert "--stride must be between 1 and the block size 16" in capsys.readouterr().err
