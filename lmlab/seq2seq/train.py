"""Training, greedy and beam decoding, exact-match evaluation and attention heatmaps for RNNsearch
and the Transformer (``--arch transformer``, :mod:`lmlab.seq2seq.transformer`).

Training runs on the lab's one loop (:class:`lmlab.train.loop.Trainer`) with a
teacher-forced cross-entropy objective; Adam is the loop's AdamW with weight decay 0.
A run directory holds ``model.safetensors``, ``model.json`` (the model config),
``vocab.json`` (source and target characters), ``task.json`` (what regenerates the
data), ``config.yaml``, ``metrics.jsonl``, ``attention.png`` and ``state/`` (resume).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lmlab.config import arg
from lmlab.device import set_threads
from lmlab.errors import LmlabError
from lmlab.fileio import write_json
from lmlab.models.encdec import EncDecConfig, EncoderDecoder
from lmlab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from lmlab.nn.losses import IGNORE_INDEX, token_cross_entropy
from lmlab.seq2seq.tasks import BOS, EOS, PAD, Pair, TaskSpec, Vocab, make_splits, task_vocabs
from lmlab.seq2seq.transformer import joint_vocab, transformer_config, transformer_decode
from lmlab.train.options import OptimOptions

RUN_FILES = ("model.safetensors", "model.json", "vocab.json", "task.json")


@dataclass
class TrainConfig:
    task: str = arg("reverse", "task: reverse, sort, addition or date")
    arch: Literal["rnnsearch", "transformer"] = arg(
        "rnnsearch", "rnnsearch (Bahdanau et al. 2015: GRUs + additive attention) or transformer (Vaswani et "
        "al. 2017: --layers encoder and decoder layers of width --hidden, --heads heads)")
    out: Path | None = arg(None, "run folder to write (model.safetensors, attention.png, metrics.jsonl, ...)")
    steps: int = arg(1500, "optimiser steps")
    batch_size: int = arg(64, "examples per step")
    hidden: int = arg(64, "GRU state size (each encoder direction, and the decoder); the Transformer's "
                          "d_model")
    emb: int = arg(32, "character embedding size (rnnsearch)")
    attn: int | None = arg(None, "hidden size of the alignment model (rnnsearch; default: --hidden)")
    layers: int = arg(2, "encoder and decoder layers (transformer)")
    heads: int = arg(4, "attention heads (transformer; must divide --hidden)")
    dropout: float = arg(0.1, "dropout on embeddings and before the output layer (transformer: after each "
                              "sublayer)")
    optim: OptimOptions = arg(OptimOptions(lr=3e-3, min_lr=3e-4, warmup_steps=50, weight_decay=0.0,
                                           beta2=0.999),
                              "Adam (weight decay 0) and its schedule (warmup capped at a tenth of --steps)")
    seed: int = arg(0, "seed of the data and of the initial weights")
    train_size: int = arg(10000, "training examples")
    test_size: int = arg(500, "held-out test examples (no test input occurs in training)")
    min_len: int | None = arg(None, "shortest input: letters, digits per operand, chars (default per task)")
    max_len: int | None = arg(None, "longest input, same unit as --min-len (default per task)")
    eval_every: int = arg(250, "held-out exact match every N steps (0: only at the end)")
    device: str = arg("auto", "auto, cpu, cuda, cuda:N or mps")
    threads: int = arg(1, "CPU threads for PyTorch (this model's small matrices run fastest on one)")
    resume: bool = arg(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = arg(False, "replace a trained model already in --out")
    json: bool = arg(False, "print the summary as one JSON object")



# ---------------------------------------------------------------- batches


def pad_batch(seqs: list[list[int]], value: int = PAD) -> torch.Tensor:
    """Return the sequences right-padded with ``value`` into one (B, max length) long tensor."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def encode_source(text: str, vocab: Vocab, what: str = "input") -> list[int]:
    """Return the source ids of ``text`` then ``</s>`` (as in the paper, the encoder sees the end mark)."""
    return vocab.encode(text, what) + [EOS]


def collate(pairs: list[Pair], src_vocab: Vocab, tgt_vocab: Vocab) -> dict[str, torch.Tensor]:
    """Turn (source, target) pairs into a teacher-forcing batch.

    Returns ``input_ids`` (B, S) source ids + ``</s>``, ``decoder_input_ids`` (B, T)
    ``<s>`` + target, and ``labels`` (B, T) target + ``</s>`` with padding set to -100.
    """
    src = [encode_source(s, src_vocab, "source") for s, _ in pairs]
    tgt = [tgt_vocab.encode(t, "target") for _, t in pairs]
    return {"input_ids": pad_batch(src), "decoder_input_ids": pad_batch([[BOS, *t] for t in tgt]),
            "labels": pad_batch([[*t, EOS] for t in tgt], IGNORE_INDEX)}


