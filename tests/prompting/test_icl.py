"""In-context scoring: calibration and choice against hand computations, notices, bad input, and the
``lmlab icl`` command end to end on a tiny model."""

import json
import math

import pytest
import torch
from torch import nn

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.prompting import icl
from lmlab.prompting.icl import calibrate, label_notice, score_choice
from lmlab.prompting.tasks import Task
from lmlab.prompting.templates import Demo, Template
from tests.align.conftest import make_tiny_base


def test_calibration_against_a_hand_computation():
    # label probabilities p, given as unnormalised log-probabilities (calibrate renormalises them)
    p = [[0.7, 0.3], [0.4, 0.6]]
    p_cf = [[0.8, 0.2], [0.6, 0.4], [0.7, 0.3]]  # mean: [0.7, 0.3]
    logp = torch.tensor(p, dtype=torch.float64).log() + torch.tensor([[1.3], [-2.0]], dtype=torch.float64)
    cf = torch.tensor(p_cf, dtype=torch.float64).log() - 0.5
    q = calibrate(logp, cf)
    # row 1: [0.7/0.7, 0.3/0.3] = [1, 1] -> [0.5, 0.5]; row 2: [0.4/0.7, 0.6/0.3] renormalised
    a, b = 0.4 / 0.7, 0.6 / 0.3
    assert q.flatten().tolist() == pytest.approx([0.5, 0.5, a / (a + b), b / (a + b)], abs=1e-12)


