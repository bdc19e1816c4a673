import dataclasses
import re

import pytest

from lmlab.errors import LmlabError
from lmlab.hallucination.corpus import source_index, training_lines, validation_lines
from lmlab.hallucination.world import (
    RELATIONS,
    TEMPLATES,
    UNKNOWN,
    VALUES,
    World,
    WorldSpec,
    load_world,
    make_world,
    save_world,
    source_sentences,
)

SPEC = WorldSpec(often=12, rarely=10, never=6, often_mentions=4, qa_share=0.5, unknown_people=5, seed=3)


def test_same_spec_same_world_and_text_other_seed_other_world():
    a, b = make_world(SPEC), make_world(SPEC)
    assert a == b
    assert training_lines(a, source_index(a), 2, True) == training_lines(b, source_index(b), 2, True)
    c = make_world(dataclasses.replace(SPEC, seed=4))
    assert [p.name for p in c.people] != [p.name for p in a.people]


def test_bucket_sizes_and_mentions():
    world = make_world(SPEC)
    often, rarely, never = world.bucket("often"), world.bucket("rarely"), world.bucket("never")
    assert (len(often), len(rarely), len(never)) == (12, 10, 6)
    assert all(p.mentions == 4 for p in often)
    assert all(p.mentions in (1, 2) for p in rarely)
    assert all(p.mentions == 0 and not p.qa_train for p in never)
    assert sum(p.qa_train for p in often) == 6 and sum(p.qa_train for p in rarely) == 5
    names = [p.name for p in world.people] + world.unknown_names
    assert len(set(names)) == len(names) == 33
    for p in world.people:
        assert all(p.fact(r) in VALUES[r] for r in RELATIONS)


def test_each_person_appears_in_the_text_exactly_as_often_as_their_bucket_says():
    world = make_world(SPEC)
    lines = training_lines(world, source_index(world), 2, unknown=False)
    bios = [line for line in lines if not line.startswith(("Q:", "Context:"))]
    for p in world.people:
        # every biography states the four facts once, each sentence naming the person
        named = re.compile(rf"\b{p.name}\b")
        assert sum(len(named.findall(line)) for line in bios) == 4 * p.mentions, p
        questions = [line.split("\n")[-1] for line in lines if line.startswith(("Q:", "Context:"))]
        qa = [q for q in questions if named.search(q)]
        assert len(qa) == (5 if p.qa_train else 0)  # four closed-book, one open-book
    assert not any(UNKNOWN in line for line in lines)
    sentences = source_sentences(world)
    assert len(sentences) == 4 * sum(p.mentions for p in world.people)
    assert not any(n in line for n in world.unknown_names for line in lines)


def test_unknown_text_adds_unknown_answers_about_unseen_names_only():
    world = make_world(SPEC)
    base = training_lines(world, source_index(world), 2, unknown=False)
    more = training_lines(world, source_index(world), 2, unknown=True)
    added = [line for line in more if line.endswith(f"A: {UNKNOWN}")]
    assert len(more) - len(base) == len(added) == 3 * len(world.unknown_names)
    for name in world.unknown_names:
        assert sum(name in line.split("\n")[-1] for line in added) == 3
    never = [p.name for p in world.bucket("never")]
    assert not any(n in line for n in never for line in more)


def test_templates_vary_and_validation_uses_seen_people():
    assert all(len(set(t)) >= 4 for t in TEMPLATES.values())
    world = make_world(SPEC)
    seen = {p.name for p in world.people if p.mentions}
    for line in validation_lines(world):
        assert any(n in line for n in seen)


def test_save_and_load_round_trip(tmp_path):
    world = make_world(SPEC)
    save_world(world, tmp_path)
    assert load_world(tmp_path) == world
    (tmp_path / "world.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LmlabError, match="damaged"):
        load_world(tmp_path)
    with pytest.raises(LmlabError, match="no world.json"):
        load_world(tmp_path / "missing")


@pytest.mark.parametrize("change, message", [
    ({"often": 1}, "--often must be at least 2"),
    ({"never": 0}, "--never must be at least 2"),
    ({"often_mentions": 2}, "--often-mentions"),
    ({"qa_share": 1.0}, "--qa-share"),
    ({"unknown_people": -1}, "--unknown-people"),
    ({"often": 10**6}, "distinct names"),
])
def test_invalid_sizes_are_one_line_errors(change, message):
    with pytest.raises(LmlabError, match=message) as e:
        make_world(dataclasses.replace(SPEC, **change))
    assert "\n" not in str(e.value)


def test_a_world_with_no_source_sentences_gets_bm25s_empty_index_error():
    world = make_world(SPEC)
    empty = World(world.spec, [dataclasses.replace(p, mentions=0) for p in world.people], [])
    with pytest.raises(LmlabError, match="search index has no documents"):
        source_index(empty)