class PairBatches:
    """Shuffled epochs of teacher-forcing batches from pairs, with a resumable position."""

    def __init__(self, pairs: list[Pair], src_vocab: Vocab, tgt_vocab: Vocab, batch_size: int, seed: int,
                 device: torch.device):
        if not 1 <= batch_size <= len(pairs):
            raise LmlabError(f"--batch-size {batch_size} must be between 1 and the training set size "
                             f"{len(pairs)}; lower --batch-size or raise --train-size")
        self.pairs, self.src_vocab, self.tgt_vocab = pairs, src_vocab, tgt_vocab
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.epoch, self.pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.pairs), generator=g).tolist()

    def next(self) -> dict[str, torch.Tensor]:
        """Return the next batch (tensors on the device); a new shuffled epoch starts when one runs out."""
        if self.pos + self.batch_size > len(self.pairs):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        idx = self._order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        batch = collate([self.pairs[i] for i in idx], self.src_vocab, self.tgt_vocab)
        return {k: v.to(self.device) for k, v in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        """Return the data position (epoch, offset) for exact resume."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`."""
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)


def seq2seq_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Teacher-forced objective: mean cross-entropy per target token, plus teacher-forced token accuracy."""
    src = batch["input_ids"]
    if isinstance(getattr(model, "module", model), EncoderDecoder):  # (DDP wraps it in .module)
        logits = model(src, batch["decoder_input_ids"], src != PAD)
    else:
        logits = model(src, batch["decoder_input_ids"])
    labels = batch["labels"]
    counted = labels != IGNORE_INDEX
    accuracy = (logits.argmax(-1) == labels)[counted].float().mean().detach()
    return token_cross_entropy(logits, labels), {"train_token_accuracy": accuracy}


# ---------------------------------------------------------------- decoding


@dataclass
class Hypothesis:
    """A decoded output: token ids (ending in ``</s>`` when finished), log-probability, attention (T, S)."""

    tokens: list[int]
    score: float
    attention: torch.Tensor


def output_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Return log-probabilities (fp32) over the tokens a decoder may emit: ``<pad>`` and ``<s>`` never."""
    logits = logits.float().clone()
    logits[..., PAD] = float("-inf")
    logits[..., BOS] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def max_output_len(src: torch.Tensor) -> int:
    """Return the decoding step limit for a padded source batch: generous for every built-in task."""
    return 2 * src.size(1) + 10


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: torch.Tensor, max_len: int | None = None) -> list[Hypothesis]:
    """Decode padded sources (B, S) by taking the most probable token at each step; return B hypotheses."""
    max_len = max_len or max_output_len(src)
    memory = model.encode(src)
    state = memory.init_state
    B = src.size(0)
    prev = torch.full((B,), BOS, dtype=torch.long, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    lengths = torch.full((B,), max_len, dtype=torch.long)
    scores = torch.zeros(B, dtype=torch.float64)
    tokens, weights = [], []
    for t in range(max_len):
        logits, state, attn = model.step(prev, state, memory)
        logp = output_log_probs(logits)
        best_logp, prev = logp.max(dim=-1)
        scores += torch.where(finished.cpu(), 0.0, best_logp.double().cpu())
        tokens.append(prev)
        weights.append(attn)
        newly = (prev == EOS) & ~finished
        lengths[newly.cpu()] = t + 1
        finished |= newly
        if bool(finished.all()):
            break
    tok = torch.stack(tokens, 1).cpu()
    att = torch.stack(weights, 1).float().cpu()
    return [Hypothesis(tok[b, : lengths[b]].tolist(), float(scores[b]), att[b, : lengths[b]])
            for b in range(B)]


@torch.no_grad()
def beam_decode(model: Seq2Seq, src: torch.Tensor, beam: int, max_len: int | None = None,
                length_penalty: float = 1.0) -> list[Hypothesis]:
    """Beam search over padded sources (B, S), all examples at once; return the best hypothesis of each.

    Each step expands the ``beam`` live hypotheses, keeps the best ``2 * beam``
    candidates, moves those that end in ``</s>`` and rank within the top ``beam`` to
    the finished list, and continues the best ``beam`` others. An example stops when it
    has ``beam`` finished hypotheses. Finished hypotheses compete on log-probability
    divided by length ** ``length_penalty`` (0 turns length normalisation off).
    With ``beam=1`` this is exactly greedy decoding.
    """
    if beam < 1:
        raise LmlabError(f"--beam must be at least 1, got {beam}")
    max_len = max_len or max_output_len(src)
    B, k, dev = src.size(0), beam, src.device
    memory = model.encode(src).select(torch.arange(B, device=dev).repeat_interleave(k))
    state = memory.init_state
    prev = torch.full((B * k,), BOS, dtype=torch.long, device=dev)
    scores = torch.full((B, k), float("-inf"), dtype=torch.float64)  # bookkeeping stays on the CPU
    scores[:, 0] = 0.0  # all beams start identical: expand only the first at step 0
    history = torch.zeros((B * k, 0), dtype=torch.long)
    att_history = torch.zeros((B * k, 0, src.size(1)))
    finished: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(B)]
    done = [False] * B

    def norm(score: float, length: int) -> float:
        return score / (length**length_penalty)

    for t in range(max_len):
        logits, state, attn = model.step(prev, state, memory)
        logp = output_log_probs(logits).double().cpu()
        V = logp.size(-1)
        cand = (scores.unsqueeze(-1) + logp.view(B, k, V)).view(B, k * V)
        top_scores, top_idx = cand.topk(min(2 * k, k * V), dim=-1)
        top_scores_l, top_idx_l = top_scores.tolist(), top_idx.tolist()
        attn_cpu = attn.float().cpu()
        new_scores = torch.full((B, k), float("-inf"), dtype=torch.float64)
        new_origin = torch.zeros((B, k), dtype=torch.long)
        new_tokens = torch.full((B, k), PAD, dtype=torch.long)
        for b in range(B):
            if done[b]:
                continue
            kept = 0
            for rank, (sc, idx) in enumerate(zip(top_scores_l[b], top_idx_l[b])):
                if sc == float("-inf") or kept == k:
                    break
                origin, token = divmod(idx, V)
                row = b * k + origin
                if token == EOS:
                    if rank < k:
                        hyp = Hypothesis(history[row].tolist() + [EOS], sc,
                                         torch.cat([att_history[row], attn_cpu[row : row + 1]]))
                        finished[b].append((norm(sc, t + 1), hyp))
                    continue
                new_scores[b, kept], new_origin[b, kept], new_tokens[b, kept] = sc, origin, token
                kept += 1
            if len(finished[b]) >= k or kept == 0:
                done[b] = True
        if all(done):
            break
        rows = (torch.arange(B).unsqueeze(1) * k + new_origin).view(-1)
        history = torch.cat([history[rows], new_tokens.view(-1, 1)], dim=1)
        att_history = torch.cat([att_history[rows], attn_cpu[rows].unsqueeze(1)], dim=1)
        state = state[rows.to(dev)]
        prev = new_tokens.view(-1).to(dev)
        scores = new_scores
    else:
        # Out of steps: unfinished live hypotheses compete too, without an end mark.
        for b in range(B):
            if not done[b]:
                for j in range(k):
                    sc = float(scores[b, j])
                    if sc > float("-inf"):
                        hyp = Hypothesis(history[b * k + j].tolist(), sc, att_history[b * k + j])
                        finished[b].append((norm(sc, max_len), hyp))
    return [max(f, key=lambda x: x[0])[1] for f in finished]


