"""Direct preference optimisation: a policy trained on preference pairs against a frozen reference,
with no reward model and no sampling (Rafailov et al. 2023), through the one Trainer.

For a pair the policy's and the reference's log-probabilities of the chosen and the rejected
response (summed over the response's tokens, or averaged with ``--length-normalize``) give
``h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))`` and the losses
(:func:`preference_loss`):

- ``sigmoid`` (DPO): ``-log sigmoid(beta h)``; with label smoothing ``e`` (conservative DPO,
  the labels flipped with probability e): ``-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)``;
- ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 beta))^2``, a squared loss that does not push the
  margin to infinity. (TRL's IPO averages the log-probabilities over the tokens: that is
  ``--loss ipo --length-normalize`` here.)

The implicit rewards ``beta (log pi - log ref)`` of each response, their margin and the share of
pairs whose chosen reward is the higher (accuracy) are logged every step and on the validation
pairs. At step 0 the policy is the reference, so the sigmoid loss is ln 2.

The reference's log-probabilities are computed once, before training, by the model as loaded
(with ``--method lora`` that is also the base the adapters start from), and kept with the data
(``reference_logps.safetensors`` in the run, reused on ``--resume``), so the reference model is not
kept in memory during training. Dropout is off in every forward.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lmlab.adapt.finetune import TuningShape
from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.train.options import LoopOptions, OptimOptions

LOSSES = ("sigmoid", "ipo")
REFERENCE = "reference_logps.safetensors"
TRAIN = "train"  # --method lora: the Trainer's folder (metrics.jsonl, state/)


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, beta: float, loss: str = "sigmoid",
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``, of pairs given the four
    sequence log-probabilities (see the module docstring); the rewards are ``beta (log pi - log ref)``,
    detached. Raises LmlabError for beta <= 0, an unknown loss, or label smoothing outside [0, 0.5)
    (or with IPO)."""
    check_preference_options(beta, loss, label_smoothing)
    chosen_logratio = policy_chosen.float() - ref_chosen.float()
    rejected_logratio = policy_rejected.float() - ref_rejected.float()
    h = chosen_logratio - rejected_logratio
    if loss == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def check_preference_options(beta: float, loss: str, label_smoothing: float) -> None:
    """Raise LmlabError naming the flag when ``beta``, ``loss`` or ``label_smoothing`` is out of range."""
    if not beta > 0:
        raise LmlabError(f"--beta must be positive (got {beta}); it weighs the KL to the reference, "
                         "e.g. --beta 0.1")
    if loss not in LOSSES:
        raise LmlabError(f"--loss {loss!r} is not one of {', '.join(LOSSES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise LmlabError(f"--label-smoothing must be in [0, 0.5) (got {label_smoothing}): the probability "
                         "that a label is flipped")
    if label_smoothing and loss != "sigmoid":
        raise LmlabError("--label-smoothing (conservative DPO) applies to --loss sigmoid only")


