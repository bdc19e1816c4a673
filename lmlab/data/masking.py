"""Masking and span sampling of the pretraining objectives, as plain numpy on one sequence.

- :func:`bert_mask`: BERT's masked LM (Devlin et al. 2019): 15% of the maskable tokens are
  chosen; of those 80% become the mask token, 10% a random token, 10% stay as they are.
- :func:`random_spans_noise_mask`, :func:`t5_lengths`, :func:`span_corrupt`: T5's span
  corruption (Raffel et al. 2020), the algorithm of T5's ``random_spans_noise_mask`` as in
  Hugging Face's ``run_t5_mlm_flax.py``, with the generator passed in instead of the global one.
- :func:`poisson_span_lengths`, :func:`place_spans`: span lengths drawn from a Poisson
  distribution until a share of the tokens is covered (BART's text infilling, GLM's blanks),
  placed at random without overlap.
- :func:`text_infill`, :func:`permute_sentences`: BART's two noising functions (Lewis et al. 2020).

Every function takes a ``numpy.random.Generator`` (or anything with the same methods) and
draws only from it, so a seeded generator makes the result reproducible.
"""

from __future__ import annotations

import math

import numpy as np

IGNORE = -100  # label of a position that is not scored


def bert_mask(ids: np.ndarray, rng: np.random.Generator, *, mask_id: int, maskable: np.ndarray,
              random_pool: np.ndarray, prob: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(input_ids, labels)`` of BERT's masking of ``ids``.

    ``round(prob * n)`` (at least one) of the ``n`` positions where ``maskable`` is True are
    chosen, as in BERT's ``create_masked_lm_predictions``; each becomes ``mask_id`` with
    probability 0.8, a token drawn uniformly from ``random_pool`` with 0.1, and stays with 0.1.
    ``labels`` hold the original token at the chosen positions and -100 elsewhere.
    """
    candidates = np.flatnonzero(maskable)
    inputs, labels = ids.astype(np.int64), np.full(len(ids), IGNORE, dtype=np.int64)
    if len(candidates) == 0:
        return inputs, labels
    n = min(len(candidates), max(1, int(round(len(candidates) * prob))))
    chosen = np.sort(rng.choice(candidates, size=n, replace=False))
    labels[chosen] = inputs[chosen]
    u = rng.random(n)
    inputs[chosen[u < 0.8]] = mask_id
    random = chosen[u >= 0.9]
    inputs[random] = rng.choice(random_pool, size=len(random))
    return inputs, labels


def t5_span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """Return ``(noise tokens, noise spans)`` of T5's noise mask over ``length`` tokens."""
    num_noise = min(max(int(np.round(length * noise_density)), 1), length - 1)
    num_spans = max(int(np.round(num_noise / mean_span_length)), 1)
    return num_noise, num_spans


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_span_length: float = 3.0) -> np.ndarray:
    """Return T5's boolean noise mask of ``length`` (True = noise), spans alternating non-noise first.

    ``round(length * noise_density)`` noise tokens in ``round(noise / mean_span_length)`` spans
    (at least one of each, and one non-noise token); among such masks all are equally likely.
    """
    num_noise, num_spans = t5_span_counts(length, noise_density, mean_span_length)
    num_nonnoise = length - num_noise

    def random_segmentation(num_items: int, num_segments: int) -> np.ndarray:
        # partition num_items into num_segments non-empty segments, uniformly at random
        mask_indices = np.arange(num_items - 1) < (num_segments - 1)
        rng.shuffle(mask_indices)
        first_in_segment = np.pad(mask_indices, [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        _, segment_length = np.unique(segment_id, return_counts=True)
        return segment_length

    noise_lengths = random_segmentation(num_noise, num_spans)
    nonnoise_lengths = random_segmentation(num_nonnoise, num_spans)
    interleaved = np.reshape(np.stack([nonnoise_lengths, noise_lengths], axis=1), [num_spans * 2])
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros((length,), dtype=np.int8)
    span_start_indicator[span_starts] = True
    span_num = np.cumsum(span_start_indicator)
    return np.equal(span_num % 2, 1)


def t5_lengths(input_length: int, noise_density: float = 0.15,
               mean_span_length: float = 3.0) -> tuple[int, int]:
    """Return ``(raw tokens, target length)`` so that span corruption yields ``input_length`` inputs.

    T5's ``compute_input_and_target_lengths``: the longest raw window whose corrupted input
    (non-noise tokens, one sentinel per span, eos) fits ``input_length``; the target holds one
    sentinel per span, the noise tokens and eos.
    """
    def lengths(tokens: int) -> tuple[int, int]:
        noise, spans = t5_span_counts(tokens, noise_density, mean_span_length)
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = 2
    while lengths(tokens + 1)[0] <= input_length:
        tokens += 1
    return tokens, lengths(tokens)[1]


def span_corrupt(ids: np.ndarray, noise: np.ndarray, sentinels: tuple[int, ...] | np.ndarray,
                 eos: int) -> tuple[np.ndarray, np.ndarray]:
    """Return T5's ``(input, target)``: each noise span replaced by the next sentinel in the input;
    the target is each sentinel followed by the span it stands for; both end with ``eos``."""
    ids = ids.astype(np.int64)
    starts = noise & ~np.pad(noise[:-1], (1, 0))
    n_spans = int(starts.sum())
    sent = np.asarray(sentinels, dtype=np.int64)[:n_spans]
    span = np.maximum(np.cumsum(starts) - 1, 0)  # the span number of each noise token
    inputs = np.where(starts, sent[span] if n_spans else ids, ids)[~noise | starts]
    target = np.insert(ids[noise], np.flatnonzero(starts[noise]), sent)
    return np.append(inputs, eos).astype(np.int64), np.append(target, eos).astype(np.int64)


def poisson_span_lengths(total: int, rng: np.random.Generator, lam: float = 3.0,
                         allow_empty: bool = False, max_spans: int | None = None) -> np.ndarray:
    """Return span lengths ~ Poisson(``lam``) that add up to ``total``, in random order.

    Lengths are drawn until their sum reaches ``total`` and the last one is cut to fit
    (BART's text infilling). ``allow_empty`` keeps zero lengths (spans that insert a mask),
    else zeros are redrawn (GLM). With ``max_spans`` the last allowed span takes whatever
    is left.
    """
    lengths: list[int] = []
    covered = 0
    while covered < total:
        n = int(rng.poisson(lam))
        if n == 0 and not allow_empty:
            continue
        if max_spans is not None and len(lengths) == max_spans - 1:
            n = total - covered
        n = min(n, total - covered)
        lengths.append(n)
        covered += n
    return rng.permutation(np.array(lengths, dtype=np.int64))


def place_spans(length: int, span_lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return the start of each span (in the given order) placed at random, without overlap,
    in a sequence of ``length``; every arrangement of the gaps between them is equally likely."""
    k = len(span_lengths)
    free = length - int(span_lengths.sum())
    if free < 0:
        raise ValueError(f"spans of {int(span_lengths.sum())} tokens do not fit in {length}")
    # stars and bars: k spans among `free` unmasked tokens; slot i's rank among the chosen gives its gap
    slots = np.sort(rng.choice(free + k, size=k, replace=False)) - np.arange(k)
    return slots + np.concatenate([[0], np.cumsum(span_lengths)[:-1]]).astype(np.int64)


def text_infill(ids: np.ndarray, rng: np.random.Generator, mask_id: int, ratio: float = 0.3,
                lam: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BART's text infilling of ``ids``: return ``(noised, span starts, span lengths)``.

    ``ceil(ratio * n)`` tokens are covered by spans of Poisson(``lam``) lengths; each span
    becomes one mask token and a span of length 0 inserts one. Zero-length spans beyond the
    tokens the others save are dropped, so the result is never longer than ``ids``.
    """
    n = len(ids)
    lengths = poisson_span_lengths(int(math.ceil(ratio * n)), rng, lam, allow_empty=True)
    positive = int((lengths > 0).sum())
    saved = int(lengths.sum()) - positive
    zero_idx = np.flatnonzero(lengths == 0)
    if len(zero_idx) > saved:
        lengths = np.delete(lengths, zero_idx[saved:])
    starts = place_spans(n, lengths, rng)
    out: list[np.ndarray] = []
    pos = 0
    for s, ln in zip(starts, lengths):
        out += [ids[pos:s], np.array([mask_id])]
        pos = s + ln
    out.append(ids[pos:])
    return np.concatenate(out).astype(np.int64), starts, lengths


def permute_sentences(ids: np.ndarray, is_end: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BART's sentence permutation: cut ``ids`` after every token where ``is_end`` is True and
    return the sentences in a random order (a trailing piece without an end token counts as one)."""
    cuts = np.flatnonzero(is_end[:-1]) + 1
    pieces = np.split(ids, cuts)
    order = rng.permutation(len(pieces))
    return np.concatenate([pieces[i] for i in order]).astype(np.int64)