def decode(model: Seq2Seq | EncoderDecoder, src: torch.Tensor, beam: int = 1, length_penalty: float = 1.0,
           details: bool = True) -> list[Hypothesis]:
    """Decode padded sources with greedy search (``beam=1``) or beam search; return one hypothesis each.

    A Transformer decodes with the lab's generation code, and its scores and attention are computed
    only with ``details`` (a teacher-forced pass per source; else NaN and zeros)."""
    if isinstance(model, EncoderDecoder):
        found = transformer_decode(model, src, beam, length_penalty, max_output_len(src), details)
        return [Hypothesis(*r) for r in found]
    if beam == 1:
        return greedy_decode(model, src)
    return beam_decode(model, src, beam, length_penalty=length_penalty)


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    """Exact-match and per-token accuracy over ``n`` examples, with the predictions in order."""

    exact_match: float
    token_accuracy: float
    n: int
    predictions: list[str]


def evaluate(model: Seq2Seq, pairs: list[Pair], src_vocab: Vocab, tgt_vocab: Vocab, *, beam: int = 1,
             length_penalty: float = 1.0, batch_size: int = 256,
             device: torch.device | None = None) -> EvalResult:
    """Decode every source in ``pairs`` and compare with the targets.

    Exact match counts outputs equal to the target. Per-token accuracy is the share of
    target positions (the end mark included) where the output has the same token, so
    a missing or extra character costs only where it shifts the rest. Returns an
    :class:`EvalResult`; the model is left in eval mode.
    """
    device = device or next(model.parameters()).device
    model.eval()
    exact, correct, total = 0, 0, 0
    predictions = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        src = pad_batch([encode_source(s, src_vocab, "source") for s, _ in chunk]).to(device)
        for hyp, (_, target) in zip(decode(model, src, beam, length_penalty, details=False), chunk):
            reference = tgt_vocab.encode(target, "target") + [EOS]
            text = tgt_vocab.decode(hyp.tokens)
            predictions.append(text)
            exact += text == target and hyp.tokens[-1:] == [EOS]
            correct += sum(p == r for p, r in zip(hyp.tokens, reference))
            total += len(reference)
    n = len(pairs)
    return EvalResult(exact / n if n else 0.0, correct / total if total else 0.0, n, predictions)


