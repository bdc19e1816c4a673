"""`lmlab scaling emergence`: addition data, metrics on hand-made cases, an oracle, the CLI, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.decoder import Decoder
from lmlab.nn.losses import IGNORE_INDEX
from lmlab.scaling.emergence import (
    CHARS,
    NEWLINE,
    VOCAB_SIZE,
    EmergenceConfig,
    ProblemBatches,
    _complement_index,
    answer_scores,
    build_model,
    decode_ids,
    edit_distance,
    emergence,
    encode,
    evaluate,
    format_problem,
    make_data,
    teacher_forced_metrics,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- data


def test_format_problem_pads_and_reverses() -> None:
    assert format_problem(42, 715, 3) == ("042+715=", "0757")
    assert format_problem(42, 715, 3, reverse=True) == ("042+715=", "7570")
    assert format_problem(99, 99, 2) == ("99+99=", "198")
    assert format_problem(0, 0, 1) == ("0+0=", "00")
    with pytest.raises(LmlabError, match="do not fit in 2 digits"):
        format_problem(100, 1, 2)


def test_encode_decode_round_trip() -> None:
    line = "042+715=0757\n"
    ids = encode(line)
    assert decode_ids(ids) == line and ids[-1] == NEWLINE and max(ids) < VOCAB_SIZE == len(CHARS)
    with pytest.raises(LmlabError, match="not in the addition vocabulary"):
        encode("1-2")


def test_complement_index_matches_brute_force() -> None:
    taken = [0, 3, 4, 9, 15]
    free = [v for v in range(40) if v not in taken]
    assert [_complement_index(i, taken) for i in range(len(free))] == free


@pytest.mark.parametrize("reverse", [False, True])
def test_splits_are_correct_disjoint_and_deterministic(reverse: bool) -> None:
    data = make_data(2, test_size=300, train_size=2000, seed=3, reverse=reverse)
    again = make_data(2, test_size=300, train_size=2000, seed=3, reverse=reverse)
    assert data.train == again.train and data.test == again.test
    assert len(set(data.train)) == 2000 and len(set(data.test)) == 300
    assert not set(data.train) & set(data.test)
    # the test set depends on digits, seed and test size only, not on the training-set size
    assert make_data(2, test_size=300, train_size=50, seed=3).test == data.test
    assert make_data(2, test_size=300, train_size=2000, seed=4).test != data.test
    for line in data.lines(data.train[:200] + data.test):
        prompt, answer = line[:-1].split("=")
        a, b = map(int, prompt.split("+"))
        assert len(line) == data.seq_len and line.endswith("\n") and len(answer) == data.answer_len
        assert int(answer[::-1] if reverse else answer) == a + b
    # the default training set is every problem not in the test set (when under the cap)
    full = make_data(2, test_size=300)
    assert len(full.train) == 100**2 - 300 and not set(full.train) & set(full.test)


def test_batches_mask_the_prompt() -> None:
    data = make_data(3, test_size=10, train_size=64, seed=0)
    batch = ProblemBatches(data, 8, seed=0, device=torch.device("cpu")).next()
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == (8, data.seq_len - 1)
    p = data.prompt_len
    assert (labels[:, : p - 1] == IGNORE_INDEX).all()
    # the counted labels are the answer digits and the newline, i.e. the line shifted left by one
    assert (labels[:, p - 1 :] != IGNORE_INDEX).all() and (labels[:, -1] == NEWLINE).all()
    assert torch.equal(labels[:, p - 1 : -1], ids[:, p:])


# ---------------------------------------------------------------- metrics


def test_teacher_forced_metrics_on_hand_made_logits() -> None:
    targets = torch.tensor([[1, 2, 3], [4, 5, 6]])
    oracle = torch.nn.functional.one_hot(targets, VOCAB_SIZE).float() * 60.0
    m = teacher_forced_metrics(oracle, targets)
    assert m["token_accuracy"] == 1.0 and m["sequence_accuracy"] == 1.0
    assert -1e-6 < m["log_likelihood"] <= 0.0
    uniform = teacher_forced_metrics(torch.zeros(2, 3, VOCAB_SIZE), targets)
    assert uniform["log_likelihood"] == pytest.approx(-math.log(VOCAB_SIZE), abs=1e-6)
    one_wrong = oracle.clone()
    one_wrong[1, 2] = torch.nn.functional.one_hot(torch.tensor(0), VOCAB_SIZE).float() * 60.0
    m = teacher_forced_metrics(one_wrong, targets)
    assert m["token_accuracy"] == pytest.approx(5 / 6) and m["sequence_accuracy"] == 0.5
    assert m["log_likelihood"] == pytest.approx(-60.0 / 6, rel=1e-4)
    with pytest.raises(LmlabError, match="do not match"):
        teacher_forced_metrics(oracle[:, :2], targets)


def test_edit_distance_and_answer_scores() -> None:
    assert edit_distance("0757", "0757") == 0
    assert edit_distance("0758", "0757") == 1
    assert edit_distance("075", "0757") == 1
    assert edit_distance("", "0757") == 4
    assert edit_distance("kitten", "sitting") == 3
    answers = ["0757", "0757", "0757", "0757"]
    outputs = ["0757\n", "0758\n", "075\n", "0757"]  # the last never wrote the newline: not an exact match
    s = answer_scores(outputs, answers)
    assert s["exact_match"] == 0.25
    assert s["digit_accuracy"] == pytest.approx((4 + 3 + 3 + 4) / 16)
    assert s["edit_distance"] == pytest.approx((0 + 1 + 1 + 0) / 4)
    with pytest.raises(LmlabError):
        answer_scores(["1\n"], [])


class OracleAdder(Decoder):
    """A decoder that knows the answer: logit 50 on the correct next token of a line.

    ``wrong_last`` makes it always get the last answer digit wrong. It is a
    :class:`Decoder` (so :func:`lmlab.generate.decode` takes it) whose forward ignores
    the weights and whose "KV cache" keeps the whole sequence.
    """

    def __init__(self, digits: int, reverse: bool = False, wrong_last: bool = False):
        super().__init__(build_model(16, 1, 16, digits).config)
        self.digits, self.reverse, self.wrong_last = digits, reverse, wrong_last

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, **_: object) -> SimpleNamespace:
        return SimpleNamespace(seq=None)

    def forward(self, idx: torch.Tensor, kv_cache: SimpleNamespace | None = None, positions=None,
                attention_mask=None, last_only: bool = False) -> torch.Tensor:
        seq = idx if kv_cache is None or kv_cache.seq is None else torch.cat([kv_cache.seq, idx], 1)
        if kv_cache is not None:
            kv_cache.seq = seq
        d, p = self.digits, 2 * self.digits + 2
        logits = torch.zeros(seq.shape[0], seq.shape[1], VOCAB_SIZE)
        for r in range(seq.shape[0]):
            if seq.shape[1] < p:
                continue
            text = decode_ids(seq[r, :p].tolist())
            prompt, answer = format_problem(int(text[:d]), int(text[d + 1 : 2 * d + 1]), d, self.reverse)
            line = encode(prompt + answer + "\n")
            if self.wrong_last:
                line[-2] = (line[-2] + 1) % 10
            for t in range(p - 1, min(seq.shape[1], len(line) - 1)):
                logits[r, t, line[t + 1]] = 50.0
        out = logits[:, -idx.shape[1] :]
        return out[:, -1:] if last_only else out


@pytest.mark.parametrize("reverse", [False, True])
def test_oracle_scores_perfectly_and_one_wrong_digit_costs_the_exact_match(reverse: bool) -> None:
    data = make_data(3, test_size=60, train_size=10, seed=1, reverse=reverse)
    perfect = evaluate(OracleAdder(3, reverse), data, batch_size=25)
    assert perfect["exact_match"] == 1.0 and perfect["digit_accuracy"] == 1.0
    assert perfect["token_accuracy"] == 1.0 and perfect["edit_distance"] == 0.0
    assert -1e-6 < perfect["log_likelihood"] <= 0.0 and perfect["greedy_matches_argmax"] == 1.0
    off = evaluate(OracleAdder(3, reverse, wrong_last=True), data, batch_size=25)
    assert off["exact_match"] == 0.0 and off["edit_distance"] == 1.0
    assert off["digit_accuracy"] == pytest.approx(3 / 4) and off["token_accuracy"] == pytest.approx(3 / 4)
    assert off["log_likelihood"] == pytest.approx(-50.0 / 4, rel=1e-3)
    assert off["position_log_likelihood"][:3] == pytest.approx([0.0] * 3, abs=1e-6)
    assert off["position_log_likelihood"][3] == pytest.approx(-50.0, rel=1e-3)
    assert off["greedy_matches_argmax"] == 1.0
    tf_only = evaluate(OracleAdder(3, reverse), data, greedy=False)
    assert set(tf_only) == {"log_likelihood", "token_accuracy", "position_log_likelihood"}


def test_model_family_grows_and_untrained_model_is_near_chance() -> None:
    data = make_data(2, test_size=40, train_size=10, seed=0)
    sizes = [build_model(d, 2, 16, 2).num_params() for d in (16, 32, 64)]
    assert sizes[0] < sizes[1] < sizes[2]
    torch.manual_seed(0)
    model = build_model(32, 2, 16, 2)
    assert model.config.n_head == model.config.n_kv_heads == 2 and model.config.vocab_size == VOCAB_SIZE
    s = evaluate(model, data)
    assert 0.0 <= s["exact_match"] <= 0.1 and s["greedy_matches_argmax"] == 1.0
    assert -math.log(VOCAB_SIZE) - 0.5 < s["log_likelihood"] < -math.log(VOCAB_SIZE) + 0.5


# ---------------------------------------------------------------- CLI


def test_cli_end_to_end(cli, tmp_path: Path) -> None:
    out = tmp_path / "em"
    args = ["scaling", "emergence", "--out", out, "--digits", "2", "--sizes", "32,16", "--steps", "15",
            "--batch-size", "16", "--train-size", "300", "--test-size", "40", "--device", "cpu"]
    r = cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    rows = record["rows"]
    assert [row["d_model"] for row in rows] == [16, 32]  # sorted by size
    assert rows[0]["params"] < rows[1]["params"] and record["task"]["answer_digits"] == 3
    for row in rows:
        assert row["steps"] == 15 and row["train_tokens"] == 15 * 16 * 9  # 9 inputs per "12+34=046\n"
        for key in ("exact_match", "digit_accuracy", "token_accuracy"):
            assert 0.0 <= row[key] <= 1.0
        assert 0.0 <= row["edit_distance"] <= 4.0  # at most 4 tokens without a newline
        assert row["log_likelihood"] <= 0.0 and row["train_log_likelihood"] <= 0.0
        assert len(row["position_log_likelihood"]) == 3
        assert sum(row["position_log_likelihood"]) / 3 == pytest.approx(row["log_likelihood"], abs=1e-4)
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(t["d_model"]) for t in table] == [16, 32]
    assert float(table[1]["exact_match"]) == pytest.approx(rows[1]["exact_match"])
    assert (out / "emergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.yaml").is_file() and json.loads((out / "results.json").read_text())["rows"] == rows
    assert (out / "models" / "d16" / "metrics.jsonl").is_file()
    assert not (out / "models" / "d16" / "model.safetensors").exists()
    assert not (out / "models" / "d16" / "state").exists()

    again = cli(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr

    r = cli(*args[:7], "16", *args[8:], "--overwrite", "--save-models", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "exact" in r.stdout and "loglik" in r.stdout
    assert not (out / "models" / "d32").exists()  # the earlier run's files were replaced
    from lmlab.models import load_model

    model = load_model(out / "models" / "d16")
    assert model.config.d_model == 16 and model.config.vocab_size == VOCAB_SIZE


@pytest.mark.parametrize("changes, message", [
    ({"out": None}, "--out"),
    ({"digits": 0}, "--digits must be at least 1"),
    ({"sizes": []}, "--sizes is empty"),
    ({"steps": 0}, "--steps must be at least 1"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"sizes": [16, 24]}, "multiples of --head-dim"),
    ({"sizes": [16, 16]}, "twice"),
    ({"lr": 0.0}, "--lr must be positive"),
    ({"digits": 1, "test_size": 100}, "only 100 problems"),
    ({"digits": 2, "test_size": 100, "train_size": 9901}, "--train-size"),
    ({"test_size": 0}, "--test-size must be at least 1"),
    ({"digits": 2, "train_size": 10, "batch_size": 32}, "--batch-size 32"),
])
def test_bad_input(tmp_path: Path, changes: dict, message: str) -> None:
    cfg = EmergenceConfig(out=tmp_path / "em", steps=1, sizes=[16])
    for k, v in changes.items():
        setattr(cfg.optim if hasattr(cfg.optim, k) else cfg, k, v)
    with pytest.raises(LmlabError, match=message):
        emergence(cfg)
    assert not (tmp_path / "em").exists()  # nothing written before the input is checked


def test_bad_input_through_the_cli(capsys, tmp_path: Path) -> None:
    assert main(["scaling", "emergence", "--out", str(tmp_path / "x"), "--sizes", ""]) == 2
    assert "--sizes is empty" in capsys.readouterr().err
