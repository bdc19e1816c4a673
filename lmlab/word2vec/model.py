"""word2vec (Mikolov et al. 2013): skip-gram and CBOW with negative sampling or NCE, in PyTorch.

The training recipe is word2vec.c's, as gensim implements it:
- vocabulary of words seen at least ``min_count`` times, most frequent first;
- frequent-word subsampling: a word with count c is kept with probability
  ``(sqrt(c / (s T)) + 1) (s T) / c`` (T = total count of vocabulary words, s = ``subsample``),
  redrawn every epoch, before windows are formed (so windows reach further);
- dynamic window: each centre word gets a window of ``window - b`` with b uniform in
  [0, window);
- negative sampling: ``negative`` noise words per example drawn from unigram^0.75 and
  labelled 0; a noise word equal to the true word is skipped; NCE is the option that
  subtracts ``log(k q(w))`` from each logit (Gutmann & Hyvärinen; Mnih & Teh);
- skip-gram: the input vector of each context word predicts the centre word (as in
  word2vec.c); CBOW: the mean (or sum) of the context input vectors predicts it;
- plain SGD with the learning rate decaying linearly from ``lr`` to ``min_lr`` over all
  epochs; input vectors start uniform in [-1/dim, 1/dim) (gensim 4; word2vec.c uses half
  that), output vectors at zero.

What differs is how the work is batched: numpy builds all (centre, context) pairs of a
chunk of sentences at once, and each SGD step updates a batch of examples with
``index_add_`` (gradients from the same parameters, summed per row). Several threads
run steps concurrently without locks (Hogwild, as word2vec.c and gensim do). Compiled
(the default from :data:`COMPILE_WORDS` words of work on), each step is fused by
``torch.compile`` into a few loops, which avoids writing the (batch, negative+1, dim)
intermediates to memory, and releases the GIL, so that by default one thread per CPU
core runs steps.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.word2vec.vectors import WordVectors

MAX_SENTENCE = 10000  # longer sentences are cut into pieces of this many words (gensim's limit)
CHUNK_WORDS = 32768  # vocabulary words per unit of work; a chunk never splits a sentence piece
# From this many words of work (corpus words x epochs) on, compiling the step pays off. Compiling
# takes about 5 s with torch's compile cache warm (3-4 s of it importing the compiler; 20-25 s the
# first time on a machine and torch version). Compiled, a thread runs skip-gram about 2x and CBOW
# 1.8x faster, and threads scale where the plain step's do not (2 cores: 3x and 2.5x); so with a
# warm cache compiling breaks even at about 1M words for skip-gram and 2-3M for CBOW.
COMPILE_WORDS: dict[str, int] = {"skipgram": 1_000_000, "cbow": 2_000_000}
MAX_AUTO_THREADS = 8  # Hogwild threads chosen by default; more collide on frequent words' rows


@dataclass
class Word2VecParams:
    """Hyperparameters of word2vec training (names follow the CLI flags)."""

    arch: Literal["skipgram", "cbow"] = "skipgram"
    dim: int = 100
    window: int = 5
    negative: int = 5
    loss: Literal["ns", "nce"] = "ns"
    min_count: int = 5
    epochs: int = 5
    subsample: float = 1e-3
    lr: float = 0.025
    min_lr: float = 1e-4
    ns_exponent: float = 0.75
    cbow_mean: bool = True
    shrink_window: bool = True
    batch: int = 1024
    threads: int = 0  # 0: one per CPU core when the step is compiled, else 1 (see resolve_threads)
    seed: int = 1
    compile: bool | None = None  # None: compile when epochs x corpus words >= COMPILE_WORDS[arch]

    def check(self) -> None:
        """Raise LmlabError naming the first invalid hyperparameter."""
        rules = [
            (self.dim >= 1, "dim must be at least 1"),
            (self.window >= 1, "window must be at least 1"),
            (self.negative >= 1, "negative must be at least 1 (the number of noise words per example)"),
            (self.min_count >= 1, "min-count must be at least 1"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (0 <= self.subsample < 1, "subsample must be in [0, 1): 0 turns it off, 1e-3 is usual"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr, "need lr > 0 and 0 <= min-lr <= lr"),
            (self.batch >= 1, "batch must be at least 1"),
            (self.threads >= 0, "threads must be at least 1 (or 0: one per CPU core)"),
        ]
        for ok, msg in rules:
            if not ok:
                raise LmlabError(f"{msg}; fix the option")


@dataclass
class Vocab:
    """Vocabulary words, most frequent first, with their corpus counts."""

    words: list[str]
    counts: np.ndarray
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)


def build_vocab(sentences: Iterable[list[str]], min_count: int) -> tuple[Vocab, int]:
    """Count the words of ``sentences``; return the vocabulary of words seen >= ``min_count`` times
    (most frequent first, ties in order of first appearance) and the total number of words.

    Raises LmlabError for an empty corpus or when min_count removes every word.
    """
    counter: Counter[str] = Counter()
    for sentence in sentences:
        counter.update(sentence)
    total = sum(counter.values())
    if total == 0:
        raise LmlabError("the corpus has no words; give a text file with one whitespace-tokenised "
                         "sentence per line")
    kept = [(w, c) for w, c in counter.items() if c >= min_count]
    if not kept:
        top = max(counter.values())
        raise LmlabError(f"min-count {min_count} removes every word (the most frequent word occurs {top} "
                         f"times); lower --min-count to at most {top} or use a larger corpus")
    kept.sort(key=lambda wc: -wc[1])  # stable: ties keep first-appearance order
    return Vocab([w for w, _ in kept], np.array([c for _, c in kept])), total


@dataclass
class EncodedCorpus:
    """Vocabulary ids of a corpus (out-of-vocabulary words dropped) cut into sentence pieces.

    ``starts[i]:starts[i+1]`` are the ids of piece i, which had ``raw[i]`` words before
    out-of-vocabulary words were dropped.
    """

    ids: np.ndarray
    starts: np.ndarray
    raw: np.ndarray

    @property
    def raw_words(self) -> int:
        return int(self.raw.sum())

    def chunks(self, size: int = CHUNK_WORDS) -> list[tuple[int, int]]:
        """Split the pieces into runs of about ``size`` ids; return (first piece, end piece) pairs."""
        out, first = [], 0
        n = len(self.starts) - 1
        for p in range(n):
            if self.starts[p + 1] - self.starts[first] >= size or p == n - 1:
                out.append((first, p + 1))
                first = p + 1
        return out


def encode_corpus(sentences: Iterable[list[str]], vocab: Vocab) -> EncodedCorpus:
    """Map each sentence to vocabulary ids (dropping unknown words), cutting long ones into pieces."""
    ids: list[int] = []
    starts, raw = [0], []
    index = vocab.index
    for sentence in sentences:
        for a in range(0, max(len(sentence), 1), MAX_SENTENCE):
            piece = sentence[a:a + MAX_SENTENCE]
            ids.extend(i for i in map(index.get, piece) if i is not None)
            starts.append(len(ids))
            raw.append(len(piece))
    return EncodedCorpus(np.array(ids, dtype=np.int32), np.array(starts, dtype=np.int64),
                         np.array(raw, dtype=np.int64))


@dataclass
class TrainStats:
    """What a training run processed and how fast."""

    words: int = 0  # raw corpus words, all epochs (gensim's "raw words")
    effective_words: int = 0  # words left after dropping unknown words and subsampling
    examples: int = 0  # skip-gram (centre, context) pairs, or CBOW centre words
    loss: float = 0.0  # mean negative log-likelihood per example
    seconds: float = 0.0  # training time, without compile_seconds
    cpu_seconds: float = 0.0  # CPU time of the process (all threads) during those seconds
    compile_seconds: float = 0.0  # time torch.compile took (or failed after) before training
    compiled: bool = False  # whether the steps ran compiled
    threads: int = 1  # Hogwild worker threads that ran

    @property
    def words_per_s(self) -> float:
        return self.words / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- the SGD steps


def _scale(scores: torch.Tensor, targets: torch.Tensor, lr: torch.Tensor,
           noise_logit: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the per-logit gradient scale ``lr * (label - sigmoid(logit))`` and the loss per example.

    Column 0 of ``targets`` holds the true word (label 1), the rest noise words (label 0);
    noise words equal to the true word are skipped, as in word2vec.c.
    """
    if noise_logit is not None:  # NCE: logit of "came from the data" = score - log(k q(w))
        scores = scores - noise_logit[targets]
    label = torch.zeros_like(scores)
    label[:, 0] = 1.0
    keep = targets != targets[:, :1]
    keep[:, 0] = True
    keep = keep.to(scores.dtype)
    g = (label - torch.sigmoid(scores)) * keep * lr
    loss = -(F.logsigmoid(torch.where(label > 0, scores, -scores)) * keep).sum(1)
    return g, loss


