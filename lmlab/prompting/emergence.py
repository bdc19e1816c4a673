"""``lmlab icl emergence``: in-context learning by model size and by number of shots, and the
induction-head signature of the same models.

The data holds in-context structure and nothing else to learn from: each training document draws
a fresh random mapping of ``n_keys`` letters to digits and writes ``pairs`` draws from it,
``"q7 b1 q7 x0 b1 ..."``. A letter's digit cannot be known before the letter has appeared in
the document; after that it is the digit written beside it then. So a model lowers its loss on
the digits only by looking the key up in its context, which is what induction heads do
(Olsson et al. 2022): at a key, find the key's earlier occurrence and copy the token after it.

A family of decoders (the ``llama-tiny`` preset at each ``--sizes`` width, ``--n-layer`` blocks,
``head_dim`` 16) trains on such documents for the same number of steps (fresh documents every
step, seeded). Each is then asked held-out questions in k-shot form: ``k`` pairs of a new
mapping, then a key of it, ``"q7 b1 q"``; the answer is the digit of highest log-likelihood
among the ten (constrained choice, :func:`lmlab.prompting.icl.choice_logprobs`). The questions
are the same at every ``k`` (the k-shot prompt is the first ``k`` pairs of one draw), so
accuracy by shots shows what more context buys. The asked key has appeared in the prompt with
probability ``1 - (1 - 1/n_keys)^k``; a model that looks up every seen key and guesses the rest
scores ``seen + (1 - seen) / 10``, drawn as the "perfect lookup" curve.

Each model also gets the induction measures (:mod:`lmlab.prompting.induction`) where it was
trained to predict: on repeated random documents of ``induction_pairs`` distinct keys
(``"q7 b1 x0 q7 b1 x0 "``), at the keys (the loss of the digit that follows, first copy against
second, and the attention from a key of the second copy to the digit after its first
occurrence). It is saved as a run folder (``models/dWIDTH``: weights, tokenizer,
metrics), so ``lmlab icl induction --ckpt`` reads it too.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lmlab.config import Precision, arg, save_config
from lmlab.errors import LmlabError
from lmlab.prompting.templates import Demo, Template
from lmlab.train.options import OptimOptions

KEYS = "abcdefghijklmnopqrstuvwxyz"
VALUES = "0123456789"
ALPHABET = KEYS + VALUES + " "
# "q7 b1 q": a pair is a key then its digit; pairs are separated by a space
TEMPLATE = Template("plain", input_prefix="", output_prefix="", label_sep="", separator=" ", io_sep="")
MODELS_DIR = "models"
RESULT_FILES = ("results.json", "results.csv", "icl-emergence.png", "config.yaml")
CSV_COLUMNS = ("d_model", "n_layer", "n_head", "params", "non_embedding_params", "steps", "train_tokens",
               "final_loss", "loss_first", "loss_second", "loss_drop", "best_prefix_matching",
               "train_seconds")


def kv_document(rng: random.Random, n_keys: int, pairs: int) -> list[Demo]:
    """Return ``pairs`` draws (with replacement) from a fresh random mapping of ``n_keys`` distinct
    letters to digits, each as ``Demo(key, digit)``."""
    keys = rng.sample(KEYS, n_keys)
    mapping = {k: rng.choice(VALUES) for k in keys}
    return [Demo(k, mapping[k]) for k in (rng.choice(keys) for _ in range(pairs))]


def document_text(demos: list[Demo]) -> str:
    """Return the text of a document of pairs, ``"q7 b1 q7"``."""
    return TEMPLATE.separator.join(TEMPLATE.example(d) for d in demos)


def make_tokenizer() -> Any:
    """Return the char tokenizer of the key-value documents (letters, digits, space and the lab's
    special tokens)."""
    from lmlab.data.tokenizers import train_tokenizer

    return train_tokenizer("char", iter([ALPHABET]))


class KvBatches:
    """Batches of fresh key-value documents for the Trainer: batch ``i`` is made by a generator
    seeded with ``(seed, i)``, so the position to resume from is just ``i``. With ``values_only``
    the loss counts only the digits (as MQAR is trained, Arora et al. 2023): keys and spaces are
    random or fixed and teach nothing about lookup."""

    def __init__(self, tokenizer: Any, n_keys: int, pairs: int, batch_size: int, seed: int,
                 device: torch.device, values_only: bool = True):
        self.tokenizer, self.n_keys, self.pairs = tokenizer, n_keys, pairs
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.values_only = values_only
        self.index = 0

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next batch: ``input_ids`` and ``labels`` (the ids shifted left by one; -100
        where the loss is not counted)."""
        from lmlab.nn.losses import IGNORE_INDEX

        rng = random.Random(f"icl-emergence-train:{self.seed}:{self.index}")
        self.index += 1
        rows = torch.tensor([self.tokenizer.encode(document_text(kv_document(rng, self.n_keys, self.pairs)))
                             for _ in range(self.batch_size)])
        labels = rows[:, 1:].clone()
        if self.values_only:  # a pair is "key digit space": the digits sit at 1, 4, 7, ... of the row
            keep = torch.zeros(labels.shape[1], dtype=torch.bool)
            keep[0::3] = True
            labels[:, ~keep] = IGNORE_INDEX
        return {"input_ids": rows[:, :-1].to(self.device), "labels": labels.to(self.device)}

    def state_dict(self) -> dict[str, Any]:
        """Return the data position (the next batch's index)."""
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`."""
        self.index = int(state["index"])


def repeated_documents(tokenizer: Any, n_pairs: int, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Return ``n`` documents of ``n_pairs`` distinct random keys with random digits, each written
    twice (``"q7 b1 x0 q7 b1 x0 "``), as ids ``(n, 6 n_pairs)``, and the offsets of the keys in a
    copy (where the digit that follows is predicted)."""
    rows = []
    for i in range(n):
        rng = random.Random(f"icl-emergence-induction:{seed}:{i}")
        text = "".join(f"{k}{rng.choice(VALUES)} " for k in rng.sample(KEYS, n_pairs))
        rows.append(tokenizer.encode(text * 2))
    return torch.tensor(rows), list(range(0, 3 * n_pairs, 3))


@dataclass
class Question:
    """One held-out question: the pairs its prompts draw from (the k-shot prompt shows the first
    ``k``), the asked key and its digit."""

    pairs: list[Demo]
    key: str
    value: str

    def prompt(self, shots: int) -> str:
        """Return the ``shots``-shot prompt, ``"q7 b1 q"``."""
        return TEMPLATE.render(self.pairs[:shots], self.key)

    def seen(self, shots: int) -> bool:
        """True when the asked key is among the first ``shots`` pairs."""
        return any(d.input == self.key for d in self.pairs[:shots])


def make_questions(n: int, n_keys: int, max_shots: int, seed: int) -> list[Question]:
    """Return ``n`` held-out questions (a generator apart from the training one, seeded by ``seed``)."""
    out = []
    for i in range(n):
        rng = random.Random(f"icl-emergence-test:{seed}:{i}")
        pairs = kv_document(rng, n_keys, max_shots + 1)
        ask = pairs.pop()  # a draw from the same mapping
        out.append(Question(pairs, ask.input, ask.label))
    return out


def perfect_lookup(questions: list[Question], shots: int) -> float:
    """Return the accuracy of a model that answers every key seen in the prompt and guesses the rest."""
    return sum(1.0 if q.seen(shots) else 1 / len(VALUES) for q in questions) / len(questions)


def accuracy_by_shots(model: torch.nn.Module, tokenizer: Any, questions: list[Question],
                      shots: list[int], batch_size: int = 64) -> dict[int, dict[str, float]]:
    """Return, per shot count, the constrained-choice accuracy over the ten digits, the accuracy
    on questions whose key the prompt shows (``seen_accuracy``, None at 0 shots) and the perfect
    lookup's accuracy."""
    from lmlab.prompting.icl import choice_logprobs

    labels = list(VALUES)
    conts = [TEMPLATE.continuation(v) for v in labels]
    gold = torch.tensor([labels.index(q.value) for q in questions])
    out = {}
    for k in shots:
        scores = choice_logprobs(model, tokenizer, [q.prompt(k) for q in questions], conts, batch_size)
        hit = scores.logprobs.argmax(-1) == gold
        seen = torch.tensor([q.seen(k) for q in questions])
        out[k] = {"accuracy": float(hit.double().mean()),
                  "seen_accuracy": float(hit[seen].double().mean()) if seen.any() else None,
                  "perfect_lookup": perfect_lookup(questions, k)}
    return out


@dataclass
class IclEmergenceConfig:
    out: Path | None = arg(None, "folder for results.json, results.csv, icl-emergence.png, config.yaml and "
                                 "models/dWIDTH (a run folder per model)")
    sizes: list[int] = arg([32, 64, 128], "model widths d_model, comma separated; multiples of "
                                              "--head-dim")
    n_layer: int = arg(2, "Transformer blocks in every model (an induction head needs two)")
    head_dim: int = arg(16, "width of one attention head: each model has d_model / head_dim heads")
    n_keys: int = arg(4, "letters in each document's random mapping")
    pairs: int = arg(16, "key-digit pairs per training document (the context is 3 x pairs tokens)")
    steps: int = arg(2000, "optimizer steps, the same for every model")
    batch_size: int = arg(64, "documents per step")
    loss_on: Literal["values", "all"] = arg("values", "train on the digits only (values) or on every token")
    optim: OptimOptions = arg(OptimOptions(lr=3e-3, min_lr=1e-3, warmup_steps=100, beta2=0.98),
                              "AdamW and its schedule (warmup capped at a tenth of --steps)")
    shots: list[int] = arg([0, 1, 2, 4, 8], "shot counts to ask at (each below --pairs)")
    samples: int = arg(300, "held-out questions (the same at every shot count)")
    induction_pairs: int = arg(8, "distinct key-digit pairs of the document repeated for the induction "
                                  "measure (at most --pairs / 2)")
    induction_samples: int = arg(64, "repeated sequences for the induction measure")
    seed: int = arg(0, "seed of the data, the initial weights and the questions")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: Precision = arg("fp32", "autocast precision of training")
    threads: int = arg(1, "CPU threads for PyTorch (these small models run fastest on one)")
    overwrite: bool = arg(False, "replace the results already in --out")
    progress: bool = arg(True, "show a progress bar per model (--no-progress hides it)")
    json: bool = arg(False, "print the results as one JSON object")


def check_config(cfg: IclEmergenceConfig) -> list[int]:
    """Validate the options; return the sizes in ascending order."""
    if cfg.out is None:
        raise LmlabError("no output folder given; pass --out DIR (results.json, icl-emergence.png, ... go "
                         "there)")
    for flag, value in (("--n-layer", cfg.n_layer), ("--head-dim", cfg.head_dim), ("--steps", cfg.steps),
                        ("--batch-size", cfg.batch_size), ("--samples", cfg.samples),
                        ("--induction-samples", cfg.induction_samples), ("--threads", cfg.threads)):
        if value < 1:
            raise LmlabError(f"{flag} must be at least 1, got {value}")
    if not 2 <= cfg.n_keys <= len(KEYS):
        raise LmlabError(f"--n-keys must be between 2 and {len(KEYS)}, got {cfg.n_keys}")
    if not cfg.sizes:
        raise LmlabError("--sizes is empty; give model widths, e.g. --sizes 32,64,128")
    bad = [d for d in cfg.sizes if d < cfg.head_dim or d % cfg.head_dim]
    if bad or cfg.head_dim % 2:
        raise LmlabError(f"--sizes {','.join(map(str, bad or cfg.sizes))} must be multiples of an even "
                         f"--head-dim (now {cfg.head_dim}); e.g. --head-dim 16 --sizes 32,64,128")
    if len(set(cfg.sizes)) != len(cfg.sizes):
        raise LmlabError(f"--sizes {','.join(map(str, cfg.sizes))} lists a width twice; give each once")
    if not cfg.shots or min(cfg.shots) < 0 or max(cfg.shots) >= cfg.pairs:
        raise LmlabError(f"--shots must be counts from 0 to --pairs - 1 = {cfg.pairs - 1}, got "
                         f"{','.join(map(str, cfg.shots))}; lower them or raise --pairs")
    most = min(len(KEYS), cfg.pairs // 2)
    if not 1 <= cfg.induction_pairs <= most:
        raise LmlabError(f"--induction-pairs must be between 1 and {most} (the context of 3 x --pairs tokens "
                         f"holds the document twice), got {cfg.induction_pairs}")
    cfg.optim.check()
    return sorted(cfg.sizes)


def build_model(d_model: int, n_layer: int, head_dim: int, vocab_size: int, pairs: int) -> torch.nn.Module:
    """Return a fresh ``llama-tiny`` decoder of width ``d_model`` whose context holds a document."""
    from lmlab.models.registry import build_model as build
    from lmlab.models.registry import get_preset

    n_head = d_model // head_dim
    return build(get_preset("llama-tiny", vocab_size=vocab_size, block_size=3 * pairs, n_layer=n_layer,
                            d_model=d_model, n_head=n_head, n_kv_heads=n_head))


def train_and_measure(cfg: IclEmergenceConfig, d_model: int, tokenizer: Any, questions: list[Question],
                      device: torch.device) -> dict[str, Any]:
    """Train the model of width ``d_model``, save it as a run folder and measure it; return its row."""
    from lmlab.models.registry import save_model
    from lmlab.prompting.induction import measure_induction
    from lmlab.train.loop import Trainer, TrainSettings
    from lmlab.train.objectives import causal_lm_loss

    torch.manual_seed(cfg.seed)
    model = build_model(d_model, cfg.n_layer, cfg.head_dim, tokenizer.vocab_size, cfg.pairs)
    run_dir = Path(cfg.out) / MODELS_DIR / f"d{d_model}"
    optim = dataclasses.replace(cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, cfg.steps // 10))
    settings = TrainSettings(optim=optim, precision=cfg.precision, max_steps=cfg.steps, log_interval=50,
                             show_progress=cfg.progress)
    batches = KvBatches(tokenizer, cfg.n_keys, cfg.pairs, cfg.batch_size, cfg.seed, device,
                        values_only=cfg.loss_on == "values")
    trainer = Trainer(model, causal_lm_loss, batches, settings, out_dir=run_dir, device=device,
                      write_weights=lambda m, p: save_model(m, p), model_config=model.config.to_dict())
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.interrupted:
        raise LmlabError(f"training of the d_model {d_model} model was interrupted; run again with "
                         "--overwrite")
    shutil.rmtree(run_dir / "state", ignore_errors=True)  # a finished model, not a resumable run
    tokenizer.save(run_dir / "tokenizer.json")
    model.eval()
    by_shots = accuracy_by_shots(model, tokenizer, questions, cfg.shots)
    ids, positions = repeated_documents(tokenizer, cfg.induction_pairs, cfg.induction_samples, cfg.seed)
    induction = measure_induction(model, ids, positions=positions).to_dict()
    return {"d_model": d_model, "n_layer": cfg.n_layer, "n_head": model.config.n_head,
            "params": model.num_params(), "non_embedding_params": model.num_params(non_embedding=True),
            "steps": result.step, "train_tokens": result.tokens,
            "final_loss": result.last_record.get("loss"), "train_seconds": round(seconds, 2),
            "accuracy": {str(k): v for k, v in by_shots.items()},
            "loss_first": induction["loss_first"], "loss_second": induction["loss_second"],
            "loss_drop": induction["loss_drop"], "best_prefix_matching": induction["best_head"]["score"],
            "induction": induction, "run": str(run_dir)}


def plot_icl_emergence(rows: list[dict[str, Any]], shots: list[int], path: Path) -> Path:
    """Draw accuracy against shots per model (with the perfect-lookup curve), accuracy against
    parameters per shot count, and the induction measures against parameters. Returns ``path``."""
    from matplotlib.ticker import NullFormatter

    from lmlab.plotting import figure, save_png

    fig, axes = figure(3, width=4.4, height=3.8)
    ax = axes[0]
    xs = list(range(len(shots)))
    for i, r in enumerate(rows):
        ax.plot(xs, [r["accuracy"][str(k)]["accuracy"] for k in shots], "o-", color=f"C{i}",
                label=f"d{r['d_model']} ({r['params'] / 1e3:.0f}K)")
    ax.plot(xs, [rows[0]["accuracy"][str(k)]["perfect_lookup"] for k in shots], "k--", lw=1,
            label="perfect lookup")
    ax.axhline(0.1, color="0.6", ls=":", label="chance (1/10)")
    ax.set_xticks(xs, [str(k) for k in shots])
    ax.set_xlabel("shots (key-digit pairs in the prompt)")
    ax.set_ylabel("accuracy (choice among 10 digits)")
    ax.set_title("k-shot accuracy by model", fontsize=10)
    ax = axes[1]
    n = [r["params"] for r in rows]
    for j, k in enumerate(shots):
        ax.plot(n, [r["accuracy"][str(k)]["accuracy"] for r in rows], "o-", color=f"C{j}", label=f"{k}-shot")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("accuracy")
    ax.set_title("k-shot accuracy by size", fontsize=10)
    for ax in axes[:2]:
        ax.set_ylim(-0.03, 1.03)
    ax = axes[2]
    ax.plot(n, [r["loss_drop"] for r in rows], "o-", color="C3",
            label="loss drop of the digit, 1st - 2nd copy")
    ax.set_ylabel("loss drop (nats/token)")
    ax2 = ax.twinx()
    ax2.plot(n, [r["best_prefix_matching"] for r in rows], "s--", color="C0",
             label="best head's prefix matching")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("prefix-matching score")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_title("induction signature on a repeated document", fontsize=10)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[2].grid(alpha=0.3)
    for ax in axes[1:]:
        ax.xaxis.set_minor_formatter(NullFormatter())  # crowded minor labels on a short log axis
    fig.suptitle("in-context key-digit lookup: accuracy by size and shots, and induction heads")
    return save_png(fig, path)


def write_csv(rows: list[dict[str, Any]], shots: list[int], path: Path) -> None:
    """Atomically write one CSV row per model: :data:`CSV_COLUMNS` and ``acc_K`` per shot count."""
    from lmlab.fileio import write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_COLUMNS, *(f"acc_{k}" for k in shots)])
    for r in rows:
        w.writerow([r[c] for c in CSV_COLUMNS] + [r["accuracy"][str(k)]["accuracy"] for k in shots])
    write_text(path, buf.getvalue())


def run_emergence(cfg: IclEmergenceConfig, on_model: Any = None) -> dict[str, Any]:
    """Train and measure every model of ``cfg``; write the results, plot and config to ``cfg.out``;
    return the results record. ``on_model(index, count, d_model)`` is called before each model."""
    from lmlab.device import resolve_device, set_threads
    from lmlab.fileio import write_json

    sizes = check_config(cfg)
    out = Path(cfg.out)
    found = [name for name in (*RESULT_FILES, MODELS_DIR) if (out / name).exists()]
    if found and not cfg.overwrite:
        raise LmlabError(f"{out} already holds results of an earlier run ({', '.join(found)}); pass "
                         "--overwrite to replace them or choose another --out")
    for name in found:
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    tokenizer = make_tokenizer()
    questions = make_questions(cfg.samples, cfg.n_keys, max(cfg.shots), cfg.seed)
    t0 = time.perf_counter()
    rows = []
    for i, d in enumerate(sizes):
        if on_model is not None:
            on_model(i + 1, len(sizes), d)
        rows.append(train_and_measure(cfg, d, tokenizer, questions, device))
    shots = list(cfg.shots)
    write_csv(rows, shots, out / "results.csv")
    plot = plot_icl_emergence(rows, shots, out / "icl-emergence.png")
    record = {"task": {"n_keys": cfg.n_keys, "pairs": cfg.pairs, "questions": cfg.samples, "shots": shots,
                       "example": document_text(questions[0].pairs[:4]) + " " + questions[0].prompt(0)},
              "rows": rows, "wall_s": round(time.perf_counter() - t0, 2), "out": str(out),
              "plots": [str(plot)]}
    write_json(out / "results.json", record)
    return record


def format_emergence(record: dict[str, Any]) -> str:
    """Return the results as a table: accuracy per shot count, then the induction measures."""
    shots = record["task"]["shots"]
    head = f"{'d_model':>7} {'params':>9} " + " ".join(f"{str(k) + '-shot':>7}" for k in shots)
    head += f" {'loss 1st':>8} {'loss 2nd':>8} {'prefix':>6}"
    lines = [head]
    for r in record["rows"]:
        accs = " ".join(f"{r['accuracy'][str(k)]['accuracy']:>7.3f}" for k in shots)
        lines.append(f"{r['d_model']:>7} {r['params']:>9,} {accs} {r['loss_first']:>8.3f} "
                     f"{r['loss_second']:>8.3f} {r['best_prefix_matching']:>6.3f}")
    perfect = " ".join(f"{record['rows'][0]['accuracy'][str(k)]['perfect_lookup']:>7.3f}" for k in shots)
    lines.append(f"{'perfect lookup':>17} {perfect}")
    return "\n".join(lines)


__all__ = ["ALPHABET", "TEMPLATE", "IclEmergenceConfig", "KvBatches", "Question", "accuracy_by_shots",
           "build_model", "check_config", "document_text", "format_emergence", "kv_document",
           "make_questions", "make_tokenizer", "perfect_lookup", "plot_icl_emergence", "repeated_documents",
           "run_emergence",
           "train_and_measure", "write_csv"]
