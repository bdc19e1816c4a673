"""lmlab align pairs and lmlab align frontier end to end on tiny models: pairs are labelled by the
reward model's scores, the KL of a policy to itself is 0 and to another model positive, best-of-n
never scores below best-of-1 and has the analytic KL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.align.best_of_n import best_of_n_kl
from lmlab.align.reward import load_scorer
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.heads import classifier_for
from lmlab.models.registry import save_model
from tests.align.conftest import make_tiny_base
from tests.markdown_tables import tables


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base) -> dict[str, Path]:
    """The reference (tiny_base), another policy with the same tokenizer, a random reward model on it."""
    root = tmp_path_factory.mktemp("frontier")
    other = make_tiny_base(root / "other", seed=1)
    model, tok = lmlab.load(str(tiny_base))
    torch.manual_seed(2)
    rm = classifier_for(model, task="regress", dropout=0.0)
    torch.nn.init.normal_(rm.head[-1].weight, 0.0, 1.0)  # scores that differ between responses
    (root / "rm").mkdir()
    save_model(rm, root / "rm" / "model.safetensors")
    tok.save(root / "rm" / "tokenizer.json")
    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"the movie {w}\n" for w in ["was", "is", "felt", "seemed", "had", "made"]))
    return {"ref": tiny_base, "other": other, "rm": root / "rm", "prompts": prompts, "root": root}


def test_best_of_n_kl_closed_form():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(LmlabError):
        best_of_n_kl(0)


def test_pairs_are_labelled_by_the_reward_model(runs, capsys):
    out = runs["root"] / "pairs.jsonl"
    assert main(["align", "pairs", "--policy", str(runs["ref"]), "--reward", str(runs["rm"]), "--prompts",
                 str(runs["prompts"]), "--max-new-tokens", "6", "--device", "cpu", "--out", str(out),
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert r["pairs"] == len(rows) > 0 and r["pairs"] + r["dropped_ties"] == 6
    scorer = load_scorer(str(runs["rm"]))
    for row in rows:
        c, rj = scorer.score_pairs([row["prompt"]] * 2, [row["chosen"], row["rejected"]]).tolist()
        assert c > rj and row["margin"] == pytest.approx(c - rj, abs=1e-3)
    assert main(["align", "pairs", "--policy", str(runs["ref"]), "--reward", str(runs["rm"]), "--prompts",
                 str(runs["prompts"]), "--out", str(out)]) == 2  # exists: refused, file kept
    assert len(out.read_text().splitlines()) == len(rows)


def test_frontier_kl_and_best_of_n(runs, capsys):
    out = runs["root"] / "frontier"
    assert main(["align", "frontier", "--ref", str(runs["ref"]), "--reward", str(runs["rm"]), "--policies",
                 f"self={runs['ref']},other={runs['other']}", "--best-of", "1,4", "--prompts",
                 str(runs["prompts"]), "--max-new-tokens", "6", "--device", "cpu", "--out", str(out),
                 "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    assert rows["self"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows["other"]["kl"] > 0.1
    assert rows["best-of-4"]["score"] >= rows["best-of-1"]["score"]
    assert rows["best-of-4"]["kl"] == pytest.approx(best_of_n_kl(4))
    assert rows["best-of-4"]["kl_kind"] == "analytic"
    assert (out / "frontier.png").stat().st_size > 0 and "best-of-4" in (out / "samples.md").read_text()
    assert json.loads((out / "frontier.json").read_text())["rows"][0]["name"] == "best-of-1"
    # report.md: one row per policy with the figures of --json, the plot and the samples beside it
    report = (out / "report.md").read_text()
    table = {r["policy"]: r for r in tables(report)["policy"]}
    assert list(table) == list(rows)
    for name, r in rows.items():
        assert float(table[name]["mean reward"]) == pytest.approx(r["score"], abs=1e-4)
        assert float(table[name]["KL (nats)"]) == pytest.approx(r["kl"], abs=1e-4)
        assert table[name]["KL from"] == r["kl_kind"] and int(table[name]["samples"]) == r["samples"]
    assert "](frontier.png)" in report and "](samples.md)" in report


def test_frontier_bad_policy_spec(runs, capsys):
    assert main(["align", "frontier", "--ref", str(runs["ref"]), "--reward", str(runs["rm"]), "--policies",
                 "nope", "--out", str(runs["root"] / "f2")]) == 2
    assert "NAME=RUN" in capsys.readouterr().err
