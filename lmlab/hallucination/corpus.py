"""The world's training text and its retrieval index.

The training text, one document per line, shuffled (seeded):

* every biography of every seen person (``often``: many, ``rarely``: one or two);
* closed-book question-answer lines for the question-answer-training people (all four facts);
* one open-book line per such person: the question after the BM25-retrieved source sentences, so
  the model learns to read a context (the retrieval-augmented prompts of the evaluation);
* with ``unknown=True`` (the mitigation), lines that answer "unknown" about never-mentioned names
  (disjoint from the world's), two closed-book facts and one open-book fact each.

The validation text is fresh biographies of seen people (other templates drawn), for the run's
validation loss. :func:`write_corpus` writes ``train.txt`` and ``val.txt`` into a folder that
``lmlab data prepare --corpus DIR --val-fraction 0.5`` splits file by file (train.txt sorts first).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from lmlab.hallucination.questions import qa_line, question_text
from lmlab.hallucination.world import RELATIONS, UNKNOWN, World, biography, source_sentences
from lmlab.prompting.bm25 import BM25

VAL_PEOPLE = 200
# val_fraction that makes lmlab's corpus split put the second of two files (val.txt) in validation
VAL_FRACTION = 0.5


def source_index(world: World) -> BM25:
    """Return a BM25 index over the distinct sentences of the world's biographies (the retrieval
    source); LmlabError (from BM25) when the world has no seen person, so nothing to search."""
    return BM25(list(dict.fromkeys(source_sentences(world))))


def retrieve(index: BM25, question: str, k: int) -> list[str]:
    """Return the texts of the ``k`` best source sentences for ``question``, best first."""
    return [hit.text for hit in index.search(question, k)]


def training_lines(world: World, index: BM25, k: int, unknown: bool = False) -> list[str]:
    """Return the training documents (see the module docstring), shuffled by the world's seed."""
    seed = world.spec.seed
    rng = random.Random(f"biographies:{seed}")
    lines = [" ".join(biography(p, rng)) for p in world.people for _ in range(p.mentions)]
    qa_rng = random.Random(f"qa:{seed}")
    for p in world.people:
        if not p.qa_train:
            continue
        lines += [qa_line(question_text(p.name, r), p.fact(r)) for r in RELATIONS]
        r = qa_rng.choice(RELATIONS)
        q = question_text(p.name, r)
        lines.append(qa_line(q, p.fact(r), retrieve(index, q, k)))
    if unknown:
        lines += unknown_lines(world.unknown_names, index, k, seed)
    random.Random(f"shuffle:{seed}:{unknown}").shuffle(lines)
    return lines


def unknown_lines(names: Sequence[str], index: BM25, k: int, seed: int) -> list[str]:
    """Return lines answering "unknown" about ``names``: two closed-book questions and one open-book
    question (retrieved context, which cannot mention them) per name."""
    rng = random.Random(f"unknown:{seed}")
    lines = []
    for name in names:
        first, second, third = rng.sample(RELATIONS, 3)
        lines += [qa_line(question_text(name, first), UNKNOWN), qa_line(question_text(name, second), UNKNOWN)]
        q = question_text(name, third)
        lines.append(qa_line(q, UNKNOWN, retrieve(index, q, k)))
    return lines


def validation_lines(world: World) -> list[str]:
    """Return fresh biographies of up to :data:`VAL_PEOPLE` seen people (templates drawn anew)."""
    rng = random.Random(f"val:{world.spec.seed}")
    seen = [p for p in world.people if p.mentions]
    return [" ".join(biography(p, rng)) for p in rng.sample(seen, min(VAL_PEOPLE, len(seen)))]


def write_corpus(world: World, out: str | Path, index: BM25, k: int, unknown: bool = False) -> Path:
    """Write ``train.txt`` and ``val.txt`` of the world's training text into ``out``; return ``out``."""
    from lmlab.fileio import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "train.txt", "\n".join(training_lines(world, index, k, unknown)) + "\n")
    write_text(out / "val.txt", "\n".join(validation_lines(world)) + "\n")
    return out


__all__ = ["VAL_FRACTION", "retrieve", "source_index", "training_lines", "unknown_lines", "validation_lines",
           "write_corpus"]
