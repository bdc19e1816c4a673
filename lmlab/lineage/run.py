"""``lmlab lineage``: the history of language modelling trained on one corpus under one budget.

One BPE tokenizer and one train/validation split serve every model: an n-gram (best
order and smoothing), Bengio's NPLM, an LSTM, a GPT-2 style and a LLaMA style
Transformer. Each neural model trains for the same wall-clock budget through
``lmlab pretrain``; all are scored on the whole validation split. The run folder gets
results.json, lineage.png, report.md, config.yaml, the prepared data and each model's run.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.fileio import write_json
from lmlab.lineage.entries import DEFAULT_MODELS, ENTRIES, Entry

PLOT = "lineage.png"


@dataclass
class LineageConfig:
    corpus: str = arg("shakespeare", "corpus to prepare (see 'lmlab corpora'), e.g. shakespeare or a .txt")
    data: Path | None = arg(None, "use this prepared-data folder instead of preparing --corpus")
    vocab_size: int = arg(4096, "BPE vocabulary size of the shared tokenizer")
    budget: float | None = arg(None, "seconds of training per model (the n-gram search stops after it too)")
    out: Path | None = arg(None, "run folder for results.json, lineage.png, report.md and the model runs")
    models: list[str] = arg(list(DEFAULT_MODELS), f"models, oldest first, from: {', '.join(ENTRIES)}")
    size: Literal["tiny", "small"] = arg("small", "preset size of the neural models (tiny: for tests)")
    block_size: int = arg(128, "tokens per training and validation window of the neural models")
    eval_stride: int | None = arg(
        None, "final scores slide the windows by this many tokens, scoring each one's last STRIDE "
        "(default: half the block, so every token has at least that much context; the block: no overlap)"
    )
    batch_size: int = arg(16, "windows per optimizer step")
    warmup_steps: int = arg(20, "linear warmup steps of the neural models")
    evals: int = arg(8, "validations during each neural model's budget (points of its curve)")
    eval_iters: int = arg(8, "batches per validation during training (the final score uses the whole split)")
    ngram_orders: list[int] = arg([1, 2, 3, 4, 5], "n-gram orders to try")
    ngram_smoothings: list[str] = arg(["mkn", "kn", "katz", "witten-bell"], "n-gram smoothings to try")
    prompt: str = arg("", "sample prompt ('' starts a new document)")
    sample_tokens: int = arg(60, "tokens per sample")
    temperature: float = arg(0.8, "sampling temperature")
    top_k: int = arg(50, "sample among the k most likely tokens")
    seed: int = arg(1337, "seed of inits, data order and samples")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("auto", "training precision (neural models)")
    overwrite: bool = arg(False, "replace an existing lineage run in --out")
    progress: bool = arg(True, "show progress bars (--no-progress hides them)")
    json: bool = arg(False, "print the results as one JSON object")


def _eval_stride(cfg: LineageConfig) -> int:
    return cfg.eval_stride if cfg.eval_stride is not None else max(1, cfg.block_size // 2)


def _check(cfg: LineageConfig) -> list[Entry]:
    if cfg.out is None:
        raise LmlabError("lineage needs --out RUN, the folder for its results")
    if cfg.budget is None or not cfg.budget > 0:
        raise LmlabError(f"--budget must be a positive number of seconds per model (got {cfg.budget}); "
                         "e.g. --budget 90")
    unknown = [m for m in cfg.models if m not in ENTRIES]
    if unknown or not cfg.models:
        raise LmlabError(f"unknown lineage model(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ENTRIES)}")
    if cfg.block_size < 2 or cfg.batch_size < 1 or cfg.evals < 1 or cfg.sample_tokens < 0:
        raise LmlabError("--block-size must be >= 2, --batch-size and --evals >= 1, --sample-tokens >= 0")
    if not 0 < _eval_stride(cfg) <= cfg.block_size:
        raise LmlabError(f"--eval-stride must be between 1 and --block-size {cfg.block_size} "
                         f"(got {cfg.eval_stride})")
    if "ngram" in cfg.models and (not cfg.ngram_orders or min(cfg.ngram_orders) < 1):
        raise LmlabError(f"--ngram-orders must be orders >= 1 (got {cfg.ngram_orders}); e.g. 2,3,4,5")
    from lmlab.ngram.model import SMOOTHINGS

    bad = [s for s in cfg.ngram_smoothings if s not in SMOOTHINGS]
    if bad or not cfg.ngram_smoothings:
        raise LmlabError(f"unknown n-gram smoothing(s) {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(SMOOTHINGS)}")
    out = Path(cfg.out)
    if (out / "results.json").exists() and not cfg.overwrite:
        raise LmlabError(f"{out} already holds a lineage run; pass --overwrite or choose another --out")
    if out.exists() and not (out / "results.json").exists() and any(out.iterdir()):
        raise LmlabError(f"{out} exists and is not a lineage run; choose another --out")
    return [ENTRIES[m] for m in cfg.models]


def _prepare(cfg: LineageConfig, work: Path):
    from lmlab.data.prepare import load_prepared, prepare

    if cfg.data is not None:
        data = load_prepared(cfg.data)
    else:
        prepare(cfg.corpus, work / "data", kind="bpe", vocab_size=cfg.vocab_size)
        data = load_prepared(work / "data")
    if len(data.val) < cfg.block_size + 1:
        raise LmlabError(f"the validation split has {len(data.val)} tokens, fewer than one window of "
                         f"{cfg.block_size}; use a larger corpus or a smaller --block-size")
    return data


def _ngram(cfg: LineageConfig, data, tokenizer, entry: Entry) -> dict[str, Any]:
    from lmlab.lineage.ngram_entry import sample_ngram, search_ngram
    from lmlab.ngram.model import score_token_ids

    found = search_ngram(data.train, data.eot_id, data.bytes_per_token("train"), cfg.ngram_orders,
                         cfg.ngram_smoothings, cfg.budget)
    summary = score_token_ids(found.model, data.val, data.eot_id).summary(data.meta["splits"]["val"]["bytes"])
    prompt_ids = tokenizer.encode(cfg.prompt) if cfg.prompt else []
    sample = tokenizer.decode(sample_ngram(found.model, prompt_ids, data.eot_id, cfg.sample_tokens,
                                           seed=cfg.seed, temperature=cfg.temperature))
    return {
        "name": entry.name, "label": entry.label, "params": sum(found.model.ngram_counts()),
        "train_seconds": round(found.seconds, 2), "tokens_seen": int(len(data.train)),
        "val_bpb": summary["bits_per_byte"], "val_ppl": summary["perplexity"],
        "val_loss": summary["nats_per_token"], "curve": [[round(found.seconds, 2), summary["bits_per_byte"]]],
        "order": found.order, "smoothing": found.smoothing, "fit_seconds": round(found.fit_seconds, 2),
        "search": found.candidates, "sample": sample,
    }


def _neural(cfg: LineageConfig, data, data_dir: Path, entry: Entry, run_dir: Path, device) -> dict[str, Any]:
    from lmlab.evaluate.perplexity import evaluate_perplexity
    from lmlab.generate import generate_text
    from lmlab.loader import load_model_any
    from lmlab.train.log import read_metrics
    from lmlab.train.options import OptimOptions
    from lmlab.train.pretrain import PretrainConfig, pretrain

    pc = PretrainConfig(
        model=entry.preset(cfg.size), data=data_dir, out=run_dir, model_args=list(entry.model_args),
        block_size=cfg.block_size, batch_size=cfg.batch_size,
        optim=OptimOptions(lr=entry.lr, min_lr=entry.lr / 10, warmup_steps=cfg.warmup_steps),
        precision=cfg.precision, seed=cfg.seed, device=cfg.device,
        time_budget=cfg.budget, eval_interval_s=cfg.budget / cfg.evals, eval_iters=cfg.eval_iters,
        log_interval=10, progress=cfg.progress,
    )
    try:
        result = pretrain(pc)
    except LmlabError as e:
        raise LmlabError(f"{entry.name}: {e}") from None
    if result.interrupted:
        raise KeyboardInterrupt
    curve = [[r["elapsed"], r["val_bpb"]] for r in read_metrics(run_dir) if "val_bpb" in r and "elapsed" in r]
    model = load_model_any(run_dir, device)
    full = evaluate_perplexity(model, data.val, block_size=cfg.block_size, batch_size=cfg.batch_size,
                               device=device, split_bytes=data.meta["splits"]["val"]["bytes"],
                               stride=_eval_stride(cfg))
    sample = generate_text(model, data.tokenizer(), cfg.prompt, cfg.sample_tokens,
                           temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed)[0].text
    return {
        "name": entry.name, "label": entry.label, "preset": pc.model, "params": model.num_params(),
        "train_seconds": result.elapsed_s, "tokens_seen": result.tokens, "steps": result.step,
        "val_bpb": full.bits_per_byte, "val_ppl": math.exp(full.loss), "val_loss": full.loss,
        "curve": curve, "sample": sample,
    }


def lineage(cfg: LineageConfig) -> int:
    """Train the lineage of language models on one corpus under one budget and compare them.

    One BPE tokenizer and one train/validation split for all; each model gets --budget
    seconds of training: the n-gram picks its order and smoothing on a dev slice of the
    training split, then NPLM, LSTM, GPT-2 and LLaMA style models train through
    'lmlab pretrain' (time-based cosine schedule). All are scored on the whole validation
    split. Writes OUT/results.json, OUT/lineage.png (validation bits per byte against
    training time), OUT/report.md (table, plot, samples), OUT/config.yaml, OUT/data and one
    run folder per neural model. A run that fails or is interrupted removes OUT, so no
    half-written run is left. Example:

      lmlab lineage --corpus shakespeare --budget 90 --out runs/lineage
    """
    from lmlab.device import resolve_device, resolve_precision

    entries = _check(cfg)
    out = Path(cfg.out)
    if out.exists():  # an old lineage run, and --overwrite was given
        shutil.rmtree(out)
    log = sys.stderr if cfg.json else sys.stdout
    t_start = time.perf_counter()
    try:
        data = _prepare(cfg, out)
        data_dir = Path(cfg.data) if cfg.data is not None else out / "data"
        tokenizer = data.tokenizer()
        device = resolve_device(cfg.device)
        precision = resolve_precision(device, cfg.precision)
        results: list[dict[str, Any]] = []
        for entry in entries:
            print(f"[lineage] {entry.label}: {cfg.budget:g} s", file=log, flush=True)
            if entry.neural:
                r = _neural(cfg, data, data_dir, entry, out / entry.name, device)
            else:
                r = _ngram(cfg, data, tokenizer, entry)
            results.append(r)
            print(f"[lineage] {entry.name}: val bpb {r['val_bpb']:.4f}, ppl {r['val_ppl']:.2f}", file=log,
                  flush=True)
        settings = {
            "corpus": cfg.corpus if cfg.data is None else str(cfg.data), "tokenizer": data.meta["tokenizer"],
            "vocab_size": data.vocab_size, "train_tokens": int(len(data.train)),
            "val_tokens": int(len(data.val)), "val_bytes": int(data.meta["splits"]["val"]["bytes"]),
            "budget": cfg.budget, "device": str(device),
            "precision": precision, "block_size": cfg.block_size, "eval_stride": _eval_stride(cfg),
            "batch_size": cfg.batch_size,
            "prompt": cfg.prompt, "temperature": cfg.temperature, "top_k": cfg.top_k, "seed": cfg.seed,
            "total_seconds": round(time.perf_counter() - t_start, 1),
        }
        from lmlab.lineage.report import plot_curves, text_table, write_report

        title = f"{settings['corpus']}: {cfg.budget:g} s per model on {device}"
        plot_curves(results, out / PLOT, title)
        write_report(out / "report.md", results, settings, PLOT)
        save_config(cfg, out / "config.yaml")
        write_json(out / "results.json", {"settings": settings, "models": results})  # last: marks a whole run
    except BaseException as e:
        shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt):
            print(f"interrupted; removed the unfinished {out}", file=sys.stderr)
            return 130
        raise
    if cfg.json:
        print(json.dumps({"settings": settings, "models": [{k: v for k, v in r.items() if k != "curve"}
                                                           for r in results]}))
        return 0
    print()
    print(text_table(results))
    print(f"\nwrote {out}/report.md, {out}/{PLOT} and {out}/results.json "
          f"({settings['total_seconds']:.0f} s in all)")
    return 0
