"""CLI face of alignment: ``lmlab sft``, ``lmlab reward train|score``, ``lmlab dpo``."""

from __future__ import annotations

import dataclasses
import json

from lmlab.align.dpo import DPOConfig
from lmlab.align.reward import RewardConfig, ScoreConfig
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


def reward_train(cfg: RewardConfig) -> int:
    """Train a reward model: a scalar head (init std 1/sqrt(d+1), bias 0, no dropout) on the last real
    token of a decoder, with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected [- margin]) on
    preference pairs, through the one Trainer (exact --resume).

    --data is a JSONL of {"prompt": str|messages, "chosen": str, "rejected": str[, "margin": float]}
    (split 80/10/10 by a hash of each line), or labelled data with ratings (sentiment-movies, ...):
    human pairs of two texts of one split whose mean ratings differ by more than --margin, the more
    positive one chosen. The model reads prompt text + response (+ end-of-text). Validation: pairwise
    accuracy on the validation pairs (val_accuracy in metrics.jsonl); at the end the test pairs are
    scored too. Writes OUT/config.yaml, model.safetensors, tokenizer.json, metrics.jsonl,
    results.json, state/. E.g.:

      lmlab reward train --ckpt runs/llama --data sentiment-movies --out runs/rm --epochs 1 --lr 1e-4
    """
    from lmlab.align.reward import train_reward

    r = train_reward(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    fig = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items()) or "none"  # noqa: E731
    print(f"trained step {r.step} ({r.elapsed_s:.1f}s) on {r.pairs['train']} pairs; "
          f"first loss {r.first_loss}")
    print(f"validation ({r.pairs['validation']} pairs): {fig(r.val)}")
    print(f"test ({r.pairs['test']} pairs): {fig(r.test)}")
    print(f"saved {r.out}")
    return 130 if r.interrupted else 0


def reward_score(cfg: ScoreConfig) -> int:
    """Score texts with a reward model: one score per text (.txt one a line, or .jsonl with 'text' or
    'prompt' + 'response'), or with --pairs the pairwise accuracy on preference pairs (a JSONL of
    prompt/chosen/rejected, every line; or rated data's --split). --out writes a JSON line per item.
    E.g.:

      lmlab reward score --ckpt runs/rm --data samples.jsonl --out scores.jsonl
      lmlab reward score --ckpt runs/rm --data sentiment-movies --pairs --split test --json
    """
    from lmlab.align.reward import score_file

    r = score_file(cfg)
    if cfg.json:
        print(json.dumps(r))
        return 0
    line = f"{r['n']} {'pairs' if cfg.pairs else 'texts'}: mean score {r['mean']:.4f} (std {r['std']:.4f}, " \
           f"min {r['min']:.4f}, max {r['max']:.4f})"
    if cfg.pairs:
        line += f"; accuracy {r['accuracy']:.4f}, mean reward gap {r['reward_gap']:.4f}"
    print(line + (f"; wrote {r['out']}" if r["out"] else ""))
    return 0


def dpo(cfg: DPOConfig) -> int:
    """Direct preference optimisation of a policy on preference pairs against a frozen reference (the
    starting model), through the one Trainer: --loss sigmoid (DPO), ipo (squared loss), with
    --label-smoothing (conservative DPO) and --length-normalize (mean instead of summed token
    log-probabilities). The reference's log-probabilities are computed once before training and kept
    in OUT/reference_logps.safetensors. Logged every step and on the validation pairs: the implicit
    rewards beta*(log pi - log ref) of the chosen and rejected responses, their margin and the
    accuracy (chosen reward higher). At step 0 the sigmoid loss is ln 2.

    --data as for 'lmlab reward train' (a JSONL of prompt/chosen/rejected, or rated data's human
    pairs); --template plain lays a pair out as end-of-text + prompt + response + end-of-text, chat as
    a user turn and the assistant's response closed by <|im_end|>. --method lora trains LoRA adapters
    (--r, --alpha, --targets) and merges them into OUT/model.safetensors at the end. E.g.:

      lmlab dpo --ckpt runs/sft --data pairs.jsonl --out runs/dpo --beta 0.1 --lr 5e-6 --epochs 1
    """
    from lmlab.align.dpo import dpo as run_dpo

    r = run_dpo(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    fig = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items()) or "none"  # noqa: E731
    print(f"trained step {r.step} ({r.elapsed_s:.1f}s) on {r.pairs['train']} pairs")
    print(f"first step: {fig(r.first)}")
    print(f"last step: {fig(r.last)}")
    print(f"validation ({r.pairs['validation']} pairs): {fig(r.val)}")
    print(f"saved {r.out}")
    return 130 if r.interrupted else 0
