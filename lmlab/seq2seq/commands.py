"""CLI commands: ``lmlab seq2seq train``, ``lmlab seq2seq eval`` and ``lmlab seq2seq translate``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import arg
from lmlab.errors import LmlabError
from lmlab.seq2seq.train import TrainConfig


def train(cfg: TrainConfig) -> None:
    """Train a Bahdanau attention encoder-decoder (RNNsearch) or, with --arch transformer, the
    Transformer of Vaswani et al. (2017) on a synthetic translation task.

    Tasks: reverse (abcd -> dcba), sort (dbca -> abcd), addition (123+45 -> 168), date
    (March 3, 98 -> 1998-03-03). Writes RUN/model.safetensors, model.json, vocab.json,
    task.json, config.yaml, metrics.jsonl (loss, held-out exact match) and attention.png
    (the attention of one test example: source on x, output on y; for the Transformer the
    last decoder layer's cross-attention, averaged over heads).

    example: lmlab seq2seq train --task reverse --out runs/s2s-reverse --steps 600
    example: lmlab seq2seq train --arch transformer --task date --out runs/tf-date
    """
    from lmlab.seq2seq.train import train as run_training

    summary = run_training(cfg)
    if cfg.json:
        print(json.dumps(summary))
        return
    ex = summary["example"]
    status = " (interrupted; continue with --resume)" if summary["interrupted"] else ""
    print(f"trained {summary['arch']} on {summary['task']} for {summary['steps']} steps{status} in "
          f"{summary['wall_s']:.1f}s "
          f"({summary['examples_per_s']:.0f} examples/s, {summary['parameters']:,} parameters)")
    print(f"held-out exact match {summary['test_exact_match']:.2%}, "
          f"per-token accuracy {summary['test_token_accuracy']:.2%} ({summary['test_size']} examples)")
    print(f"example: {ex['input']!r} -> {ex['output']!r} (target {ex['target']!r})")
    print(f"wrote {summary['out']}/model.safetensors and {summary['out']}/attention.png")


@dataclass
class EvalConfig:
    ckpt: Path | None = arg(None, "run folder written by 'lmlab seq2seq train'")
    beam: int = arg(1, "beam size (1: greedy)")
    length_penalty: float = arg(1.0, "beam scores are log-probability / length**this (0: no normalisation)")
    split: Literal["test", "train"] = arg("test", "which split of the run's task to evaluate")
    batch_size: int = arg(256, "sources decoded at once")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int = arg(1, "CPU threads for PyTorch (this model's small matrices run fastest on one)")
    json: bool = arg(False, "print the figures as one JSON object")


def _require_ckpt(ckpt: Path | None) -> Path:
    if ckpt is None:
        raise LmlabError("no checkpoint given; pass --ckpt RUN (the --out folder of 'lmlab seq2seq train')")
    return ckpt


def evaluate(cfg: EvalConfig) -> None:
    """Evaluate a trained seq2seq run on its task's held-out test set (or training set).

    Prints exact-match accuracy (the whole output right) and per-token accuracy (share
    of target positions, end mark included, that the output gets right), with greedy
    decoding or beam search (--beam K).

    example: lmlab seq2seq eval --ckpt runs/s2s-reverse --beam 5
    """
    import time

    from lmlab.device import resolve_device, set_threads
    from lmlab.seq2seq.tasks import make_splits
    from lmlab.seq2seq.train import evaluate as run_eval
    from lmlab.seq2seq.train import load_run

    ckpt = _require_ckpt(cfg.ckpt)
    for flag, value in (("--beam", cfg.beam), ("--batch-size", cfg.batch_size)):
        if value < 1:
            raise LmlabError(f"{flag} must be at least 1, got {value}")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    run = load_run(ckpt, device)
    splits = make_splits(run.spec)
    pairs = splits.test if cfg.split == "test" else splits.train
    t0 = time.perf_counter()
    result = run_eval(run.model, pairs, run.src_vocab, run.tgt_vocab, beam=cfg.beam,
                      length_penalty=cfg.length_penalty, batch_size=cfg.batch_size, device=device)
    seconds = time.perf_counter() - t0
    figures = {"task": run.spec.task, "split": cfg.split, "n": result.n, "beam": cfg.beam,
               "exact_match": result.exact_match, "token_accuracy": result.token_accuracy,
               "seconds": round(seconds, 3)}
    if cfg.json:
        print(json.dumps(figures))
        return
    decoding = "greedy" if cfg.beam == 1 else f"beam {cfg.beam}"
    print(f"{run.spec.task} {cfg.split} set, {result.n} examples, {decoding} decoding ({seconds:.1f}s)")
    print(f"exact match     {result.exact_match:.2%}")
    print(f"token accuracy  {result.token_accuracy:.2%}")
    for (source, target), pred in list(zip(pairs, result.predictions))[:3]:
        mark = "ok" if pred == target else f"wrong, target {target!r}"
        print(f"  {source!r} -> {pred!r} ({mark})")


@dataclass
class TranslateConfig:
    ckpt: Path | None = arg(None, "run folder written by 'lmlab seq2seq train'")
    input: str | None = arg(None, "the source text to translate, e.g. 'hello' for reverse")
    beam: int = arg(1, "beam size (1: greedy)")
    length_penalty: float = arg(1.0, "beam scores are log-probability / length**this (0: no normalisation)")
    heatmap: Path | None = arg(None, "also write this input's attention heatmap to this PNG file")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int = arg(1, "CPU threads for PyTorch (this model's small matrices run fastest on one)")
    json: bool = arg(False, "print the result as one JSON object")


def translate(cfg: TranslateConfig) -> None:
    """Translate one input with a trained seq2seq run and print the output.

    example: lmlab seq2seq translate --ckpt runs/s2s-reverse --input hello --beam 3
    """
    import torch

    from lmlab.device import resolve_device, set_threads
    from lmlab.seq2seq.tasks import EOS, get_task, resolve_lengths
    from lmlab.seq2seq.train import attention_plot, decode, encode_source, load_run, pad_batch

    ckpt = _require_ckpt(cfg.ckpt)
    if not cfg.input:
        raise LmlabError("no input given; pass --input TEXT, e.g. --input hello")
    if cfg.beam < 1:
        raise LmlabError(f"--beam must be at least 1, got {cfg.beam}")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    run = load_run(ckpt, device)
    ids = encode_source(cfg.input, run.src_vocab)
    task = get_task(run.spec.task)
    if task.name in ("reverse", "sort"):
        lo, hi = resolve_lengths(task, run.spec.min_len, run.spec.max_len)
        if not lo <= len(cfg.input) <= hi:
            print(f"note: the model was trained on inputs of {lo}-{hi} {task.length_unit}; this one has "
                  f"{len(cfg.input)}, so expect mistakes", file=sys.stderr)
    if cfg.heatmap is not None:
        hyp = attention_plot(run.model, cfg.input, run.src_vocab, run.tgt_vocab, cfg.heatmap, beam=cfg.beam,
                             length_penalty=cfg.length_penalty)
    else:
        with torch.no_grad():
            hyp = decode(run.model, pad_batch([ids]).to(device), cfg.beam, cfg.length_penalty)[0]
    output = run.tgt_vocab.decode(hyp.tokens)
    if cfg.json:
        print(json.dumps({"input": cfg.input, "output": output, "log_prob": hyp.score, "beam": cfg.beam,
                          "finished": bool(hyp.tokens and hyp.tokens[-1] == EOS)}))
        return
    print(output)
