"""Property tests of the masking and span sampling of the pretraining objectives.

Each property is checked over many seeds and lengths: exact counts where the algorithm fixes
them, and statistics (noise density, mean span length, 80/10/10) within a tolerance over
many samples. Every original token must be recoverable from input + target.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmlab.data import masking
from lmlab.data.masking import IGNORE


def _t5_reference_mask(length: int, noise_density: float, mean_noise_span_length: float) -> np.ndarray:
    """Hugging Face run_t5_mlm_flax.py's random_spans_noise_mask, on numpy's global generator."""
    orig_length = length
    num_noise_tokens = int(np.round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(num_noise_tokens / mean_noise_span_length))
    num_noise_spans = max(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def _random_segmentation(num_items, num_segments):
        mask_indices = np.arange(num_items - 1) < (num_segments - 1)
        np.random.shuffle(mask_indices)
        first_in_segment = np.pad(mask_indices, [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        _, segment_length = np.unique(segment_id, return_counts=True)
        return segment_length

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved_span_lengths = np.reshape(
        np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1), [num_noise_spans * 2]
    )
    span_starts = np.cumsum(interleaved_span_lengths)[:-1]
    span_start_indicator = np.zeros((length,), dtype=np.int8)
    span_start_indicator[span_starts] = True
    span_num = np.cumsum(span_start_indicator)
    is_noise = np.equal(span_num % 2, 1)
    return is_noise[:orig_length]


def _spans(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


# ------------------------------------------------------------------ BERT


def test_bert_mask_counts_and_80_10_10():
    vocab, specials = 1000, np.array([0, 1, 2])
    pool = np.setdiff1d(np.arange(vocab), specials)
    kinds = np.zeros(3)
    for seed in range(300):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(8, 200))
        ids = rng.integers(3, vocab, size=n)
        ids[rng.random(n) < 0.1] = 1  # some special tokens in the window
        maskable = ~np.isin(ids, specials)
        inputs, labels = masking.bert_mask(ids, rng, mask_id=2, maskable=maskable, random_pool=pool)
        chosen = labels != IGNORE
        assert chosen.sum() == max(1, round(0.15 * maskable.sum()))
        assert not chosen[~maskable].any()  # special tokens are never selected
        assert (labels[chosen] == ids[chosen]).all() and (inputs[~chosen] == ids[~chosen]).all()
        assert np.isin(inputs[chosen & (inputs != 2)], pool).all()
        kinds += [(inputs[chosen] == 2).sum(), (inputs[chosen] == ids[chosen]).sum(),
                  ((inputs[chosen] != 2) & (inputs[chosen] != ids[chosen])).sum()]
    share = kinds / kinds.sum()
    assert kinds.sum() > 3000
    assert abs(share[0] - 0.8) < 0.02 and abs(share[1] - 0.1) < 0.015 and abs(share[2] - 0.1) < 0.015


# ------------------------------------------------------------------ T5


@pytest.mark.parametrize("length", [5, 17, 64, 100, 568])
def test_t5_noise_mask_is_hugging_faces_algorithm(length):
    for seed in range(20):
        np.random.seed(seed)
        expected = _t5_reference_mask(length, 0.15, 3.0)
        got = masking.random_spans_noise_mask(length, np.random.RandomState(seed), 0.15, 3.0)
        assert np.array_equal(got, expected)


def test_t5_noise_density_and_span_lengths():
    all_spans = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        length = int(rng.integers(20, 600))
        noise = masking.random_spans_noise_mask(length, rng)
        n_noise, n_spans = masking.t5_span_counts(length, 0.15, 3.0)
        assert noise.sum() == n_noise == round(0.15 * length) and not noise[0]  # a non-noise span first
        spans = _spans(noise)
        assert len(spans) == n_spans and min(spans) >= 1
        all_spans += spans
    assert abs(np.mean(all_spans) - 3.0) < 0.15


def test_t5_lengths_match_hugging_face():
    # compute_input_and_target_lengths(512, 0.15, 3) in run_t5_mlm_flax.py
    assert masking.t5_lengths(512) == (568, 114)
    for block in (8, 16, 33, 128, 512):
        raw, target = masking.t5_lengths(block)
        noise, spans = masking.t5_span_counts(raw, 0.15, 3.0)
        assert raw - noise + spans + 1 <= block and noise + spans + 1 == target


def _t5_recover(inputs: np.ndarray, target: np.ndarray, sentinels: list[int], eos: int) -> list[int]:
    pieces: dict[int, list[int]] = {}
    current = None
    for t in target[:-1]:
        if t in sentinels:
            current = int(t)
            pieces[current] = []
        else:
            pieces[current].append(int(t))
    out = []
    for t in inputs[:-1]:
        out += pieces[int(t)] if t in sentinels else [int(t)]
    assert inputs[-1] == eos and target[-1] == eos
    return out


def test_span_corruption_is_recoverable():
    sentinels = list(range(900, 1000))
    for seed in range(100):
        rng = np.random.default_rng(seed)
        length = int(rng.integers(4, 300))
        ids = rng.integers(3, 800, size=length)
        noise = masking.random_spans_noise_mask(length, rng)
        inputs, target = masking.span_corrupt(ids, noise, sentinels, eos=1)
        n_noise, n_spans = masking.t5_span_counts(length, 0.15, 3.0)
        assert len(inputs) == length - n_noise + n_spans + 1 and len(target) == n_noise + n_spans + 1
        assert list(inputs[np.isin(inputs, sentinels)]) == sentinels[:n_spans]  # in increasing order
        assert _t5_recover(inputs, target, sentinels, 1) == list(ids)
    # a span at the very start (not drawn by T5's masks) is handled as well
    ids, noise = np.arange(10, 16), np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    inputs, target = masking.span_corrupt(ids, noise, sentinels, eos=1)
    assert list(inputs) == [900, 12, 13, 901, 15, 1] and list(target) == [900, 10, 11, 901, 14, 1]


# ------------------------------------------------------------------ Poisson spans, BART


def test_poisson_spans_cover_the_total_and_have_mean_lambda():
    lengths = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        total = int(rng.integers(1, 400))
        spans = masking.poisson_span_lengths(total, rng, 3.0)
        assert spans.sum() == total and (spans >= 1).all()
        capped = masking.poisson_span_lengths(total, rng, 3.0, max_spans=2)
        assert capped.sum() == total and len(capped) <= 2
        with_empty = masking.poisson_span_lengths(total, rng, 3.0, allow_empty=True)
        assert with_empty.sum() == total and (with_empty >= 0).all()
        lengths += list(with_empty)
    # the last span of each draw is cut to fit, which lowers the mean a little below lambda
    assert 2.7 < np.mean(lengths) < 3.1
    assert abs(np.mean(np.array(lengths) == 0) - math.exp(-3)) < 0.02


def test_place_spans_do_not_overlap_and_cover_every_gap():
    seen_first = set()
    for seed in range(300):
        rng = np.random.default_rng(seed)
        lengths = np.array([2, 0, 3])
        starts = masking.place_spans(10, lengths, rng)
        ends = starts + lengths
        assert starts[0] >= 0 and ends[-1] <= 10 and (starts[1:] >= ends[:-1]).all()
        seen_first.add(int(starts[0]))
    assert seen_first == set(range(6))  # every start the free tokens allow occurs


def test_text_infilling_masks_30_percent_and_is_recoverable():
    masked, spans = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 300))
        ids = rng.integers(3, 800, size=n)
        noised, starts, lengths = masking.text_infill(ids, rng, mask_id=2)
        assert lengths.sum() == math.ceil(0.3 * n) and len(noised) <= n
        assert (noised == 2).sum() == len(starts)  # one mask per span, zero-length ones included
        rebuilt, pieces = [], iter(zip(starts, lengths))
        for t in noised:
            if t == 2:
                s, ln = next(pieces)
                rebuilt += list(ids[s:s + ln])
            else:
                rebuilt.append(int(t))
        assert rebuilt == list(ids)
        masked.append(lengths.sum() / n)
        spans += list(lengths)
    assert abs(np.mean(masked) - 0.3) < 0.02 and 2.6 < np.mean(spans) < 3.1


def test_sentence_permutation_keeps_every_sentence_whole():
    orders = set()
    for seed in range(50):
        rng = np.random.default_rng(seed)
        ids = rng.permutation(100)[: int(rng.integers(1, 80))]  # distinct ids: each token finds its place
        is_end = ids % 7 == 0
        out = masking.permute_sentences(ids, is_end, rng)
        assert sorted(out.tolist()) == sorted(ids.tolist())
        sentences = np.split(ids, np.flatnonzero(is_end[:-1]) + 1)
        where = [int(np.flatnonzero(out == s[0])[0]) for s in sentences]
        for s, at in zip(sentences, where):
            assert out[at:at + len(s)].tolist() == s.tolist()
        orders.add(tuple(np.argsort(where)) if len(sentences) == 3 else None)
    assert len(orders - {None}) > 1  # the order does change
