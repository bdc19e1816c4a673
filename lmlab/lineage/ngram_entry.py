"""The n-gram entry of the lineage: choose order and smoothing on a dev slice, refit, score, sample.

The model reads prepared BPE token ids as words (``corpus_from_ids``). Order and
smoothing are chosen on the last ``dev_fraction`` of the training split (models fitted on
the rest), so the validation split stays unseen until the final score; the chosen model
is then refitted on the whole training split. The search stops when the wall-clock
budget is spent (the first candidate always runs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmlab.generate.sampling import process_logits, select_next
from lmlab.ngram.model import (
    NgramModel,
    corpus_from_ids,
    score_token_ids,
    train_ngram,
)
from lmlab.ngram.token_lm import TokenNgramLM


@dataclass
class NgramSearch:
    """What the search tried and what it chose."""

    order: int
    smoothing: str
    model: NgramModel
    seconds: float  # search and final fit together
    fit_seconds: float  # the final fit alone
    candidates: list[dict[str, Any]] = field(default_factory=list)  # order, smoothing, dev_bpb, seconds


def _bits_per_byte(model: NgramModel, ids: np.ndarray, eot_id: int, n_bytes: float) -> float:
    nats = -float(score_token_ids(model, ids, eot_id).logprob.sum()) * math.log(10)
    return nats / math.log(2) / n_bytes


def search_ngram(train: np.ndarray, eot_id: int, bytes_per_token: float, orders: list[int],
                 smoothings: list[str], budget: float, dev_fraction: float = 0.1) -> NgramSearch:
    """Try every (order, smoothing) on a dev slice of ``train`` until ``budget`` seconds pass; refit
    the best on all of ``train``. Returns the :class:`NgramSearch`."""
    t0 = time.perf_counter()
    train = np.asarray(train).astype(np.int64)
    cut = int(len(train) * (1 - dev_fraction))
    fit_part, dev = train[:cut], train[cut:]
    corpus = corpus_from_ids(fit_part, eot_id)
    dev_bytes = len(dev) * bytes_per_token
    candidates: list[dict[str, Any]] = []
    for order in orders:
        for smoothing in smoothings:
            if candidates and time.perf_counter() - t0 > budget:
                break
            t1 = time.perf_counter()
            model = train_ngram(corpus, order, smoothing, discount_fallback=True)
            bpb = _bits_per_byte(model, dev, eot_id, dev_bytes)
            candidates.append({"order": order, "smoothing": smoothing, "dev_bpb": round(bpb, 5),
                               "seconds": round(time.perf_counter() - t1, 3)})
    best = min(candidates, key=lambda c: c["dev_bpb"] if math.isfinite(c["dev_bpb"]) else math.inf)
    t1 = time.perf_counter()
    model = train_ngram(corpus_from_ids(train, eot_id), best["order"], best["smoothing"],
                        discount_fallback=True)
    fit_seconds = time.perf_counter() - t1
    return NgramSearch(best["order"], best["smoothing"], model, time.perf_counter() - t0, fit_seconds,
                       candidates)


def sample_ngram(lm: TokenNgramLM, prompt_ids: list[int], max_new_tokens: int, seed: int = 0,
                 temperature: float = 1.0, top_k: int | None = None) -> list[int]:
    """Continue ``prompt_ids`` (prepared-data token ids) by sampling ``lm`` with the decoders'
    sampling rules (temperature, 0 = greedy; top-k); return the new ids, up to the first end-of-text."""
    generator = torch.Generator().manual_seed(seed)
    stepper = lm.start(prompt_ids)
    logits = stepper.prefill()
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = process_logits(logits, temperature=temperature, top_k=top_k)
        token = int(select_next(logits, temperature, generator)[0])
        if token == lm.eot_id:
            break
        out.append(token)
        logits = stepper.step(token)
    return out
