"""Prompt + response batches: the response mask, per-token log-probs against a one-row direct
computation, NaN-safe masking and whitening."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.align.sequences import join, masked_mean, masked_whiten, sequence_logprobs, token_logprobs
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model, get_preset


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = get_preset("llama-tiny", vocab_size=40, block_size=32, d_model=32, n_layer=1)
    return build_model(cfg).eval()


def test_response_mask_marks_only_response_targets():
    j = join([[1, 2], [3]], [[4, 5, 6], [7]], pad_id=0)
    assert j.input_ids.tolist() == [[1, 2, 4, 5, 6], [3, 7, 0, 0, 0]]
    assert j.response_mask.tolist() == [[False, True, True, True], [True, False, False, False]]
    assert j.targets[j.response_mask].tolist() == [4, 5, 6, 7]


def test_logprobs_equal_one_row_at_a_time_and_ignore_padding():
    model = _model()
    prompts, responses = [[1, 2, 3], [9]], [[4, 5], [6, 7, 8, 10]]
    batch = sequence_logprobs(model, join(prompts, responses, pad_id=0), temperature=0.7)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logp = (model(ids[:, :-1]) / 0.7).log_softmax(-1)[0]
        direct = sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(r))
        assert float(batch[b]) == pytest.approx(direct, abs=1e-4)
    avg = sequence_logprobs(model, join(prompts, responses, pad_id=0), temperature=0.7, average=True)
    assert float(avg[1]) == pytest.approx(float(batch[1]) / 4, abs=1e-5)


def test_token_logprobs_are_zero_off_the_response():
    j = join([[1, 2, 3]], [[4]], pad_id=0)
    lp = token_logprobs(_model(), j)
    assert lp[0, :2].tolist() == [0.0, 0.0] and float(lp[0, 2]) < 0


def test_masked_ops_are_nan_safe():
    v = torch.tensor([[1.0, 3.0, float("nan")], [5.0, float("inf"), 7.0]])
    m = torch.tensor([[True, True, False], [True, False, True]])
    assert float(masked_mean(v, m)) == pytest.approx(4.0)
    w = masked_whiten(v, m)
    assert torch.isfinite(w).all()
    assert float(w[m].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(w[m].var(unbiased=True)) == pytest.approx(1.0, abs=1e-4)
    assert w[~m].tolist() == [0.0, 0.0]
    kept = masked_whiten(v, m, shift_mean=False)
    assert float(kept[m].mean()) == pytest.approx(4.0, abs=1e-5)
    assert not math.isnan(float(masked_mean(v, torch.zeros_like(m))))


def test_bad_input_is_one_clear_error():
    with pytest.raises(LmlabError, match="one response per prompt"):
        join([[1]], [[2], [3]], pad_id=0)
    with pytest.raises(LmlabError, match="prompt is empty"):
        join([[]], [[2]], pad_id=0)


def test_fused_response_logprobs_equal_full_logits_in_value_and_gradient():
    from lmlab.align.sequences import gather_logprobs, logits_of
    from lmlab.tuning.api import apply_tuning
    from lmlab.tuning.options import TuningOptions

    model = _model().train()
    j = join([[1, 2, 3], [9]], [[4, 5], [6, 7, 8, 10]], pad_id=0)
    for temperature in (1.0, 0.7):
        fast = token_logprobs(model, j, temperature)
        fast.sum().backward()
        g_fast = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        full = gather_logprobs(logits_of(model, j, temperature), j)
        full.sum().backward()
        assert torch.allclose(fast, full, atol=1e-5)
        for n, p in model.named_parameters():
            assert torch.allclose(g_fast[n], p.grad, atol=1e-5), n
        model.zero_grad()
    # a LoRA on the output layer (a forward hook) is seen by the fast path too
    apply_tuning(model, TuningOptions(method="lora", targets=["lm_head"], r=2))
    for m in model.modules():
        if hasattr(m, "B"):
            for b in m.B.values():
                torch.nn.init.normal_(b, 0.0, 0.5)  # a non-zero update, or the check passes trivially
    full = gather_logprobs(logits_of(model, j), j)
    assert torch.allclose(token_logprobs(model, j), full, atol=1e-5)
