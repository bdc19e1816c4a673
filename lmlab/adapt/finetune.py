"""Fine-tuning as a function: ``finetune(FinetuneConfig) -> FinetuneResult``.

``--task classify`` / ``regress`` puts a task head (:mod:`lmlab.models.heads`) on the
pretrained model of ``--ckpt`` and trains it on a labelled corpus
(:func:`lmlab.data.labelled.get_labelled`) through the one Trainer, validating on the
validation split and scoring the test split at the end. ``--method`` says what trains:
``head`` (the backbone frozen), ``full`` (everything), or a parameter-efficient method of
:mod:`lmlab.tuning` (``lora``, ``houlsby``, ``pfeiffer``, ``prefix``, ``prompt``: the method's
parameters and the head). A tuned run is an adapter run: ``tuning.json`` and
``tuning.safetensors`` (the method's weights and the head only) beside ``base/`` (the classifier
it adapts), so ``lmlab.load`` and ``lmlab predict`` open it as base + adapter; the Trainer's
books (metrics, resumable state) are in ``train/``. ``--task lm`` continues the language
model on the corpus's unlabelled training text (ULMFiT's stage 2): the text is prepared with
the run's tokenizer and trained by :func:`lmlab.train.pretrain.pretrain` from ``--ckpt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmlab.config import DictConfig, Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.train.options import LoopOptions, OptimOptions
from lmlab.tuning import METHODS as TUNING_METHODS
from lmlab.tuning import TuningOptions

Task = Literal["classify", "regress", "lm"]
METHODS = ("head", "full", *TUNING_METHODS)
Method = Literal["head", "full", "lora", "houlsby", "pfeiffer", "prefix", "prompt"]
RESULTS = "results.json"
BASE = "base"  # a tuned run's classifier base
TRAIN = "train"  # a tuned run's Trainer folder (metrics.jsonl, state/)


def _tuning_shape_fields() -> list[tuple[str, Any, Any]]:
    """The fields of :class:`~lmlab.tuning.TuningOptions` but ``method`` (``--method`` names it)."""
    out = []
    for f in dataclasses.fields(TuningOptions):
        if f.name == "method":
            continue
        if f.default is dataclasses.MISSING:
            default = dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
        else:
            default = dataclasses.field(default=f.default, metadata=f.metadata)
        out.append((f.name, f.type, default))
    return out


# The shape of a tuning method (LoRA rank, adapter bottleneck, prefix length, ...) as an options group:
# TuningOptions' own fields and help, without its ``method``.
TuningShape = dataclasses.make_dataclass("TuningShape", _tuning_shape_fields(), bases=(DictConfig,))
TuningShape.__module__ = __name__
TuningShape.__doc__ = "The shape of a tuning method: lmlab.tuning.TuningOptions without its method."


@dataclass
class FinetuneConfig(LoopOptions):
    ckpt: Path | None = arg(None, "the pretrained model: a run folder (from 'lmlab pretrain'), a model file, "
                                  "or an imported Hugging Face run")
    data: str | None = arg(None, "labelled data: sentiment-movies, sentiment-amazon, sentiment-nyt, "
                                 "sentiment-tweets, a .jsonl/.csv (text,label[,rating]), a folder of "
                                 "train/validation/test files, or hf:NAME[:CONFIG]")
    task: Task = arg("classify", "classify (labels), regress (the rating) or lm (continue the language "
                                 "model on the data's unlabelled training text: ULMFiT's stage 2)")
    method: Method = arg("full", "what trains: head (backbone frozen), full (every weight), or with the "
                                 "head a tuning method: lora, houlsby or pfeiffer adapters, prefix or prompt "
                                 "tuning")
    out: Path | None = arg(None, "run folder: config.yaml, model.safetensors, tokenizer.json, metrics.jsonl, "
                                 "results.json (test metrics), state/")
    overwrite: bool = arg(False, "start a new run in an --out that already holds one")
    resume: bool = arg(False, "continue the run in --out from its latest checkpoint (same options)")
    epochs: float | None = arg(None, "passes over the training examples (sets --max-steps; the default is "
                                     "1 when no --max-steps, --max-tokens or --time-budget is given)")
    batch_size: int = arg(16, "examples per micro-batch (--task lm: windows of --max-len tokens)")
    max_len: int = arg(128, "tokens per example; longer texts are cut (--task lm: the window length)")
    pooling: str = arg("auto", "the sequence feature: auto (the family's own: last token for decoders, "
                               "pooler/[CLS] for encoders, ULMFiT concat pooling for RNNs), last, mean, cls, "
                               "pooler, concat")
    head_hidden: int = arg(0, "0: one linear layer on the features; N: a hidden ReLU layer of width N")
    head_dropout: float = arg(0.1, "dropout on the features before the head")
    head_norm: str = arg("auto", "batchnorm: batch normalisation before each of the head's linear layers "
                                 "(ULMFiT's classifier); none; auto: batchnorm on RNNs, none otherwise")
    tuning: TuningShape = arg(TuningShape(), "the tuning method's shape")
    optim: OptimOptions = arg(OptimOptions(lr=1e-4, min_lr=1e-5, warmup_fraction=0.1, warmup_steps=0,
                                           weight_decay=0.01, beta2=0.999),
                              "AdamW and its schedule")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    seed: int = arg(1337, "seed of the head's init, the data order and dropout")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    eval_max: int = arg(0, "validation examples per evaluation during training (0: all)")
    progress: bool = arg(True, "show a progress bar (--no-progress hides it)")
    json: bool = arg(False, "print the final figures as one JSON object")


def resolve_head_norm(name: str, backbone: Any) -> str:
    """Return the head norm for ``backbone``: ``auto`` is batchnorm for RNN backbones (ULMFiT's
    classifier head, whose LSTM features vary little between sentences) and none otherwise."""
    from lmlab.models.heads import backbone_arch

    if name != "auto":
        return name
    return "batchnorm" if backbone_arch(backbone) == "rnn" else "none"


@dataclass
class FinetuneResult:
    """How a fine-tuning run ended: its figures (validation at the last evaluation, test at the
    end), what trained and what it cost, and its folder."""

    out: str
    task: str
    method: str
    step: int
    elapsed_s: float
    trainable_params: int
    total_params: int
    trainable_share: float
    peak_memory_mib: float | None
    checkpoint_bytes: int
    val: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        """Return the figures as a JSON-friendly dict (what ``lmlab finetune --json`` prints)."""
        return dataclasses.asdict(self)


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Fine-tune ``cfg.ckpt`` on ``cfg.data`` for ``cfg.task`` with ``cfg.method``; return the result.

    Writes the run folder (see ``lmlab finetune --help``). Bad input raises LmlabError: a labels
    file with an unknown label or an empty text, one class only, a model family without a head.
    """
    if cfg.ckpt is None or cfg.data is None or cfg.out is None:
        raise LmlabError("finetune needs --ckpt RUN (the pretrained model), --data CORPUS and --out RUN2")
    if cfg.method not in METHODS:
        raise LmlabError(f"--method {cfg.method} is not one of {', '.join(METHODS)}")
    if cfg.task == "lm":
        return _finetune_lm(cfg)
    return _finetune_task(cfg)


