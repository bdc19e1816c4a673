"""What an encoder is scored by: masked-token loss and accuracy, and pseudo-log-likelihood.

The split is cut into windows of the model's length, each wrapped in the tokenizer's own
template: ``[CLS] ... [SEP]`` for a Hugging Face BERT tokenizer (``<s> ... </s>`` for
RoBERTa), as those models were pretrained; nothing for lmlab's tokenizers, whose ``mlm``
training examples are plain windows.

- Masked-token loss and accuracy: BERT's masking (15% of the non-special tokens chosen;
  80% of those become the mask token, 10% a random token, 10% stay) with a generator
  seeded by ``(seed, window start)``, so the figures repeat exactly and do not depend on
  the batch size or on which other windows are scored. Loss in nats per masked token;
  accuracy = share of masked tokens whose most likely prediction is the original.
- Pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring"): each
  token in turn is replaced by the mask token and scored given all the others,
  ``PLL = sum_t log p(x_t | x_without_t)``. One forward pass per scored token (a window's
  copies, each masked at another position, run as one batch), so it is capped by
  ``pll_tokens``. Reported as bits per byte (``-PLL / ln 2 / bytes``) and pseudo-perplexity.

Neither is comparable to a causal LM's loss or bits per byte: a masked LM sees both sides
of the token it predicts, which makes its pseudo-likelihood no proper distribution over
texts, and usually a much lower figure.

The masking is the ``mlm`` collator's own (:func:`lmlab.data.masking.bert_mask`), drawn from a
generator of the evaluation's seed and the window's start.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.masking import bert_mask
from lmlab.data.special import special_ids, special_token
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.models.encoder import Encoder
from lmlab.nn.losses import IGNORE_INDEX

LN2 = math.log(2.0)
NOT_COMPARABLE = ("masked-token loss and pseudo-log-likelihood bits per byte are not comparable to a causal "
                  "LM's loss or bits per byte: an encoder sees both sides of each token it predicts")


@dataclass
class MaskedLMResult:
    """Figures of one encoder evaluation (the PLL ones None when ``pll_tokens`` is 0)."""

    masked_loss: float  # nats per masked token
    masked_accuracy: float
    masked_tokens: int
    windows: int
    pll_bits_per_byte: float | None
    pll_nats_per_token: float | None
    pseudo_perplexity: float | None
    pll_tokens: int
    pll_bytes: float | None

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a plain dict (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class _Specials:
    mask: int
    prefix: np.ndarray  # the template's tokens before a text ([CLS]) and after it ([SEP])
    suffix: np.ndarray
    pad: int
    never: np.ndarray  # special ids: never masked, never scored, never a random replacement


def template_ends(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Return the ids the tokenizer's template puts before and after a text (``[CLS]``, ``[SEP]``
    for BERT; none for lmlab's tokenizers)."""
    enc = tokenizer.hf.encode("a", add_special_tokens=True)
    text = [i for i, special in enumerate(enc.special_tokens_mask) if not special]
    if not text:
        return [], []
    return enc.ids[:text[0]], enc.ids[text[-1] + 1:]


def _specials(model: Encoder, tokenizer: Any) -> _Specials:
    mask = special_token(tokenizer, "mask")
    if mask is None:
        raise LmlabError("the tokenizer has no mask token ([MASK], <mask> or <|mask|>), so the encoder "
                         "cannot be scored by masking; evaluate on data prepared with the model's tokenizer")
    pad = model.config.pad_id
    if pad is None:
        pad = (special_token(tokenizer, "pad") or ("", 0))[1]
    prefix, suffix = template_ends(tokenizer)
    return _Specials(mask[1], np.array(prefix, dtype=np.int64), np.array(suffix, dtype=np.int64), pad,
                     np.array(special_ids(tokenizer) + [mask[1]], dtype=np.int64))


def window_starts(n_tokens: int, width: int, n_windows: int | None = None) -> np.ndarray:
    """Return the starts of non-overlapping windows of ``width`` tokens over ``n_tokens`` (the last
    one may be shorter); with ``n_windows``, that many full windows spread evenly over the split."""
    starts = np.arange(0, n_tokens, width, dtype=np.int64)
    if n_windows is not None and n_windows < len(starts):
        full = starts[starts + width <= n_tokens]
        full = full if len(full) else starts[:1]
        starts = full[np.unique(np.linspace(0, len(full) - 1, num=n_windows).round().astype(np.int64))]
    return starts


def _window(tokens: np.ndarray, start: int, width: int, sp: _Specials) -> np.ndarray:
    return np.concatenate([sp.prefix, np.asarray(tokens[start:start + width], dtype=np.int64), sp.suffix])


