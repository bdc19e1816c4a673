import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.prompting.bm25 import BM25, words

CORPUS = [
    "Ada Lovelace was born in 1815 in London.",
    "Alan Turing worked at Bletchley Park during the war.",
    "The war ended in 1945; London was rebuilt.",
    "Grace Hopper wrote the first compiler.",
    "London London London is a city.",
    "the the the the",
]


def test_scores_equal_rank_bm25():
    rank_bm25 = pytest.importorskip("rank_bm25")
    ours = BM25(CORPUS)
    theirs = rank_bm25.BM25Okapi([words(d) for d in CORPUS])
    for q in ["London war", "born 1815", "the compiler", "nothing matches here", "the"]:
        np.testing.assert_allclose(ours.scores(q), theirs.get_scores(words(q)), rtol=1e-12, atol=1e-12)


def test_search_ranks_and_drops_non_matches():
    hits = BM25(CORPUS).search("who wrote the first compiler", k=3)
    assert hits[0].index == 3 and hits[0].text == CORPUS[3]
    assert all(h.score > 0 for h in hits)
    assert BM25(CORPUS).search("zebra") == []


def test_empty_corpus_is_one_clear_error():
    with pytest.raises(LmlabError, match="no documents"):
        BM25([])
    with pytest.raises(LmlabError, match="empty"):
        BM25(["", "  ...  "])
