"""``lmlab scaling emergence``: is an "emergent" ability sudden, or is that the metric?

Wei et al. 2022 ("Emergent abilities of large language models") report tasks where
accuracy sits near zero for small models and jumps once models pass some size.
Schaeffer et al. 2023 ("Are emergent abilities of large language models a mirage?")
argue the jump often comes from the metric: exact match of a multi-token answer is
roughly the per-token accuracy raised to the answer length, a steep nonlinear map,
while continuous per-token metrics (log-likelihood, token accuracy, edit distance) of
the same models improve smoothly with size.

This module reproduces the comparison on a small scale. A family of decoder-only
Transformers (lmlab's :class:`~lmlab.models.decoder.Decoder`, the ``llama-tiny``
preset with the widths given) is trained for the same number of steps on one
synthetic task, multi-digit addition, and each model is scored on held-out problems
with both kinds of metric.

The task. Every problem is one line of characters, operands and sum zero-padded to a
fixed width so that all lines have the same length (no padding tokens are needed)::

    digits=3:  "042+715=0757\\n"          (answer written most significant digit first)
    --reverse: "042+715=7570\\n"          (answer written least significant digit first)

The vocabulary is the characters ``0123456789+=`` and the newline that ends a line.
The answer is written in the usual order by default: the first answer digit depends
on carries from every column, which is what makes the task hard for small models;
``--reverse`` (Lee et al. 2023, "Teaching arithmetic to small transformers") makes
each answer digit depend only on its column and the carry already written, an easier
task. The loss counts only the answer digits and the newline (the prompt is masked).

The data. All ``10^(2 digits)`` problems are numbered; the test set is a seeded sample
of them, and the training set a seeded sample of the rest, so no test problem is ever
trained on and the test set depends only on ``--digits``, ``--seed`` and
``--test-size``.

The metrics, on the test set, over the ``digits + 1`` answer digits (the newline left out):

* ``exact_match``: the greedy continuation of the prompt (KV-cache decoding with
  :func:`lmlab.generate.decode`, temperature 0, stopping at the newline) is the whole
  answer followed by the newline;
* ``digit_accuracy``: share of answer positions where that greedy answer has the right digit;
* ``edit_distance``: mean Levenshtein distance between the greedy answer and the true answer;
* ``log_likelihood``: mean log-probability (nats) of the true answer's digits, teacher-forced
  (so 0 is perfect, ``-ln 10 = -2.30`` is a uniform guess among digits);
* ``token_accuracy``: share of answer digits that are the model's argmax under teacher forcing.

Exact match equals "every teacher-forced argmax correct" (greedy decoding reproduces
the answer exactly when each next digit is the argmax given the true prefix), so
``token_accuracy ** (digits + 1)`` is the exact match that independent per-digit errors
would give: the plot draws it beside the measured one. ``results.json`` also lists
each model's log-likelihood per answer position.

What the default run shows (2 CPU cores, about 2.5 minutes): the small models learn
the leading answer digits, so their log-likelihood and digit accuracy improve with
size while their exact match stays near 0; exact match then jumps to about 0.9 at the
size where the models also learn the lower digits. In this task that step is visible
in the per-digit metrics too (below it the lower digits' log-likelihood creeps up
from chance only slowly), so not all of the jump is the metric's doing; exact match
hides the progress below the step and the continuing improvement above it, which the
log-scale log-likelihood panel shows.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import io
import json
import math
import random
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
from lmlab.train.options import OptimOptions

CHARS = "0123456789+=\n"
VOCAB_SIZE = len(CHARS)
NEWLINE = CHARS.index("\n")
_INDEX = {c: i for i, c in enumerate(CHARS)}
RESULT_FILES = ("results.csv", "results.json", "emergence.png")
MODELS_DIR = "models"
DEFAULT_TRAIN_CAP = 200_000
TRAIN_EVAL_SIZE = 1000  # training problems scored at the end, to compare with the test log-likelihood
CSV_COLUMNS = ("d_model", "n_layer", "n_head", "params", "non_embedding_params", "steps", "train_tokens",
               "train_flops", "train_log_likelihood", "exact_match", "digit_accuracy", "edit_distance",
               "token_accuracy", "log_likelihood", "train_seconds")


# ---------------------------------------------------------------- data


def encode(text: str) -> list[int]:
    """Return the token ids of ``text``; raise LmlabError naming a character outside the vocabulary."""
    try:
        return [_INDEX[c] for c in text]
    except KeyError as e:
        raise LmlabError(f"character {e.args[0]!r} is not in the addition vocabulary {CHARS!r}; "
                         "write problems with digits, '+', '=' and a newline only") from None


def decode_ids(ids: list[int]) -> str:
    """Return the text of token ids (every id must be below :data:`VOCAB_SIZE`)."""
    return "".join(CHARS[i] for i in ids)


def n_problems(digits: int) -> int:
    """Return how many distinct problems there are with ``digits``-digit operands: ``10 ** (2 digits)``."""
    return 10 ** (2 * digits)


def format_problem(a: int, b: int, digits: int, reverse: bool = False) -> tuple[str, str]:
    """Return ``(prompt, answer)`` for ``a + b``: prompt ``"aaa+bbb="`` and the ``digits + 1``-digit sum.

    Operands are zero-padded to ``digits`` digits and the sum to ``digits + 1``;
    ``reverse`` writes the sum least significant digit first. The training line is
    ``prompt + answer + "\\n"``.
    """
    limit = 10**digits
    if not (0 <= a < limit and 0 <= b < limit):
        raise LmlabError(f"operands {a} and {b} do not fit in {digits} digits; use numbers below {limit}")
    answer = f"{a + b:0{digits + 1}d}"
    return f"{a:0{digits}d}+{b:0{digits}d}=", answer[::-1] if reverse else answer


@dataclass
class AdditionData:
    """Held-out and training problems as ``(a, b)`` operand pairs, with how they are written."""

    digits: int
    reverse: bool
    train: list[tuple[int, int]]
    test: list[tuple[int, int]]

    @property
    def prompt_len(self) -> int:
        """Tokens in a prompt ``"aaa+bbb="``: ``2 digits + 2``."""
        return 2 * self.digits + 2

    @property
    def answer_len(self) -> int:
        """Answer digits: ``digits + 1`` (the newline after them not counted)."""
        return self.digits + 1

    @property
    def seq_len(self) -> int:
        """Tokens in a whole line: prompt, answer and newline."""
        return self.prompt_len + self.answer_len + 1

    def lines(self, pairs: list[tuple[int, int]]) -> list[str]:
        """Return the full training lines ``"aaa+bbb=ssss\\n"`` of ``pairs``."""
        return ["".join(format_problem(a, b, self.digits, self.reverse)) + "\n" for a, b in pairs]

    def tensor(self, pairs: list[tuple[int, int]]) -> torch.Tensor:
        """Return the token ids of the lines of ``pairs`` as one ``(len(pairs), seq_len)`` long tensor."""
        return torch.tensor([encode(line) for line in self.lines(pairs)], dtype=torch.long)


def _complement_index(i: int, taken: list[int]) -> int:
    """Return the ``i``-th (0-based) non-negative integer not in the sorted list ``taken``."""
    v = i
    while True:
        nxt = i + bisect.bisect_right(taken, v)
        if nxt == v:
            return v
        v = nxt


def make_data(digits: int, test_size: int, train_size: int | None = None, seed: int = 0,
              reverse: bool = False) -> AdditionData:
    """Return deterministic, disjoint test and training problems for ``digits``-digit addition.

    The test set is ``test_size`` problems drawn without replacement from all
    ``10^(2 digits)`` by a generator seeded with ``seed`` and ``digits`` alone; the
    training set is ``train_size`` problems drawn without replacement from the others
    (default: all of them, at most 200,000). Raises LmlabError when the sizes are not
    positive or exceed the number of problems there are.
    """
    if digits < 1:
        raise LmlabError(f"--digits must be at least 1, got {digits}")
    total = n_problems(digits)
    if test_size < 1:
        raise LmlabError(f"--test-size must be at least 1, got {test_size}")
    if test_size >= total:
        raise LmlabError(f"--test-size {test_size} leaves no training problems: {digits}-digit addition has "
                         f"only {total:,} problems; lower --test-size or raise --digits")
    rest = total - test_size
    if train_size is None:
        train_size = min(rest, DEFAULT_TRAIN_CAP)
    if train_size < 1:
        raise LmlabError(f"--train-size must be at least 1, got {train_size}")
    if train_size > rest:
        raise LmlabError(f"--train-size {train_size:,} is more than the {rest:,} {digits}-digit problems "
                         f"left after the {test_size:,} test problems; lower --train-size or --test-size")
    base = 10**digits
    test_ids = random.Random(f"emergence-test:{digits}:{seed}").sample(range(total), test_size)
    taken = sorted(test_ids)
    picks = random.Random(f"emergence-train:{digits}:{seed}").sample(range(rest), train_size)
    train_ids = [_complement_index(i, taken) for i in picks]
    return AdditionData(digits, reverse, [divmod(i, base) for i in train_ids],
                        [divmod(i, base) for i in test_ids])


class ProblemBatches:
    """Shuffled epochs of training lines for :class:`~lmlab.train.loop.Trainer`, with a resumable position.

    Each batch holds ``input_ids`` (the line without its last token) and ``labels`` (the
    line shifted left by one) where prompt positions are -100, so the loss counts only
    the answer digits and the newline.
    """

    def __init__(self, data: AdditionData, batch_size: int, seed: int, device: torch.device):
        if not 1 <= batch_size <= len(data.train):
            raise LmlabError(f"--batch-size {batch_size} must be between 1 and the training set size "
                             f"{len(data.train)}; lower --batch-size or raise --train-size")
        from lmlab.nn.losses import IGNORE_INDEX

        seqs = data.tensor(data.train)
        self.inputs = seqs[:, :-1].contiguous()
        labels = seqs[:, 1:].clone()
        labels[:, : data.prompt_len - 1] = IGNORE_INDEX
        self.labels = labels
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.inputs), generator=g)

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next batch (tensors on the device); a new shuffled epoch starts when one runs out."""
        if self.pos + self.batch_size > len(self.inputs):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        idx = self._order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return {"input_ids": self.inputs[idx].to(self.device), "labels": self.labels[idx].to(self.device)}

    def state_dict(self) -> dict[str, Any]:
        """Return the data position (epoch, offset)."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`."""
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)


