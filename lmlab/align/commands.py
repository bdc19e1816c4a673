"""CLI face of alignment: ``lmlab sft``."""

from __future__ import annotations

import dataclasses
import json

from lmlab.align.sft import SFTConfig
from lmlab.align.sft import sft as run_sft


def sft(cfg: SFTConfig) -> int:
    """Supervised fine-tuning of a decoder on conversations, with the loss only on what the assistant
    wrote (each assistant turn and its closing <|im_end|>, so the model learns to end a turn).

    --data is JSONL, one conversation a line: {"messages": [{"role": "system"|"user"|"assistant",
    "content": ...}, ...]} ending with an assistant turn, or {"prompt": ..., "completion": ...}
    (completion-only loss). Text is laid out with the lab's chat template (ChatML; 'lmlab export
    hf' stores it as the tokenizer's chat_template); with --template plain a prompt/completion
    record is raw text instead (end-of-text, prompt, completion, end-of-text: for base models that
    continue text). --pack fills rows of up to --max-len tokens with several conversations (less
    padding; a row's later conversations see its earlier ones, as HF's simple packing). One
    conversation in ten is held out and scored (val_loss in metrics.jsonl). Writes OUT/config.yaml,
    model.safetensors, tokenizer.json, metrics.jsonl and state/ (exact --resume). E.g.:

      lmlab data instructions --out runs/data/instructions
      lmlab sft --ckpt runs/llama --data runs/data/instructions/train.jsonl --out runs/llama-sft --epochs 2
    """
    r = run_sft(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    rows = f" in {r.train_rows} packed rows" if r.train_rows != r.train_conversations else ""
    print(f"trained step {r.step} ({r.elapsed_s:.1f}s) on {r.train_conversations} conversations{rows}; "
          f"first loss {r.first_loss}, validation loss {r.val_loss} ({r.val_conversations} held out); "
          f"saved {r.out}")
    return 130 if r.interrupted else 0
