"""`lmlab embed` with encoders: pooled sentence vectors (mean or [CLS]), normalisation, similarities."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.embed.sentence import sentence_embeddings
from lmlab.errors import LmlabError
from lmlab.loader import load
from tests.encoders import hf_encoder

TEXTS = ["the king of denmark is dead", "the queen of england", "a wise man"]


@pytest.mark.parametrize("arch", ["BertModel", "RobertaForMaskedLM"])
def test_sentence_vectors_equal_the_recipe_on_hugging_face_states(tmp_path, arch):
    hf, tok = hf_encoder(tmp_path, arch)
    model, ours_tok = load(tmp_path)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        kwargs = {k: v for k, v in batch.items() if k != "token_type_ids" or arch == "BertModel"}
        out = hf(**kwargs, output_hidden_states=True)
    states = out.hidden_states[-1]
    m = batch["attention_mask"][..., None].float()
    mean = (states * m).sum(1) / m.sum(1)
    emb = sentence_embeddings(model, ours_tok, TEXTS, "mean", normalize=True, batch_size=2)
    torch.testing.assert_close(emb.vectors, torch.nn.functional.normalize(mean, dim=-1), atol=1e-5, rtol=1e-5)
    cls = sentence_embeddings(model, ours_tok, TEXTS, "cls")
    torch.testing.assert_close(cls.vectors, states[:, 0], atol=1e-4, rtol=1e-4)
    assert emb.tokens == batch["attention_mask"].sum(1).tolist()
    torch.testing.assert_close(emb.similarity(), emb.vectors @ emb.vectors.T)


def test_embed_cli_for_encoders(tmp_path, capsys):
    from safetensors import safe_open

    hf_encoder(tmp_path / "bert", "BertModel")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["embed", "--ckpt", str(tmp_path / "bert"), "--file", str(texts), "--normalize", "--json",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["texts"] == TEXTS and out["shape"] == [3, 32] and out["pooling"] == "mean"
    sim = torch.tensor(out["similarity"])
    torch.testing.assert_close(sim.diagonal(), torch.ones(3))
    assert main(["embed", "--ckpt", str(tmp_path / "bert"), "--text", "one more", "--file", str(texts),
                 "--pooling", "cls", "--out", str(tmp_path / "v.safetensors"), "--device", "cpu"]) == 0
    assert "wrote [4, 32] vectors of 4 texts" in capsys.readouterr().out
    with safe_open(str(tmp_path / "v.safetensors"), "pt") as f:
        assert f.get_tensor("embeddings").shape == (4, 32) and f.metadata()["pooling"] == "cls"
        assert json.loads(f.metadata()["texts"])[0] == "one more"
    assert main(["embed", "--ckpt", str(tmp_path / "bert"), "--file", str(texts), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "cosine similarity:" in table and "3 texts, vectors of 32 (mean pooling)" in table
    long = " ".join(["king"] * 60)
    assert main(["embed", "--ckpt", str(tmp_path / "bert"), "--text", long, "--device", "cpu"]) == 2
    assert "at most 40; shorten it or pass --truncate" in capsys.readouterr().err
    assert main(["embed", "--ckpt", str(tmp_path / "bert"), "--text", long, "--truncate", "--json",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == [40]


def test_sentence_embeddings_refuse_other_models(tmp_path):
    from lmlab.data.tokenizers import train_tokenizer
    from lmlab.models import build_model, get_preset

    tok = train_tokenizer("byte", [])
    with pytest.raises(LmlabError, match="need an encoder"):
        sentence_embeddings(build_model(get_preset("gpt2-tiny", vocab_size=300)), tok, TEXTS)
