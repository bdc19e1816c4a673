"""Constitutional AI: the constitution file, the SL stage's few-shot prompts, the RL stage's AI feedback
(log-probs of (A)/(B) against a direct forward, position bias cancelled by asking in both orders), and
both CLI stages end to end on a tiny model, through SFT and a reward model trained on the AI labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.align.cai import ai_preference, option_logprobs
from lmlab.align.constitution import (
    SEPARATOR,
    choice_question,
    cut_field,
    load_constitution,
    sl_messages,
    sl_revision_messages,
    sl_revision_transcript,
    sl_transcript,
)
from lmlab.align.prompts import encode_prompt, encode_response
from lmlab.cli import main
from lmlab.errors import LmlabError
from tests.align.conftest import make_tiny_base

PROMPTS = ["The film was", "I thought the plot", "What a", "The actors"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random LLaMA with a context long enough for a few-shot transcript in characters."""
    return make_tiny_base(tmp_path_factory.mktemp("cai-base"), d_model=32, block_size=1024)


def test_default_constitution_and_drawing():
    c = load_constitution()
    names = [p.name for p in c.principles]
    assert len(names) == len(set(names)) >= 6 and len(c.examples) >= 2
    assert all(p.critique and p.revision and p.choice.endswith("?") for p in c.principles)
    drawn = [c.draw(0, i).name for i in range(60)]
    assert drawn == [c.draw(0, i).name for i in range(60)]  # reproducible, whatever the order of calls
    assert len(set(drawn)) == len(names)  # every principle is drawn
    assert [c.draw(0, i, 1).name for i in range(60)] != drawn  # another round draws afresh
    some = load_constitution(names=["positive", "kind"])
    assert {some.draw(3, i).name for i in range(40)} == {"positive", "kind"}
    assert some.principle("honest").name == "honest"  # the examples may still use any principle
    with pytest.raises(LmlabError, match="no principle 'nice'.*harmless"):
        load_constitution(names=["nice"])


def test_bad_constitution_files_name_the_entry(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("principles:\n  - name: a\n    critique: c\n    revision: r\n")
    with pytest.raises(LmlabError, match=r"principle 1 needs a non-empty text 'choice'"):
        load_constitution(f)
    f.write_text("principles:\n  - {name: a, critique: c, revision: r, choice: q}\nexamples:\n"
                 "  - {prompt: p, response: r, principle: b, critique: c, revision: v}\n")
    with pytest.raises(LmlabError, match="example 1 names principle 'b'"):
        load_constitution(f)
    with pytest.raises(LmlabError, match="no such file"):
        load_constitution(tmp_path / "none.yaml")


def test_sl_prompts_show_the_examples_then_ask():
    c = load_constitution()
    p = c.principle("positive")
    text = sl_transcript(c, 2, "The film was", " dull.", [], p)
    blocks = text.split(SEPARATOR)
    assert len(blocks) == 3 and blocks[0].startswith(f"Human: {c.examples[0].prompt}")
    assert f"Revision: {c.examples[1].revision}" in blocks[1]
    assert blocks[2] == ("Human: The film was\n\nAssistant: dull.\n\n"
                         f"Critique Request: {p.critique}\n\nCritique:")
    again = sl_revision_transcript(text, "It is gloomy.", p)
    assert again.endswith(f"Critique: It is gloomy.\n\nRevision Request: {p.revision}\n\nRevision:")
    msgs = sl_messages(c, 1, "Did you like it?", "No.", [], p)
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 4 + ["user"]
    assert msgs[-1]["content"] == p.critique and msgs[-2]["content"] == "No."
    more = sl_revision_messages(msgs, "Too short.", p)
    assert more[-2:] == [{"role": "assistant", "content": "Too short."},
                         {"role": "user", "content": p.revision}]


def test_cut_field_stops_where_the_next_field_starts():
    assert cut_field(" It is rude.\n\nRevision Request: x") == "It is rude."
    assert cut_field(" kind words Human: more") == "kind words"
    assert cut_field("all of it ") == "all of it"


def test_choice_question_layouts():
    p = load_constitution().principle("positive")
    q = choice_question(p, "The film", " was great", " was bad")
    assert q.endswith(f"{p.choice}\nOptions:\n(A) The film was great\n(B) The film was bad\nThe answer is:")
    q = choice_question(p, [{"role": "user", "content": "Like it?"}], "Yes", "No")
    assert "Human: Like it?" in q and "(A) Yes\n(B) No\nThe answer is:" in q


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_option_logprobs_equal_a_direct_forward(base, template):
    model, tok = lmlab.load(str(base))
    questions = ["Which is kinder?\n(A) yes\n(B) no\nThe answer is:", "Pick one: (A) or (B)?"]
    got = option_logprobs(model, tok, questions, template, batch_size=1)
    assert got.shape == (2, 2)
    for i, q in enumerate(questions):
        ctx = encode_prompt(tok, q if template == "plain" else [{"role": "user", "content": q}], template).ids
        for k, option in enumerate(["(A)", "(B)"]):
            ans = encode_response(tok, (" " if template == "plain" else "") + option, template, ended=False)
            ids = torch.tensor([ctx + ans])
            with torch.no_grad():
                logp = model(ids[:, :-1]).log_softmax(-1)[0]
            want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(ans))
            assert got[i, k].item() == pytest.approx(want, abs=1e-4)


