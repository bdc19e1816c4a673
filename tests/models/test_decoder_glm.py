"""The Decoder's GLM extensions: a (B, T, T) attention mask and block positions (off by default)."""

from __future__ import annotations

import pytest
import torch

from lmlab.models import Decoder, build_model, get_preset, load_model, save_model

TINY = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, d_model=32)


def tiny(kind: str = "gpt2", **kw) -> Decoder:
    torch.manual_seed(0)
    return build_model(get_preset(f"{kind}-tiny", **{**TINY, **kw})).eval()


def test_block_positions_are_off_by_default_and_change_nothing():
    plain = tiny()
    assert "block_positions" not in plain.config.to_dict()  # saved configs and checkpoints as before
    assert not any("block_pos" in k for k in plain.state_dict())
    glm = tiny(block_positions=True)
    assert glm.config.to_dict()["block_positions"] is True
    assert set(glm.state_dict()) - set(plain.state_dict()) == {"block_pos_emb.weight"}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_causal_3d_mask_equals_the_causal_default(kind):
    model = tiny(kind)
    x = torch.randint(0, 61, (2, 12))
    mask = torch.ones(12, 12).tril().bool().expand(2, 12, 12)
    torch.testing.assert_close(model(x, attention_mask=mask), model(x), atol=1e-5, rtol=1e-5)


def test_glm_mask_makes_part_a_bidirectional_and_part_b_causal():
    model = tiny()
    T, a = 10, 6
    mask = torch.zeros(1, T, T, dtype=torch.bool)
    mask[:, :, :a] = True
    mask[:, a:, a:] = torch.ones(T - a, T - a).tril().bool()
    x = torch.randint(0, 61, (1, T))
    base = model(x, attention_mask=mask)
    changed = x.clone()
    changed[0, a - 1] = (x[0, a - 1] + 1) % 61  # the last token of part A: everyone sees it
    out = model(changed, attention_mask=mask)
    assert not torch.allclose(out[0, 0], base[0, 0])
    later = x.clone()
    later[0, T - 1] = (x[0, T - 1] + 1) % 61  # the last token of part B: only itself sees it
    out = model(later, attention_mask=mask)
    torch.testing.assert_close(out[0, :T - 1], base[0, :T - 1])


def test_block_positions_enter_the_embedding_and_round_trip(tmp_path):
    model = tiny(block_positions=True)
    x = torch.randint(0, 61, (1, 8))
    zeros = torch.zeros(1, 8, dtype=torch.long)
    torch.testing.assert_close(model(x), model(x, block_positions=zeros))  # None = block position 0
    assert not torch.allclose(model(x), model(x, block_positions=torch.arange(8)[None]))
    save_model(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    assert again.config.block_positions
    torch.testing.assert_close(again(x, block_positions=torch.arange(8)[None]),
                               model(x, block_positions=torch.arange(8)[None]))
