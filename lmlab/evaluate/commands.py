"""CLI commands ``lmlab eval`` (perplexity and bits per byte of any model on prepared data, or
lm-evaluation-harness tasks through ``lmlab serve`` with ``--harness``) and ``lmlab longctx``
(passkey retrieval and MQAR by context length, and their training data)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.evaluate.harness_tasks import TASKS as HARNESS_TASKS


@dataclass
class EvalConfig:
    ckpt: Path | None = arg(None, "run folder or model.safetensors to evaluate")
    data: Path | None = arg(None, "prepared data folder (same tokenizer as the model)")
    pairs: Path | None = arg(None, "encoder-decoders: a file of source/target pairs (JSON lines with "
                                   "\"source\" and \"target\", or source<TAB>target) to score the target "
                                   "given the source")
    split: Literal["train", "val"] = arg("val", "which split to score")
    block_size: int | None = arg(None, "tokens per window (default: the model's context)")
    stride: int | None = arg(
        None, "slide the windows by this many tokens and score each one's last STRIDE, so every token "
        "has at least block-size - STRIDE tokens of context (default: the block size, no overlap)"
    )
    batch_size: int = arg(8, "windows per forward pass")
    max_tokens: int | None = arg(
        None, "score about this many tokens spread over the split (default: the whole split)"
    )
    pll_tokens: int = arg(1024, "encoders: tokens scored by pseudo-log-likelihood, each masked in turn "
                                "(one forward pass of its window per token; 0 skips it)")
    mask_prob: float = arg(0.15, "encoders: share of tokens masked for the masked-token loss "
                                 "(BERT's 80/10/10)")
    seed: int = arg(0, "encoders: seed of the masking (the figures repeat exactly for a seed)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("fp32", "autocast precision of the forward pass")
    json: bool = arg(False, "print the figures as one JSON object")
    harness: list[str] | None = arg(
        None, "run lm-evaluation-harness on these tasks (comma-separated) through 'lmlab serve' instead: "
        + ", ".join(HARNESS_TASKS))
    limit: int | None = arg(None, "--harness: score only the first N documents of each task")
    bootstrap_iters: int = arg(1000, "--harness: resamples for the standard errors of metrics without a "
                                     "formula (mcc, perplexity); 0 leaves those out")
    out: Path | None = arg(None, "--harness: folder for results.json, the samples, the task files, the "
                                 "server's log and config.yaml (default: RUN/harness)")


def evaluate(cfg: EvalConfig) -> int:
    """Score a model on prepared data: loss (nats/token), perplexity and bits per byte.

    The split is cut into non-overlapping windows (or windows sliding by --stride, each
    scoring only its last STRIDE tokens), so every token after the first is predicted
    once; bits per byte = total nats / ln 2 / UTF-8 bytes of the scored text (the
    split's byte count, or tokens x bytes-per-token for a partial pass with
    --max-tokens). Example: lmlab eval --ckpt runs/tiny --data data/shk --stride 64 --json

    Encoders (BERT, RoBERTa) get what fits them instead: masked-token loss and accuracy
    under BERT's masking (seeded, so repeatable; --max-tokens caps the windows) and
    pseudo-log-likelihood bits per byte (Salazar et al. 2020; --pll-tokens caps it). These
    are not comparable to a causal LM's figures.

    An encoder-decoder (Transformer, T5, BART) gets the conditional bits per byte of a
    target given its source, which is not comparable to a causal LM's either: on --pairs
    FILE (JSON lines {"source": ..., "target": ...} or source<TAB>target), or on --data,
    whose windows of --block-size tokens are cut in halves (the second half is the target,
    the first its source). On --data it also reports the loss of its own pretraining
    objective (T5: span corruption, BART and the Transformer: denoising) on windows with
    fixed noise, the figure `lmlab pretrain` validates with (no bits per byte: it scores a
    corrupted subset of the text). Example: lmlab eval --ckpt runs/t5 --pairs dev.jsonl --json
    """
    from lmlab.data.prepare import load_prepared
    from lmlab.device import resolve_device
    from lmlab.evaluate.perplexity import evaluate_perplexity
    from lmlab.loader import check_same_tokenizer, load_model_any
    from lmlab.models.encoder import Encoder

    if cfg.harness is not None:
        return _harness(cfg)
    if cfg.limit is not None or cfg.out is not None:
        raise LmlabError("--limit and --out go with --harness TASKS; leave them out for perplexity")
    if cfg.ckpt is None or (cfg.data is None and cfg.pairs is None):
        raise LmlabError("eval needs --ckpt RUN (or a model.safetensors) and --data DIR (prepared data); "
                         "an encoder-decoder also takes --pairs FILE")
    for name in ("batch_size", "block_size", "max_tokens"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise LmlabError(f"--{name.replace('_', '-')} must be at least 1, got {value}; give a positive "
                             "number or leave it out for the default")
    device = resolve_device(cfg.device)
    model = load_model_any(cfg.ckpt, device)
    from lmlab.models.encdec import EncoderDecoder

    if isinstance(model, EncoderDecoder):
        return _evaluate_encdec(cfg, model, device)
    if cfg.pairs is not None or cfg.data is None:
        raise LmlabError(f"--pairs is for encoder-decoders; this {type(model).__name__} is scored on "
                         "--data DIR (prepared data)")
    data = load_prepared(cfg.data)
    if model.config.vocab_size < data.vocab_size:
        raise LmlabError(
            f"the model's vocabulary ({model.config.vocab_size}) is smaller than the data's "
            f"({data.vocab_size}); evaluate on data prepared with the model's tokenizer"
        )
    check_same_tokenizer(cfg.ckpt, cfg.data)
    block = cfg.block_size or model.config.block_size
    if isinstance(model, Encoder):
        return _evaluate_encoder(cfg, model, data, block, device)
    tokens = data.train if cfg.split == "train" else data.val
    stride = block if cfg.stride is None else cfg.stride
    if not 0 < stride <= block:
        raise LmlabError(f"--stride must be between 1 and the block size {block} (got {cfg.stride})")
    windows = None if cfg.max_tokens is None else max(1, math.ceil(cfg.max_tokens / stride))
    r = evaluate_perplexity(
        model,
        tokens,
        block_size=block,
        batch_size=cfg.batch_size,
        device=device,
        precision=cfg.precision,
        max_windows=windows,
        stride=stride,
        split_bytes=data.meta["splits"][cfg.split]["bytes"],
        bytes_per_token=data.bytes_per_token(cfg.split),
    )
    figures = {
        "split": cfg.split,
        "loss": r.loss,
        "perplexity": r.perplexity,
        "bits_per_byte": r.bits_per_byte,
        "tokens": r.tokens,
        "bytes": r.bytes,
        "windows": r.windows,
        "full_pass": r.full_pass,
        "block_size": block,
        "stride": stride,
    }
    if cfg.json:
        print(json.dumps(figures))
    else:
        print(
            f"{cfg.split}: loss {r.loss:.4f} nats/token, perplexity {r.perplexity:.3f}, "
            f"bits per byte {r.bits_per_byte:.4f} ({r.tokens:,} tokens in {r.windows} windows"
            f"{f' sliding by {stride}' if stride < block else ''}{'' if r.full_pass else ', partial pass'})"
        )
    return 0


def _harness(cfg: EvalConfig) -> int:
    """lm-evaluation-harness tasks through 'lmlab serve' (see evaluate's docstring)."""
    from lmlab.evaluate.harness import require_lm_eval, results_table, run_harness
    from lmlab.evaluate.harness_tasks import resolve_tasks
    from lmlab.fileio import write_json, write_text

    require_lm_eval()
    resolve_tasks(cfg.harness or [])
    if cfg.ckpt is None:
        raise LmlabError("--harness needs --ckpt RUN (a decoder run folder with its tokenizer.json)")
    if cfg.data is not None or cfg.pairs is not None:
        raise LmlabError("--harness scores lm-eval tasks, not --data or --pairs; leave those out")
    folder = Path(cfg.ckpt) if Path(cfg.ckpt).is_dir() else Path(cfg.ckpt).parent
    out = cfg.out or folder / "harness"
    r = run_harness(Path(cfg.ckpt), cfg.harness or [], out, limit=cfg.limit, device=cfg.device,
                    bootstrap_iters=cfg.bootstrap_iters)
    from lm_eval.utils import handle_non_serializable

    rows = [vars(row) for row in r.rows]
    keep = ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config",
            "lm_eval_version", "date")
    record = {"ckpt": str(cfg.ckpt), "tasks": list(dict.fromkeys(cfg.harness or [])), "limit": cfg.limit,
              "rows": rows, "documents": r.documents, "model_args": r.model_args,
              "lm_eval": json.loads(json.dumps({k: r.raw[k] for k in keep if k in r.raw},
                                               default=handle_non_serializable))}
    write_json(out / "results.json", record)
    for task, samples in r.samples.items():
        write_text(out / f"samples_{task}.jsonl", "".join(
            json.dumps(s, default=handle_non_serializable, ensure_ascii=False) + "\n" for s in samples))
    save_config(cfg, out / "config.yaml")
    if cfg.json:
        print(json.dumps({"rows": rows, "documents": r.documents, "out": str(out)}))
        return 0
    counts = ", ".join(f"{t}: {n} documents" for t, n in r.documents.items())
    print(f"lm-evaluation-harness through lmlab serve ({counts})")
    print(results_table(r.rows))
    print(f"wrote {out / 'results.json'}, the samples and the task files ({out / 'tasks'})")
    return 0


