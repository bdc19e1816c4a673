import math

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.evaluate.loglikelihood import encode_pair, loglikelihoods


class Bigram(torch.nn.Module):
    """A model whose next-token distribution depends only on the current token: easy to compute by hand."""

    def __init__(self, vocab: int = 7):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, ids):
        return self.table[ids]


def by_hand(model, ctx, cont):
    seq = ctx + cont
    logp = torch.log_softmax(model.table.detach(), -1)
    vals = [float(logp[seq[j - 1], seq[j]]) for j in range(len(ctx), len(seq))]
    greedy = all(int(model.table[seq[j - 1]].argmax()) == seq[j] for j in range(len(ctx), len(seq)))
    return sum(vals), greedy


def test_matches_hand_computation_in_any_batch_order():
    model = Bigram()
    pairs = [([1, 2, 3], [4]), ([5], [6, 0, 1]), ([2, 2], [3, 3]), ([0, 1, 2, 3, 4], [5, 6])]
    for bs in (1, 3, 16):
        got = loglikelihoods(model, pairs, block_size=32, batch_size=bs)
        for (ctx, cont), r in zip(pairs, got):
            want, greedy = by_hand(model, ctx, cont)
            assert math.isclose(r.logprob, want, rel_tol=1e-6, abs_tol=1e-6)
            assert r.greedy == greedy and len(r.token_logprobs) == len(cont)


def test_greedy_flag_true_for_argmax_continuation():
    model = Bigram()
    first = int(model.table[3].argmax())
    second = int(model.table[first].argmax())
    assert loglikelihoods(model, [([3], [first, second])], block_size=8)[0].greedy


def test_long_pairs_keep_the_last_block_plus_one_tokens():
    model = Bigram()
    ctx, cont = list(range(7)) * 4, [1, 2]
    r = loglikelihoods(model, [(ctx, cont)], block_size=5)[0]
    assert math.isclose(r.logprob, by_hand(model, ctx[-4:], cont)[0], rel_tol=1e-6)


def test_empty_parts_are_refused():
    with pytest.raises(LmlabError, match="empty context"):
        loglikelihoods(Bigram(), [([], [1])], block_size=8)
    with pytest.raises(LmlabError, match="empty continuation"):
        loglikelihoods(Bigram(), [([1], [])], block_size=8)


def test_encode_pair_moves_trailing_space_to_the_continuation():
    from lmlab.data.tokenizers import train_tokenizer

    tok = train_tokenizer("bpe", ["the king is dead, long live the king"] * 20, vocab_size=300)
    ctx, cont = encode_pair(tok, "the king is ", "dead")
    whole = tok.hf.encode("the king is dead", add_special_tokens=False).ids
    assert ctx + cont == list(whole) and cont


def test_token_entropies_are_the_next_token_entropies_at_the_continuation_positions():
    model = Bigram()
    ctx, cont = [1, 2], [3, 0, 5]
    r = loglikelihoods(model, [(ctx, cont), ([4], [4])], block_size=16, batch_size=2)[0]
    logp = torch.log_softmax(model.table.detach(), -1)
    seq = ctx + cont
    want = [float(-(logp[seq[j - 1]].exp() * logp[seq[j - 1]]).sum()) for j in range(len(ctx), len(seq))]
    assert len(r.token_entropies) == len(cont)
    for got, w in zip(r.token_entropies, want):
        assert math.isclose(got, w, rel_tol=1e-5)
    assert all(0 <= e <= math.log(7) + 1e-6 for e in r.token_entropies)
