"""`lmlab ngram train|eval|generate` end to end, with text and with prepared data, and bad inputs."""

from __future__ import annotations

import json
import math
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers

from lmlab.cli import main
from lmlab.ngram.arpa import read_arpa
from lmlab.ngram.commands import Smoothing
from lmlab.ngram.model import SMOOTHINGS


def zipf_text(n_lines: int, seed: int, vocab: int = 2000) -> list[str]:
    """Sentences of Zipf-distributed words w0..w{vocab-1}."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1)
    return [" ".join(f"w{i}" for i in rng.choice(vocab, int(rng.integers(0, 14)), p=weights / weights.sum()))
            for _ in range(n_lines)]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    train = tmp_path / "train.txt"
    test = tmp_path / "test.txt"
    train.write_text("\n".join(zipf_text(800, seed=3)) + "\n", encoding="utf-8")
    test.write_text("\n".join(zipf_text(60, seed=4, vocab=2600)) + "\n", encoding="utf-8")
    return train, test


def test_train_eval_generate_end_to_end(files, tmp_path, cli):
    train, test = files
    out = tmp_path / "m" / "kn3.arpa"
    r = cli("ngram", "train", "--text", train, "--order", "3", "--smoothing", "kn", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ngrams"] == read_arpa(out).ngram_counts()
    assert 0 < summary["discounts"][2]["D"] < 1
    cfg = yaml.safe_load(Path(f"{out}.config.yaml").read_text())
    assert cfg["order"] == 3 and cfg["smoothing"] == "kn" and cfg["out"] == str(out)

    r = cli("ngram", "eval", "--model", out, "--text", test, "--json")
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    lines = test.read_text(encoding="utf-8").split("\n")[:-1]
    scores = read_arpa(out).score_lines(lines)
    assert figures["tokens"] == scores.tokens == sum(len(x.split()) + 1 for x in lines)
    assert figures["oovs"] == int(scores.oov.sum()) > 0
    assert figures["perplexity"] == pytest.approx(10 ** (-scores.logprob.sum() / scores.tokens))
    assert figures["perplexity_excl_oov"] < figures["perplexity"]
    n_bytes = len(test.read_bytes())
    assert figures["bytes"] == n_bytes
    assert figures["bits_per_byte"] == pytest.approx(-scores.logprob.sum() * math.log2(10) / n_bytes)

    r = cli("ngram", "eval", "--model", out, "--text", test)
    assert r.returncode == 0 and "perplexity excl. OOV" in r.stdout and "bits per byte" in r.stdout

    first = cli("ngram", "generate", "--model", out, "--max-words", "25", "--seed", "7")
    again = cli("ngram", "generate", "--model", out, "--max-words", "25", "--seed", "7")
    assert first.returncode == 0 and first.stdout == again.stdout
    words = first.stdout.split()
    vocab = set(train.read_text().split()) | {"<unk>"}
    assert len(words) == 25 and set(words) <= vocab


def _prepared(folder: Path) -> Path:
    """A prepared-data folder in the documented format (ids 0..49, end-of-text id 50)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 3000), ("val", 400)):
        ids = rng.zipf(1.6, n) % 50
        ids[rng.random(n) < 0.08] = 50
        ids[-1] = 50
        ids.astype(np.uint16).tofile(folder / f"{split}.bin")
        splits[split] = {"tokens": n, "bytes": 3 * n, "documents": int((ids == 50).sum())}
    meta = {"format": 1, "corpus": "synthetic", "tokenizer": "word", "vocab_size": 51, "dtype": "uint16",
            "eot_id": 50, "splits": splits}
    (folder / "meta.json").write_text(json.dumps(meta))
    vocab = {f"t{i}": i for i in range(50)} | {"<|endoftext|>": 50}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_train_and_eval_on_prepared_data(tmp_path, capsys):
    data = _prepared(tmp_path / "data")
    out = tmp_path / "ids.arpa"
    assert main(["ngram", "train", "--data", str(data), "--order", "3", "--smoothing", "witten-bell",
                 "--out", str(out)]) == 0
    model = read_arpa(out)
    assert "50" not in model.index and "</s>" in model.index  # the end-of-text id is the sentence end
    capsys.readouterr()
    assert main(["ngram", "eval", "--model", str(out), "--data", str(data), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    assert figures["tokens"] == len(val)  # every id predicted once, end-of-text as </s>
    assert figures["sentences"] == int((val == 50).sum())
    assert figures["bytes"] == 3 * len(val)
    bits = figures["nats_per_token"] * len(val) / math.log(2)
    assert figures["bits_per_byte"] == pytest.approx(bits / (3 * 400))

    assert main(["ngram", "generate", "--model", str(out), "--tokenizer", str(data), "--max-words", "30",
                 "--seed", "3"]) == 0
    words = capsys.readouterr().out.split()
    assert len(words) == 30 and all(re.fullmatch(r"t\d+", w) for w in words)


def test_smoothing_choices_match_the_estimator():
    assert typing.get_args(Smoothing) == SMOOTHINGS


def test_bad_inputs_exit_2_and_leave_no_output(tmp_path, capsys, cli):
    text = tmp_path / "t.txt"
    text.write_text("a b c\nb c a\n")
    out = tmp_path / "o.arpa"

    def fails(*args: str, match: str) -> None:
        capsys.readouterr()
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err, err
        assert not out.exists() and not Path(f"{out}.config.yaml").exists()
        assert not list(tmp_path.glob(".o.arpa*"))  # no temp files left behind

    fails("ngram", "train", "--text", str(text), "--order", "0", "--out", str(out), match="at least 1")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    fails("ngram", "train", "--text", str(empty), "--out", str(out), match="no words")
    one = tmp_path / "one.txt"
    one.write_text("hello\n")
    fails("ngram", "train", "--text", str(one), "--out", str(out), match="only one distinct word")
    fails("ngram", "train", "--text", str(text), "--out", str(out), match="--discount-fallback")
    missing = str(tmp_path / "missing.txt")
    fails("ngram", "train", "--text", missing, "--out", str(out), match="does not exist")
    fails("ngram", "train", "--out", str(out), match="exactly one of --text")

    # an unknown smoothing is refused by the flag parser
    r = cli("ngram", "train", "--text", text, "--smoothing", "laplace", "--out", out)
    assert r.returncode == 2 and "invalid choice: 'laplace'" in r.stderr and not out.exists()

    assert main(["ngram", "train", "--text", str(text), "--smoothing", "witten-bell", "--out", str(out)]) == 0
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("x y\nz\n")
    capsys.readouterr()
    assert main(["ngram", "eval", "--model", str(out), "--text", str(unknown)]) == 2
    assert "every one of the 3 words" in capsys.readouterr().err

    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.5\t</s>\n-x\t<s>\n\n\\end\\\n")
    assert main(["ngram", "eval", "--model", str(bad), "--text", str(text)]) == 2
    assert "bad.arpa:6: malformed ARPA file" in capsys.readouterr().err