def test_asking_in_both_orders_cancels_position_bias():
    biased = torch.tensor([[0.0, -5.0], [-1.0, -3.0]])  # prefers (A) whatever it holds
    assert torch.allclose(ai_preference(biased, biased), torch.tensor([0.5, 0.5]))
    ab = torch.tensor([[0.0, -5.0], [-2.0, -1.0]])
    ba = torch.tensor([[-5.0, 0.0], [-1.0, -2.0]])
    p = ai_preference(ab, ba)
    assert p[0] > 0.99 and p[1] < 0.5
    assert torch.allclose(ai_preference(ba, ab), 1 - p)  # the pair's other way round: the complement


def _revise(base: Path, out: Path, *extra: str) -> list[str]:
    return ["cai", "revise", "--ckpt", str(base), "--out", str(out), "--device", "cpu", "--no-progress",
            "--max-new-tokens", "8", "--batch-size", "4", "--json", *extra]


def test_cai_revise_writes_sft_data_and_chains(base, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "sl"
    assert main(_revise(base, out, "--prompts", str(prompts), "--shots", "1", "--revisions", "2",
                        "--principles", "positive,kind")) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    chains = [json.loads(x) for x in (out / "chains.jsonl").read_text().splitlines()]
    sft = [json.loads(x) for x in (out / "revisions.jsonl").read_text().splitlines()]
    assert r["prompts"] == len(chains) == len(PROMPTS) and r["written"] == len(sft)
    assert r["written"] + r["dropped_empty"] == len(PROMPTS) and r["written"] > 0
    assert set(r["principles"]) <= {"positive", "kind"}
    for ch in chains:
        assert ch["prompt"] in PROMPTS and len(ch["rounds"]) in (0, 1, 2)
        assert all(set(x) == {"principle", "critique", "revision"} for x in ch["rounds"])
    kept = [ch for ch in chains if ch["kept"]]
    assert all(len(ch["rounds"]) == 2 for ch in kept)
    assert [s["prompt"] for s in sft] == [ch["prompt"] for ch in kept]
    assert all(s["completion"].strip() == ch["rounds"][-1]["revision"] for s, ch in zip(sft, kept))
    assert (out / "config.yaml").is_file()
    with pytest.raises(LmlabError, match="already exists"):
        from lmlab.align.cai import ReviseConfig, revise

        revise(ReviseConfig(ckpt=base, prompts=str(prompts), out=out))


def test_cai_revise_chat_keeps_conversations(base, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n"
                               for p in PROMPTS))
    out = tmp_path / "sl"
    assert main(_revise(base, out, "--prompts", str(prompts), "--template", "chat", "--shots", "1",
                        "--temperature", "1")) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sft = [json.loads(x) for x in (out / "revisions.jsonl").read_text().splitlines()]
    assert r["truncated_contexts"] == 0 and len(sft) == r["written"] > 0
    for s in sft:
        assert [m["role"] for m in s["messages"]] == ["user", "assistant"]


