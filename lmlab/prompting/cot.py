"""Chain of thought on arithmetic: a scratchpad against a direct answer at equal training compute, and
self-consistency against greedy decoding.

``lmlab cot compare`` trains two decoders of one shape on the same problems (:mod:`lmlab.prompting.
scratchpad`), one on direct answers and one on scratchpad targets, for the same training FLOPs: both
read rows of the same ``batch_size x block_size`` tokens packed with whole problems, so equal FLOPs
is equal steps, and the direct model sees several times more problems (its lines are shorter). Each
is scored by exact match of the final answer of its greedy generation, by digit count of the
operands, on held-out problems of the trained lengths and of longer ones.

``lmlab cot eval`` scores one trained model by greedy decoding and by self-consistency (Wang et al.
2023): ``K`` chains sampled at a temperature, the answer of each extracted, the majority answer
taken (chains without an answer do not vote; a tie goes to the answer sampled first).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.prompting.scratchpad import (
    NEWLINE,
    VOCAB_SIZE,
    PackedProblems,
    Problem,
    check_op,
    decode_ids,
    encode,
    extract_answer,
    held_out,
    longest_line,
    majority_vote,
    parse_digits,
)
from lmlab.train.options import OptimOptions

FORMATS = ("direct", "scratchpad")
TASK_FILE = "task.json"
RESULT_FILES = ("results.json", "results.csv", "cot.png", "config.yaml", *FORMATS)
DECODE_ROWS = 512  # rows decoded at once
SLACK = 8  # tokens a generation may run past the longest true target before it is cut off


# ---------------------------------------------------------------- models and decoding


def read_json(path: Path) -> Any:
    """Return the JSON object in ``path``; raise LmlabError naming a damaged file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path} is damaged ({e}); run lmlab cot compare again") from None


