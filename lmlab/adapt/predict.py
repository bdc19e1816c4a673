"""Batch inference with a fine-tuned classifier: ``predict(PredictConfig) -> PredictResult``.

Also the pieces fine-tuning evaluates with: :func:`predict_logits` (a model's outputs for many
sequences, batched by length) and :func:`task_metrics` (accuracy, macro-F1 and the confusion
matrix of a classifier; MSE, MAE and Pearson of a regressor).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.config import Precision, arg
from lmlab.errors import LmlabError


@dataclass
class PredictConfig:
    ckpt: Path | None = arg(None, "a fine-tuned classifier run (from 'lmlab finetune')")
    data: str | None = arg(None, "texts to label: .jsonl or .csv with a 'text' column (a 'label' column, "
                                 "if present, is scored), .txt with one text a line, or labelled data "
                                 "(sentiment-amazon, a folder of splits, hf:NAME): its --split is scored")
    split: Literal["train", "validation", "test"] = arg("test", "the split of labelled data (not of a file) "
                                                                 "to label")
    out: Path | None = arg(None, "write one JSON line per text here (text, label, probabilities or score)")
    batch_size: int = arg(32, "texts per forward pass")
    max_len: int | None = arg(None, "tokens per text, longer ones cut (default: the run's --max-len)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("auto", "auto = bf16 autocast where the hardware has it, else fp32")
    json: bool = arg(False, "print the figures as one JSON object")


@dataclass
class PredictResult:
    """What a prediction run did: how many texts, where the predictions went, and the metrics
    (None when the file has no labels)."""

    n: int
    out: str | None
    task: str
    metrics: dict[str, Any] | None
    predictions: list[dict[str, Any]]

    def summary(self) -> dict[str, Any]:
        """Return the figures as a JSON-friendly dict (without the per-text predictions)."""
        return {"n": self.n, "out": self.out, "task": self.task, "metrics": self.metrics}


def pad_id_of(model: nn.Module, tokenizer: Any) -> int:
    """The id to pad a classifier's inputs with: an encoder's own ``pad_id`` (RoBERTa's positions
    count the other tokens), else the tokenizer's pad or end-of-text token, else 0. Padding is
    masked (encoders) or after the real tokens (decoders, RNNs), so it never changes a result."""
    pad = getattr(model.backbone.config, "pad_id", None) if hasattr(model, "backbone") else None
    if pad is None and tokenizer is not None:
        from lmlab.data.special import special_token

        found = special_token(tokenizer, "pad")
        pad = found[1] if found else tokenizer.eot_id
    return int(pad or 0)


def max_input_len(model: nn.Module, wanted: int) -> int:
    """The tokens per text a classifier reads: ``wanted``, cut to its backbone's context (decoders and
    encoders; an RNN reads any length) less the virtual tokens a prompt-tuned model prepends."""
    from lmlab.tuning import tuning_state

    if model.config.backbone_arch == "rnn":
        return wanted
    room = int(model.backbone.config.block_size)
    state = tuning_state(model)
    if state is not None and state.options.method == "prompt":
        room -= state.options.n_prompt
    if room < 2:
        raise LmlabError(f"the model's context of {model.backbone.config.block_size} tokens leaves no room "
                         "for text after the prompt; use a smaller --n-prompt")
    return min(wanted, room)


@torch.no_grad()
def predict_logits(model: nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int,
                   device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """Return the model's outputs for each sequence, ``(N, outputs)`` float32 on the CPU, in input
    order. Sequences are batched by length (little padding); the model runs in eval mode and is
    left in the mode it was in."""
    from lmlab.adapt.examples import pad_batch
    from lmlab.device import autocast

    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[torch.Tensor | None] = [None] * len(seqs)
    try:
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
            with torch.no_grad(), autocast(device, precision):
                logits = model(ids.to(device), mask.to(device))
            for row, i in zip(logits.float().cpu(), idx, strict=True):
                out[i] = row
    finally:
        model.train(was_training)
    if not seqs:
        return torch.zeros(0, 0)
    return torch.stack(out)  # type: ignore[arg-type]


def task_metrics(task: str, logits: torch.Tensor, targets: Sequence[float],
                 label_names: Sequence[str]) -> dict[str, Any]:
    """Return the metrics of ``logits (N, outputs)`` against ``targets``: for ``classify`` the mean
    cross-entropy ``loss``, accuracy, macro-F1, per-class figures and the confusion matrix; for
    ``regress`` the MSE ``loss``, MAE and Pearson's r."""
    from lmlab.evaluate.classification import classification_metrics, regression_metrics

    if task == "classify":
        y = torch.tensor([int(t) for t in targets], dtype=torch.long)
        loss = float(F.cross_entropy(logits, y)) if len(y) else math.nan
        r = classification_metrics(y.tolist(), logits.argmax(-1).tolist() if len(y) else [], label_names)
        return {"loss": loss, **r}
    r = regression_metrics([float(t) for t in targets], logits[:, 0].tolist() if len(targets) else [])
    return {"loss": r["mse"], **r}


