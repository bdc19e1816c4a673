"""CLI face of alignment: ``lmlab sft``, ``lmlab cai revise|label``."""

from __future__ import annotations

import dataclasses
import json

from lmlab.align.cai import LabelConfig, ReviseConfig
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


def cai_revise(cfg: ReviseConfig) -> int:
    """Constitutional AI, SL stage: the model answers each prompt, critiques its answer under a principle
    drawn from the constitution and revises it (few-shot examples show the format; --revisions N rounds).

    Writes OUT/revisions.jsonl (SFT data: prompt/completion, or messages for a conversation prompt; train on
    it with 'lmlab sft'), OUT/chains.jsonl (response, each critique and revision, for reading) and
    OUT/config.yaml. The default constitution is lmlab/align/constitution.yaml; --constitution FILE takes
    yours, --principles a,b only some. E.g.:

      lmlab cai revise --ckpt runs/llama-sft --prompts prompts.jsonl --out runs/cai-sl --template chat
    """
    from lmlab.align.cai import revise

    r = revise(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"revised {r.written} of {r.prompts} responses ({r.changed:.0%} changed, {r.dropped_empty} dropped "
          f"empty; {r.truncated_contexts} contexts cut to fit) in {r.elapsed_s:.1f}s; principles "
          f"{r.principles}; wrote {r.out}/revisions.jsonl and chains.jsonl")
    return 0


def cai_label(cfg: LabelConfig) -> int:
    """Constitutional AI, RL stage: a feedback model labels pairs of responses. For each pair it reads a
    multiple-choice question under a principle drawn from the constitution, and the log-probabilities of
    its answers (A) and (B) decide; the question is asked in both orders and averaged, cancelling any
    preference for a position.

    --data: JSONL of prompt/chosen/rejected (a human label: the agreement of the AI's labels with it is
    reported), JSONL of prompt/responses (samples, paired in order), or a labelled corpus such as
    sentiment-movies (human pairs from its ratings). Writes --out as prompt/chosen/rejected JSONL with
    ai_prob (the AI's probability that chosen is better) and the principle, for 'lmlab reward train' or
    'lmlab dpo'; exact ties are left out, and so are pairs too long for the feedback model's context (both
counted). E.g.:

      lmlab cai label --feedback runs/llama-sft --data sentiment-movies --principles positive,kind \\
          --limit 500 --out runs/ai-pairs.jsonl
    """
    from lmlab.align.cai import label

    r = label(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    agree = "" if r.agreement is None else \
        f"agreement with the human labels {r.agreement:.1%} on {r.human_labelled}; "
    print(f"labelled {r.pairs} pairs ({r.ties} ties left out; {r.too_long} too long to ask) in "
          f"{r.elapsed_s:.1f}s; {agree}both orders agree on {r.consistent:.0%}, P(A) {r.first_position:.2f}, "
          f"mean AI confidence {r.mean_ai_prob:.2f}; wrote {r.out}")
    return 0
