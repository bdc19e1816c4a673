"""Hallucination detectors: scores that should be higher for a hallucinated answer than a correct one.

* ``neg_logprob``: minus the log-probability of the answer given the prompt (sequence likelihood);
* ``mean_entropy``: mean entropy of the model's next-token distribution over the answer's positions;
* ``selfcheck_ngram_avg`` / ``selfcheck_ngram_max``: SelfCheckGPT's unigram variant (Manakul et
  al. 2023, ``SelfCheckNgram(n=1)``): a unigram model is fit (maximum likelihood, no smoothing) on
  the tokens of the sampled answers plus the answer itself, and the answer's tokens are scored by
  their average and maximum negative log-probability under it. An answer that the samples keep
  repeating gets probable tokens; one they do not, improbable ones;
* ``token_disagreement``: one minus the mean share of the answer's tokens that each sampled answer
  contains (a token-level agreement form of sampling consistency);
* ``unsupported``: retrieval grounding: 0 when one of the BM25-retrieved source sentences for the
  question names the person and contains the answer, else 1.

Tokens for the n-gram and agreement scores are lower-cased words and punctuation marks, as spaCy's
English tokenizer splits such short answers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lmlab.errors import LmlabError
from lmlab.prompting.bm25 import BM25, words

DETECTORS = ("neg_logprob", "mean_entropy", "selfcheck_ngram_avg", "selfcheck_ngram_max",
             "token_disagreement", "unsupported")
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokens(text: str) -> list[str]:
    """Return the lower-cased word and punctuation tokens of ``text``."""
    return _TOKEN.findall(text.lower())


def selfcheck_ngram(answer: str, samples: Sequence[str]) -> tuple[float, float]:
    """Return SelfCheckGPT's unigram ``(avg_neg_logprob, max_neg_logprob)`` of ``answer``: a unigram model
    counted over ``samples`` and ``answer`` (so every answer token has a count), no smoothing."""
    counts: Counter[str] = Counter()
    for text in (*samples, answer):
        counts.update(tokens(text))
    toks = tokens(answer)
    if not toks:
        raise LmlabError("SelfCheck n-gram needs an answer with at least one token; score non-empty answers")
    total = sum(counts.values())
    logps = [math.log(counts[t] / total) for t in toks]
    return -sum(logps) / len(logps), -min(logps)


def token_disagreement(answer: str, samples: Sequence[str]) -> float:
    """Return one minus the mean, over ``samples``, of the share of the answer's distinct tokens that the
    sample contains (0: every sample repeats the answer's tokens; 1: none shares one)."""
    want = set(tokens(answer))
    if not want or not samples:
        raise LmlabError("token agreement needs a non-empty answer and at least one sample")
    shares = [len(want & set(tokens(s))) / len(want) for s in samples]
    return 1.0 - sum(shares) / len(shares)


def _contains(haystack: list[str], needle: list[str]) -> bool:
    text, part = " " + " ".join(haystack) + " ", " " + " ".join(needle) + " "
    return bool(needle) and part in text


def supported(hits: Sequence[str], name: str, answer: str) -> bool:
    """Return whether a retrieved sentence names ``name`` and contains ``answer`` (as whole words)."""
    who, what = words(name), words(answer)
    return any(_contains(words(h), who) and _contains(words(h), what) for h in hits)


def unsupported_score(index: BM25, question: str, name: str, answer: str, k: int) -> float:
    """Return 0.0 when the ``k`` sentences retrieved for ``question`` support ``answer`` about ``name``,
    else 1.0."""
    hits = [h.text for h in index.search(question, k)]
    return 0.0 if supported(hits, name, answer) else 1.0


def sequence_scores(model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str],
                    batch_size: int = 64) -> list[tuple[float, float]]:
    """Return ``(neg_logprob, mean_entropy)`` of each answer after its prompt (the answer is scored as
    the continuation `` answer``, as generated after ``A:``)."""
    from lmlab.evaluate.loglikelihood import encode_pair, loglikelihoods

    pairs = [encode_pair(tokenizer, p, " " + a) for p, a in zip(prompts, answers)]
    block = int(model.config.block_size)
    out = []
    for r in loglikelihoods(model, pairs, block_size=block, batch_size=batch_size):
        out.append((-r.logprob, sum(r.token_entropies) / len(r.token_entropies)))
    return out


__all__ = ["DETECTORS", "selfcheck_ngram", "sequence_scores", "supported", "token_disagreement", "tokens",
           "unsupported_score"]