def predict(cfg: PredictConfig) -> PredictResult:
    """Label every text of ``cfg.data`` with the classifier in ``cfg.ckpt``; return a PredictResult.

    Writes ``cfg.out`` (JSON lines: text, predicted label and class probabilities, or the predicted
    score for a regressor) when given; computes the metrics when the file has labels (or ratings
    for a regressor). A label the classifier does not know raises LmlabError naming the line.
    """
    from lmlab.adapt.examples import encode_texts
    from lmlab.data.labelled import get_labelled, read_examples
    from lmlab.device import resolve_device, resolve_precision
    from lmlab.fileio import write_text
    from lmlab.loader import load
    from lmlab.models.heads import SequenceClassifier

    if cfg.ckpt is None or cfg.data is None:
        raise LmlabError("predict needs --ckpt RUN (a fine-tuned classifier) and --data FILE")
    device = resolve_device(cfg.device)
    precision = resolve_precision(device, cfg.precision)
    model, tokenizer = load(cfg.ckpt, device=device)
    if not isinstance(model, SequenceClassifier):
        raise LmlabError(f"{cfg.ckpt} holds a {type(model).__name__}, not a classifier; give a run made by "
                         "'lmlab finetune --task classify' or '--task regress'")
    if tokenizer is None:
        raise LmlabError(f"{cfg.ckpt} has no tokenizer.json; predict needs the run's tokenizer")
    c = model.config
    path = Path(cfg.data)
    if path.is_file():
        examples = read_examples(path, c.labels)
    else:  # labelled data: its split, with the labels (or ratings) the task scores
        corpus = get_labelled(cfg.data, c.labels)
        if c.task == "classify" and corpus.label_names != c.labels:
            raise LmlabError(f"{cfg.data} has the labels {', '.join(corpus.label_names)}, the classifier "
                             f"{', '.join(c.labels)}; score it on data with the classifier's labels")
        examples = corpus.examples(cfg.split, c.task)
    max_len = cfg.max_len or _run_max_len(Path(cfg.ckpt)) or 512
    seqs = encode_texts(tokenizer, [e.text for e in examples], c.backbone_arch, max_input_len(model, max_len))
    logits = predict_logits(model, seqs, pad_id_of(model, tokenizer), cfg.batch_size, device, precision)
    predictions = []
    for e, row in zip(examples, logits, strict=True):
        if c.task == "classify":
            probs = torch.softmax(row, -1).tolist()
            predictions.append({"text": e.text, "label": c.labels[int(row.argmax())],
                                "probs": {n: round(p, 6) for n, p in zip(c.labels, probs, strict=True)}})
        else:
            predictions.append({"text": e.text, "score": round(float(row[0]), 6)})
    scored = [(i, e) for i, e in enumerate(examples)
              if (e.label if c.task == "classify" else e.rating) is not None]
    metrics = None
    if scored:
        targets = [e.label if c.task == "classify" else e.rating for _, e in scored]
        metrics = task_metrics(c.task, logits[[i for i, _ in scored]], targets, c.labels)
    if cfg.out is not None:
        write_text(cfg.out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    where = None if cfg.out is None else str(cfg.out)
    return PredictResult(len(examples), where, c.task, metrics, predictions)


def _run_max_len(run: Path) -> int | None:
    """The ``max_len`` a fine-tuning run was trained with (from its config.yaml), or None."""
    import yaml

    path = (run if run.is_dir() else run.parent) / "config.yaml"
    if not path.is_file():
        return None
    try:
        value = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("max_len")
    except yaml.YAMLError:
        return None
    return int(value) if isinstance(value, int) else None
