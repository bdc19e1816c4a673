"""Tiny policies for the RLHF tests, made once per test session: a char-level LLaMA (d 32, one
layer) briefly trained so that it writes the task's characters rather than the tokenizer's 256
byte tokens, giving rewards something to move from the first rollout.

- ``ab``: documents of random 'a'/'b' letters and spaces, 4 to 12 characters, each closed by
  ``<|endoftext|>``: the policy writes about as many a's as b's and usually ends.
- ``arithmetic``: documents ``a+b=c`` (single digits), so the policy knows the format and gets
  some sums right.

:func:`train_policy` trains one on any documents with any tokenizer (the sentiment test's
word-level policy on the fake reviews).
"""

from __future__ import annotations

import atexit
import functools
import random
import shutil
import tempfile
from pathlib import Path

import torch

from lmlab.data.tokenizers import Tokenizer, train_tokenizer
from lmlab.models.registry import build_model, get_preset, save_model

_ROOT = Path(tempfile.mkdtemp(prefix="lmlab-test-policies-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def _documents(kind: str, n: int, rng: random.Random) -> list[str]:
    if kind == "ab":
        return [" ".join("".join(rng.choice("ab") for _ in range(rng.randint(1, 3)))
                         for _ in range(rng.randint(2, 4))) for _ in range(n)]
    return [f"{a}+{b}={a + b}" for a, b in ((rng.randint(0, 9), rng.randint(0, 9)) for _ in range(n))]


@functools.cache
def tiny_policy(kind: str, steps: int = 150) -> Path:
    """Return a run folder (model.safetensors + tokenizer.json) of a tiny char-level policy of ``kind``
    (see the module docstring), trained ``steps`` AdamW steps on its documents; the same on every call."""
    docs = _documents(kind, 2000, random.Random(0))
    return train_policy(docs, train_tokenizer("char", iter(docs)), _ROOT / f"{kind}-{steps}", steps)


def train_policy(docs: list[str], tok: Tokenizer, run: Path, steps: int = 150) -> Path:
    """Train a tiny LLaMA (d 32, one layer, context 48) on ``docs`` (each closed by end-of-text) for
    ``steps`` AdamW steps on one thread; write it with ``tok`` to ``run`` and return ``run``."""
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, d_model=32, n_layer=1,
                                   n_head=2, n_kv_heads=2, block_size=48))
    stream = [t for d in docs for t in [tok.eot_id] + tok.encode(d)]
    data = torch.tensor(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains fastest on one thread, above all on a shared CPU
    try:
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - 33, (16,), generator=g)
            x = torch.stack([data[s:s + 32] for s in starts])
            y = torch.stack([data[s + 1:s + 33] for s in starts])
            loss = model(x, targets=y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    run.mkdir(parents=True)
    save_model(model.eval(), run / "model.safetensors")
    tok.save(run / "tokenizer.json")
    return run


class ShareOfA:
    """A hand-made reward: the share of a response's letters that are 'a' (0 without letters)."""

    name = "share-of-a"

    def score_pairs(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Return ``(B,)`` float32 scores in [0, 1]."""
        out = []
        for r in responses:
            letters = [c for c in r if c in "ab"]
            out.append(letters.count("a") / len(letters) if letters else 0.0)
        return torch.tensor(out, dtype=torch.float32)