def build_model(preset: str, d_model: int, n_layer: int, n_head: int, block_size: int) -> nn.Module:
    """Return a randomly initialised decoder of ``preset``'s family (``llama-tiny``: RoPE, ``gpt2-tiny``:
    learned positions) with the arithmetic vocabulary and the given shape (multi-head attention)."""
    from lmlab.models.decoder import Decoder
    from lmlab.models.registry import get_preset, preset_family

    if preset_family(preset).arch != "decoder":
        raise LmlabError(f"--preset {preset} is not a decoder; use llama-tiny or gpt2-tiny")
    if d_model % n_head or (d_model // n_head) % 2:
        raise LmlabError(f"--d-model {d_model} must be --n-head {n_head} times an even head width; "
                         "e.g. --d-model 64 --n-head 4")
    cfg = get_preset(preset, vocab_size=VOCAB_SIZE, block_size=block_size, n_layer=n_layer, d_model=d_model,
                     n_head=n_head, n_kv_heads=n_head)
    return Decoder(cfg)


def generate_targets(model: nn.Module, problems: list[Problem], scratch: bool, samples: int = 1,
                     temperature: float = 0.0, seed: int = 0) -> list[list[str]]:
    """Return ``samples`` generated targets (text after the prompt) per problem, batched with the KV cache.

    Greedy when ``temperature == 0``; otherwise sampled, seeded by ``seed`` (each batch of
    rows gets its own seed from it). Generation stops at the newline or after the longest
    true target of the problems plus 8 tokens, within the model's context.
    """
    from lmlab.generate import decode

    if not problems:
        return []
    block = model.config.block_size
    prompts = [encode(p.prompt) for p in problems]
    longest_prompt = max(map(len, prompts))
    longest_target = max(len(p.target(scratch)) for p in problems)
    if longest_prompt + longest_target > block:
        raise LmlabError(f"the longest held-out line needs {longest_prompt + longest_target} tokens, more "
                         f"than the model's context of {block}; lower --test-digits or train with a larger "
                         "--block-size")
    max_new = min(longest_target + SLACK, block - longest_prompt)
    rows = [p for p in prompts for _ in range(samples)]
    texts: list[str] = []
    for i, start in enumerate(range(0, len(rows), DECODE_ROWS)):
        chunk = rows[start : start + DECODE_ROWS]
        new = decode(model, chunk, max_new, temperature=temperature, eos_id=NEWLINE,
                     seed=None if temperature == 0 else seed * 1_000_003 + i)
        texts += [decode_ids(ids) for ids in new]
    return [texts[i * samples : (i + 1) * samples] for i in range(len(problems))]


def greedy_scores(problems: list[Problem], texts: list[str], scratch: bool) -> dict[str, float]:
    """Score one generated target per problem: ``accuracy`` (the extracted answer is right),
    ``chain_exact`` (the whole target, scratchpad included, is right), ``answered`` (an answer
    could be extracted) and ``gen_tokens`` (mean tokens generated)."""
    n = len(problems)
    answers = [extract_answer(t, scratch) for t in texts]
    return {"accuracy": sum(a == p.answer for a, p in zip(answers, problems)) / n,
            "chain_exact": sum(t == p.target(scratch) for t, p in zip(texts, problems)) / n,
            "answered": sum(a is not None for a in answers) / n,
            "gen_tokens": sum(len(t) for t in texts) / n}


def vote_scores(problems: list[Problem], samples: list[list[str]], scratch: bool) -> dict[str, float]:
    """Score ``K`` sampled targets per problem: ``majority`` (the majority answer is right),
    ``sample`` (mean accuracy of one sample) and ``any`` (some sample is right: the best a vote
    could do)."""
    n = len(problems)
    maj = one = hit = 0.0
    for p, texts in zip(problems, samples):
        answers = [extract_answer(t, scratch) for t in texts]
        right = [a == p.answer for a in answers]
        maj += majority_vote(answers) == p.answer
        one += sum(right) / len(right)
        hit += any(right)
    return {"majority": maj / n, "sample": one / n, "any": hit / n}


# ---------------------------------------------------------------- training


@dataclass
class CompareConfig:
    out: Path | None = arg(None, "folder for results.json, results.csv, cot.png, config.yaml and the two "
                                 "runs direct/ and scratchpad/")
    op: str = arg("add", "add or mul")
    train_digits: str = arg("1-4", "operand digit counts trained on, LO-HI (both operands have the same "
                                   "count)")
    test_digits: str = arg("1-6", "operand digit counts scored, LO-HI; counts above --train-digits measure "
                                  "length generalisation")
    flops: float = arg(2e12, "training FLOPs of each model (forward + backward, PaLM's count, as lineage's "
                             "--budget-flops); equal for both formats")
    preset: str = arg("llama-tiny", "decoder family: llama-tiny (RoPE) or gpt2-tiny (learned positions)")
    d_model: int = arg(64, "model width")
    n_layer: int = arg(2, "Transformer blocks")
    n_head: int = arg(4, "attention heads")
    block_size: int = arg(128, "tokens per training row (whole problems packed) and the model's context")
    batch_size: int = arg(8, "rows per step (small batches, many steps: what these tiny models learn "
                                "fastest from)")
    optim: OptimOptions = arg(OptimOptions(lr=3e-3, min_lr=3e-4, warmup_steps=100, beta2=0.98),
                              "AdamW and its schedule (warmup capped at a tenth of the steps)")
    test_per_digits: int = arg(200, "held-out problems per digit count (at most a quarter of those there "
                                    "are)")
    seed: int = arg(0, "seed of the held-out problems, the training problems and the initial weights")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("fp32", "autocast precision of training (auto: bf16 where supported)")
    threads: int = arg(1, "CPU threads for PyTorch (these small models run fastest on one)")
    overwrite: bool = arg(False, "replace the results already in --out")
    progress: bool = arg(True, "show a progress bar per model (--no-progress hides it)")
    json: bool = arg(False, "print the results as one JSON object")


@dataclass
class _Task:
    op: str
    train: tuple[int, int]
    test: tuple[int, int]
    tests: dict[int, list[Problem]]


def _task(cfg: CompareConfig) -> _Task:
    """Validate the options; return the digit ranges and the held-out problems."""
    if cfg.out is None:
        raise LmlabError("no output folder given; pass --out DIR")
    op = check_op(cfg.op)
    train = parse_digits(cfg.train_digits, "--train-digits")
    test = parse_digits(cfg.test_digits, "--test-digits")
    for flag, value in (("--d-model", cfg.d_model), ("--n-layer", cfg.n_layer), ("--n-head", cfg.n_head),
                        ("--block-size", cfg.block_size), ("--batch-size", cfg.batch_size),
                        ("--threads", cfg.threads)):
        if value < 1:
            raise LmlabError(f"{flag} must be at least 1, got {value}")
    if not cfg.flops > 0:
        raise LmlabError(f"--flops must be positive, got {cfg.flops:g}")
    need = max(longest_line(op, test[1], True), longest_line(op, train[1], True) - 1)
    if need > cfg.block_size:
        raise LmlabError(f"a {test[1]}-digit {op} scratchpad line is {need} tokens, more than --block-size "
                         f"{cfg.block_size}; raise --block-size to {need} or lower --test-digits")
    cfg.optim.check()
    return _Task(op, train, test, held_out(op, test, cfg.test_per_digits, cfg.seed))


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` holding results unless ``overwrite``; then remove only what this command wrote."""
    found = [name for name in RESULT_FILES if (out / name).exists()]
    if found and not overwrite:
        raise LmlabError(f"{out} already holds results ({', '.join(found)}); pass --overwrite to replace "
                         "them or choose another --out")
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def train_format(cfg: CompareConfig, task: _Task, fmt: str, device: torch.device) -> dict[str, Any]:
    """Train the ``fmt`` model (direct or scratchpad) for ``cfg.flops`` into OUT/FMT; return its
    facts (steps, tokens, FLOPs, problems seen, seconds, parameters)."""
    import dataclasses

    from lmlab.fileio import write_json
    from lmlab.lineage.budget import Budget
    from lmlab.models.registry import save_model
    from lmlab.train.loop import Trainer, TrainSettings
    from lmlab.train.objectives import causal_lm_loss

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.preset, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.block_size)
    fpt = model.flops_per_token(cfg.block_size)
    steps = Budget("flops", cfg.flops).steps(fmt, fpt, cfg.batch_size * cfg.block_size)
    exclude = {p.key() for ps in task.tests.values() for p in ps}
    batches = PackedProblems(task.op, task.train, fmt == "scratchpad", cfg.block_size, cfg.batch_size,
                             exclude, cfg.seed, device)
    optim = dataclasses.replace(cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, steps // 10))
    settings = TrainSettings(optim=optim, precision=cfg.precision, max_steps=steps,
                             log_interval=max(1, min(50, steps // 10)), show_progress=cfg.progress)
    run = Path(cfg.out) / fmt
    trainer = Trainer(model, causal_lm_loss, batches, settings, out_dir=run, device=device,
                      write_weights=lambda m, p: save_model(m, p), model_config=model.config.to_dict(),
                      flops_per_token=fpt)
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.interrupted:
        raise LmlabError(f"training of the {fmt} model was interrupted; run the command again with "
                         "--overwrite")
    shutil.rmtree(run / "state", ignore_errors=True)  # a finished comparison is not resumed
    facts = {"format": fmt, "steps": result.step, "tokens": result.tokens, "flops": fpt * result.tokens,
             "problems_seen": batches.problems_seen, "train_seconds": round(seconds, 2),
             "params": model.num_params()}
    write_json(run / TASK_FILE, {"op": task.op, "format": fmt, "train_digits": list(task.train),
                                 "test_digits": list(task.test), "test_per_digits": cfg.test_per_digits,
                                 "seed": cfg.seed, **facts})
    return facts | {"model": model}


def run_compare(cfg: CompareConfig) -> int:
    """Train the direct and the scratchpad model at equal compute, score both by digit count, write
    OUT's results and print them (the command ``lmlab cot compare``); return 0."""
    from lmlab.device import resolve_device, set_threads
    from lmlab.fileio import write_json

    task = _task(cfg)
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    out = Path(cfg.out)
    _prepare_out(out, cfg.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if not cfg.json:
        example = task.tests[task.test[0]][0]
        print(f"{task.op}, trained on {_span(task.train)} digits, scored on {_span(task.test)}; "
              f"{cfg.flops:.3g} training FLOPs per model; e.g. {example.prompt}{example.target(True)}",
              end="", flush=True)
    t0 = time.perf_counter()
    runs, scores = [], {}
    for fmt in FORMATS:
        facts = train_format(cfg, task, fmt, device)
        model = facts.pop("model")
        runs.append(facts)
        scores[fmt] = {n: greedy_scores(ps, [t[0] for t in generate_targets(model, ps, fmt == "scratchpad")],
                                        fmt == "scratchpad")
                       for n, ps in task.tests.items()}
    rows = [{"digits": n, "trained": task.train[0] <= n <= task.train[1], "problems": len(task.tests[n]),
             **{f"{fmt}_{k}": v for fmt in FORMATS for k, v in scores[fmt][n].items()}}
            for n in sorted(task.tests)]
    record = {"op": task.op, "train_digits": list(task.train), "test_digits": list(task.test),
              "preset": cfg.preset, "d_model": cfg.d_model, "n_layer": cfg.n_layer, "flops": cfg.flops,
              "runs": runs, "rows": rows, "wall_s": round(time.perf_counter() - t0, 2), "out": str(out)}
    _write_csv(rows, out / "results.csv")
    record["plots"] = [str(plot_compare([record], out / "cot.png"))]
    write_json(out / "results.json", record)
    if cfg.json:
        print(json.dumps(record))
        return 0
    print(compare_table(record))
    print(f"wrote {out / 'results.json'}, results.csv and cot.png in {record['wall_s']:.0f}s")
    return 0


def _span(r: tuple[int, int] | list[int]) -> str:
    return f"{r[0]}" if r[0] == r[1] else f"{r[0]}-{r[1]}"


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv
    import io

    from lmlab.fileio import write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def compare_table(record: dict[str, Any]) -> str:
    """Return a comparison record as a text table: per digit count, each format's accuracy, the
    scratchpad's whole-chain exact match and the tokens each generates."""
    runs = {r["format"]: r for r in record["runs"]}
    lines = [f"{'format':<11} {'steps':>6} {'train FLOPs':>11} {'problems seen':>13} {'seconds':>8}"]
    lines += [f"{f:<11} {runs[f]['steps']:>6} {runs[f]['flops']:>11.3g} {runs[f]['problems_seen']:>13,} "
              f"{runs[f]['train_seconds']:>8.1f}" for f in FORMATS]
    lines.append("")
    lines.append(f"{'digits':>6} {'':8} {'direct':>7} {'scratchpad':>10} {'chain exact':>11} "
                 f"{'generated tokens (direct/scratchpad)'}")
    for r in record["rows"]:
        lines.append(f"{r['digits']:>6} {'trained' if r['trained'] else 'longer':<8} "
                     f"{r['direct_accuracy']:>7.3f} {r['scratchpad_accuracy']:>10.3f} "
                     f"{r['scratchpad_chain_exact']:>11.3f} "
                     f"{r['direct_gen_tokens']:>4.1f}/{r['scratchpad_gen_tokens']:.1f}")
    return "\n".join(lines)


def plot_compare(records: list[dict[str, Any]], path: Path) -> Path:
    """Draw accuracy by operand digits, direct against scratchpad, one panel per comparison record
    (trained lengths shaded); return ``path``."""
    from lmlab.plotting import figure, save_png

    fig, axes = figure(len(records), width=4.6, height=3.6)
    for ax, rec in zip(axes, records):
        digits = [r["digits"] for r in rec["rows"]]
        lo, hi = rec["train_digits"]
        ax.axvspan(lo - 0.5, hi + 0.5, color="0.92", label="trained lengths")
        ax.plot(digits, [r["direct_accuracy"] for r in rec["rows"]], "o-", color="C0", label="direct")
        ax.plot(digits, [r["scratchpad_accuracy"] for r in rec["rows"]], "s-", color="C3", label="scratchpad")
        ax.set_xticks(digits)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("digits per operand (held-out problems)")
        ax.set_ylabel("exact match of the final answer")
        sym = "+" if rec["op"] == "add" else "x"
        ax.set_title(f"a {sym} b, {rec['flops']:.2g} training FLOPs each\n{rec['preset']} shape, d_model "
                     f"{rec['d_model']}, {rec['n_layer']} layers", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_png(fig, path)


# ---------------------------------------------------------------- eval


@dataclass
class EvalConfig:
    ckpt: Path | None = arg(None, "a run of lmlab cot compare: OUT/direct or OUT/scratchpad")
    test_digits: str | None = arg(None, "operand digit counts scored, LO-HI (default: the run's)")
    test_per_digits: int | None = arg(None, "held-out problems per digit count (default: the run's; more "
                                            "only for lengths the run did not train on)")
    self_consistency: int = arg(1, "K: chains sampled per problem for the majority vote (1: greedy only)")
    temperature: float = arg(0.7, "sampling temperature of the K chains")
    seed: int = arg(0, "sampling seed")
    out: Path | None = arg(None, "folder for results.json, config.yaml and cot-eval.png (optional)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int = arg(1, "CPU threads for PyTorch")
    json: bool = arg(False, "print the results as one JSON object")


def _eval_problems(cfg: EvalConfig, task: dict[str, Any]) -> tuple[tuple[int, int], dict[int, list[Problem]]]:
    """Return the digit range and the held-out problems to score, refusing any the run may have trained on."""
    run_test = tuple(task["test_digits"])
    train = tuple(task["train_digits"])
    test = parse_digits(cfg.test_digits, "--test-digits") if cfg.test_digits is not None else run_test
    per = task["test_per_digits"] if cfg.test_per_digits is None else cfg.test_per_digits
    for n in range(test[0], test[1] + 1):
        held = run_test[0] <= n <= run_test[1] and per <= task["test_per_digits"]
        if train[0] <= n <= train[1] and not held:
            raise LmlabError(f"{cfg.ckpt} trained on {n}-digit problems and held out only "
                             f"{task['test_per_digits']} per digit count in {_span(run_test)}; keep "
                             f"--test-digits within those or outside {_span(train)}, and --test-per-digits "
                             f"at most {task['test_per_digits']}")
    return test, held_out(task["op"], test, per, task["seed"])


def run_eval(cfg: EvalConfig) -> int:
    """Score a run greedily and by self-consistency, by digit count, and print (and with --out write) the
    results (the command ``lmlab cot eval``); return 0."""
    from lmlab.device import resolve_device, set_threads
    from lmlab.fileio import write_json
    from lmlab.loader import load_model_any

    if cfg.ckpt is None:
        raise LmlabError("no run given; pass --ckpt OUT/scratchpad (a run of lmlab cot compare)")
    if cfg.self_consistency < 1:
        raise LmlabError(f"--self-consistency must be at least 1 (chains per problem), got "
                         f"{cfg.self_consistency}")
    if cfg.self_consistency > 1 and not cfg.temperature > 0:
        raise LmlabError(f"--temperature must be positive to sample {cfg.self_consistency} different chains, "
                         f"got {cfg.temperature:g}; e.g. --temperature 0.7")
    task_file = Path(cfg.ckpt) / TASK_FILE
    if not task_file.is_file():
        raise LmlabError(f"{cfg.ckpt} has no {TASK_FILE}; give a run of lmlab cot compare (OUT/direct or "
                         "OUT/scratchpad)")
    task = read_json(task_file)
    test, tests = _eval_problems(cfg, task)
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    model = load_model_any(cfg.ckpt, device)
    scratch = task["format"] == "scratchpad"
    t0 = time.perf_counter()
    rows = []
    for n, ps in sorted(tests.items()):
        greedy = greedy_scores(ps, [t[0] for t in generate_targets(model, ps, scratch)], scratch)
        trained = task["train_digits"][0] <= n <= task["train_digits"][1]
        row: dict[str, Any] = {"digits": n, "trained": trained,
                               "problems": len(ps), "greedy": greedy["accuracy"],
                               "greedy_chain_exact": greedy["chain_exact"]}
        if cfg.self_consistency > 1:
            sampled = generate_targets(model, ps, scratch, cfg.self_consistency, cfg.temperature,
                                       cfg.seed + n)
            row |= vote_scores(ps, sampled, scratch)
        rows.append(row)
    record = {"ckpt": str(cfg.ckpt), "op": task["op"], "format": task["format"],
              "train_digits": task["train_digits"], "test_digits": list(test),
              "self_consistency": cfg.self_consistency, "temperature": cfg.temperature, "rows": rows,
              "wall_s": round(time.perf_counter() - t0, 2)}
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        record["plots"] = [str(plot_eval(record, out / "cot-eval.png"))]
        write_json(out / "results.json", record)
    if cfg.json:
        print(json.dumps(record))
        return 0
    print(eval_table(record))
    return 0


def eval_table(record: dict[str, Any]) -> str:
    """Return an eval record as a text table (greedy, and majority / one sample / any of K when sampled)."""
    k = record["self_consistency"]
    head = f"{'digits':>6} {'':8} {'greedy':>7}"
    if k > 1:
        head += f" {f'vote@{k}':>8} {'1 sample':>8} {f'any of {k}':>8}"
    lines = [f"{record['format']} {record['op']} model, trained on {_span(record['train_digits'])} digits"
             + (f"; {k} chains at temperature {record['temperature']:g}" if k > 1 else ""), head]
    for r in record["rows"]:
        line = f"{r['digits']:>6} {'trained' if r['trained'] else 'longer':<8} {r['greedy']:>7.3f}"
        if k > 1:
            line += f" {r['majority']:>8.3f} {r['sample']:>8.3f} {r['any']:>8.3f}"
        lines.append(line)
    return "\n".join(lines)


def plot_eval(record: dict[str, Any], path: Path) -> Path:
    """Draw greedy (and, when sampled, majority-vote, one-sample and any-of-K) accuracy by digits; return
    ``path``."""
    from lmlab.plotting import figure, save_png

    fig, (ax,) = figure(1, width=5.0, height=3.6)
    rows = record["rows"]
    digits = [r["digits"] for r in rows]
    lo, hi = record["train_digits"]
    ax.axvspan(lo - 0.5, hi + 0.5, color="0.92", label="trained lengths")
    ax.plot(digits, [r["greedy"] for r in rows], "o-", color="C0", label="greedy")
    k = record["self_consistency"]
    if k > 1:
        ax.plot(digits, [r["majority"] for r in rows], "s-", color="C3", label=f"majority of {k}")
        ax.plot(digits, [r["sample"] for r in rows], ":", color="0.4", label="one sample")
        ax.plot(digits, [r["any"] for r in rows], "--", color="C2", label=f"any of {k}")
    ax.set_xticks(digits)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("digits per operand (held-out problems)")
    ax.set_ylabel("exact match of the final answer")
    ax.set_title(f"{record['format']} {record['op']}: greedy vs self-consistency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


# ---------------------------------------------------------------- plot


@dataclass
class PlotConfig:
    results: list[Path] = arg([], "results.json files of lmlab cot compare, one panel each, comma separated")
    out: Path | None = arg(None, "the PNG to write")


def run_plot(cfg: PlotConfig) -> int:
    """Draw results.json files of ``lmlab cot compare`` side by side into ``cfg.out``; return 0."""
    if not cfg.results or cfg.out is None:
        raise LmlabError("pass --results A/results.json[,B/results.json] and --out FILE.png")
    records = []
    for p in cfg.results:
        if not Path(p).is_file():
            raise LmlabError(f"{p} does not exist; give results.json files written by lmlab cot compare")
        rec = read_json(p)
        if "rows" not in rec or "direct_accuracy" not in (rec["rows"] or [{}])[0]:
            raise LmlabError(f"{p} is not a results.json of lmlab cot compare")
        records.append(rec)
    path = plot_compare(records, Path(cfg.out))
    print(f"wrote {path}", file=sys.stdout)
    return 0


__all__ = ["CompareConfig", "EvalConfig", "PlotConfig", "build_model", "compare_table", "eval_table",
           "generate_targets", "greedy_scores", "plot_compare", "plot_eval", "read_json", "run_compare",
           "run_eval", "run_plot", "train_format", "vote_scores"]