def _combine(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Return ``sum_j g[:, j] * v[:, j, :]``, written as a sum over the (few) columns so that
    torch.compile vectorises along the embedding dimension (a ``.sum(1)`` is vectorised
    along the short column axis and runs several times slower)."""
    out = g[:, 0, None] * v[:, 0]
    for j in range(1, v.shape[1]):
        out = out + g[:, j, None] * v[:, j]
    return out


def skipgram_step(w_in: torch.Tensor, w_out: torch.Tensor, center: torch.Tensor, context: torch.Tensor,
                  noise: torch.Tensor, lr: torch.Tensor, noise_logit: torch.Tensor | None) -> torch.Tensor:
    """One SGD step on skip-gram pairs, updating ``w_in`` and ``w_out`` in place; return the loss per pair.

    Pair i trains the input vector of ``context[i]`` to score the output vector of
    ``center[i]`` high and those of its noise words ``noise[i]`` low.
    """
    targets = torch.cat([center[:, None], noise], dim=1)  # (P, 1+k)
    v_in = w_in.index_select(0, context)  # (P, d)
    v_out = w_out.index_select(0, targets.reshape(-1)).view(*targets.shape, -1)  # (P, 1+k, d)
    scores = (v_out * v_in[:, None, :]).sum(-1)
    g, loss = _scale(scores, targets, lr, noise_logit)
    w_in.index_add_(0, context, _combine(g, v_out))
    w_out.index_add_(0, targets.reshape(-1), (g[:, :, None] * v_in[:, None, :]).reshape(-1, w_out.shape[1]))
    return loss


def cbow_step(w_in: torch.Tensor, w_out: torch.Tensor, center: torch.Tensor, context: torch.Tensor,
              owner: torch.Tensor, counts: torch.Tensor, noise: torch.Tensor, lr: torch.Tensor,
              noise_logit: torch.Tensor | None, mean: bool) -> torch.Tensor:
    """One SGD step on CBOW examples, updating ``w_in`` and ``w_out`` in place; return the loss per example.

    Example j predicts ``center[j]`` from the context words ``context[owner == j]``
    (``counts[j]`` of them): their mean input vector (sum if not ``mean``) is scored
    against the output vectors of the centre word and its noise words ``noise[j]``.
    The error is added to every context word's vector (divided by the count for the
    sum, as gensim does).
    """
    n, d = center.shape[0], w_in.shape[1]
    rows = w_in.index_select(0, context)
    if mean:  # scaled per pair, so that the scatter below leaves the mean itself in memory
        rows = rows * (1.0 / counts)[owner][:, None]
    h = torch.zeros(n, d, dtype=w_in.dtype).index_add_(0, owner, rows)
    targets = torch.cat([center[:, None], noise], dim=1)
    v_out = w_out.index_select(0, targets.reshape(-1)).view(*targets.shape, -1)
    scores = (v_out * h[:, None, :]).sum(-1)
    g, loss = _scale(scores, targets, lr, noise_logit)
    # The error of h, sum_j g[:, j] * v_out[:, j], is accumulated by a scatter rather than written as a
    # sum (_combine): a scatter's result is stored once per example, whereas a sum is inlined by
    # torch.compile into the w_in update below and so recomputed for every context word.
    example = torch.arange(n, device=center.device).repeat_interleave(targets.shape[1])
    err = torch.zeros(n, d, dtype=w_in.dtype).index_add_(0, example, (g[:, :, None] * v_out).reshape(-1, d))
    if not mean:
        err = err / counts[:, None]
    w_in.index_add_(0, context, err[owner])
    w_out.index_add_(0, targets.reshape(-1), (g[:, :, None] * h[:, None, :]).reshape(-1, d))
    return loss


# ---------------------------------------------------------------- the model

_EAGER: dict[str, Callable] = {"skipgram": skipgram_step, "cbow": cbow_step}
_COMPILED: dict[tuple[str, bool], Callable] = {}  # compiled steps, shared by all models of the process


def cpu_cores() -> int:
    """Return how many CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_compile(params: Word2VecParams, words: int) -> bool:
    """Whether training with ``params`` on ``words`` words of work (corpus words x epochs) compiles
    its step: ``params.compile`` when set, else from :data:`COMPILE_WORDS` words on."""
    if params.compile is not None:
        return params.compile
    return words >= COMPILE_WORDS[params.arch]


