"""Conditional bits per byte of encoder-decoders: the computation (lmlab.evaluate.conditional) and
``lmlab eval`` on source/target pairs and on prepared data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmlab.cli import main
from lmlab.data.prepare import load_prepared
from lmlab.errors import LmlabError
from lmlab.evaluate.conditional import Example, evaluate_conditional, read_pairs, window_pairs
from lmlab.models import build_model, get_preset, save_model
from tests.evaluate.test_eval import data_dir  # noqa: F401 - the prepared char data fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models; a shared CPU

def tiny(preset: str, vocab: int, **kw):
    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=vocab, block_size=16, d_model=32, n_head=4,
                                   head_dim=None, pad_token_id=1, eos_token_id=0, **kw))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.eval()


def examples(vocab: int) -> list[Example]:
    g = torch.Generator().manual_seed(1)
    return [Example(torch.randint(2, vocab, (s,), generator=g).tolist(),
                    [*torch.randint(2, vocab, (t,), generator=g).tolist(), 0], 2.0 * t)
            for s, t in ((5, 3), (9, 6), (2, 4), (7, 7), (3, 1))]


def test_a_model_that_knows_nothing_scores_ln_v():
    model = tiny("t5-tiny", 40)
    with torch.no_grad():
        model.tok_emb.weight.zero_()  # tied head: every logit 0, every token 1/V
    exs = examples(40)
    r = evaluate_conditional(model, exs, batch_size=2)
    n = sum(len(e.target) for e in exs)
    assert r.tokens == n and r.examples == 5 and r.loss == pytest.approx(math.log(40))
    assert r.bits_per_byte == pytest.approx(n * math.log(40) / math.log(2) / sum(e.target_bytes for e in exs))


@pytest.mark.parametrize("preset", ["t5-tiny", "bart-tiny"])
def test_batched_padded_scoring_equals_one_example_at_a_time(preset):
    model = tiny(preset, 40)
    exs = examples(40)
    nats = 0.0
    with torch.no_grad():
        for e in exs:
            labels = torch.tensor([e.target])
            logits = model(torch.tensor([e.source]), model.shift_right(labels))
            nats += F.cross_entropy(logits[0], labels[0], reduction="sum").item()
    r = evaluate_conditional(model, exs, batch_size=3)
    assert r.nats == pytest.approx(nats, rel=1e-5)


def test_bad_examples_and_files_are_named(tmp_path):
    model = tiny("bart-tiny", 40)
    with pytest.raises(LmlabError, match="example 1: the source has 20 tokens but the model has 16 source"):
        evaluate_conditional(model, [Example(list(range(2, 22)), [3, 0], 2.0)])
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"source": "a b", "target": "c"}\n\nx y\tz\n{"source": 3}\n', encoding="utf-8")
    with pytest.raises(LmlabError, match="line 4: needs string fields"):
        read_pairs(f)
    f.write_text('{"source": "a b", "target": "c"}\n\nx y\tz\n', encoding="utf-8")
    assert read_pairs(f) == [("a b", "c"), ("x y", "z")]
    f.write_text("no tab here\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="line 1: neither a JSON object nor source<TAB>target"):
        read_pairs(f)


def test_windows_cut_in_halves():
    exs = window_pairs(list(range(2, 24)), 8, 1.5, eos_id=0)  # 22 tokens: windows at 0, 8, 16 (6 long)
    assert [e.source for e in exs] == [[2, 3, 4, 5], [10, 11, 12, 13], [18, 19, 20, 21]]
    assert exs[0].target == [6, 7, 8, 9, 0] and exs[0].target_bytes == 6.0
    assert exs[2].target == [22, 23, 0] and exs[2].target_bytes == 3.0


@pytest.fixture
def encdec_run(data_dir, tmp_path) -> tuple[Path, torch.nn.Module]:  # noqa: F811
    data = load_prepared(data_dir)
    run = tmp_path / "run"
    model = tiny("t5-tiny", data.vocab_size)
    save_model(model, run)
    shutil.copy(data_dir / "tokenizer.json", run / "tokenizer.json")
    return run, model


def test_eval_cli_on_pairs_and_on_prepared_data(encdec_run, data_dir, tmp_path, capsys):  # noqa: F811
    run, model = encdec_run
    pairs = tmp_path / "dev.jsonl"
    rows = [("all the world", "is a stage"), ("and all the men", "and women")]
    pairs.write_text("\n".join(json.dumps({"source": s, "target": t}) for s, t in rows), encoding="utf-8")
    assert main(["eval", "--ckpt", str(run), "--pairs", str(pairs), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["mode"] == "conditional" and got["examples"] == 2 and "not comparable" in got["note"]
    assert got["bytes"] == len("is a stage") + len("and women")
    assert got["bits_per_byte"] == pytest.approx(got["loss"] * got["tokens"] / math.log(2) / got["bytes"])

    assert main(["eval", "--ckpt", str(run), "--data", str(data_dir), "--block-size", "12"]) == 0
    text = capsys.readouterr().out
    assert "val windows of 12 tokens cut in halves" in text and "conditional bits per byte" in text
    assert "not comparable to a causal LM's bits per byte" in text
    data = load_prepared(data_dir)
    ref = evaluate_conditional(model, window_pairs(data.val, 12, data.bytes_per_token("val"), 0))
    assert f"{ref.bits_per_byte:.4f}" in text


def test_eval_cli_refuses_what_does_not_fit(encdec_run, data_dir, tmp_path, capsys):  # noqa: F811
    run, _ = encdec_run
    dec = tmp_path / "dec"
    save_model(build_model(get_preset("gpt2-tiny", vocab_size=50, block_size=16)), dec)
    (tmp_path / "p.tsv").write_text("a\tb\n", encoding="utf-8")
    assert main(["eval", "--ckpt", str(dec), "--pairs", str(tmp_path / "p.tsv")]) == 2
    assert "--pairs is for encoder-decoders" in capsys.readouterr().err
    bart = tmp_path / "bart"
    save_model(tiny("bart-tiny", load_prepared(data_dir).vocab_size), bart)
    assert main(["eval", "--ckpt", str(bart), "--data", str(data_dir), "--block-size", "40"]) == 2
    assert "makes targets of 21 tokens (end included) but the model has 16" in capsys.readouterr().err


@pytest.fixture(scope="module")
def masked_data(data_dir, tmp_path_factory) -> Path:  # noqa: F811
    """The char data again, its tokenizer with the objectives' special tokens (T5 sentinels, mask)."""
    from lmlab.data.prepare import prepare

    out = tmp_path_factory.mktemp("masked") / "prep"
    prepare(str(data_dir.parent / "corpus.txt"), out, kind="char", mask_tokens=True)
    return out