def _evaluate_encdec(cfg: EvalConfig, model, device) -> int:
    """Conditional bits per byte of an encoder-decoder on --pairs or on --data's windows cut in halves."""
    import numpy as np

    from lmlab.data.prepare import load_prepared
    from lmlab.evaluate.conditional import (
        NOTE,
        encode_pairs,
        evaluate_conditional,
        objective_pairs,
        read_pairs,
        window_pairs,
    )
    from lmlab.loader import check_same_tokenizer, load_tokenizer_any

    eos = model.config.eos_token_id
    objective: dict = {}
    if cfg.pairs is not None:
        tokenizer = load_tokenizer_any(cfg.ckpt)
        if tokenizer is None:
            raise LmlabError(f"no tokenizer.json beside {cfg.ckpt}; --pairs needs the model's tokenizer "
                             "there")
        examples = encode_pairs(read_pairs(cfg.pairs), tokenizer, eos)
        if cfg.max_tokens is not None:  # the first pairs holding about that many target tokens
            counts = np.cumsum([len(e.target) for e in examples])
            examples = examples[: int(np.searchsorted(counts, cfg.max_tokens)) + 1]
        source = f"pairs {cfg.pairs}"
        block = None
    else:
        data = load_prepared(cfg.data)
        if model.config.vocab_size < data.vocab_size:
            raise LmlabError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the data's "
                             f"({data.vocab_size}); evaluate on data prepared with the model's tokenizer")
        check_same_tokenizer(cfg.ckpt, cfg.data)
        block = cfg.block_size or model.config.block_size
        positions = model.config.max_positions
        if positions is not None and block - block // 2 + 1 > positions:
            raise LmlabError(f"--block-size {block} makes targets of {block - block // 2 + 1} tokens (end "
                             f"included) but the model has {positions} target positions; use --block-size "
                             f"{2 * (positions - 1)} or less")
        tokens = data.train if cfg.split == "train" else data.val
        per_window = block - block // 2
        limit = None if cfg.max_tokens is None else max(1, math.ceil(cfg.max_tokens / per_window))
        examples = window_pairs(tokens, block, data.bytes_per_token(cfg.split), eos, limit)
        source = f"{cfg.split} windows of {block} tokens cut in halves (first half -> second half)"
        name = model.config.objective
        windows = None if cfg.max_tokens is None else max(1, math.ceil(cfg.max_tokens / block))
        try:
            own = objective_pairs(tokens, data.tokenizer(), name, block, windows)
        except LmlabError as e:  # e.g. data prepared without --mask-tokens
            objective = {"objective": name, "objective_skipped": str(e)}
        else:
            o = evaluate_conditional(model, own, batch_size=cfg.batch_size, device=device,
                                     precision=cfg.precision)
            objective = {"objective": name, "objective_loss": o.loss, "objective_tokens": o.tokens,
                         "objective_examples": o.examples}
    r = evaluate_conditional(model, examples, batch_size=cfg.batch_size, device=device,
                             precision=cfg.precision)
    figures = {"mode": "conditional", "on": source, "loss": r.loss, "perplexity": r.perplexity,
               "bits_per_byte": r.bits_per_byte, "tokens": r.tokens, "bytes": r.bytes, "examples": r.examples,
               "block_size": block, **objective, "note": NOTE}
    if cfg.json:
        print(json.dumps(figures))
        return 0
    if "objective_loss" in objective:
        print(f"{cfg.split}: {objective['objective']} loss {objective['objective_loss']:.4f} nats/target "
              f"token (the model's pretraining objective, fixed noise; {objective['objective_tokens']:,} "
              f"target tokens in {objective['objective_examples']} windows)")
    elif objective:
        print(f"note: no {objective['objective']} loss: {objective['objective_skipped']}")
    bpb = "n/a" if r.bits_per_byte is None else f"{r.bits_per_byte:.4f}"
    print(f"{source}: loss {r.loss:.4f} nats/target token, perplexity {r.perplexity:.3f}, conditional "
          f"bits per byte {bpb} ({r.tokens:,} target tokens in {r.examples} examples)")
    print(f"note: {NOTE}")
    return 0