def resolve_threads(params: Word2VecParams, compiled: bool) -> int:
    """Return how many Hogwild threads train: ``params.threads`` when set, else one per CPU core (at
    most :data:`MAX_AUTO_THREADS`) for a compiled step and 1 for the plain one, which holds the GIL
    between its many small ops, so that more threads only contend for it."""
    if params.threads:
        return params.threads
    return max(1, min(cpu_cores(), MAX_AUTO_THREADS)) if compiled else 1


def _spans(total: int, batch: int) -> list[tuple[int, int]]:
    """Split ``range(total)`` into spans of ``batch`` items; a last span of one item joins the one before."""
    spans = [(s, min(s + batch, total)) for s in range(0, total, batch)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] == 1:
        spans[-2:] = [(spans[-2][0], total)]
    return spans


class Word2Vec:
    """Input and output embeddings of a vocabulary, trained by :meth:`train`."""

    def __init__(self, vocab: Vocab, params: Word2VecParams):
        params.check()
        self.vocab, self.params = vocab, params
        gen = torch.Generator().manual_seed(params.seed)
        v, d = len(vocab), params.dim
        self.w_in = (torch.rand(v, d, generator=gen) * 2 - 1) / d
        self.w_out = torch.zeros(v, d)
        counts = vocab.counts.astype(np.float64)
        # subsampling: keep probability per word (word2vec.c / gensim formula)
        if params.subsample > 0:
            t = params.subsample * counts.sum()
            self.keep_prob = np.minimum((np.sqrt(counts / t) + 1) * t / counts, 1.0)
        else:
            self.keep_prob = np.ones(v)
        noise = counts ** params.ns_exponent
        self.noise_prob = noise / noise.sum()
        # word2vec.c's unigram table: word i fills a share of slots equal to its noise probability
        size = int(min(1 << 23, max(1 << 16, 1000 * v)))
        self.noise_table = np.searchsorted(np.cumsum(self.noise_prob), (np.arange(size) + 0.5) / size,
                                           side="right").astype(np.int32)
        np.minimum(self.noise_table, v - 1, out=self.noise_table)
        self.noise_logit = None
        if params.loss == "nce":
            self.noise_logit = torch.from_numpy(np.log(params.negative * self.noise_prob)).float()
        # A step sums its examples' updates, all computed from the same weights. When the same rows
        # recur many times in one step (a small vocabulary) that acts like a much larger learning
        # rate and diverges, so a step holds at most twice as many examples as there are words.
        self.batch = max(1, min(params.batch, 2 * v))

    # -- examples

    def _examples(self, corpus: EncodedCorpus, chunk: tuple[int, int], rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Subsample a chunk and build its (centre position, context id) pairs in centre order.

        Returns ``(center ids, owner, context ids, effective words)`` where ``owner[p]`` is
        the index (into the kept words) of pair p's centre word.
        """
        p = self.params
        a, b = corpus.starts[chunk[0]], corpus.starts[chunk[1]]
        ids = corpus.ids[a:b]
        piece = np.repeat(np.arange(chunk[1] - chunk[0], dtype=np.int32),
                          np.diff(corpus.starts[chunk[0]:chunk[1] + 1]))
        if p.subsample > 0:
            keep = rng.random(len(ids)) < self.keep_prob[ids]
            ids, piece = ids[keep], piece[keep]
        n = len(ids)
        bounds = np.searchsorted(piece, np.arange(chunk[1] - chunk[0] + 1, dtype=np.int32)).astype(np.int32)
        if p.shrink_window:
            reach = (p.window - rng.integers(0, p.window, n)).astype(np.int32)
        else:
            reach = np.full(n, p.window, dtype=np.int32)
        # int32 throughout: these arrays are (kept words, 2 window) and dominate the time of this function
        at = np.arange(n, dtype=np.int32)
        first = np.maximum(at - reach, bounds[piece])  # the window, cut at the piece's ends
        end = np.minimum(at + reach + 1, bounds[piece + 1])
        offsets = np.concatenate([np.arange(-p.window, 0), np.arange(1, p.window + 1)]).astype(np.int32)
        pos = at[:, None] + offsets[None, :]
        inside = (pos >= first[:, None]) & (pos < end[:, None])
        owner = np.repeat(at, inside.sum(1))
        context = ids[pos[inside]]
        return ids, owner, context, n

    # -- training

    def train(self, corpus: EncodedCorpus, progress: bool = True,
              on_progress: Callable[[int], None] | None = None) -> TrainStats:
        """Train on ``corpus`` for ``params.epochs`` epochs; return the run's TrainStats.

        ``on_progress(raw_words)`` is called after each chunk (e.g. to advance a progress bar);
        ``progress`` shows a tqdm bar with words/s when no callback is given.
        """
        p = self.params
        chunks = corpus.chunks()
        if not chunks or len(corpus.ids) == 0:
            raise LmlabError("no corpus word is in the vocabulary; lower --min-count or use a larger corpus")
        raw_before = np.concatenate([[0], np.cumsum([corpus.raw[a:b].sum() for a, b in chunks])])
        total_raw = int(raw_before[-1]) * p.epochs
        jobs = [(e, c) for e in range(p.epochs) for c in range(len(chunks))]
        stats = TrainStats()
        lock = threading.Lock()
        state = {"next": 0, "error": None, "stop": False}
        bar = None

        def work() -> None:
            while True:
                with lock:
                    if state["next"] >= len(jobs) or state["stop"]:
                        return
                    epoch, c = jobs[state["next"]]
                    state["next"] += 1
                done = epoch * raw_before[-1] + raw_before[c]
                raw = int(raw_before[c + 1] - raw_before[c])
                rng = np.random.default_rng([p.seed, epoch, c])
                examples, loss, effective = self._train_chunk(corpus, chunks[c], rng, step, done, raw,
                                                              total_raw)
                if not math.isfinite(loss):
                    raise LmlabError(f"training diverged (loss {loss}) in epoch {epoch + 1}; "
                                     f"lower --lr (now {p.lr}) or --batch (now {p.batch})")
                with lock:
                    stats.words += raw
                    stats.effective_words += effective
                    stats.examples += examples
                    stats.loss += loss
                    if on_progress is not None:
                        on_progress(raw)

        def guarded() -> None:
            try:
                work()
            except BaseException as e:  # re-raised in the main thread
                state["error"] = e
                state["stop"] = True

        threads_before = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread per op; parallelism comes from the Hogwild workers
        compile_step = resolve_compile(p, total_raw)
        threads = resolve_threads(p, compile_step)
        try:
            t0 = time.perf_counter()
            step = self._step_function(compile_step, threads > 1)  # compiled under torch's 1 thread
            stats.compile_seconds = time.perf_counter() - t0 if compile_step else 0.0
            stats.compiled = step is not _EAGER[p.arch]
            if not stats.compiled:
                threads = resolve_threads(p, False)
            stats.threads = threads
            if on_progress is None and progress:
                from lmlab.console import progress as make_bar

                bar = make_bar(total=total_raw, desc=f"word2vec {p.arch}", unit="w", unit_scale=True)
                on_progress = bar.update
            t0, c0 = time.perf_counter(), time.process_time()
            if threads == 1:
                work()
            else:
                workers = [threading.Thread(target=guarded, daemon=True) for _ in range(threads)]
                for w in workers:
                    w.start()
                try:
                    for w in workers:
                        while w.is_alive():
                            w.join(0.2)
                except KeyboardInterrupt:
                    state["stop"] = True
                    raise
                if state["error"] is not None:
                    raise state["error"]
        finally:
            torch.set_num_threads(threads_before)
            if bar is not None:
                bar.close()
        stats.seconds = time.perf_counter() - t0
        stats.cpu_seconds = time.process_time() - c0
        stats.loss = stats.loss / max(stats.examples, 1)
        if not torch.isfinite(self.w_in).all():
            raise LmlabError(f"training diverged (non-finite vectors); lower --lr (now {p.lr}) "
                             f"or --batch (now {p.batch})")
        return stats

    def _train_chunk(self, corpus: EncodedCorpus, chunk: tuple[int, int], rng: np.random.Generator,
                     step: Callable, done: float, raw: int, total_raw: int) -> tuple[int, float, int]:
        """Train on one chunk; return (examples, summed loss, effective words)."""
        p = self.params
        ids, owner, context, n = self._examples(corpus, chunk, rng)
        table = self.noise_table
        if p.arch == "skipgram":
            total = len(owner)
            spans = _spans(total, self.batch)
            center_t = torch.from_numpy(ids[owner].astype(np.int64))
            context_t = torch.from_numpy(context.astype(np.int64))
        else:  # CBOW: one example per centre word that has at least one context word
            counts = np.bincount(owner, minlength=n)
            centers = np.flatnonzero(counts)
            counts = counts[centers]
            total = len(centers)
            spans = _spans(total, self.batch)
            first = np.concatenate([[0], np.cumsum(counts)])  # example j's pairs are first[j]:first[j + 1]
            span_first = np.repeat([s for s, _ in spans], [e - s for s, e in spans])
            # pair -> its example's index within the step, so that each step gets a view (no subtraction)
            owner_t = torch.from_numpy(np.repeat(np.arange(total) - span_first, counts))
            center_t = torch.from_numpy(ids[centers].astype(np.int64))
            counts_t = torch.from_numpy(counts.astype(np.float32))
            context_t = torch.from_numpy(context.astype(np.int64))
        losses = []
        for s, e in spans:
            noise = torch.from_numpy(table[rng.integers(0, len(table), (e - s, p.negative))])
            lr = self._lr(done + raw * s / total, total_raw)
            run = step if e - s > 1 else _EAGER[p.arch]  # compiled steps are not specialised to size 1
            if p.arch == "skipgram":
                out = run(self.w_in, self.w_out, center_t[s:e], context_t[s:e], noise, lr, self.noise_logit)
            else:
                out = run(self.w_in, self.w_out, center_t[s:e], context_t[first[s]:first[e]],
                          owner_t[first[s]:first[e]], counts_t[s:e], noise, lr, self.noise_logit, p.cbow_mean)
            losses.append(out)
        return total, float(torch.cat(losses).sum()) if losses else 0.0, n

    def _lr(self, done: float, total: int) -> torch.Tensor:
        """Learning rate after ``done`` of ``total`` raw words: linear decay from lr to min_lr."""
        p = self.params
        lr = max(p.min_lr, p.lr - (p.lr - p.min_lr) * done / total)
        return torch.tensor(float(lr), dtype=torch.float32)

    def _step_function(self, compile_step: bool, parallel: bool) -> Callable:
        """Return the SGD step for the architecture: compiled with torch.compile if asked and possible
        (for ``parallel`` Hogwild threads when asked), else the plain one, with a notice on stderr
        when compiling fails."""
        eager = _EAGER[self.params.arch]
        key = (self.params.arch, parallel)
        if not compile_step or _COMPILED.get(key) is eager:  # asked not to, or compiling failed before
            return eager
        step = _COMPILED.get(key)
        try:
            if step is None:
                # cpp_wrapper: the compiled step releases the GIL, so Hogwild threads run it in parallel
                # (it takes longer to compile, so only when there are several threads)
                step = torch.compile(eager, dynamic=True, options={"cpp_wrapper": True} if parallel else None)
            self._warm_up(step)  # also when cached: another model may need a variant (e.g. NCE)
        except Exception as e:  # no C++ compiler, unsupported platform or Python, ...
            first = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"notice: torch.compile failed ({type(e).__name__}: {first}); word2vec trains with the "
                  "plain step instead (2-4x slower; --compile off skips the attempt)", file=sys.stderr)
            step = eager
        _COMPILED[key] = step
        return step

    def _warm_up(self, step: Callable) -> None:
        """Compile ``step`` before worker threads share it, with the dtypes of real batches and sizes
        unlike any fixed size (so no size is specialised); lr 0 leaves the weights unchanged."""
        zero = torch.zeros(())
        fixed = {1, self.params.negative, self.params.negative + 1, self.params.dim, len(self.vocab)}
        sizes = [n for n in range(11, 200) if n not in fixed and 2 * n + 1 not in fixed][:2]
        for n in sizes:
            idx = torch.arange(n, dtype=torch.int64) % len(self.vocab)
            noise = torch.zeros(n, self.params.negative, dtype=torch.int32)
            if self.params.arch == "skipgram":
                step(self.w_in, self.w_out, idx, idx.clone(), noise, zero, self.noise_logit)
            else:
                context = torch.arange(2 * n + 1, dtype=torch.int64) % len(self.vocab)
                owner = torch.arange(2 * n + 1, dtype=torch.int64) % n
                step(self.w_in, self.w_out, idx, context, owner, torch.ones(n), noise, zero,
                     self.noise_logit, self.params.cbow_mean)

    def word_vectors(self) -> WordVectors:
        """Return the trained input vectors (the word vectors), most frequent word first."""
        return WordVectors(list(self.vocab.words), self.w_in.numpy().copy())


def train_word2vec(sentences: Iterable[list[str]], params: Word2VecParams, progress: bool = True
                   ) -> tuple[WordVectors, TrainStats]:
    """Build the vocabulary of ``sentences`` (iterated twice), train word2vec; return vectors and stats."""
    params.check()
    vocab, _ = build_vocab(sentences, params.min_count)
    corpus = encode_corpus(sentences, vocab)
    model = Word2Vec(vocab, params)
    stats = model.train(corpus, progress=progress)
    return model.word_vectors(), stats
