"""Questions about the world's people, the prompts that ask them, and how answers are graded.

A closed-book prompt is ``"Q: In which city was Mira Tosk born? A:"``; the model's answer is
what it writes after it up to the end of the line. An open-book (retrieval-augmented) prompt puts
the retrieved source sentences first: ``"Context: s1 s2 s3\\nQ: ... A:"``.

Grading knows the truth. For a seen person (often, rarely) an answer is *correct* when it is the
fact, *abstained* when it is "unknown", and a *hallucination* otherwise. For a never-seen person
the right response is "unknown": any other answer is a hallucination, even one that happens to
match the hidden fact, since nothing the model read supports it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lmlab.errors import LmlabError
from lmlab.hallucination.world import BUCKETS, QUESTIONS, RELATIONS, UNKNOWN, World


@dataclass
class Question:
    """One question: who and what it asks, the person's bucket, and the right response (the fact, or
    "unknown" for a never-seen person)."""

    name: str
    relation: str
    bucket: str
    truth: str

    @property
    def text(self) -> str:
        """The question sentence, e.g. ``In which city was Mira Tosk born?``."""
        return question_text(self.name, self.relation)


@dataclass
class Grade:
    """How one answer fared: ``correct`` (the right response), ``abstained`` (said "unknown") and
    ``hallucinated`` (asserted something the world does not support)."""

    answer: str
    correct: bool
    abstained: bool
    hallucinated: bool


def question_text(name: str, relation: str) -> str:
    """Return the question asking ``relation`` of ``name``."""
    if relation not in QUESTIONS:
        raise LmlabError(f"unknown relation {relation!r}; choose one of {', '.join(RELATIONS)}")
    return QUESTIONS[relation].format(name=name)


def qa_prompt(question: str, context: Sequence[str] | None = None) -> str:
    """Return the prompt for ``question``: closed-book, or open-book with the ``context`` sentences first."""
    prompt = f"Q: {question} A:"
    if context:
        prompt = "Context: " + " ".join(context) + "\n" + prompt
    return prompt


def qa_line(question: str, answer: str, context: Sequence[str] | None = None) -> str:
    """Return a training line: the prompt of :func:`qa_prompt` followed by `` answer``."""
    return f"{qa_prompt(question, context)} {answer}"


def ask_questions(world: World, per_bucket: int, seed: int = 0) -> list[Question]:
    """Return up to ``per_bucket`` questions per bucket about the asked-about people (no QA training
    lines), relations drawn so each person is asked at most one question per relation, seeded."""
    if per_bucket < 1:
        raise LmlabError(f"--questions must be at least 1 per bucket (got {per_bucket})")
    rng = random.Random(f"questions:{seed}")
    out: list[Question] = []
    for bucket in BUCKETS:
        people = [p for p in world.asked() if p.bucket == bucket]
        pairs = [(p, r) for p in people for r in RELATIONS]
        for p, r in rng.sample(pairs, min(per_bucket, len(pairs))):
            truth = UNKNOWN if bucket == "never" else p.fact(r)
            out.append(Question(p.name, r, bucket, truth))
    return out


_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Return ``text`` case-folded, with runs of whitespace made one space and end punctuation dropped."""
    return _SPACE.sub(" ", text).strip().rstrip(".!?,;:").strip().casefold()


def extract_answer(generated: str) -> str:
    """Return the answer in a generated continuation: its first line, stripped."""
    return generated.split("\n", 1)[0].strip()


def grade(answer: str, question: Question) -> Grade:
    """Grade ``answer`` (already extracted) against what the world knows (see the module docstring)."""
    said = normalize(answer)
    abstained = said in (UNKNOWN, "")  # an empty answer asserts nothing either
    correct = said == normalize(question.truth)
    return Grade(answer, correct, abstained, not correct and not abstained)


def summarize(questions: Sequence[Question], grades: Sequence[Grade]) -> dict[str, dict[str, float]]:
    """Return per bucket (and ``all``): ``n``, ``accuracy`` (share of right responses),
    ``hallucination_rate`` and ``abstention_rate``."""
    if len(questions) != len(grades):
        raise LmlabError(f"got {len(grades)} grades for {len(questions)} questions")
    out: dict[str, dict[str, float]] = {}
    for bucket in (*BUCKETS, "all"):
        rows = [g for q, g in zip(questions, grades) if bucket in ("all", q.bucket)]
        if not rows:
            continue
        n = len(rows)
        out[bucket] = {"n": n, "accuracy": sum(g.correct for g in rows) / n,
                       "hallucination_rate": sum(g.hallucinated for g in rows) / n,
                       "abstention_rate": sum(g.abstained for g in rows) / n}
    return out


__all__ = ["Grade", "Question", "ask_questions", "extract_answer", "grade", "normalize", "qa_line",
           "qa_prompt", "question_text", "summarize"]
