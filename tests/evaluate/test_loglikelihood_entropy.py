import math

import torch

from lmlab.evaluate.loglikelihood import loglikelihoods


class Bigram(torch.nn.Module):
    """Next-token distribution depends only on the current token, so entropies are computable by hand."""

    def __init__(self, vocab: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, ids):
        return self.table[ids]


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
    assert all(0 <= e <= math.log(6) + 1e-6 for e in r.token_entropies)