# ---------------------------------------------------------------- heatmap


def _label(token: str) -> str:
    return "␣" if token == " " else token


def save_heatmap(path: str | Path, src_tokens: list[str], out_tokens: list[str], weights: torch.Tensor,
                 title: str = "") -> None:
    """Write a PNG of attention ``weights`` (len(out_tokens), len(src_tokens)): source on x, output on y."""
    from lmlab.plotting import figure, save_png

    w = weights.detach().float().cpu().numpy()
    fig, (ax,) = figure(width=max(3.0, 0.35 * len(src_tokens) + 1.8),
                        height=max(2.5, 0.35 * len(out_tokens) + 1.2), layout=None)
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_tokens)), [_label(t) for t in src_tokens], fontsize=8)
    ax.set_yticks(range(len(out_tokens)), [_label(t) for t in out_tokens], fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def attention_plot(model: Seq2Seq, source: str, src_vocab: Vocab, tgt_vocab: Vocab, path: str | Path, *,
                   beam: int = 1, length_penalty: float = 1.0) -> Hypothesis:
    """Decode ``source``, draw its attention heatmap to ``path``; return the hypothesis."""
    device = next(model.parameters()).device
    model.eval()
    src = pad_batch([encode_source(source, src_vocab)]).to(device)
    hyp = decode(model, src, beam, length_penalty)[0]
    src_tokens = [*source, "</s>"]
    out_tokens = [tgt_vocab.tokens[i] for i in hyp.tokens]
    save_heatmap(path, src_tokens, out_tokens, hyp.attention,
                 title=f"{source!r} -> {tgt_vocab.decode(hyp.tokens)!r}")
    return hyp


# ---------------------------------------------------------------- run directory


@dataclass
class Seq2SeqRun:
    """A loaded run: the model (eval mode), its vocabularies and the task spec that made its data."""

    model: Seq2Seq | EncoderDecoder
    src_vocab: Vocab
    tgt_vocab: Vocab
    spec: TaskSpec


def model_json(model_cfg: Seq2SeqConfig | EncDecConfig) -> dict[str, Any]:
    """Return what ``model.json`` holds: RNNsearch's config, or the Transformer's with ``arch``."""
    if isinstance(model_cfg, EncDecConfig):
        return {"arch": "transformer", **model_cfg.to_dict()}
    return asdict(model_cfg)


def write_run_files(run_dir: Path, model_cfg: Seq2SeqConfig | EncDecConfig, src_vocab: Vocab,
                    tgt_vocab: Vocab, spec: TaskSpec) -> None:
    """Write ``model.json``, ``vocab.json`` and ``task.json`` (atomically) into ``run_dir``."""
    write_json(run_dir / "model.json", model_json(model_cfg))
    write_json(run_dir / "vocab.json", {"src": src_vocab.tokens, "tgt": tgt_vocab.tokens})
    write_json(run_dir / "task.json", asdict(spec))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmlabError(f"{path} is damaged ({e}); retrain the run with 'lmlab seq2seq train'") from None
    if not isinstance(data, dict):
        raise LmlabError(f"{path} is damaged (not a JSON object); retrain the run with 'lmlab seq2seq train'")
    return data


def _build(cls: type, data: dict[str, Any], path: Path) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as e:
        raise LmlabError(f"{path} is damaged ({e}); retrain the run with 'lmlab seq2seq train'") from None


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> Seq2SeqRun:
    """Load a run directory written by ``lmlab seq2seq train``; return a :class:`Seq2SeqRun`.

    Raises LmlabError naming the missing files when the folder is not a complete run,
    and when a file is damaged.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmlabError(f"checkpoint folder {run_dir} does not exist; pass the --out folder of "
                         "'lmlab seq2seq train'")
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise LmlabError(f"{run_dir} is not a complete seq2seq run: missing {', '.join(missing)}; pass the "
                         "--out folder of a finished 'lmlab seq2seq train'")
    saved = _read_json(run_dir / "model.json")
    if saved.get("arch") == "transformer":
        return _load_transformer_run(run_dir, saved, device)
    cfg = _build(Seq2SeqConfig, saved, run_dir / "model.json")
    src_vocab, tgt_vocab = _read_vocabs(run_dir)
    spec = _build(TaskSpec, _read_json(run_dir / "task.json"), run_dir / "task.json")
    model = Seq2Seq(cfg)
    try:
        state = load_file(str(run_dir / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmlabError(f"{run_dir / 'model.safetensors'} is damaged or does not match model.json "
                         f"({first}); retrain the run with 'lmlab seq2seq train'") from None
    model.to(device).eval()
    return Seq2SeqRun(model, src_vocab, tgt_vocab, spec)


def _read_vocabs(run_dir: Path) -> tuple[Vocab, Vocab]:
    """Return the run's source and target vocabularies from ``vocab.json``."""
    vocab = _read_json(run_dir / "vocab.json")
    try:
        return Vocab(list(vocab["src"])), Vocab(list(vocab["tgt"]))
    except (KeyError, TypeError):
        raise LmlabError(f"{run_dir / 'vocab.json'} is damaged (needs 'src' and 'tgt' lists); "
                         "retrain the run with 'lmlab seq2seq train'") from None


def _load_transformer_run(run_dir: Path, saved: dict[str, Any], device: torch.device | str) -> Seq2SeqRun:
    from lmlab.models.io import load_weights

    values = {k: v for k, v in saved.items() if k != "arch"}
    try:
        model = EncoderDecoder(EncDecConfig.from_dict(values))
    except (TypeError, LmlabError) as e:
        raise LmlabError(f"{run_dir / 'model.json'} is damaged ({e}); retrain the run with "
                         "'lmlab seq2seq train --arch transformer'") from None
    load_weights(model, run_dir / "model.safetensors")
    src_vocab, tgt_vocab = _read_vocabs(run_dir)
    spec = _build(TaskSpec, _read_json(run_dir / "task.json"), run_dir / "task.json")
    return Seq2SeqRun(model.to(device).eval(), src_vocab, tgt_vocab, spec)


def parameter_count(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- training


def _check_options(cfg: TrainConfig) -> None:
    if cfg.out is None:
        raise LmlabError("no run folder given; pass --out RUN (the folder for the model and its files)")
    for flag, value in (("--steps", cfg.steps), ("--batch-size", cfg.batch_size), ("--hidden", cfg.hidden),
                        ("--emb", cfg.emb), ("--attn", cfg.attn or 1), ("--layers", cfg.layers),
                        ("--heads", cfg.heads)):
        if value < 1:
            raise LmlabError(f"{flag} must be at least 1, got {value}")
    if cfg.arch == "transformer" and cfg.hidden % cfg.heads:
        raise LmlabError(f"--hidden {cfg.hidden} is not divisible by --heads {cfg.heads}; pick heads that "
                         "divide it")
    cfg.optim.check()
    if cfg.eval_every < 0:
        raise LmlabError("--eval-every must not be negative (0 turns it off)")


def _check_resumable(out: Path, model_cfg: Seq2SeqConfig | EncDecConfig, spec: TaskSpec) -> None:
    """Raise LmlabError unless ``out`` has a checkpoint made with the same model and task options."""
    from lmlab.train.checkpoint import latest_step

    if latest_step(out) is None:
        raise LmlabError(f"{out} has no checkpoint to resume; drop --resume to start a new run there")
    for name, now in (("model.json", model_json(model_cfg)), ("task.json", asdict(spec))):
        saved = _read_json(out / name) if (out / name).is_file() else {}
        diffs = [f"{k}: run {saved.get(k)!r} vs now {v!r}" for k, v in now.items() if saved.get(k) != v]
        if diffs:
            raise LmlabError(f"--resume: options differ from the run's {name} ({'; '.join(diffs)}); "
                             "resume with the run's options (see its config.yaml) or start a new run in "
                             "another --out")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train RNNsearch or the Transformer (``cfg.arch``) on ``cfg.task`` into the run folder ``cfg.out``;
    return the run's summary figures.

    Validates everything (task, lengths, sizes, an existing run) before writing, then
    writes config.yaml, model.json, vocab.json and task.json, trains with held-out
    exact-match every ``eval_every`` steps (metrics.jsonl, resumable state/, then
    model.safetensors), and draws attention.png for the first test example.
    """
    from lmlab.config import save_config
    from lmlab.device import resolve_device
    from lmlab.train.distributed import unwrap_model
    from lmlab.train.loop import Trainer, TrainSettings

    _check_options(cfg)
    set_threads(cfg.threads)
    spec = TaskSpec(cfg.task, cfg.seed, cfg.min_len, cfg.max_len, cfg.train_size, cfg.test_size)
    splits = make_splits(spec)
    model_cfg: Seq2SeqConfig | EncDecConfig
    if cfg.arch == "transformer":
        src_vocab = tgt_vocab = joint_vocab(splits.task)
        model_cfg = transformer_config(len(src_vocab), cfg.hidden, cfg.layers, cfg.heads, cfg.dropout)
    else:
        src_vocab, tgt_vocab = task_vocabs(splits.task)
        model_cfg = Seq2SeqConfig(len(src_vocab), len(tgt_vocab), cfg.emb, cfg.hidden, cfg.attn or cfg.hidden,
                                  cfg.dropout, PAD)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    if cfg.resume:
        _check_resumable(out, model_cfg, spec)
    elif (out / "model.safetensors").exists():
        if not cfg.overwrite:
            raise LmlabError(f"{out} already holds a trained model; pass --overwrite to replace it, "
                             "--resume to continue it, or choose another --out")
        (out / "model.safetensors").unlink()  # never leave old weights beside a new model.json
    torch.manual_seed(cfg.seed)
    model = EncoderDecoder(model_cfg) if isinstance(model_cfg, EncDecConfig) else Seq2Seq(model_cfg)
    batches = PairBatches(splits.train, src_vocab, tgt_vocab, cfg.batch_size, cfg.seed, device)
    optim = dataclasses.replace(cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, cfg.steps // 10))
    settings = TrainSettings(optim=optim, precision="fp32",
                             max_steps=cfg.steps, eval_interval=cfg.eval_every, log_interval=10)

    def evaluator(m: nn.Module) -> dict[str, float]:
        result = evaluate(unwrap_model(m), splits.test, src_vocab, tgt_vocab, device=device)
        m.train()
        return {"test_exact_match": result.exact_match, "test_token_accuracy": result.token_accuracy}

    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_run_files(out, model_cfg, src_vocab, tgt_vocab, spec)
    trainer = Trainer(model, seq2seq_loss, batches, settings, out_dir=out, device=device, evaluator=evaluator,
                      model_config={"model": model_json(model_cfg), "task": asdict(spec)})
    t0 = time.perf_counter()
    result = trainer.fit(resume=cfg.resume)
    wall = time.perf_counter() - t0
    record = result.last_record
    if "test_exact_match" not in record:  # e.g. resuming a run that had already finished
        record = evaluator(model)
    source = splits.test[0][0]
    hyp = attention_plot(model, source, src_vocab, tgt_vocab, out / "attention.png")
    return {
        "task": cfg.task, "arch": cfg.arch, "out": str(out), "steps": result.step,
        "interrupted": result.interrupted,
        "parameters": parameter_count(model), "train_size": len(splits.train), "test_size": len(splits.test),
        "lengths": [splits.min_len, splits.max_len],
        "test_exact_match": record["test_exact_match"], "test_token_accuracy": record["test_token_accuracy"],
        "examples_per_s": round(cfg.batch_size * result.step / max(result.elapsed, 1e-9), 1),
        "wall_s": round(wall, 2), "example": {"input": source, "output": tgt_vocab.decode(hyp.tokens),
                                              "target": splits.test[0][1]},
    }
