"""lmlab.generate.sequence: every family that generates as a SequenceLM; its steppers continue
exactly as a full forward over the same tokens, and the models that cannot generate are refused."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generate.sequence import SequenceLM, Stepper, sequence_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V = 40


def tiny(preset: str, **overrides):
    from lmlab.models.registry import build_model, get_preset

    torch.manual_seed(0)
    return build_model(get_preset(preset, vocab_size=V, **overrides)).eval()


@pytest.mark.parametrize(("preset", "overrides"), [
    ("lstm-tiny", {}), ("gru-tiny", {}), ("rnn-tiny", {}), ("nplm-tiny", {}), ("elmo-tiny", {}),
    ("infini-tiny", dict(d_model=32, n_head=2, block_size=16, segment_len=4))])
def test_steps_continue_as_a_full_forward(preset, overrides):
    lm = sequence_lm(tiny(preset, **overrides))
    assert isinstance(lm, SequenceLM) and lm.block_size is None and lm.vocab_size == V
    ids = torch.randint(0, V, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        full = lm.prompt_logits(ids)  # longer than the Infini decoder's segments and block
        stepper = lm.start(ids[:5])
        assert isinstance(stepper, Stepper)
        rows = [stepper.prefill()] + [stepper.step(t) for t in ids[5:]]
    assert full.shape == (len(ids), V)
    torch.testing.assert_close(torch.cat(rows), full[4:], atol=1e-4, rtol=1e-4)


def test_a_decoder_keeps_its_context_and_an_encoder_decoder_refuses_prompt_scores():
    dec = sequence_lm(tiny("gpt2-tiny", d_model=32, n_head=2, n_layer=1, block_size=16))
    assert dec.block_size == 16
    with torch.inference_mode():
        stepper = dec.start([1, 2, 3])
        rows = [stepper.prefill()] + [stepper.step(t) for t in (4, 5)]
        torch.testing.assert_close(torch.cat(rows), dec.prompt_logits([1, 2, 3, 4, 5])[2:], atol=1e-4,
                                   rtol=1e-4)
    encdec = sequence_lm(tiny("transformer-tiny", d_model=32, n_head=2, block_size=8))
    assert encdec.block_size is None
    with pytest.raises(LmlabError, match="no prompt logprobs"):
        encdec.check([1, 2], 4, prompt_logprobs=True)
    with pytest.raises(LmlabError, match="target tokens"):
        encdec.check([1, 2], 9, prompt_logprobs=False)
    with pytest.raises(LmlabError, match="source positions"):
        encdec.check([1] * 9, 2, prompt_logprobs=False)
    encdec.check([1] * 8, 8, prompt_logprobs=False)
    with pytest.raises(LmlabError, match="fill-mask"):
        sequence_lm(tiny("bert-tiny", d_model=32, n_head=2, block_size=8))
