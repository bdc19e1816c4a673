"""The column-major weight layout that generation gives an inference model (nn/linear.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import lmlab.nn.linear as linear_module
from lmlab.generate import generate_ids
from lmlab.models.registry import build_model, get_preset
from lmlab.nn.linear import onednn_available, use_gemv_layout


def tiny_decoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(get_preset("llama-tiny", vocab_size=96, block_size=32, d_model=32, n_layer=2))


def column_major(w: torch.Tensor) -> bool:
    return not w.is_contiguous() and w.t().is_contiguous()


def test_layout_moves_every_linear_weight_and_keeps_the_outputs() -> None:
    model = tiny_decoder().eval()
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        before = model(ids)
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    moved = use_gemv_layout(model)
    assert moved == len({id(w) for w in linears}) > 0
    assert all(column_major(w) for w in linears)
    assert model.lm_head.weight is model.tok_emb.weight  # still tied: same parameter, new memory order
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)
    assert use_gemv_layout(model) == 0  # already laid out


@pytest.mark.parametrize("route", ["aten", "onednn"])
def test_training_after_the_layout_matches_training_without_it(route: str, monkeypatch) -> None:
    if route == "onednn" and not onednn_available():
        pytest.skip("this torch build has no oneDNN matmul route")
    monkeypatch.setenv("LMLAB_CPU_MATMUL", route)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 0)  # the tiny products take the route too
    plain = tiny_decoder()
    moved = copy.deepcopy(plain)
    use_gemv_layout(moved)
    ids = torch.randint(0, 96, (2, 16))
    for model in (plain, moved):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(2):
            loss = model(ids[:, :-1], targets=ids[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, a), (_, b) in zip(plain.named_parameters(), moved.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_generation_lays_out_an_inference_model_but_not_a_training_one() -> None:
    model = tiny_decoder()
    model.train()
    prompt = torch.randint(0, 96, (1, 5))
    generate_ids(model, prompt, 4, temperature=0)
    assert model.lm_head.weight.is_contiguous()  # its optimizer's layout is kept
    expected = generate_ids(model, prompt, 8, temperature=0, use_cache=False)
    model.eval()
    assert torch.equal(generate_ids(model, prompt, 8, temperature=0), expected)
    assert column_major(model.lm_head.weight)


def test_encoder_decoder_moves_only_what_a_decoding_step_runs() -> None:
    torch.manual_seed(0)
    model = build_model(get_preset("t5-tiny", vocab_size=64)).eval()
    use_gemv_layout(model)
    assert all(column_major(m.weight) for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
    assert all(m.weight.is_contiguous() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))


def test_training_keeps_row_major_and_saving_restores_it(tmp_path) -> None:
    from lmlab.models.registry import load_model, save_model
    from lmlab.nn.linear import training_layout

    model = tiny_decoder().eval()
    use_gemv_layout(model)
    with training_layout(model):  # as the Trainer holds a model it trains
        assert model.lm_head.weight.is_contiguous()
        assert use_gemv_layout(model) == 0  # a validation decode inside training moves nothing
    torch.manual_seed(0)
    t5 = build_model(get_preset("t5-tiny", vocab_size=64)).eval()
    for i, m in enumerate((model, t5)):
        use_gemv_layout(m)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        save_model(m, tmp_path / f"m{i}")  # safetensors writes contiguous tensors only
        loaded = load_model(tmp_path / f"m{i}" / "model.safetensors")
        for k, v in loaded.state_dict().items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
