"""The token-id n-gram as a sequence model (lmlab.ngram.token_lm): distributions over token ids that
sum to 1, greedy steps equal to the n-gram's own argmax, prompt rows equal to the stepper's, and
its run folder (save, load, damaged files, model card)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.ngram.model import BOS_ID, EOS_ID, UNK_ID, corpus_from_ids, train_ngram
from lmlab.ngram.token_lm import (
    TokenNgramLM,
    is_token_ngram_run,
    load_token_ngram,
    save_token_ngram,
)
from tests.conftest import prepare_word_soup

VOCAB, EOT = 40, 0  # ids 30..39 never occur in the training ids: unseen


def _ids(seed: int = 0, n: int = 3000) -> np.ndarray:
    """A noisy order-2 chain over ids 1..29 with an end-of-text every ~300 ids."""
    rng = np.random.default_rng(seed)
    ids = [1, 2]
    for _ in range(n):
        ids.append(1 + (ids[-1] * 5 + ids[-2] * 3 + int(rng.integers(0, 3))) % 29)
    ids = np.array(ids)
    ids[rng.choice(len(ids), 10, replace=False)] = EOT
    return ids


@pytest.fixture(scope="module", params=["mkn", "witten-bell"])
def lm(request) -> TokenNgramLM:
    return TokenNgramLM(train_ngram(corpus_from_ids(_ids(), EOT), 3, request.param, discount_fallback=True),
                        EOT, VOCAB)


def test_rows_are_distributions_over_token_ids(lm: TokenNgramLM) -> None:
    prompt = [5, 9, 33, 12, EOT, 7, 8]  # an unseen id and an end-of-text inside
    rows = torch.cat([lm.prompt_logits(prompt), lm.start(prompt).prefill()])
    assert rows.shape == (len(prompt) + 1, VOCAB) and rows.dtype == torch.float32
    assert not torch.isnan(rows).any() and torch.isfinite(rows).any(dim=1).all()
    torch.testing.assert_close(rows.double().exp().sum(dim=1), torch.ones(len(rows), dtype=torch.float64),
                               atol=1e-5, rtol=0)
    # The unseen ids share p(<unk>) equally; end-of-text gets p(</s>) (both up to the one renormalisation).
    history = [BOS_ID, lm.word(7), lm.word(8)]
    p = lm.model.distribution(history)
    q = lm.probs(history)
    scale = q[EOT] / p[EOS_ID]
    np.testing.assert_allclose(q[30:], p[UNK_ID] / 10 * scale, rtol=1e-12)
    np.testing.assert_allclose(q[[5, 7, 9]], p[[lm.word(5), lm.word(7), lm.word(9)]] * scale, rtol=1e-12)
    assert abs(scale - 1) < 1e-3  # the model's own distribution already sums to ~1


def test_a_zero_probability_token_gets_minus_inf_not_nan() -> None:
    ids = np.array([3, 4, 5, 3, 4, 5, EOT] * 20)
    lm = TokenNgramLM(train_ngram(corpus_from_ids(ids, EOT), 2, "mle"), EOT, 8)  # 1, 2, 6, 7 unseen
    row = lm.start([3]).prefill()[0]
    assert not torch.isnan(row).any()
    assert row[4].item() == pytest.approx(0.0) and torch.isneginf(row[[1, 2, 3, 5, 6, 7, EOT]]).all()


def test_greedy_steps_are_the_argmax_of_the_ngram_distribution(lm: TokenNgramLM) -> None:
    stepper = lm.start([4, 11])
    logits = stepper.prefill()
    history = [BOS_ID, lm.word(4), lm.word(11)]  # the same history kept by hand, in n-gram words
    ties = 0
    for _ in range(60):
        token = int(logits.argmax())
        p = lm.model.distribution(history)
        best = np.flatnonzero(p == p.max())  # equal counts give exactly equal probabilities
        tokens = sorted(EOT if w == EOS_ID else int(lm.model.vocab[w]) for w in best)
        assert token == tokens[0]  # a tie goes to the lowest token id, as argmax over token ids does
        ties += len(tokens) > 1
        history = [BOS_ID] if token == EOT else history + [lm.word(token)]
        logits = stepper.step(token)
    assert ties < 60


def test_prompt_logits_rows_equal_the_steppers(lm: TokenNgramLM) -> None:
    prompt = [int(t) for t in _ids(seed=1, n=60)] + [35]
    rows = lm.prompt_logits(prompt)
    for i in (0, 1, 2, 17, len(prompt) - 1):
        torch.testing.assert_close(rows[i:i + 1], lm.start(prompt[:i + 1]).prefill(), atol=0, rtol=0)
    # an end-of-text starts a new document: what follows it is read from <s>
    cut = prompt.index(EOT) if EOT in prompt else None
    after = lm.start([9, 9, EOT]).prefill()
    torch.testing.assert_close(after, lm.start([]).prefill(), atol=0, rtol=0)
    if cut is not None:
        torch.testing.assert_close(rows[cut:cut + 1], after, atol=0, rtol=0)
    assert lm.prompt_logits([]).shape == (0, VOCAB)
    with pytest.raises(LmlabError, match="outside the vocabulary of 40"):
        lm.start([VOCAB])


def test_an_ngram_that_does_not_fit_the_vocabulary_is_refused() -> None:
    model = train_ngram(corpus_from_ids(np.array([1, 2, 50, 0] * 10), 0), 2, "mkn", discount_fallback=True)
    with pytest.raises(LmlabError, match="'50' is not a token id below 40"):
        TokenNgramLM(model, 0, 40)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, TokenNgramLM]:
    """A token n-gram trained on char-level prepared data and saved as a run folder."""
    from lmlab.data.prepare import load_prepared

    data = load_prepared(prepare_word_soup(tmp_path_factory.mktemp("ngram-data"), docs=10, words_per_doc=60))
    lm = TokenNgramLM(train_ngram(corpus_from_ids(np.asarray(data.train), data.eot_id), 3, "mkn",
                                  discount_fallback=True), data.eot_id, data.vocab_size)
    folder = tmp_path_factory.mktemp("run") / "ngram"
    save_token_ngram(folder, lm, data.dir / "tokenizer.json", val_bpb=1.25, training_tokens=len(data.train))
    return folder, lm


def test_save_and_load_give_the_same_distributions(saved, tmp_path) -> None:
    folder, lm = saved
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ngram"]  # no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == ["model.arpa", "ngram.json", "tokenizer.json"]
    meta = json.loads((folder / "ngram.json").read_text())
    assert meta.pop("training_tokens") > 0
    assert meta == {"format": "lmlab-token-ngram", "eot_id": lm.eot_id, "vocab_size": lm.vocab_size,
                    "order": 3, "smoothing": "mkn", "val_bpb": 1.25}
    assert is_token_ngram_run(folder) and not is_token_ngram_run(folder.parent)
    back = load_token_ngram(folder)
    assert (back.vocab_size, back.eot_id, back.order) == (lm.vocab_size, lm.eot_id, 3)
    assert back.model.smoothing == "mkn"
    prompt = [5, 7, 3, lm.eot_id, 9, 4, 4, 8, 11, 2]
    # ARPA keeps 7 significant digits of each log10 value
    torch.testing.assert_close(back.prompt_logits(prompt), lm.prompt_logits(prompt), atol=1e-5, rtol=0)
    # saving again replaces the folder whole
    copy = tmp_path / "ngram"
    shutil.copytree(folder, copy)
    save_token_ngram(copy, back, folder / "tokenizer.json", val_bpb=1.5)
    assert json.loads((copy / "ngram.json").read_text())["val_bpb"] == 1.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ngram"]


def test_the_card_of_a_token_ngram_run(saved) -> None:
    from lmlab.serve.cards import model_card

    folder, lm = saved
    card = model_card(folder)
    assert card == {"family": "n-gram (order 3, mkn)", "arch": "ngram", "preset": None,
                    "parameters": sum(lm.model.ngram_counts()), "context": 2,
                    "tokenizer": {"kind": "char", "vocab_size": lm.vocab_size},
                    "training_tokens": json.loads((folder / "ngram.json").read_text())["training_tokens"],
                    "val_bpb": 1.25}
    assert model_card(folder, lm) == card


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "ngram.json").write_text("{not json"), r"ngram\.json is damaged .*rerun 'lmlab lineage"),
    (lambda f: (f / "ngram.json").write_text('{"format": "other"}'), "not an lmlab token n-gram description"),
    (lambda f: (f / "ngram.json").write_text('{"format": "lmlab-token-ngram", "eot_id": 0, "order": 3}'),
     "no valid 'vocab_size'"),
    (lambda f: (f / "model.arpa").unlink(), r"model\.arpa is missing; rerun 'lmlab lineage"),
    (lambda f: (f / "tokenizer.json").unlink(), r"tokenizer\.json is missing"),
    (lambda f: (f / "model.arpa").write_text((f / "model.arpa").read_text()[:3000]),
     r"malformed ARPA file.*rerun 'lmlab lineage"),
    (lambda f: (f / "ngram.json").write_text(
        (f / "ngram.json").read_text().replace('"vocab_size": ', '"vocab_size": 1')), None),
])
def test_a_damaged_folder_gives_a_one_line_error(saved, tmp_path, damage, message) -> None:
    folder = tmp_path / "ngram"
    shutil.copytree(saved[0], folder)
    damage(folder)
    if message is None:  # a vocabulary that grew: still loads (the unseen ids share p(<unk>))
        assert load_token_ngram(folder).vocab_size > saved[1].vocab_size
        return
    with pytest.raises(LmlabError, match=message) as e:
        load_token_ngram(folder)
    assert "\n" not in str(e.value)
