"""The chat template: our ids equal Hugging Face's apply_chat_template on the exported tokenizer, the
assistant mask covers exactly what assistants wrote (and their end-of-turn token), and bad input is
one clear line."""

from __future__ import annotations

import pytest

from lmlab.data.chat import CHAT_TOKENS, IM_END, add_chat_tokens, encode_chat, render_chat
from lmlab.data.tokenizers import Tokenizer, train_tokenizer
from lmlab.errors import LmlabError

TEXT = ["The quick brown fox jumps over the lazy dog.", "What is two plus two? Four, of course.",
        "A rose by any other name would smell as sweet.", "user assistant system said hello"] * 30
CHAT = [{"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And the fox?"},
        {"role": "assistant", "content": " It jumps over the lazy dog.\n"}]


@pytest.fixture(scope="module")
def tokenizer():
    """An lmlab BPE (it has the chat tokens from training)."""
    return train_tokenizer("bpe", iter(TEXT), vocab_size=300)


def _without_chat_tokens() -> Tokenizer:
    """A tokenizer without the chat tokens (as an imported one may be)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                     show_progress=False))
    return Tokenizer(hf, kind="bpe")


def test_add_chat_tokens_appends_after_every_id():
    tok = _without_chat_tokens()
    with pytest.raises(LmlabError, match="add_chat_tokens"):
        encode_chat(tok, CHAT)
    before = tok.hf.get_vocab()
    assert add_chat_tokens(tok) == list(CHAT_TOKENS) and add_chat_tokens(tok) == []
    after = tok.hf.get_vocab()
    assert all(after[t] == i for t, i in before.items())  # old ids keep their meaning
    assert {after[t] for t in CHAT_TOKENS} == {len(before), len(before) + 1}
    assert sum(encode_chat(tok, CHAT).assistant_mask) > 0


def test_render_is_chatml():
    text = render_chat(CHAT[1:3], add_generation_prompt=False)
    assert text == ("<|im_start|>user\nWhat is two plus two?<|im_end|>\n"
                    "<|im_start|>assistant\nFour.<|im_end|>\n")
    assert render_chat(CHAT[1:2], add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_assistant_mask_is_the_assistants_text_and_end_of_turn(tokenizer):
    enc = encode_chat(tokenizer, CHAT)
    assert len(enc.ids) == len(enc.assistant_mask)
    learned = [i for i, m in zip(enc.ids, enc.assistant_mask) if m]
    end = tokenizer.token_to_id(IM_END)
    assert tokenizer.decode(learned) == "Four." + IM_END + " It jumps over the lazy dog.\n" + IM_END
    assert learned.count(end) == 2 and enc.ids.count(end) == 5
    prompt = encode_chat(tokenizer, CHAT[:2], add_generation_prompt=True)
    assert not any(prompt.assistant_mask)


def test_ids_equal_hugging_face_apply_chat_template(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmlab.data.chat import CHAT_TEMPLATE

    tokenizer.save(tmp_path / "tokenizer.json")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    hf.chat_template = CHAT_TEMPLATE
    for gen in (False, True):
        msgs = CHAT if not gen else CHAT[:4]
        theirs = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
        theirs = theirs["input_ids"] if isinstance(theirs, dict) or hasattr(theirs, "keys") else theirs
        assert list(theirs) == encode_chat(tokenizer, msgs, add_generation_prompt=gen).ids


def test_hf_export_carries_the_template(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmlab.interop.hf import export_hf
    from lmlab.models.registry import build_model, get_preset

    run = tmp_path / "run"
    run.mkdir()
    model = build_model(get_preset("llama-tiny", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=1))
    tokenizer.save(run / "tokenizer.json")
    export_hf(model, tmp_path / "hf", tokenizer_dir=run)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = hf.apply_chat_template(CHAT, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == encode_chat(tokenizer, CHAT).ids


@pytest.mark.parametrize("messages, message", [
    ([], "has no messages"),
    ([{"role": "robot", "content": "hi"}], "message 0: expected"),
    ([{"role": "user", "content": 3}], "message 0: expected"),
])
def test_bad_messages_are_one_line(tokenizer, messages, message):
    with pytest.raises(LmlabError, match=message):
        encode_chat(tokenizer, messages)