@dataclass
class DPOConfig(LoopOptions):
    """Options of ``lmlab dpo``."""

    ckpt: Path | None = arg(None, "the policy to start from and the reference: an SFT'd (or pretrained) run")
    data: str | None = arg(None, "preference pairs: a JSONL of prompt/chosen/rejected (split 80/10/10 by "
                                 "hash), or labelled data with ratings (sentiment-movies, ...): human pairs")
    out: Path | None = arg(None, "run folder: config.yaml, model.safetensors, tokenizer.json, metrics.jsonl, "
                                 "reference_logps.safetensors, state/")
    overwrite: bool = arg(False, "start a new run in an --out that already holds one")
    resume: bool = arg(False, "continue the run in --out from its latest checkpoint (same options)")
    beta: float = arg(0.1, "strength of the KL to the reference (DPO's beta; IPO's tau)")
    loss: Literal["sigmoid", "ipo"] = arg("sigmoid", "sigmoid (DPO) or ipo (squared loss, Azar et al. 2023)")
    label_smoothing: float = arg(0.0, "conservative DPO: the probability that a preference label is wrong "
                                      "(sigmoid loss only)")
    length_normalize: bool = arg(False, "average each response's token log-probabilities instead of summing")
    template: Literal["plain", "chat"] = arg("plain", "prompt layout: plain (end-of-text + prompt, response "
                                                      "closed by end-of-text) or chat (user turn, closed by "
                                                      "<|im_end|>); a messages prompt is always chat")
    method: Literal["full", "lora"] = arg("full", "what trains: every weight, or LoRA adapters (merged into "
                                                  "model.safetensors at the end)")
    tuning: TuningShape = arg(TuningShape(), "the LoRA's shape (--r, --alpha, --targets, ...)")
    epochs: float | None = arg(None, "passes over the training pairs (sets --max-steps; 1 when no "
                                     "--max-steps, --max-tokens or --time-budget is given)")
    batch_size: int = arg(8, "pairs per micro-batch (two sequences each)")
    max_len: int = arg(256, "tokens of prompt + response; a longer pair is refused (say which)")
    margin: float = arg(1.0, "rated data: pair two texts when their mean ratings differ by more than this")
    max_pairs: int | None = arg(None, "use at most this many training pairs")
    eval_max: int = arg(0, "validation pairs scored per evaluation (the first N; 0: all)")
    optim: OptimOptions = arg(OptimOptions(lr=5e-6, min_lr=5e-7, warmup_fraction=0.1, warmup_steps=0,
                                           weight_decay=0.0, beta2=0.999), "AdamW and its schedule")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    seed: int = arg(1337, "seed of the data order (and of rated data's pairing)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = arg(True, "show a progress bar (--no-progress hides it)")
    json: bool = arg(False, "print the final figures as one JSON object")


@dataclass
class DPOResult:
    """How a DPO run ended: pair counts, the first step's figures and the validation figures."""

    out: str
    step: int
    elapsed_s: float
    pairs: dict[str, int]
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False


@dataclass
class EncodedPairs:
    """Pairs as ids: each prompt's ids and the chosen and rejected responses' ids (stop token included)."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)

    def joined(self, idx: list[int], pad_id: int, device: torch.device | str = "cpu") -> Any:
        """Return the :class:`~lmlab.align.sequences.Joined` batch of pairs ``idx``: their chosen rows,
        then their rejected rows."""
        from lmlab.align.sequences import join

        prompts = [self.prompts[i] for i in idx]
        return join(prompts + prompts, [self.chosen[i] for i in idx] + [self.rejected[i] for i in idx],
                    pad_id, device)


def encode_pairs(tokenizer: Any, pairs: list, template: str, max_len: int) -> EncodedPairs:
    """Return the ids of ``pairs`` in ``template``'s layout (:mod:`lmlab.align.prompts`); raise
    LmlabError naming the pair when prompt + response is longer than ``max_len`` tokens."""
    from lmlab.align.prompts import encode_prompt, encode_response

    out = EncodedPairs([], [], [])
    for p in pairs:
        prompt = encode_prompt(tokenizer, p.prompt_value(), template).ids
        tmpl = "chat" if p.messages is not None else template
        chosen = encode_response(tokenizer, p.chosen, tmpl, ended=True)
        rejected = encode_response(tokenizer, p.rejected, tmpl, ended=True)
        longest = len(prompt) + max(len(chosen), len(rejected))
        if longest > max_len:
            raise LmlabError(f"{p.where}: prompt + response is {longest} tokens, more than --max-len "
                             f"{max_len}; raise --max-len (up to the model's context) or shorten the pair")
        out.prompts.append(prompt)
        out.chosen.append(chosen)
        out.rejected.append(rejected)
    return out


def pair_logprobs(model: torch.nn.Module, pairs: EncodedPairs, pad_id: int, batch_size: int,
                  device: torch.device, precision: str, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``(chosen, rejected)`` sequence log-probabilities ``(N,)`` (float32, CPU) of every
    pair under ``model``, in eval mode and without gradients (the model's mode is restored)."""
    from lmlab.align.sequences import sequence_logprobs
    from lmlab.device import autocast

    was = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        with torch.no_grad(), autocast(device, precision):
            for a in range(0, len(pairs), batch_size):
                idx = list(range(a, min(a + batch_size, len(pairs))))
                logp = sequence_logprobs(model, pairs.joined(idx, pad_id, device), average=average)
                c, r = logp.float().chunk(2)
                chosen.append(c.cpu())
                rejected.append(r.cpu())
    finally:
        model.train(was)
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


def reference_logprobs(path: Path, model: torch.nn.Module, splits: dict[str, EncodedPairs], pad_id: int,
                       batch_size: int, device: torch.device, precision: str, average: bool,
                       resume: bool) -> dict[str, torch.Tensor]:
    """Return the reference's log-probabilities of every split's pairs (``{split}_chosen``,
    ``{split}_rejected``): read from ``path`` when resuming a run that wrote them, else computed
    with ``model`` (the reference, before any training) and written there."""
    from safetensors.torch import load_file, save_file

    from lmlab.fileio import atomic_path

    if resume and path.is_file():
        saved = load_file(str(path))
        if all(saved.get(f"{s}_chosen", torch.zeros(0)).numel() == len(p) for s, p in splits.items()):
            return saved
        raise LmlabError(f"{path} does not match this run's pairs; resume with the same --data and options")
    out: dict[str, torch.Tensor] = {}
    for split, pairs in splits.items():
        c, r = pair_logprobs(model, pairs, pad_id, batch_size, device, precision, average)
        out[f"{split}_chosen"], out[f"{split}_rejected"] = c.contiguous(), r.contiguous()
    with atomic_path(path) as tmp:
        save_file(out, str(tmp))
    return out


def dpo(cfg: DPOConfig) -> DPOResult:
    """Train ``cfg.ckpt`` on ``cfg.data``'s preference pairs with DPO/IPO; return the result (see the
    module docstring). Bad input raises LmlabError naming the file and line."""
    from lmlab.align.preferences import PairBatches, load_pairs
    from lmlab.align.prompts import check_template
    from lmlab.align.report import CURVES, plot_curves, run_settings, write_run_report
    from lmlab.align.reward import _check_out, steps_for
    from lmlab.align.sequences import Joined, no_dropout, sequence_logprobs
    from lmlab.device import resolve_device, resolve_precision
    from lmlab.fileio import write_bytes
    from lmlab.loader import load
    from lmlab.markdown import inline_code
    from lmlab.models.registry import save_model
    from lmlab.train import checkpoint as ckpt
    from lmlab.train.log import read_metrics
    from lmlab.train.loop import Trainer, TrainSettings

    if cfg.ckpt is None or cfg.data is None or cfg.out is None:
        raise LmlabError("dpo needs --ckpt SFT, --data PAIRS.jsonl|CORPUS and --out RUN")
    check_preference_options(cfg.beta, cfg.loss, cfg.label_smoothing)
    check_template(cfg.template)
    out = Path(cfg.out)
    lora = cfg.method == "lora"
    books = out / TRAIN if lora else out
    _check_out(dataclasses.replace(cfg, out=books))
    model, tokenizer = load(cfg.ckpt)
    if tokenizer is None:
        raise LmlabError(f"{cfg.ckpt} has no tokenizer.json; DPO needs the policy's tokenizer")
    if type(model).__name__ != "Decoder":
        raise LmlabError(f"DPO trains decoders (GPT-2, LLaMA, ...); {cfg.ckpt} holds a "
                         f"{type(model).__name__}")
    no_dropout(model)
    max_len = min(cfg.max_len, int(model.config.block_size))
    if cfg.eval_max < 0:
        raise LmlabError(f"--eval-max must be >= 0 (0: every validation pair), got {cfg.eval_max}")
    caps = {"train": cfg.max_pairs, "validation": cfg.eval_max or None}
    raw = {s: load_pairs(cfg.data, s, cfg.margin, cfg.seed, cap) for s, cap in caps.items()}
    splits = {s: encode_pairs(tokenizer, p, cfg.template, max_len) for s, p in raw.items()}
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eot_id
    cfg = steps_for(cfg, len(splits["train"]))
    model.to(device)
    books.mkdir(parents=True, exist_ok=True)
    ref = reference_logprobs(out / REFERENCE, model, splits, pad, cfg.batch_size, device, precision,
                             cfg.length_normalize, cfg.resume)
    if lora:
        from lmlab.tuning import TuningOptions, apply_tuning

        apply_tuning(model, TuningOptions(method="lora", **dataclasses.asdict(cfg.tuning)))
    train = splits["train"]

    def make(idx: list[int]) -> dict[str, torch.Tensor]:
        joined = train.joined(idx, pad, device)
        return {"input_ids": joined.input_ids, "response_mask": joined.response_mask,
                "ref_chosen": ref["train_chosen"][idx].to(device),
                "ref_rejected": ref["train_rejected"][idx].to(device)}

    batches = PairBatches(len(train), cfg.batch_size, cfg.seed, make)

    def figures(cr: torch.Tensor, rr: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rewards/chosen": cr.mean(), "rewards/rejected": rr.mean(), "margins": (cr - rr).mean(),
                "accuracy": (cr > rr).float().mean()}

    def objective(m: torch.nn.Module, batch: dict[str, torch.Tensor]):
        joined = Joined(batch["input_ids"], batch["response_mask"], [], [])
        pc, pr = sequence_logprobs(m, joined, average=cfg.length_normalize).chunk(2)
        losses, cr, rr = preference_loss(pc, pr, batch["ref_chosen"], batch["ref_rejected"], cfg.beta,
                                         cfg.loss, cfg.label_smoothing)
        return losses.mean(), {**figures(cr, rr), "logps/chosen": pc.detach().mean(),
                               "logps/rejected": pr.detach().mean()}

    def evaluator(m: torch.nn.Module) -> dict[str, float]:  # noqa: ARG001 (scores the model it trains)
        pc, pr = pair_logprobs(model, splits["validation"], pad, cfg.batch_size, device, precision,
                               cfg.length_normalize)
        losses, cr, rr = preference_loss(pc, pr, ref["validation_chosen"], ref["validation_rejected"],
                                         cfg.beta, cfg.loss, cfg.label_smoothing)
        named = {"loss": losses.mean(), **figures(cr, rr)}
        return {f"val_{k.replace('rewards/', 'rewards_')}": round(float(v), 6) for k, v in named.items()}

    settings = TrainSettings(**cfg.loop_options(), optim=cfg.optim, precision=precision,
                             show_progress=cfg.progress)
    weights = {} if lora else {"write_weights": lambda m, p: save_model(m, p)}
    books_config = {"policy": model.config.to_dict(), "method": cfg.method,
                    **({"tuning": dataclasses.asdict(cfg.tuning)} if lora else {})}
    trainer = Trainer(model.train(), objective, batches, settings, out_dir=books, device=device,
                      evaluator=evaluator if len(splits["validation"]) else None, model_config=books_config,
                      **weights)
    save_config(dataclasses.replace(cfg, resume=False, overwrite=False, stop_at_step=None,
                                    precision=precision, max_len=max_len), out / "config.yaml")
    write_bytes(out / "tokenizer.json", tokenizer.hf.to_str().encode("utf-8"))
    if not cfg.resume and (books / ckpt.STATE_DIR).exists():
        shutil.rmtree(books / ckpt.STATE_DIR)
    t0 = time.perf_counter()
    result = trainer.fit(resume=cfg.resume)
    if lora and not result.interrupted:
        from lmlab.tuning import unload_tuning

        save_model(unload_tuning(model, merge=True), out / ckpt.WEIGHTS)
    rows = [r for r in read_metrics(books) if "loss" in r]
    keep = ("loss", "rewards/chosen", "rewards/rejected", "margins", "accuracy")
    pick = lambda r: {k: round(float(r[k]), 6) for k in keep if k in r}  # noqa: E731
    rec = result.last_record
    res = DPOResult(out=str(out), step=result.step,
                    elapsed_s=round(result.elapsed or time.perf_counter() - t0, 2),
                    pairs={s: len(p) for s, p in splits.items()}, first=pick(rows[0]) if rows else {},
                    last=pick(rows[-1]) if rows else {},
                    val={k[4:]: v for k, v in rec.items() if k.startswith("val_")},
                    interrupted=result.interrupted)
    curves = plot_curves(books, [("loss", ("loss", "val_loss"))], out / CURVES)
    name = "DPO" if cfg.loss == "sigmoid" else "IPO"
    write_run_report(
        out, f"{name} on preference pairs", f"{name} trained {inline_code(cfg.ckpt)} ({cfg.method}) on the "
        f"pairs of {inline_code(cfg.data)} against itself as the frozen reference. Rewards are the implicit "
        "beta (log pi - log pi_ref) of each response; the margin is chosen - rejected, the accuracy the "
        "share of pairs whose chosen response has the higher reward.",
        run_settings(cfg, "ckpt", "data", "loss", "beta", "label_smoothing", "length_normalize", "template",
                     "method", "batch_size"),
        {"first step": res.first, "last step": res.last,
         f"validation ({res.pairs['validation']} pairs)": {k.replace("rewards_", "rewards/"): v
                                                           for k, v in res.val.items()}},
        curves, res.interrupted)
    return res
