"""RLHF through the one Trainer: PPO (policy + value model, KL-penalised rewards, GAE) and GRPO
(group-relative advantages, no value model, KL to the reference as a loss term).

The batch source (:class:`RolloutBatches`) makes a rollout batch when it has none left: the
policy samples responses (:mod:`lmlab.align.rollout`), the scorer scores them, and the
policy's (``old``), the frozen reference's and the value model's token figures are computed
minibatch by minibatch, in exactly the rows and padding of the first pass's minibatches, so
the first minibatch's ratio is exactly 1. It then yields the minibatches of ``ppo_epochs``
passes over the batch (reshuffled per pass), one per optimizer step. Its state (the pending
minibatches, the prompt position, the KL coefficient) is saved with each checkpoint, so a
resumed run continues exactly. Dropout is off in every model (:func:`~lmlab.align.sequences.
no_dropout`); rollouts and scoring forwards run at the training precision.

The run folder holds the policy (``model.safetensors`` + ``tokenizer.json``: ``lmlab.load``
reads it like any decoder), ``value.safetensors`` (PPO's value model), ``config.yaml``,
``metrics.jsonl`` and ``state/``.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lmlab.adapt.finetune import TuningShape
from lmlab.align import ppo
from lmlab.align.reward import Scorer
from lmlab.align.rollout import Samples, from_grid, join_samples, pad_id_for, response_text, sample, to_grid
from lmlab.align.sequences import Joined, gather_logprobs, join, masked_mean, masked_whiten, no_dropout
from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.train.options import LoopOptions, OptimOptions

ALGOS = ("ppo", "grpo")
VALUE_INITS = ("auto", "reward", "zero")
VALUE_FILE = "value.safetensors"
TRAIN = "train"  # --method lora: the Trainer's folder (metrics.jsonl, state/)


@dataclass
class RLHFConfig(LoopOptions):
    """Options of ``lmlab rlhf``."""

    algo: Literal["ppo", "grpo"] = arg("ppo", "ppo (value model, GAE) or grpo (group-relative advantages)")
    policy: Path | None = arg(None, "the starting policy (and reference): a run folder, e.g. an SFT run")
    reward: str | None = arg(None, "a reward-model run folder (lmlab reward train) or a verifiable reward: "
                                   "arithmetic")
    prompts: str | None = arg(None, "prompts: a .jsonl/.txt file, reviews:CORPUS (the sentiment task) or "
                                    "arithmetic:N")
    split: str = arg("train", "split of a reviews:CORPUS prompt source")
    limit: int | None = arg(None, "use at most this many prompts")
    template: Literal["plain", "chat"] = arg("plain", "prompt layout: plain (continue text; responses end "
                                                      "with <|endoftext|>) or chat (user turn; <|im_end|>)")
    out: Path | None = arg(None, "run folder: model.safetensors (the policy), value.safetensors, "
                                 "tokenizer.json, config.yaml, metrics.jsonl, state/")
    overwrite: bool = arg(False, "start a new run in an --out that already holds one")
    resume: bool = arg(False, "continue the run in --out from its latest checkpoint (same options)")
    rollouts: int = arg(20, "rollout batches to train on (sets --max-steps unless it is given)")
    batch_size: int = arg(16, "responses per rollout batch (GRPO: prompts x --group)")
    minibatch_size: int = arg(4, "responses per optimizer step")
    ppo_epochs: int = arg(2, "passes over each rollout batch")
    group: int = arg(4, "grpo: samples per prompt")
    max_new_tokens: int = arg(24, "longest response in tokens")
    temperature: float = arg(1.0, "sampling temperature, also applied in the training forward (no top-k/p: "
                                  "their log-probs would not match)")
    beta: float = arg(0.05, "KL coefficient (the start when --target-kl is set)")
    target_kl: float | None = arg(None, "adaptive KL: the per-response KL to aim for (Ziegler et al.: 6 "
                                        "nats); unset: fixed --beta")
    kl_horizon: int = arg(ppo.ZIEGLER_HORIZON, "adaptive KL horizon in samples")
    gamma: float = arg(1.0, "discount of GAE")
    lam: float = arg(0.95, "lambda of GAE")
    clip: float = arg(0.2, "PPO clip range of the ratio")
    clip_value: float = arg(0.2, "clip range of the value update")
    vf_coef: float = arg(0.1, "weight of the value loss")
    ent_coef: float = arg(0.0, "weight of the entropy bonus")
    whiten: bool = arg(True, "whiten the advantages over each rollout batch (PPO)")
    missing_stop_penalty: float = arg(1.0, "subtracted from the score of a response that reached "
                                           "--max-new-tokens without its stop token")
    method: Literal["full", "lora"] = arg("full", "what trains in the policy: every weight, or LoRA "
                                                  "adapters (merged into model.safetensors at the end; the "
                                                  "value model trains in full)")
    tuning: TuningShape = arg(TuningShape(), "the LoRA's shape (--r, --alpha, --targets, ...)")
    value_init: Literal["auto", "reward", "zero"] = arg(
        "auto", "the value model: reward (a copy of the reward model; it must share the policy's tokenizer), "
        "zero (the policy's network with a zero head), auto (reward when possible)")
    optim: OptimOptions = arg(OptimOptions(lr=1e-5, min_lr=1e-5, schedule="constant", warmup_steps=0,
                                           weight_decay=0.0, beta2=0.999), "AdamW and its schedule")
    log_interval: int = arg(1, "log to metrics.jsonl every N steps")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    seed: int = arg(1337, "seed of the prompt order, sampling and minibatch order")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    progress: bool = arg(True, "show a progress bar (--no-progress hides it)")
    json: bool = arg(False, "print the final figures as one JSON object")

    def check(self) -> None:
        """Raise LmlabError naming the option when the batch shapes do not fit together."""
        if self.algo not in ALGOS:
            raise LmlabError(f"--algo {self.algo!r} is not one of {', '.join(ALGOS)}")
        if self.value_init not in VALUE_INITS:
            raise LmlabError(f"--value-init {self.value_init!r} is not one of {', '.join(VALUE_INITS)}")
        if self.batch_size < 1 or self.minibatch_size < 1 or self.batch_size % self.minibatch_size:
            raise LmlabError(f"--minibatch-size {self.minibatch_size} must divide --batch-size "
                             f"{self.batch_size}")
        minibatches = self.ppo_epochs * self.batch_size // self.minibatch_size
        if self.grad_accum > 1 and minibatches % self.grad_accum:
            raise LmlabError(f"--grad-accum {self.grad_accum} must divide the minibatches of a rollout "
                             f"(--ppo-epochs x --batch-size / --minibatch-size = {minibatches})")
        if self.ppo_epochs < 1 or self.rollouts < 1:
            raise LmlabError(f"--ppo-epochs and --rollouts must be at least 1 (got {self.ppo_epochs}, "
                             f"{self.rollouts})")
        if self.algo == "grpo" and (self.group < 2 or self.batch_size % self.group):
            raise LmlabError(f"--group {self.group} must be at least 2 and divide --batch-size "
                             f"{self.batch_size}")
        if not (self.clip > 0 and self.clip_value > 0 and 0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise LmlabError("--clip and --clip-value must be > 0, --gamma and --lam in [0, 1]")

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps taken on each rollout batch (each of ``--grad-accum`` minibatches)."""
        return self.ppo_epochs * self.batch_size // self.minibatch_size // max(self.grad_accum, 1)


