"""ULMFiT (Howard & Ruder 2018) as three real runs: ``ulmfit(UlmfitConfig) -> UlmfitResult``.

1. the general-domain language model: an existing run (``--ckpt``);
2. LM fine-tuning on the target corpus's training text, with discriminative learning rates
   (each layer group's rate the one above divided by 2.6) and slanted triangular learning
   rates (cut_frac 0.1, ratio 32): ``OUT/stage2-lm``;
3. classifier fine-tuning (a task head with ULMFiT's concat pooling on an LSTM, the family's
   own pooling otherwise) with gradual unfreezing, one more layer group from the top each
   epoch, plus the same two schedules: ``OUT/stage3-classifier``.

Each stage is a :func:`lmlab.adapt.finetune.finetune` run through the one Trainer, whose
options carry the three tricks; nothing here forks the training loop. The ablation switches
(``--no-stage2``, ``--no-discriminative-lr``, ``--no-stlr``, ``--no-gradual-unfreeze``) turn
one trick off each; without STLR a stage trains at a constant rate. ``OUT/ulmfit.json`` records
each finished stage, so ``--resume`` skips finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import Precision, arg, build_config, explicit_options, load_yaml, save_config
from lmlab.errors import LmlabError
from lmlab.train.options import OptimOptions

STAGE2, STAGE3 = "stage2-lm", "stage3-classifier"
RECORD = "ulmfit.json"
# Options a --resume takes from the command line; the others must match the run's config.yaml.
SESSION_OPTIONS = ("resume", "overwrite", "progress", "json", "device", "out")


@dataclass
class UlmfitConfig:
    ckpt: Path | None = arg(None, "stage 1: the general-domain language model (a run folder, e.g. an LSTM "
                                  "from 'lmlab pretrain --model lstm-small'; any family with a task head)")
    data: str | None = arg(None, "the target task's labelled data: sentiment-movies|amazon|nyt|tweets, a "
                                 ".jsonl/.csv (text,label) or hf:NAME; stage 2 reads its train split's text")
    out: Path | None = arg(None, "folder of the runs: OUT/stage2-lm, OUT/stage3-classifier, OUT/ulmfit.json")
    resume: bool = arg(False, "continue in --out: skip finished stages, resume an interrupted one")
    overwrite: bool = arg(False, "start over in an --out that already holds ULMFiT runs")
    # the tricks, each with its ablation switch (--no-stage2, --no-discriminative-lr, ...)
    stage2: bool = arg(True, "stage 2, LM fine-tuning (--no-stage2: the classifier starts from --ckpt)")
    discriminative_lr: bool = arg(True, "discriminative learning rates (--no-discriminative-lr: one rate for "
                                        "every layer group)")
    stlr: bool = arg(True, "slanted triangular learning rates (--no-stlr: a constant rate)")
    gradual_unfreeze: bool = arg(True, "gradual unfreezing in stage 3 (--no-gradual-unfreeze: every layer "
                                       "trains from the start)")
    # the tricks' settings (Howard & Ruder's values)
    discriminative_factor: float = arg(2.6, "each layer group's rate is the one above divided by this")
    stlr_cut_frac: float = arg(0.1, "STLR: fraction of each stage spent raising the rate")
    stlr_ratio: float = arg(32.0, "STLR: how much smaller the lowest rate is than the peak")
    # stage 2
    lm_epochs: float = arg(1.0, "stage 2: passes over the target training text")
    lm_lr: float = arg(4e-3, "stage 2: peak learning rate (the paper's 0.004)")
    lm_batch_size: int = arg(32, "stage 2: windows per batch")
    lm_max_len: int = arg(70, "stage 2: tokens per window (the paper's BPTT length 70)")
    # stage 3
    epochs: float | None = arg(None, "stage 3: passes over the labelled training examples (default: one "
                                     "per layer group, so the last epoch trains every layer)")
    lr: float = arg(1e-2, "stage 3: peak learning rate of the top layer group (the paper's 0.01)")
    batch_size: int = arg(32, "stage 3: examples per batch")
    max_len: int = arg(128, "stage 3: tokens per example (longer texts are cut)")
    head_hidden: int = arg(50, "stage 3: hidden width of the head (the paper's 50; 0: a linear head)")
    head_dropout: float = arg(0.1, "stage 3: dropout on the pooled features")
    pooling: str = arg("auto", "stage 3: the sequence feature (auto: concat pooling for LSTMs, the "
                               "family's own otherwise)")
    # both stages
    weight_decay: float = arg(0.01, "AdamW weight decay")
    beta1: float = arg(0.7, "Adam beta1 (the paper's 0.7)")
    beta2: float = arg(0.99, "Adam beta2 (the paper's 0.99)")
    log_interval: int = arg(10, "log to each stage's metrics.jsonl every N steps")
    eval_interval: int = arg(0, "validate every N steps (0: only at the end of each stage)")
    save_interval: int = arg(0, "checkpoint every N steps (0: at the end of a stage and on Ctrl-C)")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    seed: int = arg(1337, "seed of the data order, dropout and the head's init")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = arg(True, "show progress bars (--no-progress hides them)")
    json: bool = arg(False, "print the final figures as one JSON object")


@dataclass
class UlmfitResult:
    """The two runs ULMFiT trained (their :class:`~lmlab.adapt.finetune.FinetuneResult` summaries),
    the classifier's test figures and which tricks were on."""

    out: str
    tricks: dict[str, bool]
    stage2: dict[str, Any] | None
    stage3: dict[str, Any]
    accuracy: float | None
    macro_f1: float | None
    interrupted: bool = False
    layer_groups: int = 0
    unfreeze_every: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Return the figures as a JSON-ready dict (what ``lmlab ulmfit --json`` prints)."""
        return dataclasses.asdict(self)


def _optim(cfg: UlmfitConfig, lr: float) -> OptimOptions:
    """One stage's optimiser options: the paper's Adam betas and the tricks that are on."""
    return OptimOptions(
        lr=lr, min_lr=lr, warmup_steps=0, weight_decay=cfg.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2,
        schedule="stlr" if cfg.stlr else "constant", stlr_cut_frac=cfg.stlr_cut_frac,
        stlr_ratio=cfg.stlr_ratio,
        discriminative_lr=cfg.discriminative_factor if cfg.discriminative_lr else 0.0)


def _record(out: Path) -> dict[str, Any]:
    import json

    path = out / RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _save_record(out: Path, record: dict[str, Any]) -> None:
    from lmlab.fileio import write_json

    write_json(out / RECORD, record)


def _resolve(cfg: UlmfitConfig) -> UlmfitConfig:
    """Return the config to run: ``cfg`` for a new run (clearing an old one under --overwrite), or on
    --resume the run's saved config.yaml with this session's options (``SESSION_OPTIONS``).

    A --resume that gives another option with a value differing from the run's is refused.
    """
    out = Path(cfg.out)
    if not cfg.resume:
        if any((out / name).exists() for name in (STAGE2, STAGE3, RECORD)):
            if not cfg.overwrite:
                raise LmlabError(f"{out} already holds ULMFiT runs; pass --resume to continue them, "
                                 "--overwrite to start over, or another --out")
            for name in (STAGE2, STAGE3):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / RECORD).unlink(missing_ok=True)
        return cfg
    path = out / "config.yaml"
    if not path.is_file():
        raise LmlabError(f"{out} has no ULMFiT run to resume (no config.yaml); drop --resume")
    saved = build_config(UlmfitConfig, load_yaml(path))
    explicit, default = explicit_options(cfg), UlmfitConfig()
    for f in dataclasses.fields(cfg):
        now, then = getattr(cfg, f.name), getattr(saved, f.name)
        given = f.name in explicit if explicit is not None else now != getattr(default, f.name)
        if f.name not in SESSION_OPTIONS and given and now != then:
            raise LmlabError(f"--resume: --{f.name.replace('_', '-')} is {now} now but {then} in {path}; "
                             "resume with the run's options (--out DIR --resume is enough)")
    return dataclasses.replace(saved, **{name: getattr(cfg, name) for name in SESSION_OPTIONS})


def ulmfit(cfg: UlmfitConfig) -> UlmfitResult:
    """Run ULMFiT's stages 2 and 3 from the general LM ``cfg.ckpt`` on ``cfg.data``; return the result.

    Raises LmlabError for missing options, a model family without a task head, data that cannot
    teach a classifier, or a --resume whose options differ from the run's.
    """
    from lmlab.adapt.finetune import FinetuneConfig, finetune
    from lmlab.data.labelled import get_labelled
    from lmlab.loader import load
    from lmlab.models.heads import classifier_for
    from lmlab.train.layer_groups import layer_groups

    if cfg.out is None or (not cfg.resume and (cfg.ckpt is None or cfg.data is None)):
        raise LmlabError("ulmfit needs --ckpt GENERAL_LM_RUN, --data CORPUS and --out DIR "
                         "(or --out DIR --resume)")
    cfg = _resolve(cfg)
    out = Path(cfg.out)
    corpus = get_labelled(cfg.data)
    corpus.check_task("classify")
    # The classifier's layer groups, for the default length and the unfreezing pace (also checks early
    # that the family has a task head).
    backbone, _ = load(cfg.ckpt)
    groups = len(layer_groups(classifier_for(backbone, task="classify", labels=corpus.label_names,
                                             pooling=cfg.pooling, head_hidden=cfg.head_hidden)))
    del backbone
    out.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(cfg, resume=False, overwrite=False), out / "config.yaml")
    record = _record(out)
    tricks = {"stage2": cfg.stage2, "discriminative_lr": cfg.discriminative_lr, "stlr": cfg.stlr,
              "gradual_unfreeze": cfg.gradual_unfreeze}
    common = {"precision": cfg.precision, "seed": cfg.seed, "device": cfg.device, "progress": cfg.progress,
              "log_interval": cfg.log_interval, "eval_interval": cfg.eval_interval,
              "save_interval": cfg.save_interval}

    def stage(name: str, fc: FinetuneConfig) -> dict[str, Any] | None:
        """Run (or resume, or skip when recorded as finished) one stage; None when interrupted."""
        from lmlab.train import checkpoint as ckpt

        if name in record:
            return record[name]
        started = ckpt.latest_step(out / name) is not None
        result = finetune(dataclasses.replace(fc, resume=started))
        if result.interrupted:
            return None
        record[name] = result.summary()
        _save_record(out, record)
        return record[name]

    stage2 = None
    start = Path(cfg.ckpt)
    if cfg.stage2:
        stage2 = stage(STAGE2, FinetuneConfig(
            ckpt=cfg.ckpt, data=cfg.data, task="lm", method="full", out=out / STAGE2, epochs=cfg.lm_epochs,
            batch_size=cfg.lm_batch_size, max_len=cfg.lm_max_len, optim=_optim(cfg, cfg.lm_lr), **common))
        if stage2 is None:
            return UlmfitResult(str(out), tricks, None, {}, None, None, interrupted=True, layer_groups=groups)
        start = out / STAGE2
    per_epoch = math.ceil(len(corpus.examples("train", "classify")) / cfg.batch_size)
    epochs = cfg.epochs if cfg.epochs is not None else float(groups)
    if not epochs > 0:
        raise LmlabError(f"--epochs must be positive (got {epochs})")
    every = per_epoch if cfg.gradual_unfreeze else 0
    stage3 = stage(STAGE3, FinetuneConfig(
        ckpt=start, data=cfg.data, task="classify", method="full", out=out / STAGE3,
        max_steps=max(1, math.ceil(epochs * per_epoch)), gradual_unfreeze=every, batch_size=cfg.batch_size,
        max_len=cfg.max_len, pooling=cfg.pooling, head_hidden=cfg.head_hidden, head_dropout=cfg.head_dropout,
        head_norm="batchnorm", optim=_optim(cfg, cfg.lr), **common))
    if stage3 is None:
        return UlmfitResult(str(out), tricks, stage2, {}, None, None, interrupted=True, layer_groups=groups,
                            unfreeze_every=every)
    test = stage3.get("test", {})
    return UlmfitResult(str(out), tricks, stage2, stage3, test.get("accuracy"), test.get("macro_f1"),
                        layer_groups=groups, unfreeze_every=every)
