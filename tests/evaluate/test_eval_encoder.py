"""`lmlab eval` for encoders: masked-token loss and accuracy under BERT's masking, and
pseudo-log-likelihood bits per byte (Salazar et al. 2020)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmlab.cli import main
from lmlab.data.prepare import load_prepared, prepare
from lmlab.errors import LmlabError
from lmlab.evaluate.masked import evaluate_masked_lm
from lmlab.loader import load
from tests.encoders import TEXT, hf_encoder, lmlab_run


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """An lmlab encoder run and data prepared with its tokenizer (which has <|mask|>)."""
    root = tmp_path_factory.mktemp("enc")
    run = lmlab_run(root / "run")
    (root / "corpus.txt").write_text("\n\n".join(TEXT * 4), encoding="utf-8")
    prepare(str(root / "corpus.txt"), root / "data", tokenizer_file=run / "tokenizer.json", val_fraction=0.3)
    return run, root / "data"


def test_a_model_that_knows_nothing_scores_ln_v(run_and_data):
    run, data_dir = run_and_data
    model, tok = load(run)
    with torch.no_grad():  # all logits zero: every token has probability 1/V
        model.tok_emb.weight.zero_()
        model.mlm.bias.zero_()
    data = load_prepared(data_dir)
    r = evaluate_masked_lm(model, tok, data.val, block_size=16, pll_tokens=40, bytes_per_token=2.0)
    v = model.config.vocab_size
    assert r.masked_loss == pytest.approx(math.log(v)) and r.pll_nats_per_token == pytest.approx(math.log(v))
    assert r.pll_tokens == 40 and r.pll_bytes == 80.0
    assert r.pll_bits_per_byte == pytest.approx(40 * math.log(v) / math.log(2) / 80)
    assert r.pseudo_perplexity == pytest.approx(v)


def test_pll_equals_masking_one_token_at_a_time(run_and_data):
    run, data_dir = run_and_data
    model, tok = load(run)
    tokens = load_prepared(data_dir).val
    r = evaluate_masked_lm(model, tok, tokens, block_size=12, pll_tokens=12, batch_size=5)
    window = torch.tensor(np.asarray(tokens[:12], dtype=np.int64))  # lmlab tokenizers add no [CLS]/[SEP]
    mask_id = tok.token_to_id("<|mask|>")
    nats = 0.0
    with torch.no_grad():
        for t in range(12):
            x = window.clone()
            x[t] = mask_id
            nats -= float(torch.log_softmax(model(x[None])[0, t], -1)[window[t]])
    assert r.pll_tokens == 12 and r.pll_nats_per_token == pytest.approx(nats / 12, rel=1e-5)


def test_eval_cli_on_an_encoder_run(run_and_data, capsys):
    run, data_dir = run_and_data
    args = ["eval", "--ckpt", str(run), "--data", str(data_dir), "--device", "cpu", "--block-size", "16",
            "--pll-tokens", "32", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == out  # the seeded masking repeats exactly
    data = load_prepared(data_dir)
    assert out["objective"] == "mlm" and out["seed"] == 0 and out["block_size"] == 16
    assert out["masked_tokens"] == pytest.approx(0.15 * len(data.val), rel=0.2)
    assert 0.0 <= out["masked_accuracy"] <= 1.0 and math.isfinite(out["masked_loss"])
    assert out["pll_tokens"] == 32 and out["pll_bits_per_byte"] == pytest.approx(
        out["pll_nats_per_token"] * 32 / math.log(2) / (32 * data.bytes_per_token("val")))
    assert "not comparable to a causal LM" in out["note"]
    assert main([*args[:-1], "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "masked-token loss" in text and "pseudo-log-likelihood" in text and "not comparable" in text
    assert main([*args, "--stride", "8"]) == 2
    assert "--stride is for causal LMs" in capsys.readouterr().err


def test_eval_refuses_encoders_it_cannot_score(run_and_data, tmp_path, capsys):
    run, data_dir = run_and_data
    model, tok = load(run)
    tokens = load_prepared(data_dir).val
    with pytest.raises(LmlabError, match="--mask-prob"):
        evaluate_masked_lm(model, tok, tokens, block_size=16, mask_prob=1.5)
    with pytest.raises(LmlabError, match="exceeds the model's 32 positions"):
        evaluate_masked_lm(model, tok, tokens, block_size=64)
    hf_encoder(tmp_path / "headless", "BertModel")
    headless, bert_tok = load(tmp_path / "headless")
    with pytest.raises(LmlabError, match="no masked-LM head"):
        evaluate_masked_lm(headless, bert_tok, tokens, block_size=16)


def test_windows_get_cls_and_sep_with_a_bert_tokenizer(tmp_path):
    hf, hf_tok = hf_encoder(tmp_path / "bert")
    (tmp_path / "corpus.txt").write_text("\n\n".join(TEXT * 4), encoding="utf-8")
    prepare(str(tmp_path / "corpus.txt"), tmp_path / "data",
            tokenizer_file=tmp_path / "bert" / "tokenizer.json")
    model, tok = load(tmp_path / "bert")
    tokens = load_prepared(tmp_path / "data").val
    r = evaluate_masked_lm(model, tok, tokens, block_size=12, pll_tokens=10)
    window = torch.tensor([hf_tok.cls_token_id, *np.asarray(tokens[:10]).tolist(), hf_tok.sep_token_id])
    nats = 0.0
    with torch.no_grad():  # Hugging Face's model, each text token masked in turn inside [CLS] ... [SEP]
        for t in range(1, 11):
            x = window.clone()
            x[t] = hf_tok.mask_token_id
            nats -= float(torch.log_softmax(hf(input_ids=x[None]).logits[0, t], -1)[window[t]])
    assert r.pll_tokens == 10 and r.pll_nats_per_token == pytest.approx(nats / 10, rel=1e-4)
