"""Unit tests of the training parts: device/precision, optimiser groups and schedule, batches, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmlab.data.windows import RandomWindows, eval_offsets
from lmlab.device import PEAK_FLOPS, accelerator_peak, autocast, resolve_device, resolve_precision
from lmlab.errors import LmlabError
from lmlab.models import build_model, get_preset
from lmlab.train import checkpoint as ckpt
from lmlab.train.mfu import measure_matmul_flops, mfu, peak_flops
from lmlab.train.optim import Schedule, build_adamw, param_groups, set_lr


def tiny_model(**kw):
    return build_model(get_preset("gpt2-tiny", vocab_size=64, block_size=16, n_layer=1, d_model=32, **kw))


def test_device_and_precision(monkeypatch):
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu" and resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(LmlabError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LmlabError, match="no CUDA"):
            resolve_device("cuda")
    assert resolve_precision(cpu, "fp32") == "fp32"
    assert resolve_precision(cpu, "auto") in ("bf16", "fp32")
    with pytest.raises(LmlabError, match="unknown precision"):
        resolve_precision(cpu, "fp8")
    a = torch.randn(8, 8)
    with autocast(cpu, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert (a @ a).dtype == torch.float32
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "2e11")
    assert peak_flops(cpu, "fp32") == 2e11
    assert mfu(6e6, 1e4, 2e11) == pytest.approx(0.3)


def test_cpu_peak_is_measured_on_the_models_matmul_route(monkeypatch):
    """The MFU denominator times the kernels the layers use (oneDNN for fp32 on x86), not bare a @ b."""
    import lmlab.nn.linear as linear_module

    calls = []
    real = linear_module.linear
    monkeypatch.setattr(linear_module, "linear", lambda *a: calls.append(a[0].dtype) or real(*a))
    flops = measure_matmul_flops(torch.device("cpu"), "fp32", size=64, seconds=0.01)
    assert flops > 0 and calls and set(calls) == {torch.float32}


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H200", "fp32", 67e12),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5e12),
    ("NVIDIA L4", "bf16", 121e12),
    ("NVIDIA L40S", "bf16", 0.0),  # not the L4: unknown, so training measures a matmul instead
    ("Tesla V100-SXM2-16GB", "bf16", 0.0),  # no bf16 on a V100
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2e12),
    ("AMD Instinct MI300X", "bf16", 1307.4e12),
])
def test_accelerator_peaks_by_device_name(name: str, precision: str, peak: float):
    assert accelerator_peak(name, precision) == peak
    assert PEAK_FLOPS["h100-sxm-bf16"] == 989e12 and PEAK_FLOPS["tpu-v5p-bf16"] == 459e12


def test_param_groups_skip_norms_biases_embeddings():
    model = tiny_model()
    model.blocks[0].attn.proj.weight.lmlab_optim = {"lr": 1e-2, "weight_decay": 0.0}
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.1, lr=1e-3)}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups["decay"]["params"]}
    assert decayed and all(n.endswith("weight") and "norm" not in n and "emb" not in n for n in decayed)
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert "tok_emb.weight" in no_decay and any(n.endswith("bias") for n in no_decay)
    assert any("norm" in n for n in no_decay) and "pos_emb.weight" in no_decay
    assert [names[id(p)] for p in groups["no_decay_lr0.01"]["params"]] == ["blocks.0.attn.proj.weight"]
    total = sum(p.numel() for g in groups.values() for p in g["params"])
    assert total == model.num_params()  # every parameter once, the tied head included once
    opt = build_adamw(model, lr=1e-3, weight_decay=0.1)
    set_lr(opt, 5e-4, 1e-3)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([5e-4, 5e-4, 5e-3])


def test_schedule_warmup_and_cosine():
    s = Schedule(lr=1.0, min_lr=0.1, warmup_steps=4)
    assert [s(i, 0.0) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s(10, 0.5) == pytest.approx(0.55)
    assert s(10, 1.0) == pytest.approx(0.1) and s(10, 2.0) == pytest.approx(0.1)
    assert s(2, 0.5) == pytest.approx(0.55 * 0.75)


def test_random_windows_are_resumable_and_split_by_rank():
    tokens = np.arange(1000, dtype=np.uint16)
    a = RandomWindows(tokens, block_size=8, batch_size=4, seed=3)
    b = a.next()
    assert b["input_ids"].shape == (4, 8) and b["input_ids"].dtype == torch.int64
    assert torch.equal(b["labels"], b["input_ids"] + 1)  # consecutive ids: labels are inputs shifted by one
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON round trip
    expected = [a.next()["input_ids"] for _ in range(3)]
    c = RandomWindows(tokens, block_size=8, batch_size=4, seed=99)
    c.load_state_dict(state)
    assert all(torch.equal(c.next()["input_ids"], e) for e in expected)
    # two ranks with batch 2 see exactly the rows of one process with batch 4
    single = RandomWindows(tokens, block_size=8, batch_size=4, seed=5).next()["input_ids"]
    r0 = RandomWindows(tokens, block_size=8, batch_size=2, seed=5, rank=0, world_size=2).next()["input_ids"]
    r1 = RandomWindows(tokens, block_size=8, batch_size=2, seed=5, rank=1, world_size=2).next()["input_ids"]
    assert torch.equal(r0, single[0::2]) and torch.equal(r1, single[1::2])
    with pytest.raises(LmlabError, match="block size"):
        RandomWindows(tokens, block_size=16, batch_size=4).load_state_dict(state)
    with pytest.raises(LmlabError, match="fewer than block size"):
        RandomWindows(tokens[:8], block_size=8, batch_size=1)
    # windows never run past the end
    edge = RandomWindows(np.arange(10, dtype=np.uint16), block_size=9, batch_size=64, seed=0).next()
    assert int(edge["labels"].max()) == 9


def test_eval_offsets_cover_every_token_once():
    starts = eval_offsets(23, 5)
    predicted = sorted(t for s in starts for t in range(s + 1, min(s + 5, 22) + 1))
    assert predicted == list(range(1, 23))
    sub = eval_offsets(1000, 10, n_windows=7)
    assert len(sub) == 7 and sub[0] == 0 and sub[-1] + 11 <= 1000 and np.all(np.diff(sub) > 10)


@pytest.mark.parametrize("n, block, stride", [(23, 5, 2), (23, 5, 5), (24, 5, 1), (6, 5, 3), (41, 8, 3)])
def test_sliding_eval_offsets_score_every_token_once(n: int, block: int, stride: int):
    starts = eval_offsets(n, block, stride=stride)
    assert np.all(np.diff(starts) == stride) and starts[0] == 0
    # the first window scores all its predictions, the others their last `stride`
    first = [s + 1 + (block - stride if s else 0) for s in starts]
    scored = [t for s, f in zip(starts, first) for t in range(f, min(s + block, n - 1) + 1)]
    assert sorted(scored) == list(range(1, n))
    if stride == block:
        assert starts.tolist() == eval_offsets(n, block).tolist()
    with pytest.raises(LmlabError, match="stride must be between 1 and the block size 5"):
        eval_offsets(n, 5, stride=6)


def test_checkpoint_roundtrip_and_rng(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    weights = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    opt = build_adamw(model, lr=1e-3)
    torch.manual_seed(7)
    np.random.seed(7)
    state = {"rng": [ckpt.rng_state()], "tokens": 5}
    after = (torch.rand(3), np.random.rand(3))
    ckpt.save_checkpoint(
        tmp_path,
        3,
        write_weights=lambda p: save_file(weights, str(p)),
        optimizer_state=opt.state_dict(),
        trainer_state=state,
    )
    first_dir = ckpt.load_checkpoint(tmp_path).weights_path.parent
    ckpt.save_checkpoint(
        tmp_path,
        6,
        write_weights=lambda p: save_file(weights, str(p)),
        optimizer_state=opt.state_dict(),
        trainer_state=state,
    )
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.step == 6 and not first_dir.exists()  # the older checkpoint is removed after the save
    assert loaded.trainer_state["tokens"] == 5
    assert all(torch.equal(load_file(str(tmp_path / "model.safetensors"))[k], v) for k, v in weights.items())
    ckpt.set_rng_state(loaded.trainer_state["rng"][0])
    assert torch.equal(torch.rand(3), after[0]) and np.array_equal(np.random.rand(3), after[1])
    (loaded.weights_path.parent / ckpt.TRAINER).write_text("{}")
    with pytest.raises(LmlabError, match="damaged"):
        ckpt.load_checkpoint(tmp_path)
    with pytest.raises(LmlabError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "elsewhere")


def test_failed_weights_write_leaves_previous(tmp_path):
    from safetensors.torch import save_file

    w = {"a": torch.ones(3)}
    ckpt.save_checkpoint(
        tmp_path, 1, write_weights=lambda p: save_file(w, str(p)), optimizer_state={}, trainer_state={}
    )

    def full(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(LmlabError, match="the checkpoint of step 1 is kept intact"):
        ckpt.save_checkpoint(tmp_path, 2, write_weights=full, optimizer_state={}, trainer_state={})
    assert ckpt.load_checkpoint(tmp_path).step == 1
    assert [p.name for p in (tmp_path / "state").iterdir() if p.name.startswith(".")] == []
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["a"], w["a"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_matches_torch(dtype):
    import torch.nn.functional as F

    from lmlab.nn.losses import IGNORE_INDEX, token_cross_entropy

    g = torch.Generator().manual_seed(0)
    base = (torch.randn(3, 50, 300, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 300, (3, 50), generator=g)
    targets[0, ::3] = IGNORE_INDEX
    a = base.clone().requires_grad_()
    b = base.clone().requires_grad_()
    ours = token_cross_entropy(a, targets)
    ref = F.cross_entropy(b.float().reshape(-1, 300), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    (ours * 2).backward()
    (ref * 2).backward()
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert a.grad.dtype == dtype
    assert torch.allclose(a.grad.float(), b.grad.float(), atol=1e-6 if dtype == torch.float32 else 1e-3)
    assert a.grad[0, ::3].abs().max() == 0  # ignored targets get no gradient
    rows = token_cross_entropy(base, targets, reduction="none")
    assert rows.shape == (3, 50) and rows[0, ::3].abs().max() == 0
    assert token_cross_entropy(base, targets, reduction="sum").item() == pytest.approx(
        rows.sum().item(), rel=1e-6
    )
    assert token_cross_entropy(base, torch.full_like(targets, IGNORE_INDEX)).item() == 0.0
