"""`lmlab cot`: decoding and scoring with an oracle model, vote scores by hand, the CLI end to end,
bad input as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmlab.cli import main
from lmlab.models.decoder import Decoder
from lmlab.prompting.cot import (
    build_model,
    generate_targets,
    greedy_scores,
    vote_scores,
)
from lmlab.prompting.scratchpad import VOCAB_SIZE, Problem, decode_ids, encode, held_out

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Oracle(Decoder):
    """A decoder that writes the true target of the prompt before it (logit 50 on each right token);
    ``wrong_answer`` makes its final answer's last digit wrong. Its forward ignores the weights and
    its "KV cache" keeps the whole sequence; left padding (id 0, the digit 0) reads as leading zeros."""

    def __init__(self, scratch: bool, wrong_answer: bool = False):
        super().__init__(build_model("llama-tiny", 16, 1, 2, 128).config)
        self.scratch, self.wrong_answer = scratch, wrong_answer

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, **_: object) -> SimpleNamespace:
        return SimpleNamespace(seq=None)

    def forward(self, idx: torch.Tensor, kv_cache: SimpleNamespace | None = None, positions=None,
                attention_mask=None, last_only: bool = False) -> torch.Tensor:
        seq = idx if kv_cache is None or kv_cache.seq is None else torch.cat([kv_cache.seq, idx], 1)
        if kv_cache is not None:
            kv_cache.seq = seq
        logits = torch.zeros(seq.shape[0], seq.shape[1], VOCAB_SIZE)
        for r in range(seq.shape[0]):
            text = decode_ids(seq[r].tolist())
            eq = text.index("=")
            op = "add" if "+" in text[:eq] else "mul"
            a, b = text[:eq].split("+" if op == "add" else "*")
            target = Problem(op, int(a), int(b)).target(self.scratch)
            if self.wrong_answer:
                target = target[:-2] + str((int(target[-2]) + 1) % 10) + "\n"
            line = encode(text[: eq + 1] + target)
            for t in range(eq, min(seq.shape[1], len(line) - 1)):
                logits[r, t, line[t + 1]] = 50.0
        out = logits[:, -idx.shape[1]:]
        return out[:, -1:] if last_only else out


@pytest.mark.parametrize("op, scratch", [("add", True), ("add", False), ("mul", True), ("mul", False)])
def test_an_oracle_scores_perfectly_and_a_wrong_digit_costs_the_answer(op: str, scratch: bool) -> None:
    problems = [p for ps in held_out(op, (1, 3), 6).values() for p in ps]  # prompts of different lengths
    texts = [t[0] for t in generate_targets(Oracle(scratch), problems, scratch)]
    assert texts == [p.target(scratch) for p in problems]
    s = greedy_scores(problems, texts, scratch)
    assert s["accuracy"] == s["chain_exact"] == s["answered"] == 1.0
    assert s["gen_tokens"] == pytest.approx(sum(len(p.target(scratch)) for p in problems) / len(problems))
    off = greedy_scores(problems, [t[0] for t in generate_targets(Oracle(scratch, True), problems, scratch)],
                        scratch)
    assert off["accuracy"] == off["chain_exact"] == 0.0 and off["answered"] == 1.0


def test_vote_scores_by_hand() -> None:
    problems = [Problem("add", 2, 3), Problem("add", 4, 4), Problem("add", 1, 1)]
    samples = [["5\n", "6\n", "5\n"],  # majority right, 2 of 3 samples right
               ["9\n", "8\n", "9\n"],  # majority wrong, one sample right
               ["2", "3\n", "2\n"]]  # the unfinished chain does not vote: a 1-1 tie goes to 3, sampled first
    s = vote_scores(problems, samples, scratch=False)
    assert s["majority"] == pytest.approx(1 / 3)
    assert s["sample"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)
    assert s["any"] == pytest.approx(1.0)


def test_sampled_chains_are_seeded() -> None:
    torch.manual_seed(0)
    model = build_model("gpt2-tiny", 32, 1, 2, 64)
    problems = held_out("add", (2, 2), 3)[2]
    a = generate_targets(model, problems, True, samples=4, temperature=1.0, seed=1)
    assert len(a) == 3 and all(len(chains) == 4 for chains in a)
    assert a == generate_targets(model, problems, True, samples=4, temperature=1.0, seed=1)
    assert a != generate_targets(model, problems, True, samples=4, temperature=1.0, seed=2)


TINY = ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--block-size", "64", "--batch-size", "4",
        "--test-per-digits", "3", "--device", "cpu", "--no-progress", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def cot_run(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """One tiny ``lmlab cot compare`` through the CLI: its folder, its JSON record and its arguments."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("cot") / "add"
    args = ["cot", "compare", "--out", str(out), "--op", "add", "--train-digits", "1-2", "--test-digits",
            "1-3", "--flops", "3e8", *TINY]
    before = torch.get_num_threads()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*args, "--json"]) == 0
    torch.set_num_threads(before)
    return out, json.loads(buf.getvalue()), args