class TwoTokenModel(nn.Module):
    """A causal LM whose next-token logits depend on the last two tokens: A[x_t] + B[x_{t-1}]."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(vocab, vocab, generator=g) * 2)
        self.B = nn.Parameter(torch.randn(vocab, vocab, generator=g) * 2)

    def forward(self, ids):
        prev = torch.zeros(ids.shape[0], ids.shape[1], self.B.shape[1])
        prev[:, 1:] = self.B[ids[:, :-1]]
        return self.A[ids] + prev


@pytest.fixture(scope="module")
def char_tokenizer():
    from lmlab.data.tokenizers import train_tokenizer

    return train_tokenizer("char", iter(["abcdefghijklmnopqrstuvwxyz0123456789:[]/N ASK"]))


def test_choice_scoring_raw_and_calibrated_against_a_hand_computation(char_tokenizer, monkeypatch):
    monkeypatch.setattr(icl, "context_size", lambda model: 1000)
    tok = char_tokenizer
    model = TwoTokenModel(tok.vocab_size)
    template = Template("plain", input_prefix="", output_prefix=":", label_sep="", separator=" ", io_sep="")
    labels = ["a", "b", "c"]
    questions = [Demo(x, y) for x, y in zip("defghijklmnopq", "abcabcabcabcab")]
    task = Task("t", [Demo("x", "a"), Demo("y", "b")], questions, labels, "")

    def label_logp(prev2: str | None, prev1: str) -> torch.Tensor:
        """Log-probabilities of the labels after the two tokens ``prev2 prev1``, by hand."""
        logits = model.A[tok.encode(prev1)[0]].detach().clone()
        if prev2 is not None:
            logits += model.B[tok.encode(prev2)[0]].detach()
        return torch.log_softmax(logits.double(), -1)[[tok.encode(lab)[0] for lab in labels]]

    for demos in ([], [Demo("x", "a"), Demo("y", "b")]):
        draw = icl.Draw(0, demos, questions)
        raw, cal, label_tokens, cut = score_choice(model, tok, task, template, draw)
        logp = torch.stack([label_logp(q.input, ":") for q in questions])
        # content-free inputs "N/A", "", "[MASK]": the token before ":" is "A", the demos' last or none, "]"
        before_empty = " " if demos else None
        cf = torch.stack([label_logp("A", ":"), label_logp(before_empty, ":"), label_logp("]", ":")])
        p = logp.exp() / logp.exp().sum(-1, keepdim=True)
        p_cf = (cf.exp() / cf.exp().sum(-1, keepdim=True)).mean(0)
        q = p / p_cf
        gold = torch.tensor([labels.index(d.label) for d in questions])
        assert raw == pytest.approx(float((logp.argmax(-1) == gold).double().mean()))
        assert cal == pytest.approx(float((q.argmax(-1) == gold).double().mean()))
        assert label_tokens == [[tok.encode(lab)[0]] for lab in labels] and cut == 0


def test_label_notice_when_labels_split_into_several_tokens(char_tokenizer):
    tok = char_tokenizer
    assert label_notice(tok, ["a", "b"], [[5], [6]]) is None
    shared = label_notice(tok, ["ab", "ac"], [tok.encode("ab"), tok.encode("ac")])
    assert "share their first token" in shared and "scoring the full continuations" in shared
    assert "first tokens differ" in label_notice(tok, ["ab", "cd"], [tok.encode("ab"), tok.encode("cd")])
    assert "\n" not in shared


def test_open_answers_cannot_be_scored_by_choice(char_tokenizer):
    task = Task("open", [Demo("x", "1")], [Demo("y", "2")], None, "")
    with pytest.raises(LmlabError, match="open answers.*--scoring generate"):
        icl.evaluate_icl(TwoTokenModel(4), char_tokenizer, task, [0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("icl-base"), d_model=32, n_layer=1, block_size=256)


def test_icl_command_end_to_end(tiny_run, sentiment_env, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "icl"
    rc = main(["icl", "--ckpt", str(tiny_run), "--task", "sentiment", "--shots", "0,1,2", "--samples", "6",
               "--seeds", "2", "--json", "--out", str(out)])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert [r["shots"] for r in rec["rows"]] == [0, 1, 2]
    for r in rec["rows"]:
        assert len(r["raw"]) == len(r["calibrated"]) == 2 and r["questions"] == 6
        assert all(0 <= a <= 1 for a in r["raw"] + r["calibrated"])
        assert r["raw_mean"] == pytest.approx(sum(r["raw"]) / 2)
    # the char tokenizer writes " negative" and " positive" as many tokens sharing the first (the space)
    assert any("share their first token" in n for n in rec["notices"])
    assert rec["chance"] == 0.5 and json.loads((out / "results.json").read_text()) == rec
    assert "shots:" in (out / "config.yaml").read_text()
    rc = main(["icl", "--ckpt", str(tiny_run), "--task", "sentiment", "--shots", "0,1", "--samples", "4"])
    text = capsys.readouterr().out
    assert rc == 0 and "raw accuracy" in text and "calibrated" in text and "notice:" in text


def test_icl_generate_and_chat(tiny_run, capsys, one_torch_thread):
    rc = main(["icl", "--ckpt", str(tiny_run), "--task", "kv-lookup", "--scoring", "generate",
               "--shots", "0,1", "--samples", "3", "--max-new-tokens", "3", "--format", "chat", "--json"])
    rec = json.loads(capsys.readouterr().out)
    assert rc == 0 and rec["scoring"] == "generate" and rec["format"] == "chat"
    assert [len(r["raw"]) for r in rec["rows"]] == [1, 1] and rec["rows"][0]["calibrated"] == []
    assert len(rec["examples"]) == 6 and all(math.isfinite(r["raw_mean"]) for r in rec["rows"])


def test_icl_bad_input_is_one_line(tiny_run, tmp_path, capsys):
    f = tmp_path / "few.jsonl"
    f.write_text("".join(json.dumps({"input": f"x{i}", "label": "ab"[i % 2]}) + "\n" for i in range(3)))
    assert main(["icl", "--ckpt", str(tiny_run), "--task", str(f), "--shots", "0,4"]) == 2
    err = capsys.readouterr().err
    assert "4 shots asked but task 'few' has only 3 labelled examples" in err and err.count("\n") == 1
    assert main(["icl", "--ckpt", str(tiny_run), "--task", "linear-regression"]) == 2
    assert "--scoring generate" in capsys.readouterr().err
    assert main(["icl", "--task", "kv-lookup"]) == 2
    assert "--ckpt" in capsys.readouterr().err
