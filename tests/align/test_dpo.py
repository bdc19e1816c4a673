"""DPO: the losses against their closed forms (ln 2 when the policy is the reference; IPO's square;
conservative DPO's smoothed labels), the reference's log-probabilities computed once and kept, and end
to end on a tiny model: the loss starts at ln 2, the implicit-reward accuracy and margin rise on held-out
pairs, LoRA, exact resume, and bad input as one line."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.align.dpo import REFERENCE, encode_pairs, preference_loss
from lmlab.align.preferences import load_pairs, read_pairs
from lmlab.align.sequences import sequence_logprobs
from lmlab.cli import main
from lmlab.errors import LmlabError
from tests.align.conftest import assert_resume_is_exact
from tests.markdown_tables import tables

FAST = ["--precision", "fp32", "--device", "cpu", "--no-progress", "--warmup-steps", "0",
        "--warmup-fraction", "0"]
THINGS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]
GOOD, BAD = ["good", "great", "lovely", "fine"], ["bad", "awful", "dull", "poor"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """300 pairs: a prompt about two things; a kind word preferred to an unkind one."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = []
    for _ in range(300):
        a, b = rng.sample(THINGS, 2)
        rows.append({"prompt": f"the {a} {b} was", "chosen": f" {rng.choice(GOOD)}",
                     "rejected": f" {rng.choice(BAD)}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_losses_at_policy_equal_reference_are_ln2_and_ipo_its_square():
    lp = torch.tensor([-3.0, -7.5, -0.2])
    lr = torch.tensor([-4.0, -1.0, -9.0])
    for e in (0.0, 0.1, 0.3):
        losses, c, r = preference_loss(lp, lr, lp.clone(), lr.clone(), beta=0.1, label_smoothing=e)
        assert torch.allclose(losses, torch.full((3,), math.log(2)))
        assert c.abs().max() == 0 and r.abs().max() == 0
    losses, _, _ = preference_loss(lp, lr, lp.clone(), lr.clone(), beta=0.25, loss="ipo")
    assert torch.allclose(losses, torch.full((3,), (1 / (2 * 0.25)) ** 2))


def test_losses_match_their_closed_forms():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6) * 3 for _ in range(4))
    beta, e = 0.2, 0.15
    h = (pc - rc) - (pr - rr)
    losses, c, r = preference_loss(pc, pr, rc, rr, beta)
    assert torch.allclose(losses, torch.log1p(torch.exp(-beta * h)), atol=1e-6)
    assert torch.allclose(c, beta * (pc - rc)) and torch.allclose(r, beta * (pr - rr))
    cdpo, _, _ = preference_loss(pc, pr, rc, rr, beta, label_smoothing=e)
    want = -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)
    assert torch.allclose(cdpo, want, atol=1e-6)
    ipo, _, _ = preference_loss(pc, pr, rc, rr, beta, loss="ipo")
    assert torch.allclose(ipo, (h - 1 / (2 * beta)) ** 2, atol=1e-5)
    # the gradient raises the chosen response's log-prob and lowers the rejected one's
    pc_, pr_ = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    preference_loss(pc_, pr_, rc, rr, beta)[0].sum().backward()
    assert (pc_.grad < 0).all() and (pr_.grad > 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"beta": 0.0}, "--beta must be positive"),
    ({"beta": -1.0}, "--beta must be positive"),
    ({"beta": 0.1, "label_smoothing": 0.5}, "--label-smoothing must be in"),
    ({"beta": 0.1, "loss": "ipo", "label_smoothing": 0.1}, "applies to --loss sigmoid only"),
    ({"beta": 0.1, "loss": "hinge"}, "is not one of sigmoid, ipo"),
])
def test_bad_loss_options_are_refused(kwargs, message):
    x = torch.zeros(2)
    with pytest.raises(LmlabError, match=message):
        preference_loss(x, x, x, x, **kwargs)


def test_dpo_starts_at_ln2_and_accuracy_and_margin_rise(tiny_base, pairs, tmp_path, capsys):
    out = tmp_path / "dpo"
    assert main(["dpo", "--ckpt", str(tiny_base), "--data", str(pairs), "--out", str(out), "--beta", "0.5",
                 "--max-steps", "30", "--batch-size", "8", "--lr", "3e-3", "--log-interval", "1",
                 "--eval-interval", "10", *FAST, "--json"]) == 0
    r = _json(capsys)
    assert r["step"] == 30 and r["pairs"]["validation"] > 10
    assert r["first"]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert r["first"]["margins"] == pytest.approx(0, abs=1e-5)
    rows = _metrics(out)
    assert {"rewards/chosen", "rewards/rejected", "margins", "accuracy", "loss"} <= set(rows[0])
    val = [row for row in rows if "val_accuracy" in row]
    assert [row["step"] for row in val] == [10, 20, 30]
    assert val[-1]["val_margins"] > val[0]["val_margins"] > 0 and val[-1]["val_accuracy"] >= 0.9
    assert val[-1]["val_loss"] < 0.5 * math.log(2)
    assert r["last"]["rewards/chosen"] > 0 > r["last"]["rewards/rejected"]
    report = (out / "report.md").read_text()  # the figures of --json, the settings and the curves
    results = {row["metric"].replace("\\", ""): row for row in tables(report)["metric"]}
    val = f"validation ({r['pairs']['validation']} pairs)"
    for key in ("loss", "accuracy", "margins"):
        assert float(results[key][val]) == pytest.approx(r["val"][key], abs=1e-4)
        assert float(results[key]["last step"]) == pytest.approx(r["last"][key], abs=1e-4)
    assert float(results["loss"]["first step"]) == pytest.approx(math.log(2), abs=1e-4)
    assert "- beta: `0.5`" in report and "](curves.png)" in report and (out / "curves.png").is_file()
    for name in ("config.yaml", "model.safetensors", "tokenizer.json", REFERENCE):
        assert (out / name).is_file()
    policy, tok = lmlab.load(str(out))
    base = lmlab.load(str(tiny_base))[0]
    enc = encode_pairs(tok, read_pairs(pairs)[:8], "plain", 128)
    joined = enc.joined(list(range(8)), tok.pad_id)
    with torch.no_grad():
        gain = sequence_logprobs(policy, joined) - sequence_logprobs(base, joined)
    assert (gain[:8] > gain[8:]).all()  # the chosen responses gained on the rejected ones


