import math

import pytest

from lmlab.errors import LmlabError
from lmlab.hallucination.detectors import (
    selfcheck_ngram,
    supported,
    token_disagreement,
    tokens,
    unsupported_score,
)
from lmlab.hallucination.experiment import detector_aurocs
from lmlab.hallucination.questions import Question, grade
from lmlab.prompting.bm25 import BM25

CASES = [
    ("Lisbon", ["Lisbon", "Lisbon", "Porto", "lisbon."]),
    ("Zenith Airways", ["Zenith Airways", "Pellam Bank", "Zenith Motors", "Halden Foods"]),
    ("1987", ["1986", "1954", "1999"]),
    ("Corvane Systems", ["Corvane Systems"] * 5),
]


def test_selfcheck_unigram_by_hand():
    # samples + answer: Lisbon, Lisbon, Porto, lisbon . Lisbon -> 6 tokens, "lisbon" 4 of them
    avg, mx = selfcheck_ngram("Lisbon", ["Lisbon", "Lisbon", "Porto", "lisbon."])
    assert avg == pytest.approx(-math.log(4 / 6)) and mx == pytest.approx(-math.log(4 / 6))
    # zenith airways zenith airways pellam bank zenith motors halden foods -> 10 tokens
    avg, mx = selfcheck_ngram("Zenith Airways", CASES[1][1])
    assert avg == pytest.approx(-(math.log(3 / 10) + math.log(2 / 10)) / 2)
    assert mx == pytest.approx(-math.log(2 / 10))
    # an answer no sample repeats is less probable than one every sample repeats
    assert selfcheck_ngram("1987", ["1986", "1954"])[0] > selfcheck_ngram("1987", ["1987", "1987"])[0]
    with pytest.raises(LmlabError, match="at least one token"):
        selfcheck_ngram("  ", ["x"])


@pytest.mark.slow  # importing selfcheckgpt (torch, transformers, bert_score, spaCy) takes about 7 CPU-seconds
@pytest.mark.parametrize("answer, samples", CASES)
def test_selfcheck_unigram_equals_the_selfcheckgpt_package(answer, samples, monkeypatch):
    pytest.importorskip("selfcheckgpt")
    spacy = pytest.importorskip("spacy")

    def blank_english(name):  # en_core_web_sm is a download; its tokenizer is spaCy's English rules
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        return nlp

    monkeypatch.setattr(spacy, "load", blank_english)
    from selfcheckgpt.modeling_selfcheck import SelfCheckNgram

    theirs = SelfCheckNgram(n=1).predict(sentences=[answer], passage=answer, sampled_passages=samples)
    avg, mx = selfcheck_ngram(answer, samples)
    assert avg == pytest.approx(float(theirs["sent_level"]["avg_neg_logprob"][0]), abs=1e-12)
    assert mx == pytest.approx(float(theirs["sent_level"]["max_neg_logprob"][0]), abs=1e-12)


def test_token_disagreement_by_hand():
    assert token_disagreement("Zenith Airways", ["Zenith Airways", "Zenith Motors"]) == pytest.approx(0.25)
    assert token_disagreement("Lisbon", ["Porto", "Oslo"]) == 1.0
    assert token_disagreement("lisbon", ["LISBON."]) == 0.0
    assert tokens("Mira's 1987.") == ["mira", "'", "s", "1987", "."]
    with pytest.raises(LmlabError):
        token_disagreement("Lisbon", [])


def test_retrieval_grounding():
    index = BM25(["Mira Tosk was born in Lisbon.", "Mira Vell was born in Porto.",
                  "Ada Tosk works for Pellam Bank."])
    q = "In which city was Mira Tosk born?"
    assert unsupported_score(index, q, "Mira Tosk", "Lisbon", k=2) == 0.0
    assert unsupported_score(index, q, "Mira Tosk", "Porto", k=2) == 1.0  # Porto is someone else's
    assert unsupported_score(index, q, "Mira Tosk", "Lisbo", k=2) == 1.0  # whole words only
    assert not supported([], "Mira Tosk", "Lisbon")


def test_detector_aurocs_on_hand_made_answers():
    qs = [Question("a", "city", "often", "Oslo"), Question("b", "city", "rarely", "Oslo"),
          Question("c", "city", "never", "unknown"), Question("d", "city", "often", "Riga")]
    grades = [grade(a, q) for a, q in zip(["Oslo", "Riga", "Riga", "Riga"], qs)]  # hallucinated: b, c
    perfect = [0.1, 0.9, 0.8, 0.2]
    scores = [{d: s for d in ("neg_logprob", "mean_entropy", "selfcheck_ngram_avg", "selfcheck_ngram_max",
                              "token_disagreement", "unsupported")} for s in perfect]
    scores[0]["unsupported"] = 1.0  # one correct answer ranked above both hallucinations
    out = detector_aurocs(grades, qs, scores)
    assert out["all"]["neg_logprob"] == 1.0 and out["all"]["unsupported"] == pytest.approx(0.5)
    assert out["all"]["n"] == 4 and out["all"]["hallucinated"] == 2
    assert out["seen"]["n"] == 3 and out["seen"]["hallucinated"] == 1 and out["seen"]["mean_entropy"] == 1.0
