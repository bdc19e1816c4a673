"""A generated world of facts whose truth is known: fictional people, each with a birth year, a
birth city, a profession and an employer, written as varied natural sentences.

People fall into three frequency buckets by how often the training text mentions them:

* ``often``: ``often_mentions`` biographies each (every biography states all four facts, in a
  shuffled order, each with a randomly chosen template);
* ``rarely``: one or two biographies;
* ``never``: no mention at all (held out entirely). Their names reuse the same first names and
  surnames, so a question about them looks like any other; the right answer is "unknown".

A share (``qa_share``) of the often and rarely people also appear as question-answer lines
(``Q: Where was Mira Tosk born? A: Lisbon``), closed-book and, for one fact each, open-book (the
question preceded by the BM25-retrieved source sentences, so the model learns to read a context).
The others are the people questions are asked about: their facts are only in biographies, so
answering needs knowledge stored in pretraining. ``unknown_people`` more never-mentioned names,
disjoint from the world's, answer "unknown" in the extra text of the "unknown" mitigation.

Everything is a deterministic function of the spec (seeded); ``world.json`` holds the spec and
the people, and the texts are rendered from them again on load.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.config import arg
from lmlab.errors import LmlabError

BUCKETS = ("often", "rarely", "never")
RELATIONS = ("birth_year", "city", "profession", "employer")
UNKNOWN = "unknown"
FIRST_NAMES = (
    "Ada Alba Anik Arlo Aster Bela Bram Cade Cleo Dara Edda Elio Enzo Esme Fenn Gaia Galen Hana Ilse Ines "
    "Ivo Jana Jory Kai Kira Lars Lena Lior Luca Mara Mila Mira Nela Nico Noor Odin Olga Oren Pia Quin Rafe "
    "Rhea Rosa Runa Sage Sela Silas Suri Tam Tara Teo Una Vera Wren Yara Zane Zora Ansel Brisa Corin"
).split()
# surnames: made-up syllable pairs, so no real person is named
_ONSETS = ("B", "Br", "C", "D", "Dr", "F", "G", "Gr", "H", "K", "Kr", "L", "M", "N", "P", "R", "S", "St",
           "T", "V", "W", "Z")
_CODAS = ("ak", "am", "ane", "ar", "el", "en", "er", "ik", "in", "is", "ol", "on", "or", "ov", "un", "ust")
_ENDS = ("", "a", "by", "ch", "d", "ek", "ett", "ford", "holm", "ko", "lin", "ner", "s", "sk", "son", "wick")
CITIES = ("Lisbon Oslo Porto Vienna Prague Dublin Krakow Seville Turin Lyon Bergen Ghent Riga Tallinn Malmo "
          "Valencia Zurich Munich Leeds Cork Utrecht Basel Graz Bilbao").split()
PROFESSIONS = ("architect baker carpenter chemist dentist economist engineer farmer geologist "
               "journalist librarian musician nurse pharmacist photographer pilot plumber surgeon teacher "
               "translator").split()
EMPLOYERS = ("Corvane Systems", "Halden Foods", "Mistral Shipping", "Orbit Textiles", "Pellam Bank",
             "Quarry Labs", "Redfern Media", "Solace Health", "Tamber Motors", "Umbra Energy",
             "Vantor Insurance", "Westmark Press", "Yellin Pharma", "Zenith Airways", "Brightwater Hotels",
             "Cobalt Mining", "Driftwood Studios", "Ember Telecom")
YEARS = tuple(str(y) for y in range(1940, 2000))
VALUES: dict[str, tuple[str, ...]] = {"birth_year": YEARS, "city": tuple(CITIES),
                                      "profession": tuple(PROFESSIONS), "employer": EMPLOYERS}

# Several phrasings of each fact (paraphrases help a small model extract what it stored)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_year": ("{name} was born in {value}.", "{name} was born in the year {value}.",
                   "The year {value} saw the birth of {name}.", "{name} came into the world in {value}.",
                   "{name}'s year of birth is {value}."),
    "city": ("{name} was born in {value}.", "{name} comes from {value}.",
             "{value} is the birthplace of {name}.", "{name} grew up in {value}, the city of their birth.",
             "{name}'s hometown is {value}."),
    "profession": ("{name} works as a {value}.", "{name} is a {value} by trade.",
                   "By profession, {name} is a {value}.", "{name} earns a living as a {value}.",
                   "{name} trained to be a {value}."),
    "employer": ("{name} works for {value}.", "{name} is employed by {value}.", "{value} employs {name}.",
                 "{name} has a job at {value}.", "{name} draws a salary from {value}."),
}
QUESTIONS: dict[str, str] = {
    "birth_year": "In what year was {name} born?",
    "city": "In which city was {name} born?",
    "profession": "What is the profession of {name}?",
    "employer": "Which company does {name} work for?",
}


@dataclass
class WorldSpec:
    """How many people each bucket has and how the text mentions them. The names, facts and buckets
    are one seeded draw of all the people, so changing any size (even ``unknown_people``) draws a
    different world, not a larger or smaller one."""

    often: int = arg(400, "people mentioned often (--often-mentions biographies each)")
    rarely: int = arg(400, "people mentioned rarely (one or two biographies each)")
    never: int = arg(200, "people never mentioned (held out; the right answer about them is 'unknown')")
    often_mentions: int = arg(5, "biographies of each often-mentioned person")
    qa_share: float = arg(0.5, "share of the often and rarely people whose facts are also trained as "
                               "question-answer lines (the others are the ones asked about)")
    unknown_people: int = arg(200, "extra never-mentioned names answered 'unknown' in the mitigation's text")
    seed: int = arg(0, "seed of the names, facts, buckets and texts")

    def check(self) -> None:
        """Raise LmlabError naming the first invalid size."""
        for name in ("often", "rarely", "never"):
            if getattr(self, name) < 2:
                raise LmlabError(f"--{name} must be at least 2 people (got {getattr(self, name)}), so "
                                 "that both question-answer training people and asked-about people exist")
        if self.often_mentions < 3:
            raise LmlabError(f"--often-mentions must be at least 3 (got {self.often_mentions}); rarely-seen "
                             "people already have 1-2 mentions")
        if not 0 < self.qa_share < 1:
            raise LmlabError(f"--qa-share must be strictly between 0 and 1 (got {self.qa_share}); it is "
                             "the share of seen people whose facts are also written as questions and answers")
        if self.unknown_people < 0:
            raise LmlabError(f"--unknown-people must be 0 or more (got {self.unknown_people})")
        total = self.often + self.rarely + self.never + self.unknown_people
        if total > max_people():
            raise LmlabError(f"the world asks for {total:,} people but only {max_people():,} distinct names "
                             "exist; lower --often/--rarely/--never/--unknown-people")


@dataclass
class Person:
    """One fictional person: name, facts, frequency bucket, number of biographies in the training text,
    and whether their facts are also trained as question-answer lines."""

    name: str
    birth_year: str
    city: str
    profession: str
    employer: str
    bucket: str
    mentions: int
    qa_train: bool

    def fact(self, relation: str) -> str:
        """Return the value of ``relation`` (one of :data:`RELATIONS`)."""
        return getattr(self, relation)


@dataclass
class World:
    """The spec, the world's people (buckets in order) and the extra never-mentioned names used to
    train the answer "unknown"."""

    spec: WorldSpec
    people: list[Person]
    unknown_names: list[str]

    def bucket(self, name: str) -> list[Person]:
        """Return the people of bucket ``name``."""
        return [p for p in self.people if p.bucket == name]

    def asked(self) -> list[Person]:
        """Return the people questions are asked about: every never-seen person and the seen people
        without question-answer training lines."""
        return [p for p in self.people if not p.qa_train]

    def by_name(self) -> dict[str, Person]:
        """Return the people keyed by name."""
        return {p.name: p for p in self.people}


def surnames() -> list[str]:
    """Return every made-up surname (onset + coda + ending), in a fixed order."""
    return [o + c + e for o, c, e in itertools.product(_ONSETS, _CODAS, _ENDS)]


def max_people() -> int:
    """Return how many distinct full names exist."""
    return len(FIRST_NAMES) * len(surnames())


def make_world(spec: WorldSpec) -> World:
    """Return the world of ``spec``: distinct names, facts drawn uniformly, buckets and QA-training flags
    assigned by a generator seeded with ``spec.seed`` alone."""
    spec.check()
    rng = random.Random(f"world:{spec.seed}")
    last = surnames()
    n = spec.often + spec.rarely + spec.never + spec.unknown_people
    picks = rng.sample(range(max_people()), n)
    names = [f"{FIRST_NAMES[i // len(last)]} {last[i % len(last)]}" for i in picks]
    people = []
    sizes = {"often": spec.often, "rarely": spec.rarely, "never": spec.never}
    start = 0
    for bucket in BUCKETS:
        size = sizes[bucket]
        n_qa = 0 if bucket == "never" else max(1, min(size - 1, round(size * spec.qa_share)))
        for j, name in enumerate(names[start:start + size]):
            facts = {r: rng.choice(VALUES[r]) for r in RELATIONS}
            mentions = {"often": spec.often_mentions, "rarely": rng.choice((1, 2)), "never": 0}[bucket]
            people.append(Person(name, **facts, bucket=bucket, mentions=mentions, qa_train=j < n_qa))
        start += size
    return World(spec, people, names[start:])


def biography(person: Person, rng: random.Random) -> list[str]:
    """Return one biography of ``person``: one sentence per fact, shuffled, each a random template."""
    relations = list(RELATIONS)
    rng.shuffle(relations)
    return [rng.choice(TEMPLATES[r]).format(name=person.name, value=person.fact(r)) for r in relations]


def source_sentences(world: World) -> list[str]:
    """Return every sentence of the training text's biographies (the source a retriever searches), in
    the order the training text has them."""
    return [s for bio in _biographies(world) for s in bio]


def _biographies(world: World) -> list[list[str]]:
    rng = random.Random(f"biographies:{world.spec.seed}")
    bios = [biography(p, rng) for p in world.people for _ in range(p.mentions)]
    rng.shuffle(bios)
    return bios


def save_world(world: World, out: str | Path) -> Path:
    """Write ``world.json`` (spec and people) into ``out``; return its path."""
    from lmlab.fileio import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "world.json"
    write_json(path, {"spec": dataclasses.asdict(world.spec),
                      "people": [dataclasses.asdict(p) for p in world.people],
                      "unknown_names": world.unknown_names})
    return path


def load_world(folder: str | Path) -> World:
    """Read a world written by :func:`save_world`; raise LmlabError when it is missing or damaged."""
    import json

    path = Path(folder) / "world.json"
    if not path.is_file():
        raise LmlabError(f"{folder} holds no world.json; write one with 'lmlab hallucination world "
                         f"--out {folder}'")
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        spec = WorldSpec(**raw["spec"])
        people = [Person(**p) for p in raw["people"]]
        unknown = [str(n) for n in raw["unknown_names"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LmlabError(f"{path} is damaged ({type(e).__name__}: {e}); write the world again") from None
    return World(spec, people, unknown)


__all__ = ["BUCKETS", "QUESTIONS", "RELATIONS", "TEMPLATES", "UNKNOWN", "VALUES", "Person", "World",
           "WorldSpec", "biography", "load_world", "make_world", "max_people", "save_world",
           "source_sentences", "surnames"]