def _tuned(cfg: FinetuneConfig) -> bool:
    return cfg.method in TUNING_METHODS


def _check_out(cfg: FinetuneConfig) -> None:
    from lmlab.train import checkpoint as ckpt

    out = Path(cfg.out) / TRAIN if _tuned(cfg) else Path(cfg.out)
    if cfg.resume and ckpt.latest_step(out) is None:
        raise LmlabError(f"{out} has no checkpoint to resume; drop --resume to start a new run there")
    if not cfg.resume and ckpt.latest_step(out) is not None and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a run (checkpoint at step {ckpt.latest_step(out)}); pass "
                         "--resume to continue it, --overwrite to start over, or another --out")


def _length(cfg: FinetuneConfig, n_train: int) -> FinetuneConfig:
    """Turn ``--epochs`` (or the default of one epoch) into ``max_steps``."""
    if cfg.epochs is not None and cfg.max_steps is not None:
        raise LmlabError("give --epochs or --max-steps, not both")
    if cfg.epochs is not None and not cfg.epochs > 0:
        raise LmlabError(f"--epochs must be positive (got {cfg.epochs})")
    epochs = cfg.epochs
    if epochs is None and cfg.max_steps is None and cfg.max_tokens is None and cfg.time_budget is None:
        epochs = 1.0
    if epochs is None:
        return cfg
    steps = max(1, math.ceil(epochs * n_train / (cfg.batch_size * cfg.grad_accum)))
    return dataclasses.replace(cfg, max_steps=steps)


