"""CLI face of alignment: ``lmlab sft``, ``lmlab rlhf``."""

from __future__ import annotations

import dataclasses
import json

from lmlab.align.rlhf import RLHFConfig
from lmlab.align.rlhf import rlhf as run_rlhf
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


def rlhf(cfg: RLHFConfig) -> int:
    """RLHF on a policy: PPO (a value model, rewards = the reward model's score on the last response
    token less beta times the KL to the frozen starting policy, GAE, clipped policy and value losses)
    or GRPO (--algo grpo: several samples per prompt, advantages relative to the group, no value
    model, the KL as a loss term), through the one trainer.

    --reward is a reward-model run (lmlab reward train) or the verifiable reward 'arithmetic' (1 when
    the response's first number answers the prompt's sum; prompts from --prompts arithmetic:N).
    --prompts is a .jsonl/.txt file, reviews:CORPUS (the sentiment task: review prefixes) or
    arithmetic:N. Each rollout samples --batch-size responses at --temperature (no top-k/top-p: the
    training forward must score the distribution that sampled), then trains --ppo-epochs passes of
    --minibatch-size. Fixed KL coefficient --beta, or Ziegler's adaptive controller with --target-kl.
    metrics.jsonl logs score, kl, beta, entropy, clipfrac, approx_kl, value_loss, response_length.
    Writes OUT/model.safetensors (the policy), value.safetensors, tokenizer.json, config.yaml,
    metrics.jsonl, state/ (exact --resume). E.g.:

      lmlab rlhf --algo ppo --policy runs/sft --reward runs/rm --prompts reviews:sentiment-movies \\
          --out runs/ppo --beta 0.05 --rollouts 50 --lr 1e-5
      lmlab rlhf --algo grpo --policy runs/sft --reward arithmetic --prompts arithmetic:500 --out runs/grpo
    """
    r = run_rlhf(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    print(f"{r.algo}: step {r.step}, {r.rollouts} rollouts ({r.elapsed_s:.1f}s); mean score "
          f"{r.first_score} -> {r.last_score}, KL {r.last_kl} (beta {r.beta}); saved {r.out}")
    return 130 if r.interrupted else 0