@pytest.mark.parametrize("preset", ["t5-tiny", "bart-tiny"])
def test_own_objective_loss_equals_pretrain_validation(masked_data, preset):
    from lmlab.data.collators import build_examples
    from lmlab.evaluate.conditional import objective_pairs
    from lmlab.models.encdec import with_special_ids
    from lmlab.train.objectives import seq2seq_loss
    from lmlab.train.validate import evaluate_objective

    data = load_prepared(masked_data)
    tok = data.tokenizer()
    model = tiny(preset, data.vocab_size)
    model.config = with_special_ids(model.config, tok.token_to_id("<|pad|>"), tok.eot_id)
    name = model.config.objective
    examples = objective_pairs(data.val, tok, name, 16, max_examples=12)
    mine = evaluate_conditional(model, examples, batch_size=5)
    ref = evaluate_objective(model, seq2seq_loss, build_examples(name, tok, 16), data.val, n_windows=12,
                             batch_size=4, device=torch.device("cpu"))
    assert mine.examples == 12 and mine.bits_per_byte is None
    assert mine.loss == pytest.approx(ref["val_loss"], abs=1e-5)


def test_eval_cli_reports_the_own_objective_on_prepared_data(masked_data, tmp_path, capsys):
    from lmlab.models.encdec import with_special_ids

    data = load_prepared(masked_data)
    tok = data.tokenizer()
    run = tmp_path / "run"
    model = tiny("t5-tiny", data.vocab_size)
    model.config = with_special_ids(model.config, tok.token_to_id("<|pad|>"), tok.eot_id)
    save_model(model, run)
    shutil.copy(masked_data / "tokenizer.json", run / "tokenizer.json")
    args = ["eval", "--ckpt", str(run), "--data", str(masked_data), "--block-size", "16",
            "--max-tokens", "400"]
    assert main([*args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["objective"] == "span-corruption" and got["objective_examples"] == 25
    assert got["objective_loss"] > 0
    assert got["bits_per_byte"] > 0  # and the conditional bits per byte of the windows' halves
