"""Prompt layouts (plain and chat) and prompt sources."""

from __future__ import annotations

import json

import pytest

from lmlab.align.prompts import encode_prompt, encode_response, read_prompts, review_prompts
from lmlab.data.chat import IM_END, encode_chat
from lmlab.data.tokenizers import train_tokenizer
from lmlab.errors import LmlabError


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer("char", iter(["the cat sat on a mat, happy and sad. 0123456789"]))


def test_plain_prompt_starts_a_document_and_ends_with_end_of_text(tok):
    p = encode_prompt(tok, "the cat", "plain")
    assert p.ids == [tok.eot_id] + tok.encode("the cat") and p.stop_ids == [tok.eot_id]
    assert encode_response(tok, " sat", "plain") == tok.encode(" sat") + [tok.eot_id]
    assert encode_response(tok, " sat", "plain", ended=False) == tok.encode(" sat")


def test_chat_prompt_is_the_template_with_the_generation_prompt(tok):
    p = encode_prompt(tok, "hi", "chat")
    assert p.ids == encode_chat(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True).ids
    assert p.stop_ids == [tok.token_to_id(IM_END)]
    assert encode_response(tok, "yo", "chat")[-1] == tok.token_to_id(IM_END)
    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    assert encode_prompt(tok, msgs, "plain").ids == encode_chat(tok, msgs, add_generation_prompt=True).ids


def test_prompt_files(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    assert read_prompts(f) == ["a", [{"role": "user", "content": "q"}]]
    t = tmp_path / "p.txt"
    t.write_text("one\n\ntwo\n")
    assert read_prompts(t) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(LmlabError, match=r"bad.jsonl:2 has no 'prompt'"):
        read_prompts(bad)
    with pytest.raises(LmlabError, match="no such file"):
        read_prompts(tmp_path / "none.jsonl")


def test_review_prompts_are_short_fixed_prefixes(sentiment_env):
    prompts = review_prompts("sentiment-movies", "train")
    again = review_prompts("sentiment-movies", "train")
    assert prompts == again and prompts
    assert all(2 <= len(p.split()) <= 8 for p in prompts)
    assert read_prompts("reviews:sentiment-movies", limit=3) == prompts[:3]