def _pairs(path: Path) -> Path:
    rows = [{"prompt": p, "chosen": " was wonderful.", "rejected": " was dull."} for p in PROMPTS]
    rows.append({"prompt": "", "chosen": "A lovely, moving film.", "rejected": "A waste of time."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cai_label_writes_preferences_and_agreement(base, tmp_path, capsys):
    out = tmp_path / "ai.jsonl"
    args = ["cai", "label", "--feedback", str(base), "--data", str(_pairs(tmp_path / "h.jsonl")), "--out",
            str(out), "--device", "cpu", "--no-progress", "--json", "--batch-size", "2"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert r["pairs"] == r["human_labelled"] == len(PROMPTS) + 1
    assert r["written"] == len(rows) == r["pairs"] - r["ties"]
    assert all(0.5 < x["ai_prob"] <= 1 and {x["chosen"], x["rejected"]} != {""} for x in rows)
    agree = sum(x["human_agrees"] for x in rows) + 0.5 * r["ties"]
    assert r["agreement"] == pytest.approx(agree / r["pairs"], abs=1e-4)
    assert 0 <= r["consistent"] <= 1 and 0 < r["first_position"] < 1
    assert (tmp_path / "ai.config.yaml").is_file()
    # the same pairs the other way round: each AI choice stays the same text
    flipped = tmp_path / "f.jsonl"
    flipped.write_text("".join(json.dumps({"prompt": x["prompt"], "responses": [x["rejected"], x["chosen"]]})
                               + "\n" for x in rows))
    out2 = tmp_path / "ai2.jsonl"
    assert main(args[:5] + [str(flipped), "--out", str(out2)] + args[8:]) == 0
    r2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    again = [json.loads(x) for x in out2.read_text().splitlines()]
    assert r2["agreement"] is None and r2["human_labelled"] == 0
    assert [x["chosen"] for x in again] == [x["chosen"] for x in rows]
    assert [x["ai_prob"] for x in again] == pytest.approx([x["ai_prob"] for x in rows], abs=1e-5)


def test_cai_label_on_human_pairs_from_ratings(base, tmp_path, capsys, sentiment_env):
    out = tmp_path / "ai.jsonl"
    assert main(["cai", "label", "--feedback", str(base), "--data", "sentiment-movies", "--limit", "6",
                 "--principles", "positive", "--out", str(out), "--device", "cpu", "--no-progress",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["pairs"] == r["human_labelled"] == 6 and r["principles"] == {"positive": 6}
    assert 0 <= r["agreement"] <= 1


def test_cai_label_bad_input(base, tmp_path):
    from lmlab.align.cai import LabelConfig, label

    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "x" * 2000, "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(LmlabError, match="every pair's question is longer than .* context of 1024"):
        label(LabelConfig(feedback=base, data=str(long), out=tmp_path / "o.jsonl", device="cpu",
                          progress=False))
    with pytest.raises(LmlabError, match="question 1 is .* tokens .* context of 1024"):
        option_logprobs(lmlab.load(str(base))[0], lmlab.load(str(base))[1], ["y" * 1100], "plain")
    with long.open("a") as f:
        f.write(json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"}) + "\n")
    r = label(LabelConfig(feedback=base, data=str(long), out=tmp_path / "o.jsonl", device="cpu",
                          progress=False, overwrite=True))
    assert (r.pairs, r.too_long) == (1, 1) and r.human_labelled == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "responses": ["only one"]}) + "\n")
    with pytest.raises(LmlabError, match=r"bad.jsonl:1: 'responses' must be a list of 2 or more"):
        label(LabelConfig(feedback=base, data=str(bad), out=tmp_path / "o2.jsonl", device="cpu",
                          progress=False))


def test_cai_pipeline_revise_sft_label_then_train_reward_model_and_dpo(base, tmp_path, capsys):
    """The SL stage's revisions train the model (lmlab sft), which then labels pairs as the feedback
    model, and the AI labels train a reward model (lmlab reward train) and the policy (lmlab dpo)."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    assert main(_revise(base, tmp_path / "sl", "--prompts", str(prompts), "--shots", "0")) == 0
    capsys.readouterr()
    sft = tmp_path / "sft"
    assert main(["sft", "--ckpt", str(base), "--data", str(tmp_path / "sl" / "revisions.jsonl"), "--out",
                 str(sft), "--max-steps", "3", "--batch-size", "4", "--precision", "fp32", "--device", "cpu",
                 "--no-progress", "--max-len", "1024"]) == 0
    samples = tmp_path / "samples.jsonl"
    words = [("fine", "poor"), ("grand", "grim"), ("fun", "flat")]
    samples.write_text("".join(json.dumps({"prompt": p, "responses": [f" was {a}.", f" was {b}."]}) + "\n"
                               for p in PROMPTS for a, b in words))
    ai = tmp_path / "ai.jsonl"
    assert main(["cai", "label", "--feedback", str(sft), "--data", str(samples), "--out", str(ai), "--device",
                 "cpu", "--no-progress", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["pairs"] == 12 and r["written"] == 12 - r["ties"] >= 10
    rm = tmp_path / "rm"
    assert main(["reward", "train", "--ckpt", str(sft), "--data", str(ai), "--out", str(rm), "--max-steps",
                 "3", "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-progress",
                 "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["step"] == 3 and trained["pairs"]["train"] > 0
    assert (rm / "model.safetensors").is_file()
    dpo = tmp_path / "dpo"
    assert main(["dpo", "--ckpt", str(sft), "--data", str(ai), "--out", str(dpo), "--max-steps", "2",
                 "--batch-size", "4", "--max-len", "1024", "--precision", "fp32", "--device", "cpu",
                 "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2


def test_cai_label_with_a_hugging_face_feedback_model(base, tmp_path, capsys):
    """The feedback model may be a Hugging Face folder: the same weights exported give the same labels."""
    from lmlab.interop.hf import export_hf

    model, _ = lmlab.load(str(base))
    hf = export_hf(model, tmp_path / "hf", tokenizer_dir=base)
    data = _pairs(tmp_path / "h.jsonl")
    probs = []
    for i, feedback in enumerate([base, hf]):
        out = tmp_path / f"ai{i}.jsonl"
        assert main(["cai", "label", "--feedback", str(feedback), "--data", str(data), "--out", str(out),
                     "--device", "cpu", "--no-progress", "--json"]) == 0
        capsys.readouterr()
        probs.append([(x["chosen"], x["ai_prob"]) for x in map(json.loads, out.read_text().splitlines())])
    assert [c for c, _ in probs[0]] == [c for c, _ in probs[1]]
    assert [p for _, p in probs[0]] == pytest.approx([p for _, p in probs[1]], abs=1e-5)