def _evaluate_encoder(cfg: EvalConfig, model, data, block: int, device) -> int:
    """Masked-token loss/accuracy and pseudo-log-likelihood bits per byte of an encoder."""
    from lmlab.evaluate.masked import NOT_COMPARABLE, evaluate_masked_lm

    if cfg.stride is not None:
        raise LmlabError("--stride is for causal LMs; an encoder reads each window whole, drop --stride")
    tokens = data.train if cfg.split == "train" else data.val
    r = evaluate_masked_lm(model, data.tokenizer(), tokens, block_size=block, batch_size=cfg.batch_size,
                           device=device, precision=cfg.precision, max_tokens=cfg.max_tokens,
                           pll_tokens=cfg.pll_tokens, seed=cfg.seed, mask_prob=cfg.mask_prob,
                           bytes_per_token=data.bytes_per_token(cfg.split))
    figures = {"split": cfg.split, "objective": "mlm", **r.as_dict(), "mask_prob": cfg.mask_prob,
               "seed": cfg.seed, "block_size": block, "note": NOT_COMPARABLE}
    if cfg.json:
        print(json.dumps(figures))
        return 0
    print(f"{cfg.split}: masked-token loss {r.masked_loss:.4f} nats, accuracy {r.masked_accuracy:.2%} "
          f"({r.masked_tokens:,} masked tokens in {r.windows} windows, seed {cfg.seed})")
    if r.pll_tokens:
        bpb = f"{r.pll_bits_per_byte:.4f}" if r.pll_bits_per_byte is not None else "n/a"
        print(f"{cfg.split}: pseudo-log-likelihood {r.pll_nats_per_token:.4f} nats/token, "
              f"bits per byte {bpb}, pseudo-perplexity {r.pseudo_perplexity:.3f} ({r.pll_tokens:,} tokens)")
    print(f"note: {NOT_COMPARABLE}")
    return 0


