"""Labelled corpora: texts with a class label (and a rating), split into train/validation/test.

One entry, :func:`get_labelled(spec) <get_labelled>`, returns a :class:`LabelledCorpus` for:

- ``sentiment-movies``, ``sentiment-amazon``, ``sentiment-nyt``, ``sentiment-tweets``: the
  sentences people rated for sentiment in Hutto & Gilbert's VADER study (ICWSM 2014), shipped in
  the ``vaderSentiment==3.3.2`` sdist on PyPI as ``additional_resources/hutto_ICWSM_2014.tar.gz``
  (``hutto_ICWSM_2014/*_GroundTruth.txt``: ``id<TAB>mean rating<TAB>text``). The sdist is
  downloaded once (pinned by SHA-256, read as data, nothing in it is run) and the four files are
  cached under the data home. ``$LMLAB_VADER_SDIST`` names a local copy of the sdist;
  ``$LMLAB_SENTIMENT_ARCHIVE`` names a ``hutto_ICWSM_2014.tar.gz`` (or a file of that layout) to
  read instead, unchecked and uncached (offline use and tests).

  Each sentence has its mean rating (-4 .. +4, the regression target) and a binary label by its
  sign with a neutral band: a rating of at least +0.5 is ``positive``, at most -0.5
  ``negative``; ``|rating| < 0.5`` is neutral, left out of classification (label None) and kept
  for regression. The split is by document (the part of the id before ``_``: an Amazon review or
  an NYT editorial holds many sentences, which all go to one split) with a fixed hash of the
  document id, about 80/10/10, the same on every machine; a validation or test sentence whose
  text also occurs in train is dropped, so held-out text is unseen.
- a user's ``.jsonl`` or ``.csv`` with ``text`` and ``label`` (strings or integers) and
  optionally ``rating`` (then ``label`` may be absent); split 80/10/10 by a hash of the text.
  A folder holding ``train``, ``validation`` (or ``val``/``dev``) and ``test`` files of that
  kind keeps its own split.
- ``hf:NAME[:CONFIG]``: a Hugging Face ``datasets`` dataset with a ``text`` (or ``sentence``)
  column and a ``label`` column; its own train/validation/test splits where it has them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.data.archives import (
    data_home,
    decode_utf8,
    jsonl_objects,
    tar_members,
    verified_sdist,
    write_folder,
)
from lmlab.errors import LmlabError

VADER_SDIST = "vaderSentiment==3.3.2"
VADER_URL = ("https://files.pythonhosted.org/packages/77/8c/"
             "4a48c10a50f750ae565e341e697d74a38075a3e43ff0df6f1ab72e186902/vaderSentiment-3.3.2.tar.gz")
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
NEUTRAL_BAND = 0.5  # |mean rating| below this is neutral: no class label, still a regression target
SENTIMENT_LABELS = ("negative", "positive")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SALT = "lmlab-labelled-split-v1"  # changing it would change every split: never do
# corpus name -> (file stem in the archive, description)
SENTIMENT_SETS: dict[str, tuple[str, str]] = {
    "sentiment-movies": ("movieReviewSnippets",
                         "10,605 movie-review snippets rated for sentiment (VADER study)"),
    "sentiment-amazon": ("amazonReviewSnippets",
                         "3,708 sentences of 300 Amazon reviews rated for sentiment (VADER study)"),
    "sentiment-nyt": ("nytEditorialSnippets",
                      "5,190 sentences of 498 NYT editorials rated for sentiment (VADER study)"),
    "sentiment-tweets": ("tweets", "4,200 tweets rated for sentiment (VADER study)"),
}


@dataclass(frozen=True)
class Example:
    """One labelled text: ``label`` is an index into the corpus's label names (None: no class, e.g.
    a neutral sentence), ``rating`` a real-valued target (None when the source has none)."""

    text: str
    label: int | None
    rating: float | None = None


@dataclass
class LabelledCorpus:
    """A labelled corpus: its examples per split (``train``, ``validation``, ``test``), the names of
    its labels (index = label id) and a one-line description of where it came from."""

    name: str
    label_names: list[str]
    splits: dict[str, list[Example]]
    source: str
    notes: list[str] = field(default_factory=list)

    def examples(self, split: str, task: str = "classify") -> list[Example]:
        """Return the examples of ``split`` usable for ``task``: those with a label (classify), a
        rating (regress), or all of them (lm)."""
        if split not in self.splits:
            raise LmlabError(f"{self.name} has no {split!r} split; it has {', '.join(self.splits)}")
        rows = self.splits[split]
        if task == "classify":
            return [e for e in rows if e.label is not None]
        if task == "regress":
            return [e for e in rows if e.rating is not None]
        return list(rows)

    def texts(self, split: str) -> list[str]:
        """Return every text of ``split`` (labelled, neutral and unrated alike)."""
        return [e.text for e in self.examples(split, "lm")]

    def check_task(self, task: str) -> None:
        """Raise LmlabError when the train split cannot teach ``task``: no examples for it, or (to
        classify) only one class."""
        train = self.examples("train", task)
        if not train:
            what = "a rating" if task == "regress" else "a label"
            raise LmlabError(f"{self.name}: no training example has {what}; give a file with a "
                             f"{'rating' if task == 'regress' else 'label'} column, or another --task")
        if task == "classify":
            seen = sorted({e.label for e in train})
            if len(seen) < 2:
                only = self.label_names[seen[0]]
                raise LmlabError(f"{self.name}: every training example has the label {only!r}; a "
                                 "classifier needs at least two classes, so add examples of another")

    def counts(self) -> dict[str, dict[str, int]]:
        """Return per split: the number of examples, of each label, of neutral (unlabelled) ones."""
        out = {}
        for split, rows in self.splits.items():
            c = Counter(self.label_names[e.label] if e.label is not None else "(no label)" for e in rows)
            out[split] = {"examples": len(rows), **dict(sorted(c.items()))}
        return out


def get_labelled(spec: str, label_names: Sequence[str] | None = None) -> LabelledCorpus:
    """Return the labelled corpus ``spec``: a sentiment set name, a ``.jsonl``/``.csv`` file (or a
    folder of split files), or ``hf:NAME[:CONFIG]``.

    ``label_names`` fixes the label set (e.g. a trained classifier's): a label outside it raises
    LmlabError naming the line and the known labels. Empty texts raise LmlabError too.
    """
    if spec in SENTIMENT_SETS:
        return sentiment(spec)
    if spec.startswith("hf:"):
        return _hf_labelled(spec, label_names)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder(path, label_names)
    if path.is_file():
        rows = read_rows(path)
        return _from_rows(str(path), {"all": rows}, label_names, f"labelled file {path}")
    names = ", ".join(SENTIMENT_SETS)
    raise LmlabError(f"unknown labelled data {spec!r}: not a built-in ({names}), not an existing "
                     ".jsonl/.csv file or folder, and not hf:NAME; see 'lmlab corpora'")


# ---------------------------------------------------------------- splitting


def hashed_split(key: str) -> str:
    """Return the split (``train``, ``validation`` or ``test``) of an item with this ``key``: a fixed
    function of the key (SHA-256), so the same on every machine and run."""
    u = int(hashlib.sha256(f"{SPLIT_SALT}:{key}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    edge = 0.0
    for name, fraction in zip(SPLITS, SPLIT_FRACTIONS, strict=True):
        edge += fraction
        if u < edge:
            return name
    return SPLITS[-1]


def _split_by_key(items: list[tuple[str, Example]]) -> tuple[dict[str, list[Example]], int]:
    """Split ``(group key, example)`` pairs by :func:`hashed_split` of the key, then drop held-out
    examples whose text occurs in train; return the splits and how many were dropped."""
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for key, ex in items:
        splits[hashed_split(key)].append(ex)
    seen = {_norm(e.text) for e in splits["train"]}
    dropped = 0
    for s in SPLITS[1:]:
        kept = [e for e in splits[s] if _norm(e.text) not in seen]
        dropped += len(splits[s]) - len(kept)
        splits[s] = kept
    return splits, dropped


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------- the sentiment sets


def sentiment_label(rating: float) -> int | None:
    """The binary label of a mean rating: 1 (positive) at or above +NEUTRAL_BAND, 0 (negative) at
    or below -NEUTRAL_BAND, None (neutral) in between."""
    if rating >= NEUTRAL_BAND:
        return 1
    if rating <= -NEUTRAL_BAND:
        return 0
    return None


def sentiment(name: str) -> LabelledCorpus:
    """Return the sentiment set ``name`` (one of :data:`SENTIMENT_SETS`) with its fixed split."""
    stem, desc = SENTIMENT_SETS[name]
    file_name = f"{stem}_GroundTruth.txt"
    data = _ground_truth_files()
    if file_name not in data:
        raise LmlabError(f"the sentiment archive has no hutto_ICWSM_2014/{file_name}; "
                         f"use the {VADER_SDIST} sdist ({VADER_URL})")
    items = []
    text, _ = decode_utf8(data[file_name])
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            rating = float(parts[1])
        except (IndexError, ValueError):
            raise LmlabError(f"{file_name}:{lineno} is not 'id<TAB>rating<TAB>text'; the archive is "
                             f"damaged: remove {_cache_dir()} and run again") from None
        sentence = "\t".join(parts[2:]).strip()
        if sentence:
            document = parts[0].split("_")[0]
            items.append((f"{name}:{document}", Example(sentence, sentiment_label(rating), rating)))
    splits, dropped = _split_by_key(items)
    notes = [f"neutral band |rating| < {NEUTRAL_BAND}: no class label (kept for regression)"]
    if dropped:
        notes.append(f"{dropped} held-out sentences whose text also occurs in train were dropped")
    return LabelledCorpus(name, list(SENTIMENT_LABELS), splits, desc, notes)


def _cache_dir() -> Path:
    return data_home() / "corpora" / "vader-3.3.2"


def _ground_truth_files() -> dict[str, bytes]:
    """Return ``{file name: bytes}`` of the four ``*_GroundTruth.txt`` files: from
    ``$LMLAB_SENTIMENT_ARCHIVE`` when set, else the cache, filled from the sdist on first use."""
    archive = os.environ.get("LMLAB_SENTIMENT_ARCHIVE")
    if archive:
        path = Path(archive).expanduser()
        if not path.is_file():
            raise LmlabError(f"LMLAB_SENTIMENT_ARCHIVE={archive} is not a file; point it at a "
                             "hutto_ICWSM_2014.tar.gz, or unset it to use the vaderSentiment sdist")
        return _ground_truth_of(path.read_bytes(), str(path))
    cache = _cache_dir()
    if not cache.is_dir():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            sdist = verified_sdist(Path(tmp), "sentiment", VADER_URL, VADER_SHA256, "LMLAB_VADER_SDIST")
            inner = tar_members(sdist, lambda m: m.endswith(INNER_ARCHIVE), str(sdist))
            if not inner:
                raise LmlabError(f"{sdist} holds no {INNER_ARCHIVE}; use the {VADER_SDIST} sdist "
                                 f"({VADER_URL})")
            write_folder(cache, _ground_truth_of(next(iter(inner.values())), INNER_ARCHIVE))
    return {f.name: f.read_bytes() for f in sorted(cache.glob("*_GroundTruth.txt"))}


def _ground_truth_of(archive: bytes, what: str) -> dict[str, bytes]:
    """The ``hutto_ICWSM_2014/*_GroundTruth.txt`` files of the study's archive, by base name."""
    found = tar_members(archive, lambda m: Path(m).parent.name == "hutto_ICWSM_2014"
                        and m.endswith("_GroundTruth.txt"), what)
    if not found:
        raise LmlabError(f"{what} holds no hutto_ICWSM_2014/*_GroundTruth.txt files; use the "
                         f"{VADER_SDIST} sdist ({VADER_URL})")
    return {Path(m).name: data for m, data in found.items()}


# ---------------------------------------------------------------- user files


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Return ``(where, record)`` for each record of a ``.jsonl`` or ``.csv`` file (``where`` is
    ``file:line``). Raises LmlabError for other suffixes and for lines that do not parse."""
    raw, _ = decode_utf8(path.read_bytes())
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.suffix == ".jsonl":
        rows += [(f"{path}:{lineno}", obj) for lineno, obj in jsonl_objects(raw, path)]
    elif path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(raw))
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise LmlabError(f"{path} has no 'text' column in its header row (columns: {reader.fieldnames}); "
                             "the first row must name the columns, e.g. text,label")
        for record in reader:
            rows.append((f"{path}:{reader.line_num}", dict(record)))
    else:
        raise LmlabError(f"{path}: labelled data must be .jsonl or .csv (with text and label), not "
                         f"{path.suffix or 'a file without suffix'}")
    if not rows:
        raise LmlabError(f"{path} holds no examples; give it lines with text and label")
    return rows


def _folder(path: Path, label_names: Sequence[str] | None) -> LabelledCorpus:
    """A folder of split files: train.(jsonl|csv), validation/val/dev.(jsonl|csv), test.(jsonl|csv)."""
    stems = {"train": ("train",), "validation": ("validation", "val", "dev"), "test": ("test",)}
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for split, names in stems.items():
        files = [path / f"{n}{suffix}" for n in names for suffix in (".jsonl", ".csv")]
        hit = next((f for f in files if f.is_file()), None)
        if hit is not None:
            found[split] = read_rows(hit)
    if "train" not in found:
        raise LmlabError(f"folder {path} has no train.jsonl or train.csv; give a folder of split files "
                         "(train, validation, test) or one .jsonl/.csv file")
    return _from_rows(str(path), found, label_names, f"labelled folder {path}")


def _from_rows(name: str, parts: dict[str, list[tuple[str, dict[str, Any]]]],
               label_names: Sequence[str] | None, source: str) -> LabelledCorpus:
    """Build a corpus from parsed records: ``parts`` maps a split (or ``all``, to be split by a hash
    of the text) to its ``(where, record)`` rows."""
    parsed = {split: [(where, *_fields(where, rec)) for where, rec in rows] for split, rows in parts.items()}
    raw_labels = [lab for rows in parsed.values() for _, _, lab, _ in rows if lab is not None]
    names = _label_names(raw_labels, label_names)

    def example(where: str, text: str, label: Any, rating: float | None) -> Example:
        return _example(where, text, label, rating, names)

    notes = []
    if set(parsed) == {"all"}:
        splits, dropped = _split_by_key([(_norm(r[1]), example(*r)) for r in parsed["all"]])
        if dropped:
            notes.append(f"{dropped} held-out duplicates of training texts dropped")
    else:
        splits = {s: [example(*r) for r in parsed.get(s, [])] for s in SPLITS}
        for s in SPLITS[1:]:
            if s not in parsed:  # carve the missing held-out split out of train, by the text's hash
                splits[s] = [e for e in splits["train"] if hashed_split(_norm(e.text)) == s]
                splits["train"] = [e for e in splits["train"] if hashed_split(_norm(e.text)) != s]
                notes.append(f"no {s} split given: {len(splits[s])} training examples held out for it")
    return LabelledCorpus(name, names, splits, source, notes)


def read_examples(path: Path, label_names: Sequence[str]) -> list[Example]:
    """Return the examples of one ``.jsonl``/``.csv`` file (no split) or ``.txt`` (one text a line),
    in file order, for prediction: ``label`` and ``rating`` may be absent (None), a label must be one
    of ``label_names`` (or its index). Raises LmlabError naming the line of an empty text or an
    unknown label."""
    if path.suffix == ".txt":
        raw, _ = decode_utf8(path.read_bytes())
        texts = [(f"{path}:{i}", line.strip()) for i, line in enumerate(raw.split("\n"), 1) if line.strip()]
        if not texts:
            raise LmlabError(f"{path} holds no text; give one text a line")
        return [Example(text, None, None) for _, text in texts]
    names = [str(n) for n in label_names]
    out = []
    for where, rec in read_rows(path):
        text, label, rating = _fields(where, rec, need_target=False)
        out.append(_example(where, text, label, rating, names))
    return out


def _example(where: str, text: str, label: Any, rating: float | None, names: list[str]) -> Example:
    """The :class:`Example` of a parsed record, its label mapped to its index in ``names`` (an
    integer label not among the names is taken as an index); LmlabError for an unknown label."""
    if label is None:
        return Example(text, None, rating)
    key = str(label)
    if key in names:
        return Example(text, names.index(key), rating)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(names):
        return Example(text, label, rating)
    raise LmlabError(f"{where}: unknown label {key!r}; the labels are {', '.join(names)} "
                     "(fix the line, or train on data that has this label)")


def _fields(where: str, rec: dict[str, Any], need_target: bool = True) -> tuple[str, Any, float | None]:
    """``(text, label or None, rating or None)`` of one record; LmlabError for an empty text (and,
    with ``need_target``, for a record with neither label nor rating)."""
    text = rec.get("text")
    if not isinstance(text, str) or not text.strip():
        raise LmlabError(f"{where}: the text is empty or missing; every example needs a non-empty "
                         "'text' (remove the line or fill it in)")
    label = rec.get("label")
    if isinstance(label, str):
        label = label.strip() or None
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    rating = rec.get("rating")
    if rating is not None and rating != "":
        try:
            rating = float(rating)
        except (TypeError, ValueError):
            raise LmlabError(f"{where}: rating {rating!r} is not a number") from None
    else:
        rating = None
    if need_target and label is None and rating is None:
        raise LmlabError(f"{where}: no 'label' (or 'rating'); give each example a label")
    return text.strip(), label, rating


def _label_names(raw: list[Any], given: Sequence[str] | None) -> list[str]:
    """The label names: ``given`` as it is; else integer labels 0..max by their numbers, or the
    sorted distinct strings."""
    if given is not None:
        return [str(n) for n in given]
    if raw and all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        if min(raw) < 0:
            raise LmlabError(f"integer labels must be 0 or more (found {min(raw)}); number the classes "
                             "from 0 or use label names")
        return [str(i) for i in range(max(raw) + 1)]
    return sorted({str(v) for v in raw})


def _hf_labelled(spec: str, label_names: Sequence[str] | None) -> LabelledCorpus:
    """``hf:NAME[:CONFIG]`` through ``datasets.load_dataset`` (a hub name, or a local data file)."""
    try:
        import datasets
    except ImportError:
        raise LmlabError("hf: data needs the datasets package: pip install datasets") from None
    name, _, config = spec[3:].partition(":")
    try:
        if Path(name).is_file():
            kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(
                Path(name).suffix, "json")
            ds = datasets.load_dataset(kind, data_files=name)
        else:
            ds = datasets.load_dataset(name, config or None)
    except Exception as e:  # datasets raises many types (network, missing config, ...)
        raise LmlabError(f"could not load dataset {name!r}: {e}; check the name, or the network") from None
    aliases = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
               "test": "test"}
    first = ds[next(iter(ds))]
    text_col = next((c for c in ("text", "sentence") if c in first.column_names), None)
    if text_col is None or "label" not in first.column_names:
        raise LmlabError(f"dataset {name!r} needs a 'text' (or 'sentence') and a 'label' column "
                         f"(columns: {first.column_names})")
    feature = first.features.get("label")
    if label_names is None and getattr(feature, "names", None):
        label_names = list(feature.names)
    parts: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for split_name, split in ds.items():
        if split_name not in aliases and len(ds) > 1:
            continue
        target = aliases.get(split_name, "all") if len(ds) > 1 else "all"
        rows = []
        for i, rec in enumerate(split):
            label = rec["label"]
            if label_names is not None and isinstance(label, int) and getattr(feature, "names", None):
                label = feature.names[label] if 0 <= label < len(feature.names) else None
            if label is None or label == -1:  # GLUE-style unlabelled test rows
                continue
            rows.append((f"{spec}[{split_name}][{i}]", {"text": rec[text_col], "label": label}))
        parts[target] = rows
    return _from_rows(spec, parts, label_names, f"Hugging Face dataset {name}")