def test_reference_logprobs_are_the_starting_models_computed_once(tiny_base, pairs, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "ipo"
    assert main(["dpo", "--ckpt", str(tiny_base), "--data", str(pairs), "--out", str(out), "--loss", "ipo",
                 "--beta", "0.25", "--length-normalize", "--max-steps", "1", "--max-pairs", "16",
                 "--batch-size", "8", *FAST, "--json"]) == 0
    r = _json(capsys)
    assert r["first"]["loss"] == pytest.approx((1 / (2 * 0.25)) ** 2, abs=1e-4)  # h = 0 at the start
    ref = load_file(str(out / REFERENCE))
    assert ref["train_chosen"].shape == (16,) and ref["validation_chosen"].numel() == r["pairs"]["validation"]
    model, tok = lmlab.load(str(tiny_base))
    train = encode_pairs(tok, load_pairs(pairs, "train", max_pairs=16), "plain", 128)
    for i in (0, 5, 15):  # each pair alone: the mean token log-prob of its response
        joined = train.joined([i], tok.pad_id)
        with torch.no_grad():
            c, rej = sequence_logprobs(model, joined, average=True)
        assert float(ref["train_chosen"][i]) == pytest.approx(float(c), abs=1e-5)
        assert float(ref["train_rejected"][i]) == pytest.approx(float(rej), abs=1e-5)


def test_dpo_with_lora_writes_a_merged_policy(tiny_base, pairs, tmp_path, capsys):
    out = tmp_path / "lora"
    assert main(["dpo", "--ckpt", str(tiny_base), "--data", str(pairs), "--out", str(out), "--method", "lora",
                 "--r", "4", "--beta", "0.5", "--max-steps", "8", "--batch-size", "8", "--lr", "1e-2",
                 "--log-interval", "1", "--eval-max", "10", *FAST,
                 "--json"]) == 0
    r = _json(capsys)
    assert r["first"]["loss"] == pytest.approx(math.log(2), abs=1e-5) and r["last"]["margins"] > 0
    assert r["pairs"]["validation"] == 10 and r["val"]["accuracy"] > 0.5
    policy = lmlab.load(str(out))[0]
    base = lmlab.load(str(tiny_base))[0]
    assert type(policy).__name__ == "Decoder" and (out / "train" / "metrics.jsonl").is_file()
    ids = torch.tensor([[1, 2, 3, 4]])
    assert not torch.allclose(policy(ids), base(ids))


def test_dpo_resumes_exactly(tiny_base, pairs, tmp_path):

    common = ["dpo", "--ckpt", str(tiny_base), "--data", str(pairs), "--max-steps", "6", "--batch-size", "4",
              "--max-pairs", "40", "--label-smoothing", "0.1", "--deterministic", *FAST]
    assert_resume_is_exact(common, tmp_path)


def test_chat_pairs_end_with_the_turns_end(tiny_base, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": "hello",
                                "rejected": "go"}) + "\n")
    tok = lmlab.load(str(tiny_base))[1]
    enc = encode_pairs(tok, read_pairs(path), "plain", 128)
    assert tok.decode(enc.prompts[0]).endswith("<|im_start|>assistant\n")
    assert tok.decode(enc.chosen[0]) == "hello<|im_end|>" and tok.decode(enc.rejected[0]) == "go<|im_end|>"
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "q", "chosen": " a", "rejected": " b"}) + "\n")
    enc = encode_pairs(tok, read_pairs(plain), "plain", 128)
    assert enc.prompts[0][0] == tok.eot_id and enc.chosen[0][-1] == tok.eot_id


@pytest.mark.parametrize("args, message", [
    (["--beta", "0"], "--beta must be positive"),
    (["--label-smoothing", "0.7"], "--label-smoothing must be in"),
    (["--max-len", "12"], "more than --max-len 12"),
])
def test_bad_dpo_input_is_one_line(tiny_base, pairs, tmp_path, capsys, args, message):
    assert main(["dpo", "--ckpt", str(tiny_base), "--data", str(pairs), "--out", str(tmp_path / "x"), *args,
                 "--max-steps", "1", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    if "max-len" in message:
        assert f"{pairs}:" in err  # names the pair's line


def test_dpo_on_human_pairs_from_ratings(tiny_base, sentiment_env, tmp_path, capsys):
    assert main(["dpo", "--ckpt", str(tiny_base), "--data", "sentiment-movies", "--out", str(tmp_path / "d"),
                 "--max-steps", "2", "--batch-size", "4", "--max-pairs", "8", *FAST, "--json"]) == 0
    r = _json(capsys)
    assert r["pairs"]["train"] == 8 and r["first"]["loss"] == pytest.approx(math.log(2), abs=1e-5)
