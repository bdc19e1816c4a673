import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.data.tokenizers import EOT, SPECIAL_TOKENS, load_tokenizer, train_tokenizer
from lmlab.errors import LmlabError

TRAIN = ["The quick brown fox jumps over the lazy dog. " * 20,
         "敏捷的棕色狐狸跳过了懒狗。 Emoji: 🦊🐶🎉 naïve café, ünïcödé.\n\tTabs and  two spaces.\n" * 5]
LOSSLESS = ("bpe", "char", "byte")


@pytest.fixture(scope="module")
def tokenizers():
    return {kind: train_tokenizer(kind, TRAIN, vocab_size=320, min_frequency=1)
            for kind in ("bpe", "char", "byte", "word")}


# Mixed English, CJK, emoji, combining marks, whitespace and arbitrary code points.
PIECES = st.one_of(
    st.sampled_from(list("the quick brown fox 敏捷的棕色狐狸 \n\t  ")),
    st.sampled_from(["🦊", "🐶", "👩\u200d👩\u200d👧", "é", "e\u0301", "你好", "<|endoftext|>"]),
    st.characters(codec="utf-8"),
)
MIXED = st.lists(PIECES, max_size=80).map("".join)


@pytest.mark.parametrize("kind", LOSSLESS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MIXED)
def test_round_trip_is_lossless(tokenizers, kind, text):
    tok = tokenizers[kind]
    assert tok.decode(tok.encode(text)) == text


def test_cjk_character_splits_into_several_byte_level_tokens(tokenizers):
    ids = tokenizers["bpe"].encode("龘")  # rare, so no merge covers its three UTF-8 bytes
    assert len(ids) == 3
    assert len(tokenizers["byte"].encode("龘")) == 3
    assert len(tokenizers["char"].encode("狐")) == 1  # seen in training: one char token


@pytest.mark.parametrize("kind", ["bpe", "char", "byte", "word"])
def test_pretrained_tokenizer_fast_encodes_identically(tokenizers, kind, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers[kind]
    tok.save(tmp_path / "tokenizer.json")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in TRAIN + ["unseen words: zyzzyva 龘 🧪", f"two docs{EOT}joined"]:
        assert hf.encode(text) == tok.encode(text)
        assert hf.decode(tok.encode(text), clean_up_tokenization_spaces=False) == tok.decode(tok.encode(text))


def test_special_tokens_are_single_ids_in_every_kind(tokenizers):
    for tok in tokenizers.values():
        for special in SPECIAL_TOKENS:
            assert tok.encode(special) == [tok.token_to_id(special)]
        assert tok.eot_id == tok.token_to_id(EOT)


def test_save_and_load_keep_kind_and_encoding(tokenizers, tmp_path):
    for kind, tok in tokenizers.items():
        tok.save(tmp_path / f"{kind}.json")
        loaded = load_tokenizer(tmp_path / f"{kind}.json")
        assert loaded.kind == kind
        assert loaded.encode(TRAIN[1]) == tok.encode(TRAIN[1])


def test_word_tokenizer_maps_rare_words_to_unk(tokenizers):
    tok = tokenizers["word"]
    ids = tok.encode("the fox zyzzyva")
    assert ids[-1] == tok.token_to_id("<unk>")
    assert tok.decode(ids[:2]) == "the fox"


def test_bpe_vocab_size_is_respected():
    tok = train_tokenizer("bpe", TRAIN * 3, vocab_size=300, min_frequency=1)
    assert tok.vocab_size == 300


def test_bad_inputs(tmp_path):
    with pytest.raises(LmlabError, match="smaller than the byte alphabet"):
        train_tokenizer("bpe", TRAIN, vocab_size=200)
    with pytest.raises(LmlabError, match="empty corpus"):
        train_tokenizer("bpe", ["", ""], vocab_size=300)
    with pytest.raises(LmlabError, match="empty corpus"):
        train_tokenizer("char", [], vocab_size=300)
    with pytest.raises(LmlabError, match="unknown tokenizer"):
        train_tokenizer("sentencepiece", TRAIN)
    with pytest.raises(LmlabError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LmlabError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tokenizer_cli_train_encode_decode(cli, text_corpus, tmp_path):
    out = tmp_path / "tok.json"
    r = cli("tokenizer", "train", "--corpus", text_corpus, "--kind", "bpe", "--vocab-size", "300",
            "--out", out)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tok.json.config.yaml").is_file()
    text = "the lazy dog 🐶"
    r = cli("tokenizer", "encode", text, "--tokenizer", out)
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert ids == [str(i) for i in load_tokenizer(out).encode(text)]
    r = cli("tokenizer", "decode", " ".join(ids), "--tokenizer", out)
    assert r.stdout == text + "\n"
    r = cli("tokenizer", "decode", "999999", "--tokenizer", out)
    assert r.returncode == 2 and "outside the vocabulary" in r.stderr
