"""CLI command ``lmlab pretrain``: the thin face of :func:`lmlab.train.pretrain.pretrain`."""

from __future__ import annotations

import json

from lmlab.train.pretrain import PretrainConfig


def pretrain(cfg: PretrainConfig) -> int:
    """Pretrain a model (GPT-2/LLaMA decoders, BERT/RoBERTa encoders, Transformer/T5/BART
    encoder-decoders, NPLM, RNN/LSTM/GRU, ELMo presets) on prepared data.

    --objective picks what it learns (default: its family's own): causal (next token), mlm or
    mlm+nsp (BERT), span-corruption (T5), denoise (BART) or blank-infilling (GLM, on a decoder).
    All but causal validate with the objective's own loss (val_loss; no bits per byte) and need
    special tokens: prepare the data with 'lmlab data prepare --mask-tokens'.

    Writes OUT/config.yaml (resolved, with the full model config in model_args),
    OUT/model.safetensors, OUT/tokenizer.json, OUT/metrics.jsonl (step, loss, lr, tokens,
    tokens_per_s, mfu, val_loss, val_bpb) and OUT/state/ (optimizer, RNG, data position)
    for an exact --resume. Ctrl-C saves a checkpoint and exits with status 130. A failed
    save (disk full) keeps the last complete checkpoint and says how much space it needs. Runs
    data-parallel under torchrun, e.g.:

      lmlab data prepare --corpus shakespeare --tokenizer char --out data/shk
      lmlab pretrain --model llama-tiny --data data/shk --out runs/tiny --block-size 128 --max-steps 300
      lmlab data prepare --corpus shakespeare --mask-tokens --out data/shk-masks
      lmlab pretrain --model t5-tiny --data data/shk-masks --out runs/t5 --max-steps 300
      torchrun --standalone --nproc-per-node 2 -m lmlab.cli pretrain ... (same options)
    """
    from lmlab.train.pretrain import pretrain as run_pretrain

    result = run_pretrain(cfg)
    if not result.is_main:
        return 130 if result.interrupted else 0
    summary = result.summary()
    if cfg.json:
        print(json.dumps(summary))
    else:
        figures = ", ".join(
            f"{k} {summary[k]:.4f}" for k in ("loss", "val_loss", "val_bpb") if isinstance(summary[k], float)
        )
        print(
            f"{'interrupted at' if result.interrupted else 'trained'} step {result.step} "
            f"({result.tokens:,} tokens, {result.elapsed_s:.1f}s): {figures}; saved {result.out}"
        )
    if result.interrupted:
        print(f"continue with: lmlab pretrain --out {result.out} --resume")
        return 130
    return 0