def test_compare_end_to_end(capsys, cot_run) -> None:
    out, record, args = cot_run
    runs = {r["format"]: r for r in record["runs"]}
    # equal compute: the same steps of the same tokens, so the same FLOPs; the direct model sees more problems
    assert runs["direct"]["steps"] == runs["scratchpad"]["steps"] >= 1
    assert runs["direct"]["flops"] == runs["scratchpad"]["flops"]
    assert runs["direct"]["tokens"] == runs["direct"]["steps"] * 4 * 64
    assert runs["direct"]["problems_seen"] > 2 * runs["scratchpad"]["problems_seen"]
    assert [(r["digits"], r["trained"], r["problems"]) for r in record["rows"]] == [
        (1, True, 3), (2, True, 3), (3, False, 3)]
    for r in record["rows"]:
        for key in ("direct_accuracy", "scratchpad_accuracy", "scratchpad_chain_exact", "direct_answered"):
            assert 0.0 <= r[key] <= 1.0
    for name in ("results.json", "results.csv", "config.yaml", "direct/model.safetensors",
                 "scratchpad/task.json", "scratchpad/metrics.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "cot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "direct" / "state").exists()
    assert json.loads((out / "results.json").read_text())["rows"] == record["rows"]
    assert "--flops" in (out / "config.yaml").read_text().replace("flops:", "--flops")
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err


def test_eval_greedy_and_self_consistency_end_to_end(capsys, tmp_path: Path, cot_run) -> None:
    out, record, _ = cot_run
    ev = tmp_path / "ev"
    assert main(["cot", "eval", "--ckpt", str(out / "scratchpad"), "--self-consistency", "3", "--temperature",
                 "1.0", "--out", str(ev), "--device", "cpu", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["format"] == "scratchpad" and [r["digits"] for r in e["rows"]] == [1, 2, 3]
    for r in e["rows"]:
        assert {"greedy", "majority", "sample", "any"} <= set(r) and r["any"] >= r["sample"] - 1e-9
    # the same held-out problems as the comparison: the same greedy accuracy
    assert [r["greedy"] for r in e["rows"]] == [r["scratchpad_accuracy"] for r in record["rows"]]
    assert all((ev / name).is_file() for name in ("config.yaml", "cot-eval.png", "results.json"))
    assert main(["cot", "eval", "--ckpt", str(out / "direct"), "--test-digits", "3-4", "--test-per-digits",
                 "5", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "greedy" in table and "longer" in table and "vote" not in table


def test_plot_draws_one_panel_per_result(capsys, tmp_path: Path, cot_run) -> None:
    out = cot_run[0]
    png = tmp_path / "both.png"
    assert main(["cot", "plot", "--results", f"{out / 'results.json'},{out / 'results.json'}", "--out",
                 str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["cot", "plot", "--results", str(out / "direct" / "task.json"), "--out", str(png)]) == 2
    assert "not a results.json" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--train-digits", "4-1"], "--train-digits '4-1' must be a range"),
    (["--test-digits", "x"], "--test-digits 'x' is not a digit count"),
    (["--op", "sub"], "unknown operation 'sub'"),
    (["--flops", "0"], "--flops must be positive"),
    (["--flops", "10"], "too small to take one step"),
    (["--block-size", "30"], "raise --block-size"),
    (["--n-head", "3"], "--d-model 32 must be --n-head 3 times"),
    (["--preset", "bert-tiny"], "not a decoder"),
])
def test_compare_bad_input_is_one_line(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    assert main(["cot", "compare", "--out", str(tmp_path / "c"), "--train-digits", "1-2", "--test-digits",
                 "1-3", *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_eval_bad_input_is_one_line(capsys, tmp_path: Path, cot_run) -> None:
    run = str(cot_run[0] / "scratchpad")
    for args, message in [
        (["--self-consistency", "0"], "--self-consistency must be at least 1"),
        (["--self-consistency", "3", "--temperature", "0"], "--temperature must be positive"),
        (["--test-per-digits", "4"], "held out only 3 per digit count"),
        (["--test-digits", "2-4", "--test-per-digits", "4"], "held out only 3 per digit count"),
        (["--test-digits", "9-9"], "more than the model's context"),
    ]:
        assert main(["cot", "eval", "--ckpt", run, "--device", "cpu", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    assert main(["cot", "eval", "--ckpt", str(tmp_path), "--device", "cpu"]) == 2
    assert "has no task.json" in capsys.readouterr().err
