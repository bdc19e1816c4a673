"""Reward models: a scalar head on a decoder's last real token, trained on preference pairs with the
Bradley-Terry loss, and the one way every other method scores texts (:func:`load_scorer`).

Training (:func:`train_reward`, ``lmlab reward train``): a :class:`~lmlab.models.heads.
SequenceClassifier` with ``task: regress`` on the base decoder (the last real token's final hidden
state, after the final norm), its head initialised N(0, 1/sqrt(d_model + 1)) with bias 0 (Stiennon
et al. 2020; TRL's reward modelling) and no dropout. Each pair's two texts (prompt text + response,
:func:`lmlab.align.preferences.full_text`, then the end-of-text token) go through one forward; the
loss is ``-log sigmoid(r_chosen - r_rejected - m)``, with ``m`` the pair's margin when
``--margin-loss`` is on (Llama 2) and 0 otherwise. Validation is the pairwise accuracy on the
validation split's pairs; at the end the test split's pairs are scored too. A text longer than the
model's context keeps its last tokens (the response is at the end).

Scoring (:func:`load_scorer`): a :class:`Scorer` has ``name``, ``score(texts) -> (B,)`` float32
and ``score_pairs(prompts, responses) -> (B,)``. A reward-model run folder gives a
:class:`RewardModelScorer`, which re-tokenises texts with its own tokenizer (so a policy with
another tokenizer works); any other spec is looked up in :data:`VERIFIABLE`, the programmatic
rewards that need the prompt (``arithmetic``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.train.options import LoopOptions, OptimOptions

RESULTS = "results.json"
# Programmatic rewards: spec -> "module:factory"; the factory takes no argument and returns a Scorer.
VERIFIABLE: dict[str, str] = {
    "arithmetic": "lmlab.align.verifiable:ArithmeticReward",
}


class Scorer(Protocol):
    """What scores responses: a reward model (which also has ``score(texts)``, whole texts) or a
    programmatic (verifiable) reward."""

    name: str

    def score_pairs(self, prompts: list[Any], responses: list[str]) -> torch.Tensor:
        """Return ``(B,)`` float32 scores of each ``responses[i]`` to ``prompts[i]`` (text or messages)."""
        ...


@dataclass
class RewardConfig(LoopOptions):
    """Options of ``lmlab reward train``."""

    ckpt: Path | None = arg(None, "the base decoder: a run folder (an SFT'd or pretrained model) or an "
                                  "imported HF run")
    data: str | None = arg(None, "preference pairs: a JSONL of prompt/chosen/rejected (split 80/10/10 by "
                                 "hash), or labelled data with ratings (sentiment-movies, ...): human pairs")
    out: Path | None = arg(None, "run folder: config.yaml, model.safetensors, tokenizer.json, metrics.jsonl, "
                                 "results.json, state/")
    overwrite: bool = arg(False, "start a new run in an --out that already holds one")
    resume: bool = arg(False, "continue the run in --out from its latest checkpoint (same options)")
    epochs: float | None = arg(None, "passes over the training pairs (sets --max-steps; 1 when no "
                                     "--max-steps, --max-tokens or --time-budget is given)")
    batch_size: int = arg(16, "pairs per micro-batch (two texts each)")
    max_len: int = arg(256, "tokens per text (cut to the model's context); a longer text keeps its end")
    margin: float = arg(1.0, "rated data: pair two texts when their mean ratings differ by more than this")
    max_pairs: int | None = arg(None, "use at most this many training pairs")
    eval_max: int = arg(0, "validation pairs scored per evaluation (the first N; 0: all); test: all")
    margin_loss: bool = arg(False, "subtract each pair's margin inside the loss, -log sigmoid(r_c - r_r - m) "
                                   "(Llama 2); rated data's margin is the rating difference")
    optim: OptimOptions = arg(OptimOptions(lr=1e-4, min_lr=1e-5, warmup_fraction=0.05, warmup_steps=0,
                                           weight_decay=0.0, beta2=0.999), "AdamW and its schedule")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    seed: int = arg(1337, "seed of the head's init, the pairing of rated texts and the data order")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = arg(True, "show a progress bar (--no-progress hides it)")
    json: bool = arg(False, "print the final figures as one JSON object")


@dataclass
class RewardResult:
    """How a reward-model run ended: pair counts, the first training loss, and the pairwise figures
    (accuracy, loss, mean reward gap) on the validation and test pairs."""

    out: str
    step: int
    elapsed_s: float
    pairs: dict[str, int]
    first_loss: float | None
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       margin: torch.Tensor | None = None) -> torch.Tensor:
    """Return the per-pair Bradley-Terry loss ``-log sigmoid(chosen - rejected - margin)`` ``(B,)``."""
    gap = chosen.float() - rejected.float()
    if margin is not None:
        gap = gap - margin.float()
    return -F.logsigmoid(gap)


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Return ``accuracy`` (share of pairs with ``chosen > rejected``; ties count as wrong), the mean
    Bradley-Terry ``loss`` and the mean ``reward_gap`` (chosen - rejected) of scored pairs."""
    if chosen.numel() == 0:
        return {}
    return {"accuracy": round(float((chosen > rejected).float().mean()), 6),
            "loss": round(float(bradley_terry_loss(chosen, rejected).mean()), 6),
            "reward_gap": round(float((chosen - rejected).float().mean()), 6)}


