"""Labelled corpora: the sentiment sets (from a fake archive of the real layout), user files, hf:, errors."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from lmlab.data import corpora
from lmlab.data.labelled import (
    NEUTRAL_BAND,
    SENTIMENT_SETS,
    get_labelled,
    hashed_split,
    sentiment_label,
)
from lmlab.errors import LmlabError
from tests.labelled_fixtures import fake_sentiment_archive


@pytest.fixture
def archive(tmp_path, monkeypatch):
    path = fake_sentiment_archive(tmp_path / "vader")
    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(path))
    return path


def test_sentiment_set_labels_ratings_and_neutral_band(archive):
    c = get_labelled("sentiment-movies")
    assert c.label_names == ["negative", "positive"]
    rows = [e for s in c.splits.values() for e in s]
    assert len(rows) == 200  # nothing duplicated, nothing lost
    for e in rows:
        assert -4 <= e.rating <= 4 and e.text.strip() == e.text and "\r" not in e.text
        if abs(e.rating) < NEUTRAL_BAND:
            assert e.label is None
        else:
            assert e.label == (1 if e.rating > 0 else 0)
    # neutral sentences are left out of classification but kept for regression
    assert len(c.examples("train", "regress")) > len(c.examples("train", "classify"))
    assert all(e.label is not None for e in c.examples("test", "classify"))


def test_sentiment_label_edges():
    assert sentiment_label(0.5) == 1 and sentiment_label(-0.5) == 0
    assert sentiment_label(0.49) is None and sentiment_label(-0.49) is None and sentiment_label(0.0) is None


def test_split_is_fixed_disjoint_and_about_80_10_10(archive):
    a, b = get_labelled("sentiment-tweets"), get_labelled("sentiment-tweets")
    assert a.splits == b.splits  # the same every time (a hash of the id, no RNG state)
    texts = {s: {e.text for e in rows} for s, rows in a.splits.items()}
    assert not (texts["train"] & texts["validation"]) and not (texts["train"] & texts["test"])
    assert 140 <= len(a.splits["train"]) <= 180 and a.splits["validation"] and a.splits["test"]
    # the hash is the same on every machine: pinned values
    assert [hashed_split(k) for k in "abcdefghij"] == ["validation", "test", "train", "train", "validation",
                                                      "train", "train", "train", "train", "train"]
    assert {hashed_split(str(i)) for i in range(100)} == {"train", "validation", "test"}


def test_grouped_sets_keep_each_document_in_one_split(archive):
    c = get_labelled("sentiment-amazon")
    raw = tarfile.open(archive).extractfile("hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt").read()
    doc_of = {line.split("\t")[2]: line.split("\t")[0].split("_")[0] for line in raw.decode().split("\r\n")}
    split_of_doc: dict[str, set[str]] = {}
    for split, rows in c.splits.items():
        for e in rows:
            split_of_doc.setdefault(doc_of[e.text], set()).add(split)
    assert all(len(s) == 1 for s in split_of_doc.values())


def test_corpus_registry_gives_the_train_split_text_only(archive):
    c = get_labelled("sentiment-nyt")
    corpus = corpora.get_corpus("sentiment-nyt")
    lm_text = set(corpus.documents("train")) | set(corpus.documents("val"))
    assert lm_text == set(c.texts("train"))
    assert not lm_text & set(c.texts("test")) and not lm_text & set(c.texts("validation"))
    assert set(corpora.SENTIMENT_NAMES) == set(SENTIMENT_SETS) <= set(corpora.BUILTIN)


def test_archive_is_read_as_data_and_a_bad_archive_is_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("other/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(bad))
    with pytest.raises(LmlabError, match="holds no hutto_ICWSM_2014/"):
        get_labelled("sentiment-movies")
    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(tmp_path / "missing.tar.gz"))
    with pytest.raises(LmlabError, match="is not a file"):
        get_labelled("sentiment-movies")


def test_sdist_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    sdist.write_bytes(b"not the sdist")
    monkeypatch.delenv("LMLAB_SENTIMENT_ARCHIVE", raising=False)
    monkeypatch.setenv("LMLAB_VADER_SDIST", str(sdist))
    monkeypatch.setenv("LMLAB_DATA_DIR", str(tmp_path / "home"))
    with pytest.raises(LmlabError, match="sha256") as e:
        get_labelled("sentiment-tweets")
    assert "LMLAB_VADER_SDIST=" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "home" / "corpora" / "vader-3.3.2").exists()


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_with_string_labels_and_csv_with_int_labels(tmp_path):
    rows = [{"text": f"text number {i}", "label": ["neg", "pos", "mixed"][i % 3]} for i in range(60)]
    c = get_labelled(str(_write_jsonl(tmp_path / "d.jsonl", rows)))
    assert c.label_names == ["mixed", "neg", "pos"]
    assert sum(len(s) for s in c.splits.values()) == 60
    assert {c.label_names[e.label] for e in c.examples("train")} == {"neg", "pos", "mixed"}

    csv_path = tmp_path / "d.csv"
    rows = "".join(f"\"row, {i}\",{i % 2},{i / 10}\n" for i in range(40))
    csv_path.write_text("text,label,rating\n" + rows)
    c = get_labelled(str(csv_path))
    assert c.label_names == ["0", "1"]
    e = next(e for s in c.splits.values() for e in s if e.text == "row, 3")
    assert e.label == 1 and e.rating == pytest.approx(0.3)


def test_folder_of_split_files_keeps_its_split(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(30)])
    _write_jsonl(folder / "dev.jsonl", [{"text": f"v{i}", "label": i % 2} for i in range(6)])
    _write_jsonl(folder / "test.jsonl", [{"text": f"s{i}", "label": i % 2} for i in range(8)])
    c = get_labelled(str(folder))
    assert [len(c.splits[s]) for s in ("train", "validation", "test")] == [30, 6, 8]


def test_given_label_names_refuse_an_unknown_label(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "label": "positive"},
                                               {"text": "meh", "label": "neutral"}])
    expected = r"d.jsonl:2: unknown label 'neutral'; the labels are negative, positive"
    with pytest.raises(LmlabError, match=expected):
        get_labelled(str(path), label_names=["negative", "positive"])
    # integer labels are indices of the named classes
    path = _write_jsonl(tmp_path / "i.jsonl", [{"text": "fine", "label": 1}])
    c = get_labelled(str(path), label_names=["negative", "positive"])
    assert [e.label for s in c.splits.values() for e in s] == [1]


@pytest.mark.parametrize("row, message", [
    ({"text": "   ", "label": "a"}, "the text is empty"),
    ({"label": "a"}, "the text is empty or missing"),
    ({"text": "x"}, "no 'label'"),
    ({"text": "x", "label": "a", "rating": "high"}, "is not a number"),
])
def test_bad_rows_name_the_line(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": "ok", "label": "a"}, row])
    with pytest.raises(LmlabError, match=message) as e:
        get_labelled(str(path))
    assert "d.jsonl:2" in str(e.value)


def test_one_class_only_is_refused_for_classification(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": "pos"} for i in range(20)])
    c = get_labelled(str(path))
    with pytest.raises(LmlabError, match="every training example has the label 'pos'"):
        c.check_task("classify")
    with pytest.raises(LmlabError, match="no training example has a rating"):
        c.check_task("regress")


def test_unknown_spec_and_suffix(tmp_path):
    with pytest.raises(LmlabError, match="unknown labelled data 'nope'"):
        get_labelled("nope")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(LmlabError, match="must be .jsonl or .csv"):
        get_labelled(str(tmp_path / "d.txt"))


def test_hf_local_file(tmp_path):
    pytest.importorskip("datasets")
    path = _write_jsonl(tmp_path / "d.jsonl", [{"sentence": f"s {i}", "label": i % 2} for i in range(30)])
    c = get_labelled(f"hf:{path}")
    assert c.label_names == ["0", "1"] and sum(len(s) for s in c.splits.values()) == 30