def _finetune_task(cfg: FinetuneConfig) -> FinetuneResult:
    """Classification or regression with a task head (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from lmlab.adapt.examples import ExampleBatches, encode_texts
    from lmlab.adapt.predict import max_input_len, pad_id_of, predict_logits, task_metrics
    from lmlab.data.labelled import get_labelled
    from lmlab.device import PeakMemory, resolve_device, resolve_precision
    from lmlab.fileio import write_bytes, write_json
    from lmlab.loader import load
    from lmlab.models.heads import classifier_for
    from lmlab.models.registry import save_model
    from lmlab.train import checkpoint as ckpt
    from lmlab.train.loop import Trainer, TrainSettings

    _check_out(cfg)
    out = Path(cfg.out)
    corpus = get_labelled(cfg.data)
    corpus.check_task(cfg.task)
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    backbone, tokenizer = load(cfg.ckpt)
    if tokenizer is None:
        raise LmlabError(f"{cfg.ckpt} has no tokenizer.json; fine-tuning needs the model's tokenizer")
    torch.manual_seed(cfg.seed)
    model = classifier_for(backbone.train(), task=cfg.task, labels=corpus.label_names, pooling=cfg.pooling,
                           head_hidden=cfg.head_hidden, dropout=cfg.head_dropout,
                           head_norm=resolve_head_norm(cfg.head_norm, backbone))
    arch = model.config.backbone_arch
    if _tuned(cfg):
        save_model(model, out / BASE)  # the classifier the adapter adapts (its fresh head is replaced)
    trainable = _apply_method(model, cfg)
    max_len = max_input_len(model, cfg.max_len)
    regression = cfg.task == "regress"

    def encoded(split: str) -> tuple[list[list[int]], list[float]]:
        rows = corpus.examples(split, cfg.task)
        targets = [e.rating if regression else e.label for e in rows]
        return encode_texts(tokenizer, [e.text for e in rows], arch, max_len), targets

    train_ids, train_y = encoded("train")
    val_ids, val_y = encoded("validation")
    test_ids, test_y = encoded("test")
    if cfg.eval_max:
        val_ids, val_y = val_ids[:cfg.eval_max], val_y[:cfg.eval_max]
    cfg = _length(cfg, len(train_ids))
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    pad_id = pad_id_of(model, tokenizer)
    batches = ExampleBatches(train_ids, train_y, cfg.batch_size, cfg.seed, pad_id, device, regression)

    def objective(m: torch.nn.Module, batch: dict[str, torch.Tensor]):
        logits = m(batch["input_ids"], batch["attention_mask"]).float()
        if regression:
            return F.mse_loss(logits[:, 0], batch["labels"])
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return F.cross_entropy(logits, batch["labels"]), {"accuracy": accuracy.detach()}

    def figures(m: torch.nn.Module, ids: list[list[int]], y: list[float]) -> dict[str, Any]:
        logits = predict_logits(m, ids, pad_id, cfg.batch_size * 2, device, precision)
        return task_metrics(cfg.task, logits, y, corpus.label_names)

    def evaluator(m: torch.nn.Module) -> dict[str, float]:
        r = figures(m, val_ids, val_y)
        keys = ("loss", "mae", "pearson") if regression else ("loss", "accuracy", "macro_f1")
        return {f"val_{k}": round(float(r[k]), 6) for k in keys}

    settings = TrainSettings(**cfg.loop_options(), optim=cfg.optim, precision=precision,
                             show_progress=cfg.progress)
    tuned = _tuned(cfg)
    books: dict[str, Any] = {"model_config": {"classifier": model.config.to_dict(), "method": cfg.method},
                             "write_weights": lambda m, p: save_model(m, p)}
    if tuned:  # the Trainer keeps (and resumes) only what trains: the method's weights and the head
        books = {"model_config": {**books["model_config"], "tuning": dataclasses.asdict(cfg.tuning)},
                 "write_weights": _write_tuning, "read_weights": _read_tuning}
    trainer = Trainer(model, objective, batches, settings, out_dir=out / TRAIN if tuned else out,
                      device=device, evaluator=evaluator if val_ids else None, flops_per_token=None, **books)
    out.mkdir(parents=True, exist_ok=True)
    resolved = dataclasses.replace(cfg, resume=False, overwrite=False, stop_at_step=None, precision=precision,
                                   max_len=max_len, pooling=model.config.pooling, epochs=None)  # in max_steps
    save_config(resolved, out / "config.yaml")
    write_bytes(out / "tokenizer.json", tokenizer.hf.to_str().encode("utf-8"))
    state_dir = (out / TRAIN if tuned else out) / ckpt.STATE_DIR
    if not cfg.resume and state_dir.exists():
        shutil.rmtree(state_dir)
    t0 = time.perf_counter()
    with PeakMemory(device) as peak:
        result = trainer.fit(resume=cfg.resume)
    elapsed = result.elapsed if result.elapsed else time.perf_counter() - t0
    rec = result.last_record
    val = {k[4:]: v for k, v in rec.items() if k.startswith("val_")}
    test = _rounded(figures(model, test_ids, test_y)) if test_ids else {}
    if tuned:
        size = _save_adapter(model, out)
    else:
        size = (out / ckpt.WEIGHTS).stat().st_size if (out / ckpt.WEIGHTS).is_file() else 0
    res = FinetuneResult(
        out=str(out), task=cfg.task, method=cfg.method, step=result.step, elapsed_s=round(elapsed, 2),
        trainable_params=trainable, total_params=total, trainable_share=round(trainable / total, 6),
        peak_memory_mib=None if peak.peak_mib is None else round(peak.peak_mib, 1), checkpoint_bytes=size,
        val=val, test=test, interrupted=result.interrupted)
    write_json(out / RESULTS, {**res.summary(), "data": cfg.data, "source": corpus.source,
                               "labels": corpus.label_names, "notes": corpus.notes,
                               "examples": {"train": len(train_ids), "validation": len(val_ids),
                                            "test": len(test_ids)}})
    return res


def _apply_method(model: Any, cfg: FinetuneConfig) -> int:
    """Set which parameters train for ``cfg.method`` (a tuning method wraps the model's modules and
    keeps the head trainable); return how many train."""
    if _tuned(cfg):
        from lmlab.tuning import apply_tuning

        opts = TuningOptions(method=cfg.method, **dataclasses.asdict(cfg.tuning))
        return apply_tuning(model, opts, keep_trainable=("head.",)).trainable
    if cfg.method == "head":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def _write_tuning(model: Any, path: Path) -> None:
    """The Trainer's weights writer for a tuned model: the method's tensors and the head only."""
    from safetensors.torch import save_file

    from lmlab.fileio import atomic_path
    from lmlab.tuning import tuning_state_dict

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tuning_state_dict(model).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _read_tuning(model: Any, path: Path) -> None:
    """Load what :func:`_write_tuning` wrote into a model tuned the same way (names checked)."""
    import torch
    from safetensors.torch import load_file

    from lmlab.tuning import tuning_parameter_names

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own types for a damaged file
        raise LmlabError(f"{path} is damaged ({e}); start over without --resume") from None
    want = set(tuning_parameter_names(model))
    if set(state) != want:
        odd = sorted(set(state) ^ want)[:3]
        raise LmlabError(f"{path} does not hold this run's tuned weights (differs in {', '.join(odd)}); "
                         "resume with the same --method and tuning options, or start over")
    with torch.no_grad():
        model.load_state_dict(state, strict=False)


def _save_adapter(model: Any, out: Path) -> int:
    """Write the trained method (and head) as an adapter run in ``out`` on the classifier in
    ``out/base`` (prefixes folded first); return the size of its weights file in bytes."""
    from lmlab.tuning import merge_tuning, save_tuning, tuning_state
    from lmlab.tuning.io import WEIGHTS

    state = tuning_state(model)
    if state.options.method == "prefix" and not state.folded:
        merge_tuning(model)  # the prefixes the MLP gives, as plain tensors (Li & Liang 2021)
    save_tuning(model, out, base=out / BASE)
    return (out / WEIGHTS).stat().st_size


def _rounded(value: Any) -> Any:
    """``value`` with every float rounded to 6 digits (dicts and lists walked)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ---------------------------------------------------------------- --task lm (ULMFiT stage 2)


