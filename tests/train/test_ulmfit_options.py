"""ULMFiT's three Trainer options: slanted triangular rates, discriminative rates per layer group,
gradual unfreezing (which groups train at each step), and exact resume with each of them on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

import lmlab.train.loop as loop_module
from lmlab.cli import main
from lmlab.data.windows import RandomWindows
from lmlab.errors import LmlabError
from lmlab.models import build_model, get_preset
from lmlab.train.layer_groups import layer_groups, unfrozen_count
from lmlab.train.log import read_metrics
from lmlab.train.loop import Trainer, TrainSettings
from lmlab.train.objectives import causal_lm_loss
from lmlab.train.optim import Schedule
from lmlab.train.options import OptimOptions
from tests.conftest import prepare_word_soup

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _no_flops_probe(monkeypatch):
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")


def stlr_paper(t: int, T: int, eta_max: float, cut_frac: float = 0.1, ratio: float = 32.0) -> float:
    """Howard & Ruder (2018), eq. 3, written as in the paper."""
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return eta_max * (1 + p * (ratio - 1)) / ratio


@pytest.mark.parametrize("T", [100, 250])
def test_stlr_follows_the_papers_equation(T: int):
    sched = Schedule(lr=0.01, min_lr=0.5, warmup_steps=50, kind="stlr", cut_frac=0.1, ratio=32)
    curve = [sched(t, t / T) for t in range(T + 1)]
    assert curve == pytest.approx([stlr_paper(t, T, 0.01) for t in range(T + 1)], rel=1e-12)
    cut = T // 10
    assert curve[0] == pytest.approx(0.01 / 32) and curve[T] == pytest.approx(0.01 / 32)
    assert max(curve) == pytest.approx(0.01) and curve.index(max(curve)) == cut
    rises, falls = [b - a for a, b in zip(curve[:cut + 1], curve[1:cut + 1])], \
        [b - a for a, b in zip(curve[cut:], curve[cut + 1:])]
    assert all(d > 0 for d in rises) and all(d < 0 for d in falls)
    # the fall is cut_frac / (1 - cut_frac) times as steep as the rise: a slanted triangle
    assert falls[0] / rises[0] == pytest.approx(-1 / 9)


def test_linear_constant_and_cosine_schedules():
    lin = Schedule(lr=1.0, min_lr=0.1, warmup_steps=4, kind="linear")
    assert [lin(s, 0.0) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lin(10, 0.5) == pytest.approx(0.55) and lin(20, 1.0) == pytest.approx(0.1)
    const = Schedule(lr=1.0, min_lr=0.1, warmup_steps=2, kind="constant")
    assert [const(s, s / 10) for s in range(5)] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])
    cos = Schedule(lr=1.0, min_lr=0.0)
    assert cos(5, 0.5) == pytest.approx(0.5) and cos(10, 1.0) == pytest.approx(0.0)


@pytest.mark.parametrize("field, value, message", [
    ("stlr_cut_frac", 1.0, "--stlr-cut-frac"), ("stlr_ratio", 0.5, "--stlr-ratio"),
    ("discriminative_lr", 0.5, "--discriminative-lr"),
])
def test_option_errors(field: str, value: float, message: str):
    with pytest.raises(LmlabError, match=message):
        OptimOptions(**{field: value}).check()
    assert OptimOptions(discriminative_lr=1.0).group_lr_factor() == 1.0
    assert OptimOptions(discriminative_lr=2.6).group_lr_factor() == 2.6


def test_unfrozen_count():
    assert [unfrozen_count(s, 3, 4) for s in range(12)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert unfrozen_count(0, 0, 5) == 5


# ------------------------------------------------------------------ the options inside the Trainer

def tiny_decoder(n_layer: int = 2, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(get_preset("llama-tiny", vocab_size=32, block_size=8, n_layer=n_layer, d_model=32,
                                  n_head=2, n_kv_heads=2, dropout=dropout, tie_embeddings=False))


def tokens(seed: int = 0, n: int = 4000) -> torch.Tensor:
    return torch.randint(0, 32, (n,), generator=torch.Generator().manual_seed(seed)).numpy()


def settings(steps: int, **optim) -> TrainSettings:
    loop = {k: optim.pop(k) for k in ("gradual_unfreeze", "stop_at_step", "save_interval") if k in optim}
    opts = {"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 0, "weight_decay": 0.1, "grad_clip": 0.0, **optim}
    return TrainSettings(optim=OptimOptions(**opts), max_steps=steps, precision="fp32", show_progress=False,
                         log_interval=1, **loop)


class Spy:
    """Captures the Trainer's optimizer and records, at every step, which parameters carry a gradient
    and which changed."""

    def __init__(self, monkeypatch, model: torch.nn.Module):
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.params = dict(model.named_parameters())
        self.steps: list[dict[str, set[str]]] = []
        self.optimizer = None
        real = loop_module.build_adamw

        def build(*a, **kw):
            self.optimizer = opt = real(*a, **kw)
            opt.register_step_pre_hook(self._pre)
            opt.register_step_post_hook(self._post)
            return opt

        monkeypatch.setattr(loop_module, "build_adamw", build)

    def _pre(self, opt, args, kwargs):
        self._before = {n: p.detach().clone() for n, p in self.params.items()}
        self.steps.append({"grad": {n for n, p in self.params.items() if p.grad is not None}})

    def _post(self, opt, args, kwargs):
        self.steps[-1]["changed"] = {n for n, p in self.params.items() if not torch.equal(p, self._before[n])}
        self.steps[-1]["delta"] = {n: (p.detach() - self._before[n]).abs() for n, p in self.params.items()}


def test_discriminative_rates_per_layer_group(monkeypatch, tmp_path: Path):
    model = tiny_decoder()
    spy = Spy(monkeypatch, model)
    batches = RandomWindows(tokens(), block_size=8, batch_size=4, seed=0)
    Trainer(model, causal_lm_loss, batches, settings(1, schedule="constant", discriminative_lr=2.6,
                                                     weight_decay=0.0),
            out_dir=tmp_path, device=CPU).fit()
    groups = layer_groups(model)
    assert len(groups) == 4  # embeddings, two blocks, final norm + head
    expected = {n: 1e-2 / 2.6 ** (len(groups) - 1 - i) for i, g in enumerate(groups) for n, _ in g}
    for group in spy.optimizer.param_groups:
        for p in group["params"]:
            assert group["lr"] == pytest.approx(expected[spy.names[id(p)]], rel=1e-12)
    # Adam's first step moves each weight by about its rate (m/sqrt(v) = sign(g)): the rates act.
    delta = spy.steps[0]["delta"]
    for name, lr in expected.items():
        moved = delta[name][delta[name] > 0]
        assert moved.median().item() == pytest.approx(lr, rel=1e-3), name


def test_gradual_unfreezing_freezes_the_lower_groups(monkeypatch, tmp_path: Path):
    model = tiny_decoder()
    groups = [{n for n, _ in g} for g in layer_groups(model)]
    model.blocks[0].attn.qkv.weight.requires_grad_(False)  # frozen by its owner: never unfrozen
    spy = Spy(monkeypatch, model)
    batches = RandomWindows(tokens(), block_size=8, batch_size=4, seed=0)
    Trainer(model, causal_lm_loss, batches, settings(9, gradual_unfreeze=2),
            out_dir=tmp_path, device=CPU).fit()
    logged = [r["unfrozen_groups"] for r in read_metrics(tmp_path)]
    assert logged == [1, 1, 2, 2, 3, 3, 4, 4, 4]
    for step, seen in enumerate(spy.steps):
        n = logged[step]
        training = set().union(*groups[len(groups) - n:]) - {"blocks.0.attn.qkv.weight"}
        frozen = set().union(*groups[:len(groups) - n]) | {"blocks.0.attn.qkv.weight"}
        assert seen["grad"] == training, step
        # weight decay is on (0.1), yet a frozen weight does not move at all
        assert seen["changed"] == training and not seen["changed"] & frozen, step
    # the model comes back as it was given: trainable but for the owner's frozen weight
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["blocks.0.attn.qkv.weight"]


def test_layer_groups_are_needed_only_when_an_option_asks(tmp_path: Path):
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(32, 8)
            self.out = torch.nn.Linear(8, 32)

        def forward(self, idx):
            return self.out(self.emb(idx))

    batches = RandomWindows(tokens(), block_size=8, batch_size=2, seed=0)
    Trainer(Plain(), causal_lm_loss, batches, settings(1), out_dir=tmp_path / "a", device=CPU).fit()
    with pytest.raises(LmlabError, match="Plain has no layer groups"):
        Trainer(Plain(), causal_lm_loss, batches, settings(1, gradual_unfreeze=1),
                out_dir=tmp_path / "b", device=CPU).fit()
    with pytest.raises(LmlabError, match="--gradual-unfreeze must be"):
        Trainer(Plain(), causal_lm_loss, batches, settings(1, gradual_unfreeze=-1), out_dir=tmp_path / "c",
                device=CPU)


@pytest.mark.parametrize("options", [
    {"schedule": "stlr"},
    {"discriminative_lr": 2.6},
    {"gradual_unfreeze": 3},
    {"schedule": "stlr", "discriminative_lr": 2.6, "gradual_unfreeze": 2},
], ids=["stlr", "discriminative", "unfreeze", "all"])
def test_exact_resume_with_each_option(options: dict, tmp_path: Path, one_torch_thread):
    """Stop at step 4 and resume: losses and weights equal an uninterrupted run's bitwise, also when a
    group first unfreezes after the resume (its optimizer state starts then, as without the stop)."""

    def run(out: Path, **extra) -> tuple[torch.nn.Module, dict[int, float]]:
        model = tiny_decoder(dropout=0.1)
        batches = RandomWindows(tokens(), block_size=8, batch_size=4, seed=0)
        Trainer(model, causal_lm_loss, batches, settings(10, **options, **extra), out_dir=out,
                device=CPU).fit(resume=(out / "state").exists())
        return model, {r["step"]: r["loss"] for r in read_metrics(out)}

    ref_model, ref = run(tmp_path / "ref")
    run(tmp_path / "run", stop_at_step=4)
    model, resumed = run(tmp_path / "run")
    assert resumed == ref
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_pretrain_takes_the_flags_and_saves_them(tmp_path: Path):
    data = prepare_word_soup(tmp_path, docs=6, words_per_doc=60)
    out = tmp_path / "run"
    assert main(["pretrain", "--model", "llama-tiny", "--d-model", "32", "--n-layer", "2",
                 "--block-size", "16", "--batch-size", "2", "--precision", "fp32", "--device", "cpu",
                 "--no-progress",
                 "--eval-iters", "0", "--log-interval", "1", "--max-steps", "4", "--data", str(data),
                 "--out", str(out), "--schedule", "stlr", "--discriminative-lr", "2.6",
                 "--gradual-unfreeze", "2"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["schedule"] == "stlr" and saved["optim"]["discriminative_lr"] == 2.6
    assert saved["gradual_unfreeze"] == 2
    records = read_metrics(out)
    assert [r["unfrozen_groups"] for r in records] == [1, 1, 2, 2]
    assert records[0]["lr"] == pytest.approx(saved["optim"]["lr"] / 32)  # stlr starts at lr / ratio


def test_resume_with_a_parameter_that_never_had_a_gradient(tmp_path: Path):
    """An unused parameter (an LM head under a task head) has no optimizer state; resume still works."""

    class PartlyUsed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(32, 8)
            self.out = torch.nn.Linear(8, 32)
            self.unused = torch.nn.Linear(8, 8)

        def forward(self, idx):
            return self.out(self.emb(idx))

    def run(out: Path, **extra) -> torch.nn.Module:
        model = PartlyUsed()
        batches = RandomWindows(tokens(), block_size=8, batch_size=2, seed=0)
        Trainer(model, causal_lm_loss, batches, settings(6, **extra), out_dir=out, device=CPU).fit(
            resume=(out / "state").exists())
        return model

    ref = run(tmp_path / "ref")
    run(tmp_path / "run", stop_at_step=3)
    resumed = run(tmp_path / "run")
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_options_compose_with_lora(monkeypatch, tmp_path: Path):
    """Under LoRA only the adapter trains; gradual unfreezing and discriminative rates act on its
    parameters by the block they sit in."""
    from lmlab.tuning import TuningOptions, apply_tuning

    model = tiny_decoder()
    apply_tuning(model, TuningOptions(method="lora", r=2, targets=["q", "v"]))
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all(n.startswith("blocks.") for n in lora)
    spy = Spy(monkeypatch, model)
    batches = RandomWindows(tokens(), block_size=8, batch_size=4, seed=0)
    Trainer(model, causal_lm_loss, batches, settings(3, gradual_unfreeze=1, discriminative_lr=2.0,
                                                     schedule="constant"),
            out_dir=tmp_path, device=CPU).fit()
    in_block = [{n for n in lora if n.startswith(f"blocks.{i}.")} for i in range(2)]
    # the groups that count are those with trainable parameters: block 0's and block 1's adapters
    assert [s["grad"] for s in spy.steps] == [in_block[1], lora, lora]
    rates = {spy.names[id(p)]: g["lr"] for g in spy.optimizer.param_groups for p in g["params"]}
    assert set(rates) == lora
    assert all(rates[n] == pytest.approx(1e-2 / 2 ** (1 - i)) for i in range(2) for n in in_block[i])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora  # as the method left it
