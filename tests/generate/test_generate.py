"""Generation: sampling rules vs Hugging Face's processors, KV cache vs no cache, batched vs single,
stopping, context limits and text streaming."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.generate import IncrementalDecoder, generate_ids, generate_text, process_logits
from lmlab.models import Decoder, build_model, get_preset

V = 97


def model_of(kind: str, **kw) -> Decoder:
    torch.manual_seed(0)
    model = build_model(get_preset(f"{kind}-tiny", vocab_size=V, block_size=64, n_layer=2, d_model=32, **kw))
    with torch.no_grad():  # larger weights: peaked, varied distributions instead of near-uniform ones
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request) -> Decoder:
    return model_of(request.param)


def prompts(lengths=(3, 11, 7)) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def test_process_logits_matches_hugging_face_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    ids = torch.randint(0, 50, (3, 6))
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(process_logits(logits, seen, 1.0, repetition_penalty=1.3), ref)
    for warper, kwargs in ((TemperatureLogitsWarper(0.7), dict(temperature=0.7)),
                           (TopKLogitsWarper(5), dict(top_k=5)), (TopPLogitsWarper(0.8), dict(top_p=0.8))):
        torch.testing.assert_close(process_logits(logits, None, **kwargs), warper(ids, logits.clone()))
    # all rules at once, in HF's order
    ref = logits.clone()
    for proc in (RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(10),
                 TopPLogitsWarper(0.9)):
        ref = proc(ids, ref)
    got = process_logits(logits, seen, 0.7, 10, 0.9, 1.3)
    torch.testing.assert_close(got, ref)
    assert torch.isinf(got).any() and (~torch.isinf(got)).sum(-1).min() >= 1


def test_kv_cache_gives_the_same_tokens_as_no_cache(model):
    ps = prompts((5,))
    greedy = generate_ids(model, ps, 40, temperature=0)
    assert greedy == generate_ids(model, ps, 40, temperature=0, use_cache=False)
    sampled = generate_ids(model, ps, 40, temperature=1.0, top_k=20, seed=3)
    assert sampled == generate_ids(model, ps, 40, temperature=1.0, top_k=20, seed=3, use_cache=False)
    assert len(set(sampled[0][5:])) > 5  # a varied continuation, not one repeated token


def test_batched_prompts_of_different_lengths_equal_single_runs(model):
    ps = prompts()
    single = [generate_ids(model, [p], 25, temperature=0)[0] for p in ps]
    assert generate_ids(model, ps, 25, temperature=0) == single
    assert generate_ids(model, ps, 25, temperature=0, use_cache=False) == single
    assert generate_ids(model, ps, 25, temperature=0, repetition_penalty=1.5) == \
        [generate_ids(model, [p], 25, temperature=0, repetition_penalty=1.5)[0] for p in ps]


def test_tensor_input_and_output(model):
    ids = torch.tensor(prompts((6, 6)))
    out = generate_ids(model, ids, 10, temperature=0)
    assert out.shape == (2, 16) and torch.equal(out[:, :6], ids)
    one = generate_ids(model, ids[0], 10, temperature=0)
    assert one.shape == (16,) and torch.equal(one, out[0])


def test_seed_makes_sampling_reproducible(model):
    ps = prompts((4,))
    a = generate_ids(model, ps, 30, temperature=1.0, seed=7)
    assert a == generate_ids(model, ps, 30, temperature=1.0, seed=7)
    assert a != generate_ids(model, ps, 30, temperature=1.0, seed=8)
    greedy = generate_ids(model, ps, 30, temperature=0)
    assert generate_ids(model, ps, 30, temperature=1.0, top_k=1, seed=9) == greedy


def test_eos_and_stop_sequences_end_rows(model):
    ps = prompts((3, 8))
    free = generate_ids(model, ps, 20, temperature=0)
    eos = free[0][3 + 4]  # the 5th new token of row 0
    first = free[0][3:].index(eos)
    out = generate_ids(model, torch.tensor([ps[0]]), 20, temperature=0, eos_id=eos)
    assert out[0, 3:].tolist() == free[0][3: 3 + first + 1]  # ends right after eos
    rows = torch.tensor(prompts((6, 6)))
    free_rows = generate_ids(model, rows, 20, temperature=0)
    eos = free_rows[0, 6 + 2].item()
    out = generate_ids(model, rows, 20, temperature=0, eos_id=eos)
    for r in range(2):  # each row: its own tokens up to its eos, then eos filling
        new = free_rows[r, 6:].tolist()
        k = new.index(eos) + 1 if eos in new else len(new)
        assert out[r, 6:].tolist() == new[:k] + [eos] * (out.shape[1] - 6 - k)
    stop = free[1][8 + 2: 8 + 4]
    rows = generate_ids(model, ps, 20, temperature=0, stop=[stop])
    assert rows[1][-2:] == stop and len(rows[1]) <= 8 + 4
    seen: list[tuple[int, int]] = []
    generate_ids(model, ps, 5, temperature=0, on_token=lambda r, t: seen.append((r, t)) or r == 0)
    assert [t for r, t in seen if r == 0] == free[0][3:4] and len([t for r, t in seen if r == 1]) == 5


def test_context_limit_and_truncation(model):
    long = prompts((60,))
    with pytest.raises(LmlabError, match="block_size 64.*truncate"):
        generate_ids(model, long, 10, temperature=0)
    out = generate_ids(model, long, 10, temperature=0, truncate=True)
    assert out[0][:54] == long[0][6:] and len(out[0]) == 64
    assert out == [long[0][6:] + generate_ids(model, [long[0][6:]], 10, temperature=0)[0][54:]]


def test_bad_settings_are_refused(model):
    for kwargs, msg in ((dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"),
                        (dict(top_p=1.5), "top_p"), (dict(repetition_penalty=0), "repetition_penalty")):
        with pytest.raises(LmlabError, match=msg):
            generate_ids(model, prompts((3,)), 5, **kwargs)
    with pytest.raises(LmlabError, match="empty"):
        generate_ids(model, [[]], 5)
    with pytest.raises(LmlabError, match="vocabulary"):
        generate_ids(model, [[V + 5]], 5)


def test_generate_restores_training_mode(model):
    model.train()
    generate_ids(model, prompts((3,)), 3, temperature=0)
    assert model.training
    model.eval()


class CharTok:
    """A tiny byte tokenizer: id = byte value, end-of-text = 96 (decodes to nothing)."""

    eot_id = 96

    def encode(self, text: str) -> list[int]:
        return [b % 96 for b in text.encode()]

    def decode(self, ids) -> str:
        return bytes(i + 32 if i < 64 else i for i in ids if i != 96).decode("utf-8", errors="replace")


def test_generate_text_stops_at_strings_and_streams():
    model = model_of("llama")
    tok = CharTok()
    free = generate_text(model, tok, "ab", 30, temperature=0, eos_id=[])[0]
    assert free.finish_reason == "length" and len(free.ids) == 30
    stop = free.text[5:7]
    pieces: list[str] = []
    res = generate_text(model, tok, ["ab"], 30, temperature=0, eos_id=[], stop=[stop],
                        stream=lambda row, piece: pieces.append(piece))[0]
    cut = free.text.find(stop)
    assert res.finish_reason == "stop" and res.text == free.text[:cut] and "".join(pieces) == res.text
    eos = free.ids[3]
    res = generate_text(model, tok, "ab", 30, temperature=0, eos_id=eos)[0]
    assert res.finish_reason == "eos" and res.ids == free.ids[: free.ids.index(eos) + 1]


def test_incremental_decoder_holds_back_partial_characters():
    class Bytes:
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    dec = IncrementalDecoder(Bytes())
    pieces = [dec.push(b) for b in "é!".encode()]
    assert pieces == ["", "é", "!"]
