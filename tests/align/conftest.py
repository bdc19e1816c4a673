"""Fixtures shared by the alignment tests: a tiny random base model with a char tokenizer."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

# Every printable ASCII character: any test text (chat turns, reviews, numbers) is one id per char.
ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"


def make_tiny_base(folder: Path, d_model: int = 48, n_layer: int = 2, block_size: int = 128,
                   seed: int = 0) -> Path:
    """Write a random tiny LLaMA (``model.safetensors``) and a char tokenizer that has the chat
    tokens (``tokenizer.json``) into ``folder``; return it."""
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.models.registry import build_model, get_preset, save_model

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer("char", iter([ALPHABET]))
    torch.manual_seed(seed)
    model = build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, d_model=d_model, n_layer=n_layer,
                                   block_size=block_size))
    save_model(model, folder / "model.safetensors")
    tok.save(folder / "tokenizer.json")
    return folder


def memorise(folder: Path, conversation: list[dict], tools: list[dict] | None = None, block_size: int = 512,
             max_steps: int = 1500) -> Path:
    """Write a tiny run (:func:`make_tiny_base`) into ``folder`` trained until it says the assistant
    turns of ``conversation`` (listing ``tools``) word for word; return the folder."""
    import lmlab
    from lmlab.data.chat import encode_chat
    from lmlab.models.registry import save_model

    make_tiny_base(folder, block_size=block_size)
    model, tok = lmlab.load(folder)
    enc = encode_chat(tok, conversation, tools=tools)
    ids = torch.tensor([enc.ids])
    targets = torch.tensor([t if m else -100 for t, m in zip(enc.ids[1:], enc.assistant_mask[1:])])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(max_steps):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], targets)
        if loss.item() < 0.002:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01, f"the tiny model did not learn the conversation (loss {loss.item():.3f})"
    save_model(model, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A run folder with a random tiny LLaMA (d 48, 2 layers, context 128) and a char tokenizer
    (printable ASCII plus <|endoftext|>, <|pad|>, <|im_start|>, <|im_end|>). Read-only: copy it or
    write runs elsewhere."""
    return make_tiny_base(tmp_path_factory.mktemp("tiny-base"))


def assert_resume_is_exact(args: list[str], tmp_path: Path) -> None:
    """Run the ``lmlab`` command ``args`` (without ``--out``) straight through, and again stopped
    at step 3 then resumed; assert both runs end with the same weights, bit for bit."""
    from safetensors.torch import load_file

    from lmlab.cli import main

    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--stop-at-step", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