def lm_text_source(spec: str, folder: Path) -> str:
    """Return a corpus spec for ``lmlab data prepare`` holding only the training text of ``spec``:
    a labelled source's train split written to ``folder/train-text.jsonl``, or ``spec`` itself when
    it is plain text (a built-in corpus, a .txt file or folder, hf: without labels)."""
    from lmlab.data.corpora import BUILTIN
    from lmlab.data.labelled import get_labelled

    if spec in BUILTIN:  # the sentiment names there are already their train split's text
        return spec
    try:
        corpus = get_labelled(spec)
    except LmlabError:
        return spec
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-text.jsonl"
    from lmlab.fileio import write_text

    lines = (json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in corpus.texts("train"))
    write_text(path, "".join(lines))
    return str(path)


def _finetune_lm(cfg: FinetuneConfig) -> FinetuneResult:
    """Continue the language model of ``cfg.ckpt`` on the data's training text (a pretrain run)."""
    from lmlab.data.prepare import prepare
    from lmlab.device import PeakMemory, resolve_device
    from lmlab.loader import load_model_any
    from lmlab.train.pretrain import PretrainConfig, pretrain

    if cfg.method == "head":
        raise LmlabError("--task lm has no task head to train alone; use --method full or a tuning method "
                         f"({', '.join(TUNING_METHODS)})")
    out = Path(cfg.out)
    _check_out(cfg)
    run = Path(cfg.ckpt) if Path(cfg.ckpt).is_dir() else Path(cfg.ckpt).parent
    if not (run / "tokenizer.json").is_file():
        raise LmlabError(f"{cfg.ckpt} has no tokenizer.json; --task lm prepares the text with the model's")
    data_dir = out / "lm-data"
    source = lm_text_source(cfg.data, out / "lm-text")
    meta, _ = prepare(source, data_dir, tokenizer_file=run / "tokenizer.json")
    n_train = int(meta["splits"]["train"]["tokens"])
    windows = max(1, n_train // cfg.max_len)
    cfg = _length(cfg, windows)
    block = min(cfg.max_len, getattr(load_model_any(cfg.ckpt).config, "block_size", cfg.max_len))
    if _tuned(cfg):
        return _finetune_lm_tuned(cfg, data_dir, block)
    pc = PretrainConfig(**cfg.loop_options(), init=None if cfg.resume else Path(cfg.ckpt), data=data_dir,
                        out=out, resume=cfg.resume, overwrite=cfg.overwrite, block_size=block,
                        batch_size=cfg.batch_size, optim=cfg.optim, precision=cfg.precision, seed=cfg.seed,
                        device=cfg.device, progress=cfg.progress)
    save_config(dataclasses.replace(cfg, resume=False, overwrite=False), out / "finetune.yaml")
    with PeakMemory(resolve_device(cfg.device)) as peak:
        r = pretrain(pc)
    total = r.params
    size = (out / "model.safetensors").stat().st_size if (out / "model.safetensors").is_file() else 0
    val = {k: v for k, v in (("loss", r.val_loss), ("bpb", r.val_bpb)) if v is not None}
    return FinetuneResult(out=str(out), task="lm", method=cfg.method, step=r.step, elapsed_s=r.elapsed_s,
                          trainable_params=total, total_params=total, trainable_share=1.0,
                          peak_memory_mib=None if peak.peak_mib is None else round(peak.peak_mib, 1),
                          checkpoint_bytes=size, val=val, test={}, interrupted=r.interrupted)


def _finetune_lm_tuned(cfg: FinetuneConfig, data_dir: Path, block: int) -> FinetuneResult:
    """--task lm with a tuning method: the language model of ``cfg.ckpt`` wrapped by the method, only
    the method's weights trained on the prepared text in ``data_dir`` through the one Trainer, written
    as an adapter run on a copy of the LM in ``OUT/base`` (what ``lmlab export peft`` reads)."""
    import torch

    from lmlab.data.prepare import load_prepared
    from lmlab.device import PeakMemory, resolve_device, resolve_precision
    from lmlab.evaluate.perplexity import evaluate_perplexity
    from lmlab.fileio import write_bytes
    from lmlab.loader import load
    from lmlab.models.registry import save_model
    from lmlab.train import checkpoint as ckpt
    from lmlab.train.loop import Trainer, TrainSettings
    from lmlab.train.parts import training_parts
    from lmlab.tuning import apply_tuning

    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    model, tokenizer = load(cfg.ckpt)
    data = load_prepared(data_dir)
    save_model(model, out / BASE)  # the adapter run's base: the LM as it was loaded
    write_bytes(out / BASE / "tokenizer.json", tokenizer.hf.to_str().encode("utf-8"))
    torch.manual_seed(cfg.seed)
    opts = TuningOptions(method=cfg.method, **dataclasses.asdict(cfg.tuning))
    info = apply_tuning(model.train(), opts)
    objective, batches = training_parts(model, data.train, block_size=block, batch_size=cfg.batch_size,
                                        seed=cfg.seed, device=device, objective="causal")
    settings = TrainSettings(**cfg.loop_options(), optim=cfg.optim, precision=precision,
                             show_progress=cfg.progress)
    books = {"model_config": {"lm": model.config.to_dict(), "method": cfg.method,
                              "tuning": dataclasses.asdict(cfg.tuning)},
             "write_weights": _write_tuning, "read_weights": _read_tuning}
    trainer = Trainer(model, objective, batches, settings, out_dir=out / TRAIN, device=device, **books)
    out.mkdir(parents=True, exist_ok=True)
    resolved = dataclasses.replace(cfg, resume=False, overwrite=False, stop_at_step=None, precision=precision,
                                   epochs=None)  # the length is in max_steps
    save_config(resolved, out / "config.yaml")
    write_bytes(out / "tokenizer.json", tokenizer.hf.to_str().encode("utf-8"))
    if not cfg.resume and (out / TRAIN / ckpt.STATE_DIR).exists():
        shutil.rmtree(out / TRAIN / ckpt.STATE_DIR)
    with PeakMemory(device) as peak:
        result = trainer.fit(resume=cfg.resume)
    size = _save_adapter(model, out)
    model.eval()
    val = evaluate_perplexity(model, data.val, block_size=block, batch_size=cfg.batch_size, device=device,
                              precision=precision, split_bytes=data.meta["splits"]["val"]["bytes"])
    res = FinetuneResult(
        out=str(out), task="lm", method=cfg.method, step=result.step, elapsed_s=round(result.elapsed, 2),
        trainable_params=info.trainable, total_params=info.total, trainable_share=round(info.share, 6),
        peak_memory_mib=None if peak.peak_mib is None else round(peak.peak_mib, 1), checkpoint_bytes=size,
        val={"loss": round(val.loss, 6), "bpb": round(val.bits_per_byte, 6)}, test={},
        interrupted=result.interrupted)
    from lmlab.fileio import write_json

    write_json(out / RESULTS, {**res.summary(), "data": cfg.data})
    return res