@dataclass
class TaskOptions:
    n_pairs: int = arg(8, "mqar: key-value pairs in the context")
    n_queries: int | None = arg(None, "mqar: keys asked for at the end (default: all the pairs, shuffled)")
    key_len: int = arg(2, "mqar: letters per key")
    value_len: int = arg(2, "mqar: digits per value")


@dataclass
class LongctxDataConfig:
    task: str | None = arg(None, "passkey or mqar", positional=True)
    length: int = arg(256, "tokens per example the model reads (train with --block-size LENGTH; pretrain "
                           "takes it from the data when --block-size is not given)")
    min_length: int | None = arg(None, "curriculum: draw each example's length uniformly from "
                                       "[MIN_LENGTH, LENGTH] (shorter ones are padded, the padding never "
                                       "scored); default: all of LENGTH")
    train_examples: int = arg(20000, "training examples")
    val_examples: int = arg(200, "validation examples")
    loss: Literal["answer", "all"] = arg("answer", "tokens trained on: answer (the key / the values only) or "
                                                   "all (every token of the example)")
    task_options: TaskOptions = arg(TaskOptions(), "MQAR's shape")
    tokenizer_file: Path | None = arg(None, "a tokenizer.json to use instead of the character-level one "
                                            "(e.g. a model's own, to fine-tune it; it needs a <|pad|> token)")
    seed: int = arg(0, "seed of the keys, values and depths")
    out: Path | None = arg(None, "output folder (default: runs/data/longctx-TASK-LENGTH)")
    overwrite: bool = arg(False, "replace data made from other settings in --out")
    json: bool = arg(False, "print the resulting meta as JSON")