def reward_ids(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Return the ids a reward model reads for each text: its tokens then the end-of-text token (when
    the tokenizer has one), keeping the last ``max_len``."""
    if max_len < 2:
        raise LmlabError(f"--max-len must be at least 2 tokens (got {max_len})")
    eot = [tokenizer.eot_id] if tokenizer.eot_id is not None else []
    out = [(ids + eot)[-max_len:] for ids in tokenizer.encode_batch(list(texts))]
    return [ids or eot or [0] for ids in out]


class RewardModelScorer:
    """A trained reward model as a :class:`Scorer`: batched, no grad, eval mode, fp32 scores on the CPU."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, device: torch.device | str = "cpu",
                 batch_size: int = 32, precision: str = "fp32"):
        from lmlab.adapt.predict import pad_id_of

        self.model = model.to(device).eval()
        self.tokenizer, self.name = tokenizer, name
        self.device, self.batch_size, self.precision = torch.device(device), batch_size, precision
        self.max_len = int(model.backbone.config.block_size)
        self.pad_id = pad_id_of(model, tokenizer)

    def score_ids(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Return ``(B,)`` float32 scores of already tokenised texts (as :func:`reward_ids` makes)."""
        from lmlab.adapt.predict import predict_logits

        if not ids:
            return torch.zeros(0)
        out = predict_logits(self.model, ids, self.pad_id, self.batch_size, self.device, self.precision)
        return out[:, 0].float()

    def score(self, texts: list[str]) -> torch.Tensor:
        """Return ``(B,)`` float32 scores of whole texts."""
        return self.score_ids(reward_ids(self.tokenizer, texts, self.max_len))

    def score_pairs(self, prompts: list[Any], responses: list[str]) -> torch.Tensor:
        """Return ``(B,)`` scores of ``prompt text + response`` (see
        :func:`~lmlab.align.preferences.full_text`)."""
        from lmlab.align.preferences import full_text

        if len(prompts) != len(responses):
            raise LmlabError(f"{len(prompts)} prompts but {len(responses)} responses to score")
        return self.score([full_text(p, r) for p, r in zip(prompts, responses)])


def load_scorer(spec: str | Path, device: str | torch.device = "cpu") -> Scorer:
    """Return the :class:`Scorer` of ``spec``: a reward-model run folder (from ``lmlab reward train``)
    or the name of a verifiable reward in :data:`VERIFIABLE`. Raises LmlabError for anything else."""
    from lmlab.loader import load

    path = Path(spec)
    if path.is_dir():
        model, tokenizer = load(path, device=device)
        if type(model).__name__ != "SequenceClassifier" or model.config.task != "regress":
            raise LmlabError(f"{path} holds a {type(model).__name__}, not a reward model; train one with "
                             "'lmlab reward train'")
        if tokenizer is None:
            raise LmlabError(f"{path} has no tokenizer.json; a reward model re-tokenises the texts it scores")
        return RewardModelScorer(model, tokenizer, str(spec), device)
    if str(spec) in VERIFIABLE:
        module, factory = VERIFIABLE[str(spec)].split(":")
        return getattr(importlib.import_module(module), factory)()
    raise LmlabError(f"--reward {spec}: not a reward-model run folder nor one of {', '.join(VERIFIABLE)}; "
                     "train one with 'lmlab reward train'")


def _check_out(cfg: Any) -> None:
    """Refuse to resume nothing or to overwrite a run by accident."""
    from lmlab.train import checkpoint as ckpt

    out = Path(cfg.out)
    if cfg.resume and ckpt.latest_step(out) is None:
        raise LmlabError(f"{out} has no checkpoint to resume; drop --resume to start a new run there")
    if not cfg.resume and ckpt.latest_step(out) is not None and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a run; pass --resume, --overwrite or another --out")


def steps_for(cfg: Any, n_train: int) -> Any:
    """Return ``cfg`` with ``--epochs`` (or one epoch when no length is given) turned into ``max_steps``."""
    if cfg.epochs is not None and cfg.max_steps is not None:
        raise LmlabError("give --epochs or --max-steps, not both")
    if cfg.epochs is not None and not cfg.epochs > 0:
        raise LmlabError(f"--epochs must be positive (got {cfg.epochs})")
    no_length = cfg.max_steps is None and cfg.max_tokens is None and cfg.time_budget is None
    if cfg.epochs is None and not no_length:
        return cfg
    steps = max(1, math.ceil((cfg.epochs or 1.0) * n_train / (cfg.batch_size * cfg.grad_accum)))
    return dataclasses.replace(cfg, max_steps=steps, epochs=None)


def train_reward(cfg: RewardConfig) -> RewardResult:
    """Train a reward model on ``cfg.data``'s pairs from ``cfg.ckpt``; return the result (see the module
    docstring). Bad input raises LmlabError naming the file and line."""
    from lmlab.adapt.examples import pad_batch
    from lmlab.adapt.predict import pad_id_of
    from lmlab.align.preferences import PairBatches, full_text, load_pairs
    from lmlab.align.report import CURVES, plot_curves, run_settings, write_run_report
    from lmlab.align.sequences import no_dropout
    from lmlab.device import resolve_device, resolve_precision
    from lmlab.fileio import write_bytes, write_json
    from lmlab.loader import load
    from lmlab.markdown import inline_code
    from lmlab.models.heads import classifier_for
    from lmlab.models.registry import save_model
    from lmlab.train import checkpoint as ckpt
    from lmlab.train.log import read_metrics
    from lmlab.train.loop import Trainer, TrainSettings

    if cfg.ckpt is None or cfg.data is None or cfg.out is None:
        raise LmlabError("reward train needs --ckpt BASE, --data PAIRS.jsonl|CORPUS and --out RM")
    _check_out(cfg)
    out = Path(cfg.out)
    if cfg.eval_max < 0:
        raise LmlabError(f"--eval-max must be >= 0 (0: every validation pair), got {cfg.eval_max}")
    caps = {"train": cfg.max_pairs, "validation": cfg.eval_max or None, "test": None}
    splits = {s: load_pairs(cfg.data, s, cfg.margin, cfg.seed, cap) for s, cap in caps.items()}
    backbone, tokenizer = load(cfg.ckpt)
    if tokenizer is None:
        raise LmlabError(f"{cfg.ckpt} has no tokenizer.json; a reward model needs its base's tokenizer")
    if type(backbone).__name__ != "Decoder":
        raise LmlabError(f"a reward model reads a decoder's last token (GPT-2, LLaMA, ...); {cfg.ckpt} "
                         f"holds a {type(backbone).__name__}")
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    torch.manual_seed(cfg.seed)
    d = backbone.config.d_model
    model = classifier_for(backbone, task="regress", dropout=0.0, head_std=1.0 / math.sqrt(d + 1))
    no_dropout(model)  # the backbone's too: the two texts of a pair must be scored alike
    max_len = min(cfg.max_len, int(backbone.config.block_size))
    pad = pad_id_of(model, tokenizer)

    def encoded(pairs: list) -> tuple[list[list[int]], list[list[int]], list[float]]:
        c = reward_ids(tokenizer, [full_text(p.prompt, p.chosen) for p in pairs], max_len)
        r = reward_ids(tokenizer, [full_text(p.prompt, p.rejected) for p in pairs], max_len)
        return c, r, [p.margin or 0.0 for p in pairs]

    data = {s: encoded(p) for s, p in splits.items()}
    tc, tr, tm = data["train"]
    if cfg.margin_loss and all(p.margin is None for p in splits["train"]):
        raise LmlabError("--margin-loss needs pairs with a 'margin'; none of the training pairs has one")
    cfg = steps_for(cfg, len(tc))

    def make(idx: list[int]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([tc[i] for i in idx] + [tr[i] for i in idx], pad)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "margin": torch.tensor([tm[i] for i in idx], dtype=torch.float32, device=device)}

    batches = PairBatches(len(tc), cfg.batch_size, cfg.seed, make)

    def objective(m: torch.nn.Module, batch: dict[str, torch.Tensor]):
        r = m(batch["input_ids"], batch["attention_mask"])[:, 0].float()
        rc, rr = r.chunk(2)
        loss = bradley_terry_loss(rc, rr, batch["margin"] if cfg.margin_loss else None).mean()
        gap = (rc - rr).detach()
        return loss, {"accuracy": (gap > 0).float().mean(), "reward_gap": gap.mean()}

    scorer = RewardModelScorer(model, tokenizer, str(out), device, cfg.batch_size * 2, precision)

    def figures(split: str) -> dict[str, float]:
        c, r, _ = data[split]
        return pair_metrics(scorer.score_ids(c), scorer.score_ids(r))

    def evaluator(m: torch.nn.Module) -> dict[str, float]:  # noqa: ARG001 (scores the model it trains)
        return {f"val_{k}": v for k, v in figures("validation").items()}

    settings = TrainSettings(**cfg.loop_options(), optim=cfg.optim, precision=precision,
                             show_progress=cfg.progress)
    trainer = Trainer(model.train(), objective, batches, settings, out_dir=out, device=device,
                      evaluator=evaluator if data["validation"][0] else None,
                      model_config=model.config.to_dict(), write_weights=lambda m, p: save_model(m, p))
    out.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(cfg, resume=False, overwrite=False, stop_at_step=None,
                                    precision=precision, max_len=max_len), out / "config.yaml")
    write_bytes(out / "tokenizer.json", tokenizer.hf.to_str().encode("utf-8"))
    if not cfg.resume and (out / ckpt.STATE_DIR).exists():
        shutil.rmtree(out / ckpt.STATE_DIR)
    t0 = time.perf_counter()
    result = trainer.fit(resume=cfg.resume)
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    rec = result.last_record
    res = RewardResult(
        out=str(out), step=result.step, elapsed_s=round(result.elapsed or time.perf_counter() - t0, 2),
        pairs={s: len(p) for s, p in splits.items()}, first_loss=round(losses[0], 6) if losses else None,
        val={k[4:]: v for k, v in rec.items() if k.startswith("val_")},
        test=figures("test"), interrupted=result.interrupted)
    write_json(out / RESULTS, {**dataclasses.asdict(res), "data": cfg.data})
    curves = plot_curves(out, [("pairwise accuracy", ("accuracy", "val_accuracy"))], out / CURVES)
    write_run_report(
        out, "Reward model", f"A Bradley-Terry reward model (a scalar head on the last token) trained from "
        f"{inline_code(cfg.ckpt)} on the preference pairs of {inline_code(cfg.data)}. Accuracy is the share "
        "of pairs whose chosen response it scores higher; the reward gap is the mean chosen - rejected "
        "score.",
        run_settings(cfg, "ckpt", "data", "batch_size", "max_len", "margin", "margin_loss"),
        {"training": {"pairs": res.pairs["train"], "first loss": res.first_loss, "steps": res.step},
         "validation": {"pairs": res.pairs["validation"], **res.val},
         "test": {"pairs": res.pairs["test"], **res.test}}, curves, res.interrupted)
    return res


@dataclass
class ScoreConfig:
    """Options of ``lmlab reward score``."""

    ckpt: Path | None = arg(None, "a reward-model run folder (from 'lmlab reward train')")
    data: str | None = arg(None, "texts: .txt (one a line) or .jsonl ('text', or 'prompt' + 'response'); "
                                 "with --pairs: a JSONL of prompt/chosen/rejected (every line) or rated data")
    pairs: bool = arg(False, "score preference pairs and report the pairwise accuracy")
    split: Literal["train", "validation", "test"] = arg("test", "--pairs on rated data: the split whose "
                                                                 "pairs are scored")
    margin: float = arg(1.0, "--pairs on rated data: pair texts whose ratings differ by more than this")
    seed: int = arg(1337, "--pairs on rated data: the seed of the pairing")
    out: Path | None = arg(None, "write one JSON line per text (or pair) with its score(s) here")
    batch_size: int = arg(32, "texts per forward pass")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    json: bool = arg(False, "print the figures as one JSON object")


def read_texts(path: Path) -> list[str]:
    """Return the texts of ``path``: lines of a .txt file, or per JSONL line its ``text`` or its
    ``prompt`` (text or messages) joined with its ``response``. LmlabError names a bad line."""
    from lmlab.align.preferences import full_text
    from lmlab.data.archives import decode_utf8, jsonl_objects

    if not path.is_file():
        raise LmlabError(f"{path} does not exist; give a .txt (one text a line) or .jsonl file of texts")
    text, _ = decode_utf8(path.read_bytes())
    if path.suffix != ".jsonl":
        out = [line for line in text.splitlines() if line.strip()]
    else:
        out = []
        for lineno, obj in jsonl_objects(text, path):
            if isinstance(obj.get("text"), str):
                out.append(obj["text"])
            elif isinstance(obj.get("response"), str) and isinstance(obj.get("prompt", ""), (str, list)):
                out.append(full_text(obj.get("prompt", ""), obj["response"]))
            else:
                raise LmlabError(f"{path}:{lineno} has no 'text' (or 'prompt' and 'response') string")
    if not out:
        raise LmlabError(f"{path} holds no texts to score")
    return out


def score_file(cfg: ScoreConfig) -> dict[str, Any]:
    """Score ``cfg.data`` with the reward model ``cfg.ckpt``; return the figures (``n`` and the mean,
    std, min and max score; with ``pairs``, the pairwise accuracy, loss and mean reward gap too),
    writing per-item scores to ``cfg.out`` when given."""
    import json

    from lmlab.align.preferences import full_text, load_pairs, read_pairs
    from lmlab.device import resolve_device
    from lmlab.fileio import write_text

    if cfg.ckpt is None or cfg.data is None:
        raise LmlabError("reward score needs --ckpt RM and --data FILE")
    if cfg.batch_size < 1:
        raise LmlabError(f"--batch-size must be at least 1 (got {cfg.batch_size})")
    scorer = load_scorer(cfg.ckpt, resolve_device(cfg.device))
    if not isinstance(scorer, RewardModelScorer):
        raise LmlabError(f"--ckpt {cfg.ckpt} is not a reward-model run folder")
    scorer.batch_size = cfg.batch_size
    rows: list[dict[str, Any]]
    if cfg.pairs:
        pairs = (read_pairs(cfg.data) if Path(cfg.data).is_file()
                 else load_pairs(cfg.data, cfg.split, cfg.margin, cfg.seed))
        if not pairs:
            raise LmlabError(f"{cfg.data} ({cfg.split}) gives no pairs to score")
        c = scorer.score([full_text(p.prompt, p.chosen) for p in pairs])
        r = scorer.score([full_text(p.prompt, p.rejected) for p in pairs])
        rows = [{"chosen_score": round(float(a), 6), "rejected_score": round(float(b), 6)}
                for a, b in zip(c, r)]
        scores, figures = torch.cat([c, r]), pair_metrics(c, r)
    else:
        scores = scorer.score(read_texts(Path(cfg.data)))
        rows, figures = [{"score": round(float(s), 6)} for s in scores], {}
    if cfg.out is not None:
        write_text(cfg.out, "".join(json.dumps(row) + "\n" for row in rows))
    return {"n": len(rows), "mean": round(float(scores.mean()), 6),
            "std": round(float(scores.std()) if scores.numel() > 1 else 0.0, 6),
            "min": round(float(scores.min()), 6), "max": round(float(scores.max()), 6), **figures,
            "out": None if cfg.out is None else str(cfg.out)}
