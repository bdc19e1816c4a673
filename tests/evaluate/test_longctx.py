"""Long-context tasks and evaluation: passkey / MQAR generators, their training data, the scorer
(lmlab.evaluate.longctx_tasks, lmlab.evaluate.longctx) and ``lmlab longctx``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.cli import main
from lmlab.data.prepare import load_prepared
from lmlab.data.tokenizers import train_tokenizer
from lmlab.data.windows import RandomWindows
from lmlab.errors import LmlabError
from lmlab.evaluate.longctx import EXCEEDS, EXTRAPOLATED, OK, evaluate_length, reach, score_batch
from lmlab.evaluate.longctx_tasks import (
    FILLER,
    TaskGenerator,
    TaskSpec,
    task_tokenizer,
    training_examples,
    write_task_data,
)
from lmlab.evaluate.perplexity import example_loss
from lmlab.models import build_model, get_preset, save_model
from lmlab.nn.losses import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    return task_tokenizer()


def passkey_gen(tok, seed: int = 0) -> TaskGenerator:
    return TaskGenerator(tok, TaskSpec("passkey"), seed)


def mqar_gen(tok, seed: int = 0, **kw) -> TaskGenerator:
    return TaskGenerator(tok, TaskSpec("mqar", **kw), seed)


def tiny(tok, pos: str = "rope", block: int = 128, **kw):
    torch.manual_seed(0)
    cfg = get_preset("llama-tiny", vocab_size=tok.vocab_size, block_size=block, n_layer=1, d_model=32,
                     pos=pos, **kw)
    return build_model(cfg).eval()


# --- generators -----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("length", [101, 160, 1000])
def test_passkey_exact_length_and_key_at_depth(tok, length, depth):
    gen = passkey_gen(tok)
    ex = gen.example(length, depth, index=2)
    assert len(ex.ids) == length + 1 and ex.length == length
    (a, b), = ex.answers
    key = tok.decode(ex.ids[a:b])
    assert re.fullmatch(r"\d{5}", key) and b == len(ex.ids)  # the key ends the example
    assert tok.decode(ex.ids[:a]).endswith("What is the pass key? The pass key is ")
    needle = tok.decode(ex.ids[ex.needle_start:])
    assert needle.startswith(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    needle_text = f"The pass key is {key}. Remember it. {key} is the pass key. "
    n_filler = length + 1 - (b - a) - len(tok.encode(needle_text)) - len(tok.encode("What is the pass key? "
                                                                                     "The pass key is "))
    assert ex.needle_start == round(depth * n_filler)
    assert tok.decode(ex.ids[: ex.needle_start]) == (FILLER * 20)[: ex.needle_start]  # filler before it


def test_passkey_seeded_and_independent_of_other_examples(tok):
    gen = passkey_gen(tok, seed=3)
    many = gen.examples(300, 0.5, 6)
    assert [e.ids for e in many] == [e.ids for e in passkey_gen(tok, seed=3).examples(300, 0.5, 6)]
    assert many[4].ids == gen.example(300, 0.5, 4).ids  # an example does not depend on the others asked
    keys = {tok.decode(e.ids[e.answers[0][0]:]) for e in many}
    assert len(keys) > 1  # different examples, different keys
    other = passkey_gen(tok, seed=4).examples(300, 0.5, 6)
    assert [e.ids for e in other] != [e.ids for e in many]
    # training (stream 1) examples are not evaluation (stream 0) ones
    assert gen.example(300, 0.5, 0, stream=1).ids != many[0].ids


def test_mqar_values_answer_their_keys(tok):
    gen = mqar_gen(tok, n_pairs=6, n_queries=4, key_len=2, value_len=3)
    ex = gen.example(200, 0.25, 1)
    assert len(ex.ids) == 201 and len(ex.answers) == 4
    needle = tok.decode(ex.ids[ex.needle_start:ex.needle_start + 6 * 7])  # six "ab=123 "
    pairs = dict(re.findall(r"([a-z]{2})=(\d{3}) ", needle))
    assert len(pairs) == 6  # distinct keys
    recall = tok.decode(ex.ids).split("Recall: ")[1]
    asked = re.findall(r"([a-z]{2})=(\d{3})", recall)
    assert len(asked) == 4 and len({k for k, _ in asked}) == 4
    for (k, v), (a, b) in zip(asked, ex.answers):
        assert pairs[k] == v == tok.decode(ex.ids[a:b])


def test_exact_length_with_a_bpe_tokenizer():
    text = FILLER * 50 + "The pass key is 12345. What is the pass key? 0123456789"
    bpe = train_tokenizer("bpe", [text] * 3, vocab_size=300, min_frequency=1)
    gen = TaskGenerator(bpe, TaskSpec("passkey"), 0)
    for length in (gen.min_length(), 200, 517):
        ex = gen.example(length, 0.7)
        assert len(ex.ids) == length + 1
        (a, b), = ex.answers
        assert re.fullmatch(r"\d{5}", bpe.decode(ex.ids[a:b]))


def test_generator_errors(tok):
    gen = passkey_gen(tok)
    with pytest.raises(LmlabError, match="needs at least 101 tokens"):
        gen.example(100, 0.5)
    with pytest.raises(LmlabError, match="not in"):
        gen.example(500, 1.5)
    with pytest.raises(LmlabError, match="unknown long-context task 'niah'"):
        TaskSpec("niah")
    with pytest.raises(LmlabError, match="distinct keys"):
        TaskSpec("mqar", n_pairs=30, key_len=1)
    with pytest.raises(LmlabError, match="--n-queries"):
        TaskSpec("mqar", n_pairs=4, n_queries=5)


# --- training data --------------------------------------------------------------------------

def test_training_examples_mask_answers_and_padding(tok):
    gen = passkey_gen(tok)
    ids, mask, nbytes = training_examples(gen, 160, 20, min_length=110, pad_id=tok.pad_id)
    ids, mask = ids.reshape(20, 161), mask.reshape(20, 161)
    assert (mask.sum(1) == 5).all()  # the five digits of the key, nothing else
    for row, m in zip(ids, mask):
        real = int((row != tok.pad_id).sum())
        assert 111 <= real <= 161 and (row[real:] == tok.pad_id).all()
        assert re.fullmatch(r"\d{5}", tok.decode(row[m == 1])) and m[real - 5:real].all()
    assert len({int((r != tok.pad_id).sum()) for r in ids}) > 1  # the curriculum mixes lengths
    assert nbytes == sum(len(tok.decode(r[r != tok.pad_id])) for r in ids)
    _, all_mask, _ = training_examples(gen, 160, 3, pad_id=tok.pad_id, loss="all")
    assert (all_mask.reshape(3, 161)[:, 1:] == 1).all() and (all_mask.reshape(3, 161)[:, 0] == 0).all()
    with pytest.raises(LmlabError, match="needs at least 101"):
        training_examples(gen, 160, 3, min_length=50, pad_id=tok.pad_id)


def test_task_data_trains_one_whole_example_per_window(tmp_path, tok):
    out = tmp_path / "pk"
    meta, reused = write_task_data(out, TaskSpec("passkey"), 120, train_examples=30, val_examples=4, seed=1)
    assert not reused and meta["example_len"] == 121 and meta["loss_mask"]
    assert write_task_data(out, TaskSpec("passkey"), 120, train_examples=30, val_examples=4, seed=1)[1]
    data = load_prepared(out)
    assert data.example_len == 121 and len(data.train) == 30 * 121 and len(data.val) == 4 * 121
    windows = RandomWindows(data.train, block_size=120, batch_size=8, example_len=data.example_len,
                            loss_mask=data.loss_mask("train"))
    offsets = np.concatenate([windows.next_offsets() for _ in range(20)])
    assert (offsets % 121 == 0).all() and len(set(offsets.tolist())) > 10
    for _ in range(3):
        state = windows.state_dict()
        starts = windows.next_offsets()
        windows.load_state_dict(state)
        batch = windows.next()
        x, y = batch["input_ids"].numpy(), batch["labels"].numpy()
        assert (x == np.stack([data.train[o:o + 120] for o in starts])).all()
        keep = y[:, :-1] != IGNORE_INDEX
        assert (y[:, :-1][keep] == x[:, 1:][keep]).all()  # labels are the next tokens where scored
        for row, lab in zip(x, y):
            text = tok.decode(row)
            scored = lab[lab != IGNORE_INDEX]
            assert len(scored) == 5 and re.fullmatch(r"\d{5}", tok.decode(scored))
            assert tok.decode(scored) in text  # the key it is asked is in the window it reads
    with pytest.raises(LmlabError, match="--block-size 120"):
        RandomWindows(data.train, block_size=64, batch_size=2, example_len=121)


# --- scoring --------------------------------------------------------------------------------

class Oracle(torch.nn.Module):
    """Knows each example: its argmax is the true next token, shifted by ``wrong`` at the positions
    listed in ``spoil`` (indices of ``ids``). Read through a cache as score_batch reads a Decoder."""

    def __init__(self, ids: list[list[int]], vocab: int, spoil: tuple[int, ...] = ()):
        super().__init__()
        self.ids, self.vocab, self.spoil = torch.tensor(ids), vocab, spoil

    def new_kv_cache(self, batch_size: int, max_len: int | None = None):
        return type("Cache", (), {"length": 0})()

    def forward(self, idx, kv_cache=None, last_only=False):
        start = kv_cache.length
        T = idx.shape[1]
        assert torch.equal(idx, self.ids[:, start:start + T])  # it is fed the example in order
        kv_cache.length += T
        nxt = self.ids[:, start + 1:start + T + 1].clone()
        for p in self.spoil:
            if start + 1 <= p < start + T + 1:
                nxt[:, p - start - 1] = (nxt[:, p - start - 1] + 1) % self.vocab
        logits = torch.nn.functional.one_hot(nxt, self.vocab).float()
        return logits[:, -1:] if last_only else logits


def test_scorer_right_wrong_and_one_digit_off(tok):
    exs = passkey_gen(tok).examples(200, 0.5, 3)
    ids = [e.ids for e in exs]
    assert score_batch(Oracle(ids, tok.vocab_size), exs) == [[True]] * 3
    a, b = exs[0].answers[0]
    assert score_batch(Oracle(ids, tok.vocab_size, spoil=(b - 1,)), exs) == [[False]] * 3  # last digit off
    assert score_batch(Oracle(ids, tok.vocab_size, spoil=(a - 2,)), exs) == [[True]] * 3  # not an answer
    mq = mqar_gen(tok, n_pairs=4).examples(150, 0.0, 2)
    (a0, b0), (a1, _), *_ = mq[0].answers
    assert score_batch(Oracle([e.ids for e in mq], tok.vocab_size, spoil=(a1,)), mq) == \
        [[True, False, True, True]] * 2


def test_streamed_scoring_equals_a_full_forward(tok):
    model = tiny(tok, block=256)
    exs = mqar_gen(tok, n_pairs=4).examples(220, 0.3, 3)
    got = score_batch(model, exs)
    ids = torch.tensor([e.ids for e in exs])
    pred = model(ids[:, :-1]).argmax(-1)
    want = [[bool((pred[i, a - 1:b - 1] == ids[i, a:b]).all()) for a, b in e.answers]
            for i, e in enumerate(exs)]
    assert got == want and len(got[0]) == 4


def test_reach_extrapolates_rope_and_refuses_learned_positions(tok):
    rope = tiny(tok, block=128)
    same, status = reach(rope, 128)
    assert same is rope and status == OK
    longer, status = reach(rope, 300)
    assert status == EXTRAPOLATED and longer.config.block_size == 300
    x = torch.randint(0, tok.vocab_size, (1, 100))
    with torch.no_grad():
        torch.testing.assert_close(longer(x), rope(x))  # same weights, same positions below 128
    assert reach(tiny(tok, pos="learned", block=128), 300) == (None, EXCEEDS)


def test_evaluate_length_rows(tok):
    model = tiny(tok, block=128)
    gen = passkey_gen(tok)
    r = evaluate_length(model, gen, 120, [0.0, 1.0], 3, batch_size=2)
    assert r.status == OK and r.answers == 6 and set(r.by_depth) == {"0", "1"}
    assert 0.0 <= r.accuracy <= 1.0 and r.peak_mib is not None and r.peak_mib >= 0
    assert evaluate_length(model, gen, 150, [0.5], 2).status == EXTRAPOLATED
    learned = evaluate_length(tiny(tok, pos="learned", block=128), gen, 150, [0.5], 2)
    assert learned.status == EXCEEDS and learned.accuracy is None


# --- CLI ------------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path, tok) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    save_model(tiny(tok, block=128), run / "model.safetensors")
    tok.save(run / "tokenizer.json")
    return run


def test_cli_passkey_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["longctx", "passkey", "--ckpt", str(run_dir), "--lengths", "200,110", "--depths", "0,1",
                 "--samples", "2", "--no-isolate", "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [r["length"] for r in record["rows"]] == [110, 200]
    assert [r["status"] for r in record["rows"]] == [OK, EXTRAPOLATED]
    assert all(r["answers"] == 4 for r in record["rows"])
    assert (out / "longctx.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    assert json.loads((out / "longctx.json").read_text())["rows"] == record["rows"]


@pytest.mark.slow  # a fresh Python process per length: a few seconds of start-up
def test_cli_mqar_isolated_process(run_dir, tmp_path, capsys):
    assert main(["longctx", "mqar", "--ckpt", str(run_dir), "--lengths", "100", "--depths", "0.5",
                 "--samples", "2", "--n-pairs", "3", "--out", str(tmp_path / "ev")]) == 0
    text = capsys.readouterr().out
    assert "mqar: teacher-forced greedy exact match" in text and re.search(r"run\s+100\s+ok", text)
    row = json.loads((tmp_path / "ev" / "longctx.json").read_text())["rows"][0]
    assert row["answers"] == 6 and row["peak_mib"] is not None


@pytest.mark.parametrize("args, message", [
    (["passkey", "--lengths", "50"], "needs at least 101 tokens"),
    (["passkey", "--lengths", "0,200"], "--lengths must be positive"),
    (["passkey", "--lengths", "200", "--depths", "2"], "--depths must lie in"),
    (["mqar", "--lengths", "200", "--n-pairs", "0"], "--n-pairs must be at least 1"),
])
def test_cli_errors_are_one_line(run_dir, capsys, args, message):
    assert main(["longctx", *args[:1], "--ckpt", str(run_dir), *args[1:], "--no-isolate"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_unknown_task_and_data_errors(tmp_path, capsys):
    assert main(["longctx", "niah", "--ckpt", "x"]) == 2
    assert "unknown command 'lmlab longctx niah'" in capsys.readouterr().err
    assert main(["longctx", "data", "niah", "--out", str(tmp_path / "d")]) == 2
    assert "unknown long-context task 'niah'" in capsys.readouterr().err
    assert main(["longctx", "data", "passkey", "--length", "80", "--out", str(tmp_path / "d")]) == 2
    assert "needs at least 101 tokens" in capsys.readouterr().err


def test_cli_data_then_pretrain(tmp_path, capsys):
    data = tmp_path / "mq"
    assert main(["longctx", "data", "mqar", "--length", "96", "--n-pairs", "4", "--train-examples", "64",
                 "--val-examples", "8", "--out", str(data), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["example_len"] == 97 and meta["task"]["n_pairs"] == 4 and (data / "config.yaml").is_file()
    assert main(["data", "info", str(data)]) == 0
    assert "examples   97 tokens each (one training window), loss mask" in capsys.readouterr().out
    assert main(["pretrain", "--model", "llama-tiny", "--n-layer", "1", "--d-model", "32", "--data",
                 str(data), "--out", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4",
                 "--eval-iters", "1", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 2 and result["val_loss"] > 0 and result["val_bpb"] is None
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "block_size: 96" in cfg  # one example per window, taken from the data


def test_example_data_checks_and_validation_loss(tmp_path, tok):
    out = tmp_path / "pk"
    write_task_data(out, TaskSpec("passkey"), 110, train_examples=6, val_examples=3, seed=2)
    data = load_prepared(out)
    windows = RandomWindows(data.train, block_size=110, batch_size=2, example_len=111)
    plain = RandomWindows(data.train, block_size=110, batch_size=2)
    with pytest.raises(LmlabError, match="example length"):
        plain.load_state_dict(windows.state_dict())  # a resume on other data is refused
    # the validation figure of example data: cross-entropy on the masked-in tokens only
    model = tiny(tok, block=128)
    loss = example_loss(model, data.val, data.loss_mask("val"), 111, max_examples=10, batch_size=2)
    ids = torch.from_numpy(np.asarray(data.val, dtype=np.int64)).view(3, 111)
    mask = torch.from_numpy(np.array(data.loss_mask("val"))).view(3, 111)[:, 1:].bool()
    with torch.no_grad():
        logits = model(ids[:, :-1])
    want = torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask])
    assert loss == pytest.approx(float(want), rel=1e-5) and int(mask.sum()) == 15
    (out / "val.mask.bin").write_bytes(b"\x01" * 10)
    with pytest.raises(LmlabError, match="val.mask.bin is missing or truncated"):
        load_prepared(out)