@dataclass
class RLHFResult:
    """How an RLHF run ended: the first and last rollouts' mean score and KL."""

    out: str
    algo: str
    step: int
    rollouts: int
    elapsed_s: float
    first_score: float | None
    last_score: float | None
    last_kl: float | None
    beta: float | None
    value_init: str | None
    interrupted: bool = False


class ActorCritic(nn.Module):
    """The trained pair: ``policy`` (a decoder) and ``value`` (a :class:`~lmlab.models.heads.
    SequenceClassifier` regressor read at every position; None for GRPO). ``forward(ids)`` returns
    ``(logits (B, T, V), values (B, T) or None)``."""

    def __init__(self, policy: nn.Module, value: nn.Module | None):
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.policy(input_ids)
        if self.value is None:
            return logits, None
        v = self.value
        return logits, v.head(v.backbone.hidden_states(input_ids)).squeeze(-1).float()


def score_tokens(model: nn.Module, joined: Joined,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Return ``(logits / temperature, response-token log-probs, values)`` of ``model`` (an
    :class:`ActorCritic` or a bare policy) on ``joined``: the one forward the rollout's figures
    and the training step share, so they agree bit for bit on the same rows."""
    out = model(joined.input_ids[:, :-1])
    logits, values = out if isinstance(out, tuple) else (out, None)
    logits = logits / temperature if temperature != 1.0 else logits
    return logits, gather_logprobs(logits, joined), values


def _pack(t: torch.Tensor) -> dict[str, Any]:
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
            "data": t.flatten().tolist()}


def _unpack(d: dict[str, Any], device: torch.device) -> torch.Tensor:
    return torch.tensor(d["data"], dtype=getattr(torch, d["dtype"]), device=device).reshape(d["shape"])


class RolloutBatches:
    """The batch source of RLHF (see the module docstring): ``next()`` returns a minibatch dict of
    ``(B, T)`` ``input_ids`` and ``(B, T - 1)`` ``response_mask``, ``old_logp``, ``ref_logp``,
    ``old_values``, ``advantages``, ``returns``, and the rollout's figures (0-d tensors)."""

    def __init__(self, model: ActorCritic, reference: nn.Module, scorer: Scorer, tokenizer: Any,
                 prompts: Sequence[str | list[dict[str, Any]]], cfg: RLHFConfig, device: torch.device,
                 precision: str):
        from lmlab.align.prompts import encode_prompt

        self.model, self.reference, self.scorer, self.tok, self.cfg = model, reference, scorer, tokenizer, cfg
        self.device, self.precision = device, precision
        encoded = [encode_prompt(tokenizer, p, cfg.template) for p in prompts]
        self.prompt_ids = [e.ids for e in encoded]
        self.stop_ids = encoded[0].stop_ids
        self.prompts = list(prompts)  # as given (text or messages): the scorer lays them out
        self.pad_id = pad_id_for(tokenizer, self.stop_ids)
        self.kl = ppo.KLController(cfg.beta, cfg.target_kl, cfg.kl_horizon)
        self.rollout = 0  # rollouts made
        self.cursor = 0  # prompts drawn
        self.served = 0  # minibatches handed out
        self.pending: list[dict[str, torch.Tensor]] = []
        self._shuffled: tuple[int, list[int]] = (-1, [])  # (pass over the prompts, its order)

    # ---------------------------------------------------------------- batch source
    def next(self) -> dict[str, torch.Tensor]:
        """Return the next minibatch, making a rollout batch when none is left."""
        if not self.pending:
            self.pending = self.make_rollout()
        self.served += 1
        return self.pending.pop(0)

    def state_dict(self) -> dict[str, Any]:
        """Return the position (JSON-ready): rollouts made, prompts drawn, the KL coefficient and the
        minibatches not yet served."""
        return {"rollout": self.rollout, "cursor": self.cursor, "served": self.served,
                "kl": self.kl.state_dict(),
                "pending": [{k: _pack(v) for k, v in b.items()} for b in self.pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position from :meth:`state_dict`."""
        self.rollout, self.cursor = int(state["rollout"]), int(state["cursor"])
        self.served = int(state["served"])
        self.kl.load_state_dict(state["kl"])
        self.pending = [{k: _unpack(v, self.device) for k, v in b.items()} for b in state["pending"]]

    # ---------------------------------------------------------------- rollouts
    def _draw_prompts(self, n: int) -> list[int]:
        """Return the indices of the next ``n`` prompts: a seeded shuffle per pass over them."""
        out = []
        for _ in range(n):
            epoch, pos = divmod(self.cursor, len(self.prompt_ids))
            if self._shuffled[0] != epoch:
                order = list(range(len(self.prompt_ids)))
                random.Random(self.cfg.seed * 7919 + epoch).shuffle(order)
                self._shuffled = (epoch, order)
            out.append(self._shuffled[1][pos])
            self.cursor += 1
        return out

    def _order(self, epoch: int) -> list[list[int]]:
        """Return the minibatches (row indices) of pass ``epoch`` over the current batch."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.rollout * 101 + epoch)
        perm = torch.randperm(self.cfg.batch_size, generator=g).tolist()
        m = self.cfg.minibatch_size
        return [perm[a:a + m] for a in range(0, len(perm), m)]

    def sample(self) -> tuple[Samples, torch.Tensor, torch.Tensor]:
        """Draw the next prompts and sample a response to each (GRPO: ``group`` each); return the
        samples, their scores (the scorer's) and the scores less the missing-stop penalty."""
        cfg = self.cfg
        per_prompt = cfg.group if cfg.algo == "grpo" else 1
        drawn = [i for i in self._draw_prompts(cfg.batch_size // per_prompt) for _ in range(per_prompt)]
        with torch.no_grad():
            samples = sample(self.model.policy, [self.prompt_ids[i] for i in drawn], self.stop_ids,
                             cfg.max_new_tokens, cfg.temperature, seed=cfg.seed * 1_000_003 + self.rollout)
        texts = [response_text(self.tok, p, r, self.stop_ids)
                 for p, r in zip(samples.prompts, samples.responses)]
        scores = self.scorer.score_pairs([self.prompts[i] for i in drawn], texts).detach().float().cpu()
        if scores.shape != (len(texts),):
            raise LmlabError(f"the reward {self.scorer.name!r} returned {tuple(scores.shape)} scores for "
                             f"{len(texts)} responses; it must return one per response")
        if not torch.isfinite(scores).all():
            bad = int((~torch.isfinite(scores)).nonzero()[0])
            raise LmlabError(f"rollout {self.rollout + 1}: the reward {self.scorer.name!r} scored response "
                             f"{bad} ({texts[bad][:40]!r}) {float(scores[bad])}; a reward must be finite")
        ended = torch.tensor(samples.ended)
        return samples, scores, ppo.penalise_missing_stop(scores, ended, cfg.missing_stop_penalty)

    def make_rollout(self) -> list[dict[str, torch.Tensor]]:
        """Make one rollout batch and return its minibatches for every pass (see the class docstring).
        Raises LmlabError when the KL to the reference is NaN or negative beyond noise."""
        from lmlab.device import autocast

        cfg = self.cfg
        samples, raw, scores = self.sample()
        B = cfg.batch_size
        old_logp: list[torch.Tensor] = [torch.empty(0)] * B
        ref_logp, old_values = list(old_logp), list(old_logp)
        orders = [self._order(epoch) for epoch in range(cfg.ppo_epochs)]
        with torch.no_grad(), autocast(self.device, self.precision):
            for rows in orders[0]:
                j = join_samples(samples, rows, self.pad_id, self.device)
                _, logp, values = score_tokens(self.model, j, cfg.temperature)
                _, ref, _ = score_tokens(self.reference, j, cfg.temperature)
                for b, a, r, v in zip(rows, from_grid(logp, j), from_grid(ref, j),
                                      from_grid(values, j) if values is not None else [None] * len(rows)):
                    old_logp[b], ref_logp[b] = a, r
                    old_values[b] = v if v is not None else torch.zeros_like(a)
        full = join(samples.prompts, samples.responses, self.pad_id)
        mask = full.response_mask
        lp, rp, vals = to_grid(old_logp, full), to_grid(ref_logp, full), to_grid(old_values, full)
        beta = self.kl.beta
        rewards, kl = ppo.token_rewards(lp, rp, scores, mask, beta)
        mean_kl = ppo.check_kl(kl.sum(-1), self.rollout + 1, self.served + 1)
        if cfg.algo == "ppo":
            adv, returns = ppo.gae(rewards, vals, mask, cfg.gamma, cfg.lam)
            if cfg.whiten:
                adv = masked_whiten(adv, mask)
        else:
            per_row = ppo.group_advantages(scores, cfg.group)
            adv = torch.where(mask, per_row[:, None].expand_as(lp), torch.zeros_like(lp))
            returns = torch.zeros_like(lp)
        adv_rows, ret_rows = from_grid(adv, full), from_grid(returns, full)
        lengths = torch.tensor([len(r) for r in samples.responses], dtype=torch.float32)
        stats = {"score": float(raw.mean()), "score_std": float(raw.std()) if B > 1 else 0.0,
                 "kl": mean_kl, "beta": beta, "response_length": float(lengths.mean()),
                 "ended": float(torch.tensor(samples.ended, dtype=torch.float32).mean()),
                 "advantage_mean": float(masked_mean(adv, mask)),
                 "rollout": float(self.rollout + 1)}
        self.kl.update(mean_kl, B)
        self.rollout += 1
        out = []
        for order in orders:
            for rows in order:
                j = join_samples(samples, rows, self.pad_id, self.device)
                per_row = {"old_logp": old_logp, "ref_logp": ref_logp, "old_values": old_values,
                           "advantages": adv_rows, "returns": ret_rows}
                batch = {"input_ids": j.input_ids, "response_mask": j.response_mask}
                batch.update({k: to_grid([xs[b] for b in rows], j) for k, xs in per_row.items()})
                batch.update({k: torch.tensor(v, dtype=torch.float32) for k, v in stats.items()})
                out.append(batch)
        return out


STAT_KEYS = ("score", "score_std", "kl", "beta", "response_length", "ended", "advantage_mean", "rollout")


def ppo_objective(cfg: RLHFConfig):
    """Return the PPO objective ``(model, batch) -> (loss, metrics)``: clipped policy loss plus
    ``vf_coef`` times the clipped value loss, less ``ent_coef`` times the entropy."""

    def objective(model: nn.Module, batch: dict[str, torch.Tensor]):
        j = Joined(batch["input_ids"], batch["response_mask"], [], [])
        mask = j.response_mask
        logits, logp, values = score_tokens(model, j, cfg.temperature)
        pl = ppo.policy_loss(logp, batch["old_logp"], batch["advantages"], mask, cfg.clip)
        vl, vclip = ppo.value_loss(values, batch["old_values"], batch["returns"], mask, cfg.clip_value)
        ent = ppo.entropy(logits, mask)
        loss = pl.loss + cfg.vf_coef * vl - cfg.ent_coef * ent
        metrics = {"policy_loss": pl.loss.detach(), "value_loss": vl.detach(), "entropy": ent.detach(),
                   "clipfrac": pl.clipfrac, "value_clipfrac": vclip, "approx_kl": pl.approx_kl,
                   "ratio": pl.ratio, "ratio_dev": pl.ratio_dev}
        metrics.update({k: batch[k] for k in STAT_KEYS})
        return loss, metrics

    return objective


def grpo_objective(cfg: RLHFConfig):
    """Return the GRPO objective ``(model, batch) -> (loss, metrics)``: the clipped surrogate with
    group-relative advantages plus ``beta`` times the k3 estimate of the KL to the reference."""

    def objective(model: nn.Module, batch: dict[str, torch.Tensor]):
        j = Joined(batch["input_ids"], batch["response_mask"], [], [])
        mask = j.response_mask
        logits, logp, _ = score_tokens(model, j, cfg.temperature)
        pl = ppo.policy_loss(logp, batch["old_logp"], batch["advantages"], mask, cfg.clip)
        kl = masked_mean(ppo.k3_kl(logp, batch["ref_logp"], mask), mask)
        ent = ppo.entropy(logits, mask)
        loss = pl.loss + batch["beta"].to(pl.loss.device) * kl - cfg.ent_coef * ent
        metrics = {"policy_loss": pl.loss.detach(), "kl_loss": kl.detach(), "entropy": ent.detach(),
                   "clipfrac": pl.clipfrac, "approx_kl": pl.approx_kl, "ratio": pl.ratio,
                   "ratio_dev": pl.ratio_dev}
        metrics.update({k: batch[k] for k in STAT_KEYS})
        return loss, metrics

    return objective


def value_model(policy: nn.Module, policy_tok: Any, reward: str, how: str) -> tuple[nn.Module, str]:
    """Return PPO's value model and how it was made: a copy of the reward model at ``reward`` (a
    regressor sharing the policy's tokenizer) or the policy's network with a zero-initialised head."""
    from lmlab.loader import load
    from lmlab.models.heads import SequenceClassifier, classifier_for

    why = None
    if how in ("auto", "reward"):
        if not Path(reward).is_dir():
            why = f"--reward {reward} is not a reward-model run"
        else:
            rm, rtok = load(reward)
            if not isinstance(rm, SequenceClassifier) or rm.config.backbone_arch != "decoder":
                why = f"{reward} holds a {type(rm).__name__}, not a decoder reward model"
            elif rtok is None or rtok.hf.get_vocab() != policy_tok.hf.get_vocab():
                why = f"the reward model's tokenizer ({reward}) differs from the policy's"
            else:
                return rm, "reward"
        if how == "reward":
            raise LmlabError(f"--value-init reward: {why}; use --value-init zero (a new head on the policy)")
    value = classifier_for(copy.deepcopy(policy), task="regress", dropout=0.0)
    for m in value.head.modules():
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
    return value, "zero"


def _write(model: ActorCritic, path: Path) -> None:
    from lmlab.models.registry import save_model

    save_model(model.policy, path)
    if model.value is not None:
        save_model(model.value, path.with_name(VALUE_FILE))


def _read(model: ActorCritic, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(model.policy, str(path), strict=True, device="cpu")
    if model.value is not None:
        load_model(model.value, str(path.with_name(VALUE_FILE)), strict=True, device="cpu")


def read_prompts_for(cfg: RLHFConfig) -> list[str | list[dict[str, Any]]]:
    """Return the prompts ``cfg.prompts`` names (``arithmetic:N`` or any :func:`~lmlab.align.prompts.
    read_prompts` source)."""
    from lmlab.align.prompts import read_prompts
    from lmlab.align.verifiable import verifiable_prompts

    made = verifiable_prompts(str(cfg.prompts), cfg.seed)
    prompts = made if made is not None else read_prompts(cfg.prompts, cfg.split, cfg.limit)
    return prompts[:cfg.limit] if cfg.limit is not None else prompts


def rlhf(cfg: RLHFConfig, scorer: Scorer | None = None) -> RLHFResult:
    """Train ``cfg.policy`` with PPO or GRPO against ``cfg.reward`` (or ``scorer``, any object with
    ``name`` and ``score_pairs(prompts, responses) -> (B,)``); return the result. Bad input raises
    LmlabError."""
    from lmlab.align.report import CURVES, plot_curves, run_settings, write_run_report
    from lmlab.align.reward import load_scorer
    from lmlab.device import resolve_device, resolve_precision
    from lmlab.fileio import write_bytes
    from lmlab.loader import load
    from lmlab.markdown import inline_code
    from lmlab.train import checkpoint as ckpt
    from lmlab.train.log import read_metrics
    from lmlab.train.loop import Trainer, TrainSettings

    if None in (cfg.policy, cfg.prompts, cfg.out) or (cfg.reward is None and scorer is None):
        raise LmlabError("rlhf needs --policy RUN, --reward RM|arithmetic, --prompts SPEC and --out RUN2")
    cfg.check()
    out = Path(cfg.out)
    lora = cfg.method == "lora"
    books = out / TRAIN if lora else out
    if cfg.resume and ckpt.latest_step(books) is None:
        raise LmlabError(f"{out} has no checkpoint to resume; drop --resume to start a new run there")
    held = ckpt.latest_step(out) is not None or ckpt.latest_step(out / TRAIN) is not None
    if not cfg.resume and held and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a run; pass --resume, --overwrite or another --out")
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    policy, tokenizer = load(cfg.policy)
    if tokenizer is None:
        raise LmlabError(f"{cfg.policy} has no tokenizer.json; RLHF needs the policy's tokenizer")
    if type(policy).__name__ != "Decoder":
        raise LmlabError(f"RLHF trains decoders (GPT-2, LLaMA, ...); {cfg.policy} holds a "
                         f"{type(policy).__name__}")
    scorer = scorer or load_scorer(str(cfg.reward), device=device)
    prompts = read_prompts_for(cfg)
    no_length = cfg.max_steps is None and cfg.max_tokens is None and cfg.time_budget is None
    if no_length:
        cfg = dataclasses.replace(cfg, max_steps=cfg.rollouts * cfg.steps_per_rollout)
    value, value_init = None, None
    if cfg.algo == "ppo":
        value, value_init = value_model(policy, tokenizer, str(cfg.reward), cfg.value_init)
    reference = copy.deepcopy(policy).eval().requires_grad_(False).to(device)
    if lora:
        from lmlab.tuning import TuningOptions, apply_tuning

        apply_tuning(policy, TuningOptions(method="lora", **dataclasses.asdict(cfg.tuning)))
    model = ActorCritic(policy, value)
    for m in (model, reference):
        no_dropout(m)
    torch.manual_seed(cfg.seed)
    batches = RolloutBatches(model.to(device), reference, scorer, tokenizer, prompts, cfg, device, precision)
    objective = ppo_objective(cfg) if cfg.algo == "ppo" else grpo_objective(cfg)
    settings = TrainSettings(**cfg.loop_options(), optim=cfg.optim, precision=precision,
                             show_progress=cfg.progress)
    # full: the checkpoint's weights are the policy (RUN/model.safetensors, loadable) + value.safetensors;
    # lora: the Trainer keeps plain state in RUN/train and the merged policy is written at the end
    weights = {} if lora else {"write_weights": _write, "read_weights": _read}
    books_config = {"policy": policy.config.to_dict(), "algo": cfg.algo, "value_init": value_init,
                    "method": cfg.method, **({"tuning": dataclasses.asdict(cfg.tuning)} if lora else {})}
    trainer = Trainer(model.train(), objective, batches, settings, out_dir=books, device=device,
                      model_config=books_config, **weights)
    books.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(cfg, resume=False, overwrite=False, stop_at_step=None,
                                    precision=precision), out / "config.yaml")
    write_bytes(out / "tokenizer.json", tokenizer.hf.to_str().encode("utf-8"))
    t0 = time.perf_counter()
    result = trainer.fit(resume=cfg.resume)
    if lora:
        from lmlab.models.registry import save_model
        from lmlab.tuning import unload_tuning

        save_model(unload_tuning(policy, merge=True), out / ckpt.WEIGHTS)
        if value is not None:
            save_model(value, out / VALUE_FILE)
    elif value is not None:  # the run folder's value model: the latest checkpoint's
        latest = ckpt.load_checkpoint(out).weights_path.with_name(VALUE_FILE)
        shutil.copyfile(latest, out / VALUE_FILE)
    rows = [r for r in read_metrics(books) if "score" in r]
    elapsed = result.elapsed or time.perf_counter() - t0
    last = rows[-1] if rows else {}
    res = RLHFResult(out=str(out), algo=cfg.algo, step=result.step, rollouts=batches.rollout,
                     elapsed_s=round(elapsed, 2), first_score=rows[0]["score"] if rows else None,
                     last_score=last.get("score"), last_kl=last.get("kl"), beta=last.get("beta"),
                     value_init=value_init, interrupted=result.interrupted)
    curves = plot_curves(books, [("reward model score", ("score",)), ("KL to the reference (nats)", ("kl",))],
                         out / CURVES)
    first = rows[0] if rows else {}
    write_run_report(
        out, f"RLHF ({cfg.algo.upper()})",
        f"{cfg.algo.upper()} trained {inline_code(cfg.policy)} ({cfg.method}) to raise the score of "
        f"{inline_code(cfg.reward or scorer.name)} on prompts from {inline_code(cfg.prompts)}, "
        "less beta times the KL to the starting policy. Score, KL (nats per response) and beta are the "
        "means of a rollout batch.",
        run_settings(cfg, "policy", "reward", "prompts", "rollouts", "batch_size", "minibatch_size",
                     "ppo_epochs", "beta", "target_kl", "temperature", "max_new_tokens", "method",
                     "value_init"),
        {"first rollout": {"score": res.first_score, "kl": first.get("kl"), "beta": first.get("beta")},
         f"last rollout ({res.rollouts})": {"score": res.last_score, "kl": res.last_kl, "beta": res.beta}},
        curves, res.interrupted)
    return res
