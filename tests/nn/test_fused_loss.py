"""The fp32 fused output layer + loss and the fused SwiGLU gate equal their plain autograd forms."""

from __future__ import annotations

import copy

import pytest
import torch

import lmlab.nn.linear as linear_module
from lmlab.models import Decoder, get_preset
from lmlab.nn.linear import cpu_matmul_backend
from lmlab.nn.losses import LogitsWorkspace, linear_cross_entropy, token_cross_entropy
from lmlab.nn.mlp import SiluGate
from lmlab.train.objectives import causal_lm_loss


@pytest.fixture(autouse=True, params=["onednn", "aten"])
def matmul_backend(request, monkeypatch) -> str:
    """Run every test with training matmuls on oneDNN and on torch's BLAS (lmlab/nn/linear.py),
    tiny ones included."""
    monkeypatch.setenv("LMLAB_CPU_MATMUL", request.param)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 0)
    monkeypatch.setattr(linear_module, "WIDE_GRAD_MIN_ROWS", 0)
    return request.param


def _pair(preset: str, **overrides):
    torch.manual_seed(0)
    model = Decoder(get_preset(preset, vocab_size=97, block_size=24, **overrides))
    return model, copy.deepcopy(model)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("preset, overrides", [
    ("llama-tiny", {}),
    ("gpt2-tiny", {}),
    ("llama-tiny", {"tie_embeddings": False}),
])
def test_fused_loss_and_gradients_equal_the_plain_path(preset: str, overrides: dict) -> None:
    fused, plain = _pair(preset, **overrides)
    x = torch.randint(0, 97, (3, 24))
    y = torch.randint(0, 97, (3, 24))
    y[0, :7] = -100
    loss_f = causal_lm_loss(fused, {"input_ids": x, "labels": y})
    loss_p = token_cross_entropy(plain(x), y)
    assert loss_f.item() == pytest.approx(loss_p.item(), rel=1e-6)
    loss_f.backward()
    loss_p.backward()
    for gf, gp in zip(_grads(fused), _grads(plain)):
        torch.testing.assert_close(gf, gp, rtol=1e-5, atol=1e-6)


def test_two_forwards_before_one_backward_do_not_share_the_workspace() -> None:
    fused, plain = _pair("llama-tiny")
    x = torch.randint(0, 97, (2, 24))
    y = torch.randint(0, 97, (2, 24))
    (fused(x, targets=y) + 2 * fused(x[:, :12], targets=y[:, :12])).backward()
    (token_cross_entropy(plain(x), y) + 2 * token_cross_entropy(plain(x[:, :12]), y[:, :12])).backward()
    for gf, gp in zip(_grads(fused), _grads(plain)):
        torch.testing.assert_close(gf, gp, rtol=1e-5, atol=1e-6)
    assert not fused._logits_workspace.busy  # both graphs handed their buffers back


def test_no_grad_and_autocast_paths() -> None:
    model, _ = _pair("llama-tiny")
    x = torch.randint(0, 97, (2, 24))
    y = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        a = model(x, targets=y)
        b = token_cross_entropy(model(x), y)
    assert a.item() == pytest.approx(b.item(), rel=1e-6) and not model._logits_workspace.busy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = model(x, targets=y)  # bf16 takes the logits path
    assert c.item() == pytest.approx(b.item(), abs=0.05)


def test_linear_cross_entropy_all_ignored_and_workspace_reuse(matmul_backend: str) -> None:
    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    ws = LogitsWorkspace()
    loss = linear_cross_entropy(h, w, torch.full((6,), -100), ws)
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().sum() == 0
    first = ws.buffer
    linear_cross_entropy(h, w, torch.zeros(6, dtype=torch.long), ws).backward()
    assert ws.buffer is first  # same shape: the buffer is reused
    assert (first is None) == (cpu_matmul_backend() == "onednn")  # oneDNN computes row blocks instead
    with pytest.raises(ValueError, match="fp32"):
        linear_cross_entropy(h.bfloat16(), w, torch.zeros(6, dtype=torch.long))


def test_silu_gate_gradient() -> None:
    ab = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SiluGate.apply, (ab,))
    a, b = ab.detach().chunk(2, dim=-1)
    torch.testing.assert_close(SiluGate.apply(ab), torch.nn.functional.silu(a) * b)


def test_linear_cross_entropy_over_several_row_blocks_equals_the_plain_path() -> None:
    torch.manual_seed(0)
    n, vocab = 600, 4096  # the oneDNN route takes blocks of 512 rows here: one full block and a partial one
    h = torch.randn(n, 8, requires_grad=True)
    w = (0.3 * torch.randn(vocab, 8)).requires_grad_()
    y = torch.randint(0, vocab, (n,))
    y[::7] = -100
    fused = linear_cross_entropy(h, w, y)
    fused.backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    plain = token_cross_entropy(h @ w.t(), y)
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    torch.testing.assert_close(grads[0], h.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], w.grad, rtol=1e-5, atol=1e-6)