def longctx_data(cfg: LongctxDataConfig) -> int:
    """Write passkey or MQAR examples as prepared data that 'lmlab pretrain --data' trains on.

    Each example is exactly LENGTH + 1 tokens, one training window (pretrain draws whole
    examples, never cuts one), with a random depth of the needle and, with --min-length, a
    random length (the curriculum). A loss mask makes training score only the answer tokens
    (--loss answer) or every real token (--loss all); padding is never scored. The default
    tokenizer is character-level, so a digit is one token. Example:
      lmlab longctx data passkey --length 256 --min-length 128 --out runs/data/passkey256
      lmlab pretrain --model llama-tiny --data runs/data/passkey256 --out runs/pk --max-steps 600
    """
    from lmlab.evaluate.longctx_tasks import write_task_data

    spec = _task_spec(cfg.task, cfg.task_options)
    out = cfg.out or Path("runs") / "data" / f"longctx-{spec.task}-{cfg.length}"
    cfg.out = out
    meta, reused = write_task_data(out, spec, cfg.length, train_examples=cfg.train_examples,
                                   val_examples=cfg.val_examples, seed=cfg.seed, min_length=cfg.min_length,
                                   loss=cfg.loss, tokenizer_file=cfg.tokenizer_file, overwrite=cfg.overwrite)
    save_config(cfg, out / "config.yaml")
    if cfg.json:
        print(json.dumps({**meta, "out": str(out), "reused": reused}))
        return 0
    s = meta["splits"]
    print(f"{'reused' if reused else 'wrote'} {out}: {spec.task} examples of {cfg.length + 1} tokens "
          f"({s['train']['documents']:,} train, {s['val']['documents']:,} val), {meta['tokenizer']} "
          f"tokenizer, vocab {meta['vocab_size']}, loss on "
          f"{'the answers' if cfg.loss == 'answer' else 'every token'}")
    print(f"train it: lmlab pretrain --model llama-tiny --data {out} --out RUN --block-size {cfg.length}")
    return 0


def _task_spec(task: str | None, opts: TaskOptions):
    """The TaskSpec of ``task`` with ``opts`` (raises LmlabError for a missing or unknown task)."""
    from lmlab.evaluate.longctx_tasks import TASKS, TaskSpec

    if task is None:
        raise LmlabError(f"give the task: one of {', '.join(TASKS)}")
    return TaskSpec(task, opts.n_pairs, opts.n_queries, opts.key_len, opts.value_len)


