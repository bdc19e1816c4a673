"""CLI face of alignment: ``lmlab sft``, ``chat``, ``best-of-n``, ``rejection-sampling``."""

from __future__ import annotations

import dataclasses
import json

from lmlab.align.best_of_n import BestOfNConfig, RejectionConfig
from lmlab.align.chat import ChatConfig
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


def chat(cfg: ChatConfig) -> int:
    """Chat with a model fine-tuned on conversations (lmlab sft), in the terminal: each line you type
    is a user turn under the chat template; the reply streams as it is sampled and ends at
    <|im_end|>. Commands: /reset (clear the conversation), /system TEXT (set the system message),
    /quit (or Ctrl-D). Ctrl-C stops a reply. When the conversation leaves less than
    --max-new-tokens of the context, its oldest turns are dropped. Reads stdin, so it can be
    scripted: printf 'hi\\n/quit\\n' | lmlab chat --ckpt RUN. E.g.:

      lmlab chat --ckpt runs/llama-sft --temperature 0.7 --system "You answer briefly."
    """
    from lmlab.align.chat import chat as run_chat

    run_chat(cfg)
    return 0


def best_of_n(cfg: BestOfNConfig) -> int:
    """Best-of-n at inference: sample max(n) responses per prompt from --policy, score them with the
    reward model, and report for each n the mean score of the best of n (the unbiased estimate over
    all n-subsets of the samples) and its KL from the policy, log n - (n-1)/n nats (analytic).
    Writes OUT/config.yaml, metrics.jsonl (one line per n) and samples.jsonl (every response, its
    score, the best per n). E.g., on the sentiment task:

      lmlab best-of-n --policy runs/sft --reward runs/rm --prompts reviews:sentiment-movies \\
          --split test --limit 200 --n 1,4,16 --out runs/bon
    """
    from lmlab.align.best_of_n import best_of_n as run

    r = run(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"{r.prompts} prompts, {r.samples_per_prompt} samples each; saved {r.out}")
    print(f"  {'n':>4}  {'score':>9}  {'KL (nats)':>9}")
    for x in r.results:
        print(f"  {x['n']:>4}  {x['score']:>9.4f}  {x['kl']:>9.4f}")
    return 0


def rejection_sampling(cfg: RejectionConfig) -> int:
    """Rejection-sampling fine-tuning (Llama 2 style): sample --k responses per prompt from --policy,
    keep the one the reward model scores highest (OUT/best.jsonl), and fine-tune the policy on the
    kept ones with lmlab sft's loss (--template plain: completion-only on raw text; chat: the
    assistant's turn). OUT is an SFT run folder (model.safetensors, tokenizer.json, metrics.jsonl,
    state/ for --resume) with this command's config.yaml. Run it again on OUT for another round. E.g.:

      lmlab rejection-sampling --policy runs/sft --reward runs/rm --prompts reviews:sentiment-movies \\
          --limit 2000 --k 8 --out runs/rs1 --epochs 1 --lr 1e-4
    """
    from lmlab.align.best_of_n import rejection_sampling as run

    r = run(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
    else:
        print(f"kept the best of {r.k} for {r.prompts} prompts (mean score {r.mean_score:.4f}, kept "
              f"{r.best_score:.4f}); fine-tuned {r.sft['step']} steps, validation loss {r.sft['val_loss']}; "
              f"saved {r.out}")
    return 130 if r.sft["interrupted"] else 0
