"""CLI face of alignment: ``lmlab sft``."""

from __future__ import annotations

import dataclasses
import json

from lmlab.align.frontier import FrontierConfig, frontier
from lmlab.align.policy_pairs import PolicyPairsConfig, policy_pairs
from lmlab.align.sft import SFTConfig
from lmlab.align.sft import sft as run_sft


def sft(cfg: SFTConfig) -> int:
    """Supervised fine-tuning of a decoder on conversations, with the loss only on what the assistant
    wrote (each assistant turn and its closing <|im_end|>, so the model learns to end a turn).

    --data is JSONL, one conversation a line: {"messages": [{"role": "system"|"user"|"assistant",
    "content": ...}, ...]} ending with an assistant turn, or {"prompt": ..., "completion": ...}
    (completion-only loss). Text is laid out with the lab's chat template (ChatML; 'lmlab export
    hf' stores it as the tokenizer's chat_template). One conversation in ten is held out and scored
    (val_loss in metrics.jsonl). Writes OUT/config.yaml, model.safetensors, tokenizer.json,
    metrics.jsonl and state/ (exact --resume). E.g.:

      lmlab sft --ckpt runs/llama --data chats.jsonl --out runs/llama-sft --epochs 2 --lr 3e-4
    """
    r = run_sft(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    print(f"trained step {r.step} ({r.elapsed_s:.1f}s) on {r.train_conversations} conversations; "
          f"first loss {r.first_loss}, validation loss {r.val_loss} ({r.val_conversations} held out); "
          f"saved {r.out}")
    return 130 if r.interrupted else 0


def align_pairs(cfg: PolicyPairsConfig) -> int:
    """Sample two responses per prompt from --policy, score prompt + response with the --reward
    model, and write the higher-scored one as 'chosen': prompt/chosen/rejected JSONL (with the
    score gap as 'margin'), the data of on-policy DPO (the DPO paper's sentiment experiment). E.g.:

      lmlab align pairs --policy runs/sft --reward runs/rm --prompts reviews:sentiment-movies \\
          --n-prompts 2000 --out pairs/policy.jsonl
    """
    r = policy_pairs(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"wrote {r.pairs} pairs from {r.prompts} prompts ({r.dropped_ties} ties dropped) to {r.out}; "
          f"mean reward chosen {r.chosen_score:.3f}, rejected {r.rejected_score:.3f}, gap {r.mean_gap:.3f}")
    return 0


def align_frontier(cfg: FrontierConfig) -> int:
    """The reward-vs-KL frontier: sample each --policies NAME=RUN on held-out prompts, score the
    responses with --reward, estimate KL(policy || --ref) from the samples' log-probs, and add
    best-of-n from the reference (analytic KL log n - (n-1)/n). Writes OUT/frontier.json,
    frontier.png (the DPO paper's figure 2) and samples.md. E.g.:

      lmlab align frontier --ref runs/sft --reward runs/rm --policies ppo=runs/ppo,dpo=runs/dpo \\
          --best-of 1,4,16 --out runs/frontier
    """
    rows = frontier(cfg)
    if cfg.json:
        print(json.dumps({"rows": [dataclasses.asdict(r) for r in rows]}))
        return 0
    print(f"{'policy':<18} {'reward':>14} {'KL (nats)':>16} {'length':>7}")
    for r in rows:
        print(f"{r.name:<18} {r.score:>8.3f} ± {r.score_se:.3f} {r.kl:>8.3f} {r.kl_kind:>8} {r.length:>7.1f}")
    print(f"wrote {cfg.out}/frontier.json, frontier.png, samples.md")
    return 0
