"""Rollouts: responses end at (and keep) the stop token, the sampling temperature is the one the
training forward scores with, the pad id is never a stop id, and the response-token figures
round-trip through the padded grid."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.align.rlhf import score_tokens
from lmlab.align.rollout import (
    check_lengths,
    from_grid,
    join_samples,
    pad_id_for,
    response_text,
    sample,
    to_grid,
    truncate_at_stop,
)
from lmlab.align.sequences import join
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model, get_preset
from tests.align.tiny_policies import tiny_policy


@pytest.fixture(scope="module")
def ab():
    model, tok = lmlab.load(tiny_policy("ab"))
    return model, tok


def test_truncate_at_stop_keeps_the_first_stop_token():
    assert truncate_at_stop([5, 6, 2, 7, 2], [2]) == ([5, 6, 2], True)
    assert truncate_at_stop([5, 6, 7], [2, 3]) == ([5, 6, 7], False)
    assert truncate_at_stop([3], [2, 3]) == ([3], True)


def test_samples_end_at_the_stop_token_or_the_limit(ab):
    model, tok = ab
    prompts = [[tok.eot_id] + tok.encode(p) for p in ("a", "b a", "ab")] * 4
    s = sample(model, prompts, [tok.eot_id], max_new_tokens=6, temperature=1.0, seed=3)
    assert s.prompts == prompts
    for r, ended in zip(s.responses, s.ended):
        assert 1 <= len(r) <= 6
        assert ended == (r[-1] == tok.eot_id)
        assert tok.eot_id not in r[:-1]
    assert any(s.ended) and not all(s.ended)  # some reach the limit of 6
    again = sample(model, prompts, [tok.eot_id], max_new_tokens=6, temperature=1.0, seed=3)
    assert again.responses == s.responses


def test_sampling_and_scoring_use_the_same_temperature():
    """The first sampled token's frequencies match softmax(logits / T) of the training forward, and
    not softmax(logits): the rollout samples the distribution the update scores."""
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=8, d_model=32, n_layer=1, block_size=16)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # logits whose distributions at T = 2.5 and T = 1 differ clearly
    n, temperature = 3000, 2.5
    s = sample(model, [[1, 2]] * n, stop_ids=[0], max_new_tokens=1, temperature=temperature, seed=0)
    counts = torch.bincount(torch.tensor([r[0] for r in s.responses]), minlength=8).float() / n
    j = join([[1, 2]], [[3]], pad_id=7)
    with torch.no_grad():
        logits, _, _ = score_tokens(model, j, temperature)
        at_t = logits[0, 1].softmax(-1)
        at_one = (logits[0, 1] * temperature).softmax(-1)
    tv_t = 0.5 * float((counts - at_t).abs().sum())
    tv_one = 0.5 * float((counts - at_one).abs().sum())
    assert tv_t < 0.05 and tv_one > 0.3  # 0.40 apart


def test_pad_is_never_a_stop_token():
    class Tok:
        pad_id = 2

    assert pad_id_for(Tok(), [2]) not in (2,)
    assert pad_id_for(Tok(), [0, 1, 2]) not in (0, 1, 2)
    assert pad_id_for(Tok(), [5]) == 2


def test_a_response_ending_in_eos_keeps_it_when_pad_equals_eos():
    """With lengths carried along (never read back from padding), the stop token stays a response
    token and the reward index stays on it even if the pad id were the end-of-text id."""
    from lmlab.align.ppo import last_index

    eos = 0
    j = join([[5, 6], [7]], [[8, eos], [9, 4, eos]], pad_id=eos)
    assert j.input_ids.tolist() == [[5, 6, 8, eos], [7, 9, 4, eos]]
    assert j.response_mask.sum(-1).tolist() == [2, 3]
    assert j.targets[torch.arange(2), last_index(j.response_mask)].tolist() == [eos, eos]
    assert last_index(j.response_mask).tolist() == [2, 2]


def test_grid_round_trip(ab):
    from lmlab.align.rollout import Samples

    s = Samples([[1, 2], [3], [4, 5, 6]], [[7, 8], [9, 10, 11], [12]], [True, False, True])
    j = join_samples(s, [2, 0, 1], pad_id=0)
    rows = [torch.tensor([1.0]), torch.tensor([2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])]
    grid = to_grid(rows, j)
    assert grid[j.response_mask].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert (grid[~j.response_mask] == 0).all()
    assert [r.tolist() for r in from_grid(grid, j)] == [r.tolist() for r in rows]


def test_prompts_longer_than_the_context_are_refused(ab):
    model, tok = ab
    with pytest.raises(LmlabError, match="prompt 1 is 40 tokens"):
        check_lengths([[1] * 4, [1] * 40], max_new_tokens=10, block_size=48)
    with pytest.raises(LmlabError, match="exceeds the policy's context"):
        sample(model, [[tok.eot_id] * 45], [tok.eot_id], max_new_tokens=8, temperature=1.0, seed=0)
    with pytest.raises(LmlabError, match="temperature"):
        sample(model, [[tok.eot_id]], [tok.eot_id], max_new_tokens=8, temperature=0.0, seed=0)


def test_response_text_is_what_the_response_adds_to_the_prompt():
    from lmlab.data.tokenizers import train_tokenizer

    words = train_tokenizer("word", iter(["the film was very good movie"]), min_frequency=1)
    prompt = [words.eot_id] + words.encode("the film was")
    response = words.encode("very good") + [words.eot_id]
    assert words.decode(response[:-1]) == "very good"  # decoded alone, the space is lost
    assert response_text(words, prompt, response, [words.eot_id]) == " very good"
    chars = train_tokenizer("char", iter(["ab "]))
    prompt = [chars.eot_id] + chars.encode("a")
    assert response_text(chars, prompt, chars.encode(" b"), [chars.eot_id]) == " b"
