import pytest

from lmlab.errors import LmlabError
from lmlab.hallucination.questions import (
    Question,
    ask_questions,
    extract_answer,
    grade,
    qa_line,
    qa_prompt,
    summarize,
)
from lmlab.hallucination.world import WorldSpec, make_world


def test_prompts_render_exactly():
    assert qa_prompt("Where?") == "Q: Where? A:"
    assert qa_prompt("Where?", ["A b.", "C d."]) == "Context: A b. C d.\nQ: Where? A:"
    assert qa_line("Where?", "Lisbon") == "Q: Where? A: Lisbon"
    q = Question("Mira Tosk", "city", "often", "Lisbon")
    assert q.text == "In which city was Mira Tosk born?"
    with pytest.raises(LmlabError, match="unknown relation"):
        _ = Question("Mira Tosk", "age", "often", "3").text


def test_answer_extraction_takes_the_first_line():
    assert extract_answer(" Lisbon\nQ: next") == "Lisbon"
    assert extract_answer(" Zenith Airways") == "Zenith Airways"
    assert extract_answer("\nLisbon") == ""


def test_grading_seen_and_never_seen_people():
    seen = Question("Mira Tosk", "employer", "rarely", "Zenith Airways")
    assert grade("zenith  airways.", seen).correct
    g = grade("Pellam Bank", seen)
    assert g.hallucinated and not g.correct and not g.abstained
    g = grade("unknown", seen)
    assert g.abstained and not g.hallucinated and not g.correct
    never = Question("Ada Kol", "city", "never", "unknown")
    assert grade("Unknown.", never).correct
    # any assertion about a never-seen person is a hallucination, whatever its hidden fact was
    assert grade("Lisbon", never).hallucinated
    empty = grade("", seen)
    assert empty.abstained and not empty.hallucinated


def test_summary_by_bucket_by_hand():
    qs = [Question("a", "city", "often", "Oslo"), Question("b", "city", "often", "Oslo"),
          Question("c", "city", "never", "unknown"), Question("d", "city", "never", "unknown")]
    answers = ["Oslo", "Riga", "Riga", "unknown"]
    s = summarize(qs, [grade(a, q) for a, q in zip(answers, qs)])
    assert s["often"] == {"n": 2, "accuracy": 0.5, "hallucination_rate": 0.5, "abstention_rate": 0.0}
    assert s["never"] == {"n": 2, "accuracy": 0.5, "hallucination_rate": 0.5, "abstention_rate": 0.5}
    assert s["all"]["hallucination_rate"] == 0.5 and "rarely" not in s


def test_questions_are_about_asked_people_only_and_capped_per_bucket():
    world = make_world(WorldSpec(often=6, rarely=6, never=3, often_mentions=3, unknown_people=0, seed=1))
    qs = ask_questions(world, per_bucket=5, seed=0)
    people = world.by_name()
    assert [q.bucket for q in qs].count("never") == 5
    assert all(not people[q.name].qa_train for q in qs)
    assert all(q.truth == ("unknown" if q.bucket == "never" else people[q.name].fact(q.relation)) for q in qs)
    assert len({(q.name, q.relation) for q in qs}) == len(qs)
    assert ask_questions(world, 5, seed=0) == qs
    assert len(ask_questions(world, 100)) == 3 * 4 * 3  # every asked person's four questions
    with pytest.raises(LmlabError, match="--questions"):
        ask_questions(world, 0)
