"""Model cards (lmlab.serve.cards): figures read from real run folders, None where a run does not
record them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.serve.cards import decoder_family, model_card
from tests.conftest import prepare_word_soup

KEYS = {"family", "arch", "preset", "parameters", "context", "tokenizer", "training_tokens", "val_bpb"}


def test_card_of_a_run_trained_by_the_cli(tmp_path, capsys):
    import lmlab
    from lmlab.cli import main

    data = prepare_word_soup(tmp_path)
    run = tmp_path / "run"
    assert main(["pretrain", "--model", "gpt2-tiny", "--d-model", "32", "--n-layer", "1",
                 "--block-size", "16", "--batch-size", "4", "--max-steps", "3", "--log-interval", "2",
                 "--eval-iters", "1", "--precision", "fp32", "--device", "cpu", "--no-progress",
                 "--data", str(data), "--out", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    card = model_card(run)
    model, tok = lmlab.load(run)
    assert set(card) == KEYS
    assert card["family"] == "gpt2" and card["arch"] == "decoder" and card["preset"] == "gpt2-tiny"
    assert card["context"] == 16
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["tokenizer"] == {"kind": "char", "vocab_size": tok.vocab_size}
    # 3 steps of 4 windows of 16 tokens; metrics.jsonl logged tokens at step 2 only
    assert card["training_tokens"] == 3 * 4 * 16
    assert card["val_bpb"] == pytest.approx(result["val_bpb"], rel=1e-4) and card["val_bpb"] > 0
    assert model_card(run, model)["parameters"] == card["parameters"]
    json.dumps(card)  # JSON-ready for /v1/models


@pytest.mark.parametrize(("preset", "family", "arch"), [
    ("lstm-tiny", "lstm", "rnn"), ("gru-tiny", "gru", "rnn"), ("rnn-tiny", "rnn", "rnn"),
    ("nplm-tiny", "nplm", "nplm")])
def test_card_of_recurrent_and_nplm_models(tmp_path, preset, family, arch):
    from lmlab.models.registry import build_model, get_preset, save_model

    cfg = get_preset(preset, vocab_size=64)
    model = build_model(cfg)
    save_model(model, tmp_path / "model.safetensors")
    card = model_card(tmp_path)
    assert card["family"] == family and card["arch"] == arch
    # an RNN takes any length; the NPLM conditions on its n-1 previous tokens
    assert card["context"] == (cfg.context if family == "nplm" else None)
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["tokenizer"] is None and card["training_tokens"] is None and card["val_bpb"] is None


@pytest.mark.parametrize(("preset", "family"), [
    ("gpt2-tiny", "gpt2"), ("gpt2-124m", "gpt2"), ("llama-tiny", "llama"), ("llama2-7b", "llama"),
    ("llama-8b", "llama"), ("deepseek-tiny", "deepseek"), ("deepseek-v2-lite", "deepseek"),
    ("infini-tiny", "infini")])
def test_decoder_family_names_the_preset_style(preset, family):
    from lmlab.models.registry import get_preset

    assert decoder_family(get_preset(preset).to_dict()) == family
    assert decoder_family({"norm": "layernorm", "pos": "rope"}) == "decoder"


def test_figures_come_from_the_files_and_missing_ones_are_none(tmp_path):
    from tests.align.conftest import make_tiny_base

    run = make_tiny_base(tmp_path / "run", d_model=32, n_layer=1, block_size=64)
    card = model_card(run)
    assert card["family"] == "llama" and card["context"] == 64 and card["tokenizer"]["kind"] == "char"
    assert card["preset"] is None and card["training_tokens"] is None and card["val_bpb"] is None

    lines = [{"step": 1, "loss": 3.0, "tokens": 100}, "not json", {"step": 5, "loss": 2.0, "tokens": 500},
             {"step": 5, "val_loss": 1.5, "val_bpb": 1.25}, {"step": 6, "val_loss": 1.4, "val_bpb": True}]
    (run / "metrics.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    (run / "config.yaml").write_text("model: llama-tiny\nmax_steps: 6\n")
    card = model_card(run)
    assert card["training_tokens"] == 500 and card["val_bpb"] == 1.25 and card["preset"] == "llama-tiny"

    # the final checkpoint's trainer state has the exact count (metrics log every few steps)
    (run / "state" / "step-000006-ab").mkdir(parents=True)
    (run / "state" / "step-000006-ab" / "trainer.json").write_text(json.dumps({"step": 6, "tokens": 600}))
    (run / "state" / "latest.json").write_text(json.dumps({"step": 6, "dir": "step-000006-ab", "files": {}}))
    assert model_card(run)["training_tokens"] == 600
    (run / "state" / "latest.json").write_text(json.dumps({"step": 6, "dir": "..", "files": {}}))
    assert model_card(run)["training_tokens"] == 500  # a latest.json pointing elsewhere is not followed

    (run / "tokenizer.json").write_text("{broken")
    (run / "config.yaml").write_text(": [")
    card = model_card(run)
    assert card["tokenizer"] is None and card["preset"] is None and card["family"] == "llama"


def test_card_of_an_empty_folder_and_a_damaged_model(tmp_path):
    assert model_card(tmp_path) == dict.fromkeys(KEYS)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    assert model_card(tmp_path) == dict.fromkeys(KEYS)


def test_card_of_a_hugging_face_folder(tmp_path: Path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    weights = {"wte.weight": torch.zeros(10, 4), "h.0.bias": torch.zeros(4)}
    save_file(weights, str(tmp_path / "model.safetensors"))
    card = model_card(tmp_path)
    assert card["family"] == "gpt2" and card["arch"] == "hf" and card["context"] == 64
    assert card["parameters"] == 44
