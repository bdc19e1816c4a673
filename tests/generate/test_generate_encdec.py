"""Generation with encoder-decoders (greedy, sampling, beam search) against the cache-free reference,
batching, limits and text; beam search on decoders and recurrent LMs (reordering their caches)."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generate import beam_search, decode, generate_ids, generate_text
from lmlab.models import build_model, get_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models; a shared CPU
V = 61
ENCDEC = ["transformer-tiny", "t5-tiny", "bart-tiny"]


def model_of(preset: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=V, **kw))
    with torch.no_grad():  # larger weights: peaked, varied distributions instead of near-uniform ones
        for name, p in model.named_parameters():
            if p.dim() > 1 or name.endswith("rel.weight"):
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=ENCDEC)
def model(request) -> torch.nn.Module:
    return model_of(request.param, d_model=32, block_size=32)


def sources(lengths=(9, 4, 6)) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, V, (n,), generator=g).tolist() for n in lengths]


def same(a: list, b: list) -> bool:
    """Beam results equal: the same tokens, scores equal up to float noise (batching changes sums)."""
    return ([[h.tokens for h in r] for r in a] == [[h.tokens for h in r] for r in b]
            and all(abs(x.score - y.score) < 1e-4 for ra, rb in zip(a, b) for x, y in zip(ra, rb)))


def test_caches_give_the_same_tokens_as_recomputation(model):
    src = sources()
    for kw in (dict(temperature=0), dict(temperature=1.0, top_k=20, seed=3, repetition_penalty=1.3)):
        cached = decode(model, src, 15, eos_id=[], **kw)
        assert cached == decode(model, src, 15, eos_id=[], use_cache=False, **kw)
        assert all(len(r) == 15 for r in cached) and len({tuple(r) for r in cached}) == 3
    beams = beam_search(model, src, 10, num_beams=3, length_penalty=0.7, eos_id=cached[0][4])
    assert same(beams, beam_search(model, src, 10, num_beams=3, length_penalty=0.7, eos_id=cached[0][4],
                                   use_cache=False))


def test_batched_sources_equal_single_runs(model):
    src = sources()
    batched = decode(model, src, 12, temperature=0, eos_id=[])
    assert batched == [decode(model, [s], 12, temperature=0, eos_id=[])[0] for s in src]
    beams = beam_search(model, src, 8, num_beams=3, eos_id=[])
    assert same(beams, [beam_search(model, [s], 8, num_beams=3, eos_id=[])[0] for s in src])


def test_one_beam_is_greedy_and_beams_score_at_least_as_well(model):
    src = sources()
    greedy = decode(model, src, 10, temperature=0, eos_id=[])
    assert [b[0].tokens for b in beam_search(model, src, 10, num_beams=1, eos_id=[])] == greedy
    four = beam_search(model, src, 10, num_beams=4, eos_id=[], num_return_sequences=4)
    for source, row, hyps in zip(src, greedy, four):
        with torch.no_grad():  # the beam's best summed log-probability >= greedy's (both 10 tokens long)
            assert hyps[0].score >= _score(model, source, row) / 10 - 1e-5
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def _score(model, source: list[int], target: list[int]) -> float:
    dec = torch.tensor([[model.config.decoder_start_token_id, *target[:-1]]])
    logp = model(torch.tensor([source]), dec).log_softmax(-1)
    return float(logp[0, torch.arange(len(target)), torch.tensor(target)].sum())


def test_eos_ends_rows_and_defaults_to_the_model_s(model):
    src = sources()
    free = decode(model, src, 12, temperature=0, eos_id=[])
    eos = free[1][3]
    ended = decode(model, src, 12, temperature=0, eos_id=eos)
    for row, f in zip(ended, free):
        assert row == (f[:f.index(eos) + 1] if eos in f else f)
    model.config.eos_token_id, old = eos, model.config.eos_token_id
    try:
        assert decode(model, src, 12, temperature=0) == ended
    finally:
        model.config.eos_token_id = old


def test_generate_ids_returns_the_target_alone(model):
    src = torch.tensor(sources((5,)))
    out = generate_ids(model, src, 6, temperature=0, eos_id=[])
    assert out.shape == (1, 6)
    assert out[0].tolist() == decode(model, src.tolist(), 6, temperature=0, eos_id=[])[0]


def test_position_limits_and_truncation():
    model = model_of("bart-tiny", d_model=32, block_size=8)
    with pytest.raises(LmlabError, match="source has 9 tokens but the model has 8 source positions"):
        decode(model, [list(range(3, 12))], 4, temperature=0)
    with pytest.raises(LmlabError, match="max_new_tokens \\(9\\) exceeds the model's 8 target positions"):
        beam_search(model, [[3, 4]], 9, num_beams=2)
    kept = decode(model, [list(range(3, 12))], 4, temperature=0, truncate=True, eos_id=[])
    assert kept == decode(model, [list(range(3, 11))], 4, temperature=0, eos_id=[])
    t5 = model_of("t5-tiny", d_model=32, block_size=8)  # relative positions: no limit
    assert len(decode(t5, [list(range(3, 40))], 20, temperature=0, eos_id=[])[0]) == 20


def test_bad_beam_settings_are_refused(model):
    for kw, msg in ((dict(num_beams=0), "num_beams"), (dict(early_stopping="soon"), "early_stopping"),
                    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences")):
        with pytest.raises(LmlabError, match=msg):
            beam_search(model, sources(), 5, **kw)


class CharTok:
    """Bytes as ids (shifted by 3 past the special ids); decodes anything printable."""

    def encode(self, text: str) -> list[int]:
        return [3 + b % (V - 3) for b in text.encode()]

    def decode(self, ids) -> str:
        return "".join(chr(65 + i % 26) for i in ids)


def test_generate_text_reads_sources_and_beams_stop_at_strings(model):
    tok = CharTok()
    free = generate_text(model, tok, ["hello world", "bye"], 12, eos_id=[], temperature=0)
    source = [*tok.encode("hello world"), model.config.eos_token_id]  # a source ends as in training
    ids = decode(model, [source], 12, temperature=0, eos_id=[])[0]
    assert free[0].text == tok.decode(ids)
    beam = generate_text(model, tok, "hello world", 12, eos_id=[], num_beams=3)[0]
    assert beam.finish_reason == "length" and len(beam.ids) == 12
    stop = beam.text[4:6]
    cut = generate_text(model, tok, "hello world", 12, eos_id=[], num_beams=3, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == beam.text[:beam.text.find(stop)]
    with pytest.raises(LmlabError, match="needs a source text"):
        generate_text(model, tok, "", 5)


@pytest.mark.parametrize("preset", ["llama-tiny", "lstm-tiny", "nplm-tiny"])
def test_beam_search_reorders_every_model_s_state(preset):
    model = model_of(preset, **({"block_size": 64, "d_model": 32} if preset == "llama-tiny" else {}))
    prompts = sources((3, 8))
    kw = dict(num_beams=3, length_penalty=1.2, eos_id=[])
    beams = beam_search(model, prompts, 8, **kw)
    assert same(beams, beam_search(model, prompts, 8, use_cache=False, **kw))
    assert same(beams, [beam_search(model, [p], 8, **kw)[0] for p in prompts])
