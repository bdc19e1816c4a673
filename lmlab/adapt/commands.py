"""CLI commands ``lmlab finetune`` and ``lmlab predict``: thin faces of :mod:`lmlab.adapt`."""

from __future__ import annotations

import json
from typing import Any

from lmlab.adapt.finetune import FinetuneConfig
from lmlab.adapt.predict import PredictConfig


def _figures(d: dict[str, Any], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {d[k]:.4f}" for k in keys if isinstance(d.get(k), float))


def _confusion(metrics: dict[str, Any]) -> str:
    """The confusion matrix as aligned text (rows: true label, columns: predicted)."""
    labels, m = metrics["labels"], metrics["confusion"]
    w = max(6, *(len(n) for n in labels), *(len(str(v)) for row in m for v in row)) + 2
    lines = ["  true \\ predicted " + "".join(f"{n:>{w}}" for n in labels)]
    lines += [f"  {n:<17}" + "".join(f"{v:>{w}}" for v in row) for n, row in zip(labels, m, strict=True)]
    return "\n".join(lines)


def finetune(cfg: FinetuneConfig) -> int:
    """Fine-tune a pretrained model on labelled data: a classifier (--task classify), a regressor of the
    rating (--task regress) or the language model itself on the data's training text (--task lm,
    ULMFiT's stage 2), through the one Trainer.

    --method head trains only the task head (the backbone frozen); full trains every weight. The task
    head reads the last real token's state (decoders), the pooler or [CLS] (encoders) or ULMFiT's
    concat pooling (RNN/LSTM/GRU). Validation runs on the validation split during training
    (--eval-interval) and at the end; the test split is scored once at the end: accuracy, macro-F1
    and the confusion matrix (regression: MSE, MAE, Pearson), with the trainable parameters and
    their share, training time, peak memory and checkpoint size.

    Writes OUT/config.yaml (resolved), OUT/model.safetensors (the classifier: 'lmlab predict' and
    lmlab.load read it), OUT/tokenizer.json, OUT/metrics.jsonl, OUT/results.json and OUT/state/
    (exact --resume). --task lm writes a pretrain run (OUT/config.yaml is pretrain's, this command's
    is OUT/finetune.yaml; the prepared text is in OUT/lm-data). The sentiment sets come from the
    vaderSentiment==3.3.2 sdist (downloaded once; LMLAB_VADER_SDIST names a local copy). E.g.:

      lmlab finetune --ckpt runs/gpt --data sentiment-movies --task classify --method full \\
          --out runs/gpt-movies --epochs 2
      lmlab predict --ckpt runs/gpt-movies --data reviews.jsonl --out preds.jsonl
    """
    from lmlab.adapt.finetune import finetune as run_finetune

    r = run_finetune(cfg)
    summary = r.summary()
    if cfg.json:
        print(json.dumps(summary))
    else:
        what = "interrupted at" if r.interrupted else "trained"
        print(f"{what} step {r.step} ({r.elapsed_s:.1f}s) with --method {r.method}: "
              f"{r.trainable_params:,} of {r.total_params:,} parameters trainable ({r.trainable_share:.2%})")
        keys = ("loss", "accuracy", "macro_f1", "mae", "pearson", "bpb")
        if r.val:
            print(f"validation: {_figures(r.val, keys)}")
        if r.test:
            print(f"test ({r.test['n']} examples): {_figures(r.test, keys)}")
            if "confusion" in r.test:
                print(_confusion(r.test))
        peak = "n/a" if r.peak_memory_mib is None else f"{r.peak_memory_mib:,.0f} MiB"
        print(f"peak memory {peak}, checkpoint {r.checkpoint_bytes / 2**20:,.2f} MiB; saved {r.out}")
    if r.interrupted:
        print(f"continue with: lmlab finetune --config {r.out}/config.yaml --resume")
        return 130
    return 0


def predict(cfg: PredictConfig) -> int:
    """Label the texts of a file with a fine-tuned classifier (or score them with a regressor):
    batch inference, one JSON line per text in --out (text, label and class probabilities, or
    score). When the file has labels (ratings, for a regressor) it also prints the metrics:
    accuracy, macro-F1 and the confusion matrix (MSE, MAE, Pearson). A label the classifier was
    not trained on is an error naming the line. --data may also name labelled data (a sentiment
    set, a folder of split files, hf:NAME): its --split (test by default) is labelled and scored,
    e.g. a movie-review classifier on the Amazon sentences (domain transfer). E.g.:

      lmlab predict --ckpt runs/gpt-movies --data sentences.txt --out preds.jsonl
      lmlab predict --ckpt runs/gpt-movies --data sentiment-amazon --json
    """
    from lmlab.adapt.predict import predict as run_predict

    r = run_predict(cfg)
    if cfg.json:
        print(json.dumps(r.summary()))
        return 0
    if cfg.out is None:
        for p in r.predictions:
            shown = p["label"] if "label" in p else f"{p['score']:+.3f}"
            print(f"{shown}\t{p['text']}")
    else:
        print(f"wrote {r.n} predictions to {r.out}")
    if r.metrics is not None:
        keys = ("loss", "accuracy", "macro_f1", "mae", "pearson")
        print(f"{r.metrics['n']} labelled: {_figures(r.metrics, keys)}")
        if "confusion" in r.metrics:
            print(_confusion(r.metrics))
    return 0