def _batch(rows: list[np.ndarray], pad: int,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pad ``rows`` to one ``(B, T)`` tensor; the attention mask is None when no row is padded."""
    width = max(len(r) for r in rows)
    x = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        x[i, :len(r)], mask[i, :len(r)] = r, 1
    am = None if mask.all() else torch.from_numpy(mask).to(device)
    return torch.from_numpy(x).to(device), am


@torch.no_grad()
def masked_token_scores(model: Encoder, tokens: np.ndarray, starts: np.ndarray, width: int, sp: _Specials,
                        *, vocab_size: int, seed: int, mask_prob: float, batch_size: int,
                        device: torch.device, precision: str) -> tuple[float, int, int]:
    """Return ``(total nats, correct predictions, masked tokens)`` over the windows at ``starts``."""
    pool = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), sp.never)
    nats, correct, count = 0.0, 0, 0
    for b in range(0, len(starts), batch_size):
        inputs, labels = [], []
        for s in starts[b:b + batch_size]:
            ids = _window(tokens, int(s), width, sp)
            x, y = bert_mask(ids, np.random.default_rng([seed, int(s)]), mask_id=sp.mask,
                             maskable=~np.isin(ids, sp.never), random_pool=pool, prob=mask_prob)
            inputs.append(x)
            labels.append(y)
        x, am = _batch(inputs, sp.pad, device)
        y, _ = _batch(labels, IGNORE_INDEX, device)
        scored = y != IGNORE_INDEX
        with autocast(device, precision):
            logits = model.mlm_logits(model.hidden_states(x, am)[scored]).float()
        target = y[scored]
        nats += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
        count += int(scored.sum())
    return nats, correct, count


@torch.no_grad()
def pseudo_log_likelihood(model: Encoder, tokens: np.ndarray, starts: np.ndarray, width: int, sp: _Specials,
                          *, max_tokens: int, batch_size: int, device: torch.device,
                          precision: str) -> tuple[float, int]:
    """Return ``(-PLL in nats, scored tokens)``: each non-special token of the windows at ``starts``
    masked in turn and scored given the rest, until ``max_tokens`` tokens are scored."""
    nats, count = 0.0, 0
    for s in starts:
        ids = _window(tokens, int(s), width, sp)
        positions = np.flatnonzero(~np.isin(ids, sp.never))[: max_tokens - count]
        base = torch.from_numpy(ids).to(device)
        for b in range(0, len(positions), batch_size):
            pos = torch.from_numpy(positions[b:b + batch_size]).to(device)
            rows = torch.arange(len(pos), device=device)
            x = base.repeat(len(pos), 1)
            x[rows, pos] = sp.mask
            with autocast(device, precision):
                logits = model.mlm_logits(model.hidden_states(x)[rows, pos]).float()
            nats -= float(torch.log_softmax(logits, -1)[rows, base[pos]].sum())
        count += len(positions)
        if count >= max_tokens:
            break
    return nats, count


def evaluate_masked_lm(model: Encoder, tokenizer: Any, tokens: np.ndarray, *, block_size: int,
                       batch_size: int = 8, device: torch.device | str = "cpu", precision: str = "fp32",
                       max_tokens: int | None = None, pll_tokens: int = 1024, seed: int = 0,
                       mask_prob: float = 0.15, bytes_per_token: float | None = None) -> MaskedLMResult:
    """Score the encoder ``model`` on the token array ``tokens``; return a :class:`MaskedLMResult`.

    ``block_size``: window length with the special tokens; ``max_tokens``: about that many
    tokens of windows spread over the array for the masked-token figures (None: all);
    ``pll_tokens``: tokens scored by pseudo-log-likelihood (0 skips it); ``bytes_per_token``:
    the split's UTF-8 bytes per token, for PLL bits per byte.
    """
    device = torch.device(device)
    if not isinstance(model, Encoder):
        raise LmlabError(f"masked-LM evaluation needs an encoder, got a {type(model).__name__}")
    model.require_mlm_head()
    if not 0.0 < mask_prob < 1.0:
        raise LmlabError(f"--mask-prob must be between 0 and 1 (BERT: 0.15), got {mask_prob}")
    if batch_size < 1 or pll_tokens < 0:
        raise LmlabError(f"--batch-size must be at least 1 and --pll-tokens at least 0 (got {batch_size}, "
                         f"{pll_tokens})")
    if block_size > model.config.block_size:
        raise LmlabError(f"block size {block_size} exceeds the model's {model.config.block_size} positions; "
                         f"use --block-size {model.config.block_size} or less")
    sp = _specials(model, tokenizer)
    width = block_size - len(sp.prefix) - len(sp.suffix)
    if width < 1 or len(tokens) < 1:
        raise LmlabError(f"cannot evaluate {len(tokens)} tokens in windows of {block_size}; give more data "
                         "or a larger --block-size")
    vocab = min(model.config.vocab_size, getattr(tokenizer, "vocab_size", model.config.vocab_size))
    n_windows = None if max_tokens is None else max(1, math.ceil(max_tokens / width))
    starts = window_starts(len(tokens), width, n_windows)
    was_training = model.training
    model.eval()
    try:
        nats, correct, count = masked_token_scores(model, tokens, starts, width, sp, vocab_size=vocab,
                                                   seed=seed, mask_prob=mask_prob, batch_size=batch_size,
                                                   device=device, precision=precision)
        pll_nats, pll_count = 0.0, 0
        if pll_tokens:
            pll_starts = window_starts(len(tokens), width, max(1, math.ceil(pll_tokens / width)))
            pll_nats, pll_count = pseudo_log_likelihood(model, tokens, pll_starts, width, sp,
                                                        max_tokens=pll_tokens, batch_size=batch_size,
                                                        device=device, precision=precision)
    finally:
        model.train(was_training)
    per_token = pll_nats / pll_count if pll_count else None
    n_bytes = pll_count * bytes_per_token if pll_count and bytes_per_token else None
    return MaskedLMResult(
        masked_loss=nats / max(count, 1), masked_accuracy=correct / max(count, 1), masked_tokens=count,
        windows=len(starts), pll_bits_per_byte=pll_nats / LN2 / n_bytes if n_bytes else None,
        pll_nats_per_token=per_token,
        pseudo_perplexity=math.exp(min(per_token, 700.0)) if per_token is not None else None,
        pll_tokens=pll_count, pll_bytes=n_bytes)