# ---------------------------------------------------------------- metrics


def teacher_forced_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Score answer-position logits ``(N, L, V)`` against the true answer tokens ``(N, L)``.

    Returns ``log_likelihood`` (mean log-probability per answer token, nats; 0 is
    perfect), ``token_accuracy`` (share of tokens that are the argmax),
    ``sequence_accuracy`` (share of rows whose every token is the argmax, which is what
    greedy decoding gets exactly right) and ``position_log_likelihood`` (the mean
    log-probability at each of the L answer positions, a list).
    """
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise LmlabError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}; "
                         "pass (N, L, V) logits for (N, L) targets")
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    hit = logits.argmax(-1) == targets
    return {"log_likelihood": float(logp.mean()), "token_accuracy": float(hit.float().mean()),
            "sequence_accuracy": float(hit.all(dim=1).float().mean()),
            "position_log_likelihood": logp.mean(dim=0).tolist()}


def edit_distance(a: str, b: str) -> int:
    """Return the Levenshtein distance between ``a`` and ``b`` (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def answer_scores(outputs: list[str], answers: list[str]) -> dict[str, float]:
    """Score generated continuations against the true answers.

    ``outputs`` are what the model wrote after each prompt (a newline ends the answer;
    text after it is ignored). Returns ``exact_match`` (the answer then a newline),
    ``digit_accuracy`` (share of answer positions with the right character) and
    ``edit_distance`` (mean Levenshtein distance of the answer part to the true answer).
    """
    if len(outputs) != len(answers) or not answers:
        raise LmlabError(f"got {len(outputs)} outputs for {len(answers)} answers; score at least one, "
                         "one output per answer")
    exact = correct = total = dist = 0
    for out, ans in zip(outputs, answers):
        text, ended, _ = out.partition("\n")
        exact += text == ans and bool(ended)
        correct += sum(p == t for p, t in zip(text, ans))
        total += len(ans)
        dist += edit_distance(text, ans)
    return {"exact_match": exact / len(answers), "digit_accuracy": correct / total,
            "edit_distance": dist / len(answers)}


@torch.no_grad()
def evaluate(model: nn.Module, data: AdditionData, pairs: list[tuple[int, int]] | None = None,
             batch_size: int = 1000, greedy: bool = True) -> dict[str, Any]:
    """Score ``model`` on ``pairs`` (default: the test set) with teacher forcing and greedy decoding.

    Returns ``log_likelihood``, ``token_accuracy`` and ``position_log_likelihood`` of
    :func:`teacher_forced_metrics` (answer digits only) and, with ``greedy``, the keys of
    :func:`answer_scores` plus ``greedy_matches_argmax``: the share of problems where
    greedy exact match and "every teacher-forced argmax correct" agree (1.0 up to float
    ties). The model is left in eval mode.
    """
    from lmlab.generate import decode

    pairs = data.test if pairs is None else pairs
    if not pairs:
        raise LmlabError("no problems to evaluate; pass at least one (a, b) pair")
    device = next(model.parameters()).device
    model.eval()
    lo, hi = data.prompt_len - 1, data.prompt_len - 1 + data.answer_len
    sums = {"log_likelihood": 0.0, "token_accuracy": 0.0}
    position = torch.zeros(data.answer_len, dtype=torch.float64)
    outputs: list[str] = []
    agree = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        seqs = data.tensor(chunk).to(device)
        targets = seqs[:, lo + 1 : hi + 1]
        logits = model(seqs[:, :-1])[:, lo:hi]
        tf = teacher_forced_metrics(logits, targets)
        for k in sums:
            sums[k] += tf[k] * len(chunk)
        position += torch.tensor(tf["position_log_likelihood"], dtype=torch.float64) * len(chunk)
        if not greedy:
            continue
        new = decode(model, seqs[:, : data.prompt_len].tolist(), data.answer_len + 1, temperature=0.0,
                     eos_id=NEWLINE)
        texts = [decode_ids(ids) for ids in new]
        outputs += texts
        all_argmax = (logits.argmax(-1) == targets).all(dim=1).tolist()
        exact = [t == decode_ids(row) + "\n" for t, row in zip(texts, targets.tolist())]
        agree += sum(e == ok for e, ok in zip(exact, all_argmax))
    result: dict[str, Any] = {k: v / len(pairs) for k, v in sums.items()}
    result["position_log_likelihood"] = (position / len(pairs)).tolist()
    if greedy:
        answers = [format_problem(a, b, data.digits, data.reverse)[1] for a, b in pairs]
        result.update(answer_scores(outputs, answers))
        result["greedy_matches_argmax"] = agree / len(pairs)
    return result


# ---------------------------------------------------------------- models


def build_model(d_model: int, n_layer: int, head_dim: int, digits: int) -> nn.Module:
    """Return a randomly initialised ``llama-tiny``-style :class:`Decoder` of width ``d_model``.

    ``d_model / head_dim`` query heads with as many KV heads (plain multi-head
    attention), ``n_layer`` blocks, the SwiGLU width LLaMA derives from ``d_model``, a
    context of one whole line and the addition vocabulary.
    """
    from lmlab.models.decoder import Decoder
    from lmlab.models.registry import get_preset

    n_head = d_model // head_dim
    cfg = get_preset("llama-tiny", vocab_size=VOCAB_SIZE, block_size=3 * digits + 4, n_layer=n_layer,
                     d_model=d_model, n_head=n_head, n_kv_heads=n_head)
    return Decoder(cfg)


# ---------------------------------------------------------------- command



@dataclass
class EmergenceConfig:
    out: Path | None = arg(None, "folder for results.csv, results.json, emergence.png, config.yaml and "
                                 "models/dWIDTH/metrics.jsonl")
    digits: int = arg(3, "digits per operand; the answer has one more")
    reverse: bool = arg(False, "write the answer least significant digit first (an easier task)")
    sizes: list[int] = arg([16, 32, 48, 64, 96], "model widths d_model, comma separated; each a multiple "
                                                     "of --head-dim")
    n_layer: int = arg(2, "Transformer blocks in every model")
    head_dim: int = arg(16, "width of one attention head: each model has d_model / head_dim heads")
    steps: int = arg(1500, "optimizer steps, the same for every model")
    batch_size: int = arg(128, "problems per step")
    optim: OptimOptions = arg(OptimOptions(lr=3e-3, min_lr=3e-4, warmup_steps=100, beta2=0.98),
                              "AdamW and its schedule (warmup capped at a tenth of --steps)")
    train_size: int | None = arg(None, "training problems (default: all not in the test set, at most 200000)")
    test_size: int = arg(1000, "held-out test problems, never trained on")
    seed: int = arg(0, "seed of the data split, the initial weights and the batch order")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("fp32", "autocast precision of training (auto: bf16 where supported)")
    threads: int = arg(1, "CPU threads for PyTorch (these small models run fastest on one)")
    save_models: bool = arg(False, "keep each model's weights as models/dWIDTH/model.safetensors")
    overwrite: bool = arg(False, "replace the results already in --out")
    progress: bool = arg(True, "show a progress bar per model (--no-progress hides it)")
    json: bool = arg(False, "print the results as one JSON object")


def _check_config(cfg: EmergenceConfig) -> list[int]:
    """Validate the options that need no data; return the sizes in ascending order."""
    if cfg.out is None:
        raise LmlabError("no output folder given; pass --out DIR (results.csv, emergence.png, ... go there)")
    if cfg.digits < 1:
        raise LmlabError(f"--digits must be at least 1, got {cfg.digits}")
    if not cfg.sizes:
        raise LmlabError("--sizes is empty; give model widths, e.g. --sizes 16,32,64")
    for flag, value in (("--n-layer", cfg.n_layer), ("--head-dim", cfg.head_dim), ("--steps", cfg.steps),
                        ("--batch-size", cfg.batch_size), ("--threads", cfg.threads)):
        if value < 1:
            raise LmlabError(f"{flag} must be at least 1, got {value}")
    if cfg.head_dim % 2:
        raise LmlabError(f"--head-dim {cfg.head_dim} must be even (RoPE rotates pairs); try 16")
    bad = [d for d in cfg.sizes if d < cfg.head_dim or d % cfg.head_dim]
    if bad:
        raise LmlabError(f"--sizes {','.join(map(str, bad))} are not positive multiples of --head-dim "
                         f"{cfg.head_dim}; use widths such as {cfg.head_dim},{2 * cfg.head_dim},"
                         f"{4 * cfg.head_dim} or change --head-dim")
    if len(set(cfg.sizes)) != len(cfg.sizes):
        raise LmlabError(f"--sizes {','.join(map(str, cfg.sizes))} lists a width twice; give each once")
    cfg.optim.check()
    return sorted(cfg.sizes)


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds results unless ``overwrite``; then remove only what this command wrote."""
    found = [name for name in (*RESULT_FILES, "config.yaml", MODELS_DIR) if (out / name).exists()]
    if not found:
        return
    if not overwrite:
        raise LmlabError(f"{out} already holds results of an earlier run ({', '.join(found)}); pass "
                         "--overwrite to replace them or choose another --out")
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _train_one(cfg: EmergenceConfig, data: AdditionData, d_model: int, device: torch.device,
               index: int, count: int) -> dict[str, Any]:
    """Train the model of width ``d_model`` and score it on the test set; return its results row."""
    from lmlab.models.registry import save_model
    from lmlab.train.distributed import unwrap_model
    from lmlab.train.loop import Trainer, TrainSettings
    from lmlab.train.objectives import causal_lm_loss

    torch.manual_seed(cfg.seed)
    model = build_model(d_model, cfg.n_layer, cfg.head_dim, cfg.digits)
    params, non_emb = model.num_params(), model.num_params(non_embedding=True)
    if not cfg.json:
        heads = f"{model.config.n_head} head" + ("s" if model.config.n_head > 1 else "")
        print(f"model {index}/{count}: d_model {d_model}, {cfg.n_layer} layers, {heads}, "
              f"{params:,} parameters ({non_emb:,} non-embedding)", flush=True)
    batches = ProblemBatches(data, cfg.batch_size, cfg.seed, device)
    optim = dataclasses.replace(cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, cfg.steps // 10))
    settings = TrainSettings(optim=optim,
                             precision=cfg.precision, max_steps=cfg.steps, log_interval=50,
                             show_progress=cfg.progress)
    run_dir = Path(cfg.out) / MODELS_DIR / f"d{d_model}"

    def evaluator(m: nn.Module) -> dict[str, Any]:
        raw = unwrap_model(m)
        scores = {f"test_{k}": v for k, v in evaluate(raw, data).items()}
        train = evaluate(raw, data, data.train[:TRAIN_EVAL_SIZE], greedy=False)
        m.train()
        return scores | {"train_log_likelihood": train["log_likelihood"]}

    trainer = Trainer(model, causal_lm_loss, batches, settings, out_dir=run_dir, device=device,
                      evaluator=evaluator, write_weights=lambda m, p: save_model(m, p),
                      model_config=model.config.to_dict(), flops_per_token=None)
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.interrupted:
        raise LmlabError(f"training of the d_model {d_model} model was interrupted; run the command again "
                         "with --overwrite")
    if not cfg.save_models:  # the trainer always checkpoints at the end; keep only metrics.jsonl
        shutil.rmtree(run_dir / "state", ignore_errors=True)
        (run_dir / "model.safetensors").unlink(missing_ok=True)
    rec = result.last_record
    scores = {k[len("test_"):]: v for k, v in rec.items() if k.startswith("test_")}
    return {
        "d_model": d_model, "n_layer": cfg.n_layer, "n_head": model.config.n_head, "params": params,
        "non_embedding_params": non_emb, "steps": result.step, "train_tokens": result.tokens,
        "train_flops": float(model.flops_per_token(data.seq_len - 1) * result.tokens),
        "train_log_likelihood": rec["train_log_likelihood"],
        "exact_match": scores["exact_match"], "digit_accuracy": scores["digit_accuracy"],
        "edit_distance": scores["edit_distance"], "token_accuracy": scores["token_accuracy"],
        "log_likelihood": scores["log_likelihood"], "train_seconds": round(seconds, 2),
        "greedy_matches_argmax": scores["greedy_matches_argmax"],
        "position_log_likelihood": [round(v, 5) for v in scores["position_log_likelihood"]],
    }


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Atomically write the results ``rows`` as CSV with the columns of :data:`CSV_COLUMNS`."""
    from lmlab.fileio import write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def plot_emergence(rows: list[dict[str, Any]], digits: int, path: Path) -> Path:
    """Draw exact match (sudden), log-likelihood and per-token accuracy (smooth) against parameters.

    Three panels on a log parameter axis; the first also draws ``token_accuracy ** (digits + 1)``,
    the exact match that independent per-digit errors would give; the second shows
    -log-likelihood (held-out and training problems) on a log axis. Returns ``path``.
    """
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    from lmlab.plotting import figure, save_png

    n = [r["params"] for r in rows]
    fig, axes = figure(3, width=4.6, height=4.0)
    ax = axes[0]
    ax.plot(n, [r["exact_match"] for r in rows], "o-", color="C3", label="exact match (greedy)")
    ax.plot(n, [r["token_accuracy"] ** (digits + 1) for r in rows], "--", color="0.5",
            label=f"token accuracy^{digits + 1}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("exact match")
    ax.set_title(f"exact match: all {digits + 1} digits or nothing", fontsize=10)
    ax = axes[1]
    ax.plot(n, [-r["log_likelihood"] for r in rows], "o-", color="C0", label="held-out")
    ax.plot(n, [-r["train_log_likelihood"] for r in rows], "^:", color="C0", alpha=0.6, ms=4,
            label="training problems")
    ax.axhline(math.log(10), color="0.6", ls=":", label="uniform over digits (ln 10)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("-log-likelihood per answer digit (nats, log scale)")
    ax.set_title("log-likelihood of the true answer (continuous)", fontsize=10)
    ax = axes[2]
    ax.plot(n, [r["token_accuracy"] for r in rows], "o-", color="C2", label="teacher-forced token accuracy")
    ax.plot(n, [r["digit_accuracy"] for r in rows], "s--", color="C1", label="greedy digit accuracy")
    ax.axhline(0.1, color="0.6", ls=":", label="chance (1/10)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("accuracy per answer digit")
    ax.set_title("accuracy per answer digit (partial credit)", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{digits}-digit addition, held-out problems: the same models under three metrics")
    return save_png(fig, path)


def _table(rows: list[dict[str, Any]]) -> str:
    """Return the results as a fixed-width text table."""
    head = (f"{'d_model':>7} {'params':>9} {'non-emb':>9} {'exact':>7} {'digit_acc':>9} {'edit':>6} "
            f"{'tok_acc':>7} {'loglik':>8} {'train_ll':>8} {'train_s':>8}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['d_model']:>7} {r['params']:>9,} {r['non_embedding_params']:>9,} "
                     f"{r['exact_match']:>7.3f} {r['digit_accuracy']:>9.3f} {r['edit_distance']:>6.3f} "
                     f"{r['token_accuracy']:>7.3f} {r['log_likelihood']:>8.4f} "
                     f"{r['train_log_likelihood']:>8.4f} {r['train_seconds']:>8.1f}")
    return "\n".join(lines)


def emergence(cfg: EmergenceConfig) -> int:
    """Train a family of decoder-only Transformers on multi-digit addition and compare metrics by size.

    Wei et al. 2022 call an ability emergent when it is near zero in small models and
    jumps in larger ones; Schaeffer et al. 2023 show such jumps can come from the metric.
    Every model (the llama-tiny preset at each --sizes width, --n-layer blocks) trains
    for the same --steps on problems like "042+715=0757" (loss on the answer only) and
    is scored on held-out problems: exact match of the greedy answer (all or nothing),
    and per-answer-digit log-likelihood and accuracy (partial credit).

    Writes OUT/results.csv and results.json (one row per model), emergence.png (three
    panels against parameters), config.yaml and models/dWIDTH/metrics.jsonl (weights
    too with --save-models); prints a table (--json: one JSON object). Returns 0.

    Example:
      lmlab scaling emergence --out runs/emergence
      lmlab scaling emergence --out runs/em2 --digits 2 --sizes 16,32,64 --steps 800 --json
    """
    from lmlab.device import resolve_device, set_threads
    from lmlab.fileio import write_json

    sizes = _check_config(cfg)
    data = make_data(cfg.digits, cfg.test_size, cfg.train_size, cfg.seed, cfg.reverse)
    if cfg.batch_size > len(data.train):
        raise LmlabError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(data.train)} "
                         "problems); lower --batch-size or raise --train-size")
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    out = Path(cfg.out)
    _prepare_out(out, cfg.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if not cfg.json:
        a, b = data.test[0]
        prompt, answer = format_problem(a, b, cfg.digits, cfg.reverse)
        print(f"{cfg.digits}-digit addition, e.g. {prompt}{answer}; {len(data.train):,} training and "
              f"{len(data.test):,} held-out problems; {len(sizes)} models x {cfg.steps} steps of "
              f"{cfg.batch_size}", flush=True)
    t0 = time.perf_counter()
    rows = [_train_one(cfg, data, d, device, i + 1, len(sizes)) for i, d in enumerate(sizes)]
    wall = time.perf_counter() - t0
    write_csv(rows, out / "results.csv")
    plot = plot_emergence(rows, cfg.digits, out / "emergence.png")
    record = {
        "task": {"digits": cfg.digits, "reverse": cfg.reverse, "train_size": len(data.train),
                 "test_size": len(data.test), "answer_digits": data.answer_len},
        "rows": rows, "wall_s": round(wall, 2), "out": str(out), "plots": [str(plot)],
    }
    write_json(out / "results.json", record)
    if cfg.json:
        print(json.dumps(record))
        return 0
    print(_table(rows))
    print(f"exact match is all-or-nothing over {data.answer_len} digits; log-likelihood and accuracy are "
          "per answer digit (log-likelihood: 0 is perfect, -2.303 is a uniform guess)")
    print(f"wrote {out / 'results.csv'}, results.json and {plot.name} in {wall:.0f}s", file=sys.stdout)
    return 0


__all__ = ["AdditionData", "EmergenceConfig", "ProblemBatches", "answer_scores", "build_model", "decode_ids",
           "edit_distance", "emergence", "encode", "evaluate", "format_problem", "make_data", "n_problems",
           "plot_emergence", "teacher_forced_metrics", "write_csv"]