@dataclass
class LongctxConfig:
    ckpt: list[str] = arg([], "run folder(s) to evaluate, comma-separated (one line per model in the table "
                               "and the plot)")
    lengths: list[int] = arg([], "context lengths in tokens, comma-separated, e.g. 256,1024,4096")
    depths: list[float] = arg([0.0, 0.25, 0.5, 0.75, 1.0],
                              "depths of the needle in the filler (0 = the start of the context, 1 = just "
                              "before the question)")
    samples: int = arg(10, "examples per length and depth")
    seed: int = arg(0, "seed of the keys (each example is fixed by seed, length, depth and its index)")
    batch_size: int = arg(1, "examples read at once (the peak memory is that of a batch)")
    isolate: bool = arg(True, "evaluate each length in a fresh process, so its peak memory is its own "
                              "(--no-isolate: all in this process, faster)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("fp32", "autocast precision of the forward pass")
    out: Path | None = arg(None, "folder for longctx.json, longctx.png and config.yaml (default: "
                                 "the first run's folder/longctx-TASK)")
    json: bool = arg(False, "print the table as one JSON object")


@dataclass
class MqarConfig(LongctxConfig):
    task_options: TaskOptions = arg(TaskOptions(), "MQAR's shape (as the model was trained on)")


def passkey(cfg: LongctxConfig) -> int:
    """Passkey retrieval (Mohtashami & Jaggi 2023) by context length and depth, with peak memory.

    A 5-digit key hidden at each --depths in repeated filler text, then "What is the pass key?
    The pass key is "; an answer is right when the model's greedy (argmax) prediction of every
    digit is the key's, teacher-forced. Lengths count the tokens the model reads. A length
    beyond the model's block_size: Infini-attention reads it, a RoPE model is extrapolated
    (its row says so), learned positions say "exceeds block_size". Peak memory is that of
    reading one length (a fresh process per length unless --no-isolate). Writes longctx.json,
    longctx.png and config.yaml to --out. Example:
      lmlab longctx passkey --ckpt runs/pk --lengths 256,1024,4096 --samples 20
    """
    return _longctx("passkey", cfg, TaskOptions())


def mqar(cfg: MqarConfig) -> int:
    """Multi-query associative recall (Arora et al. 2023, Zoology) by context length and depth.

    The context holds --n-pairs key=value pairs (keys of letters, values of digits) at each
    --depths in filler text, then "Recall: " and --n-queries keys, each followed by its value;
    the accuracy is the share of values predicted exactly (teacher-forced argmax at each value
    token, as Zoology scores it). Otherwise as 'lmlab longctx passkey'. Example:
      lmlab longctx mqar --ckpt runs/mq --lengths 256,1024 --n-pairs 8
    """
    return _longctx("mqar", cfg, cfg.task_options)


def _longctx(task: str, cfg: LongctxConfig, opts: TaskOptions) -> int:
    from lmlab.console import progress
    from lmlab.device import resolve_device
    from lmlab.evaluate.longctx import (
        LengthJob,
        check_model,
        evaluate_length,
        evaluate_length_isolated,
        plot_results,
        results_table,
    )
    from lmlab.evaluate.longctx_tasks import TaskGenerator
    from lmlab.fileio import write_json
    from lmlab.loader import load

    spec = _task_spec(task, opts)
    if not cfg.ckpt or not cfg.lengths:
        raise LmlabError(f"longctx {task} needs --ckpt RUN and --lengths, e.g. --ckpt runs/pk "
                         "--lengths 256,1024")
    bad = [n for n in cfg.lengths if n < 1]
    if bad:
        raise LmlabError(f"--lengths must be positive numbers of tokens, got {bad[0]}")
    if not cfg.depths or any(not 0.0 <= d <= 1.0 for d in cfg.depths):
        raise LmlabError(f"--depths must lie in [0, 1] (0 = the start, 1 = the end), got {cfg.depths}")
    if cfg.samples < 1 or cfg.batch_size < 1:
        raise LmlabError("--samples and --batch-size must be at least 1")
    device = resolve_device(cfg.device)
    lengths = sorted(set(cfg.lengths))
    names = _model_names(cfg.ckpt)
    loaded = []
    for ckpt in cfg.ckpt:  # check every model and length before the long part
        model, tokenizer = load(ckpt, device)
        check_model(model)
        if tokenizer is None:
            raise LmlabError(f"no tokenizer.json beside {ckpt}; the tasks are written in the model's "
                             "tokenizer")
        gen = TaskGenerator(tokenizer, spec, cfg.seed)
        need = gen.min_length()
        if lengths[0] < need:
            raise LmlabError(f"a {task} example needs at least {need} tokens with {ckpt}'s tokenizer "
                             f"(needle and question); --lengths {lengths[0]} is too short")
        loaded.append((model, gen))
    out = cfg.out or Path(cfg.ckpt[0]) / f"longctx-{task}"
    rows = []
    per_length = len(cfg.depths) * cfg.samples
    with progress(total=len(cfg.ckpt) * len(lengths) * per_length, desc=f"longctx {task}", unit="ex") as bar:
        for ckpt, name, (model, gen) in zip(cfg.ckpt, names, loaded):
            for length in lengths:
                bar.set_postfix_str(f"{name} @ {length}")
                if cfg.isolate:
                    job = LengthJob(str(ckpt), spec.to_dict(), cfg.seed, length, list(cfg.depths),
                                    cfg.samples, cfg.batch_size, str(device), cfg.precision)
                    r = evaluate_length_isolated(job)
                    bar.update(per_length)
                else:
                    r = evaluate_length(model, gen, length, list(cfg.depths), cfg.samples,
                                        batch_size=cfg.batch_size, device=device, precision=cfg.precision,
                                        on_batch=bar.update)
                    if r.accuracy is None:
                        bar.update(per_length)
                rows.append({"model": name, "ckpt": str(ckpt), "block_size": model.config.block_size,
                             "attn": model.config.attn, **r.to_dict()})
    record = {"task": task, "spec": spec.to_dict(), "scoring": "teacher-forced greedy exact match",
              "depths": list(cfg.depths), "samples": cfg.samples, "seed": cfg.seed,
              "batch_size": cfg.batch_size, "isolated": cfg.isolate, "device": str(device), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "longctx.json", record)
    plot = plot_results(rows, list(cfg.depths), task, out / "longctx.png")
    save_config(cfg, out / "config.yaml")
    if cfg.json:
        print(json.dumps({**record, "out": str(out), "plot": str(plot)}))
        return 0
    print(f"{task}: teacher-forced greedy exact match, {cfg.samples} examples per length and depth, "
          f"batch {cfg.batch_size}, peak memory of reading one length on {device}")
    print(results_table(rows, list(cfg.depths)))
    print(f"wrote {out / 'longctx.json'} and {plot}")
    return 0


def _model_names(ckpts: list[str]) -> list[str]:
    """Short names of the runs for the table (their folder names, whole paths where those repeat)."""
    short = [Path(c).name or str(c) for c in ckpts]
    return [s if short.count(s) == 1 else str(c) for s, c in zip(short, ckpts)]
