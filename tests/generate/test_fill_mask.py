"""`lmlab fill-mask`: top-k tokens with probabilities at each mask, for Hugging Face and lmlab encoders,
and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.cli import main
from lmlab.data.tokenizers import load_tokenizer
from lmlab.errors import LmlabError
from lmlab.generate.fill_mask import fill_mask
from lmlab.loader import load
from tests.encoders import hf_encoder, lmlab_run


def cli_json(capsys, *args) -> dict:
    assert main([str(a) for a in args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("arch,mask", [("BertForMaskedLM", "[MASK]"), ("RobertaForMaskedLM", "<mask>")])
def test_fill_mask_gives_hugging_face_probabilities(tmp_path, capsys, arch, mask):
    hf, tok = hf_encoder(tmp_path, arch)
    text = f"the king of {mask} is dead"
    out = cli_json(capsys, "fill-mask", "--ckpt", tmp_path, "--text", text, "--top-k", 3, "--json",
                   "--device", "cpu")
    assert out["text"] == text and len(out["masks"]) == 1
    fill = out["masks"][0]
    batch = tok(text, return_tensors="pt")
    where = int((batch["input_ids"][0] == tok.mask_token_id).nonzero())
    assert fill["index"] == where
    with torch.no_grad():
        probs = torch.softmax(hf(**batch).logits[0, where], -1)
    top = probs.topk(3)
    assert [c["id"] for c in fill["candidates"]] == top.indices.tolist()
    assert [c["prob"] for c in fill["candidates"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert [c["token"] for c in fill["candidates"]] == tok.convert_ids_to_tokens(top.indices.tolist())


def test_fill_mask_on_an_lmlab_run_with_two_masks(tmp_path, capsys):
    run = lmlab_run(tmp_path / "run")
    model, tok = load(run)
    fills = fill_mask(model, tok, "the king of <|mask|> is <|mask|>", top_k=4)
    assert [f.index for f in fills] == [3, 5]
    ids = torch.tensor([tok.encode("the king of <|mask|> is <|mask|>")])
    with torch.no_grad():
        probs = torch.softmax(model(ids)[0], -1)
    for f in fills:
        top = probs[f.index].topk(4).values.tolist()
        assert [c.prob for c in f.candidates] == pytest.approx(top, abs=1e-6)
        assert all(a.prob >= b.prob for a, b in zip(f.candidates, f.candidates[1:]))
    assert main(["fill-mask", "--ckpt", str(run), "--text", "the king of <|mask|> is <|mask|>",
                 "--top-k", "2", "--device", "cpu"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "mask 1 (token 3):" and text[3] == "mask 2 (token 5):" and len(text) == 6
    assert text[1].split()[1] == fills[0].candidates[0].text.strip()


def test_fill_mask_errors_name_the_fix(tmp_path, capsys):
    from lmlab.models import build_model, get_preset, save_model

    hf_encoder(tmp_path / "bert")
    hf_encoder(tmp_path / "roberta", "RobertaForMaskedLM")
    hf_encoder(tmp_path / "headless", "BertModel")
    run = lmlab_run(tmp_path / "run")
    decoder = tmp_path / "decoder"
    save_model(build_model(get_preset("gpt2-tiny", vocab_size=50)), decoder)
    (decoder / "tokenizer.json").write_bytes((run / "tokenizer.json").read_bytes())
    cases = [(["--ckpt", tmp_path / "bert", "--text", "the king of denmark"],
              "write [MASK] (this model's mask"),
             (["--ckpt", tmp_path / "roberta", "--text", "the king"], "write <mask> (this model's mask"),
             (["--ckpt", run, "--text", "the <|mask|> " * 20], "at most 32; shorten --text"),
             (["--ckpt", decoder, "--text", "the <|mask|>"], "needs an encoder"),
             (["--ckpt", tmp_path / "headless", "--text", "the [MASK]"], "no masked-LM head"),
             (["--ckpt", run, "--text", "the <|mask|>", "--top-k", "0"], "--top-k must be at least 1"),
             (["--ckpt", tmp_path / "missing", "--text", "x"], "does not exist"),
             (["--text", "x"], "--ckpt")]
    capsys.readouterr()
    for args, msg in cases:
        assert main(["fill-mask", *map(str, args), "--device", "cpu"]) == 2, msg
        err = capsys.readouterr().err
        assert err.startswith("error:") and msg in err and len(err.strip().splitlines()) == 1, err
    model, _ = load(run)
    plain = load_tokenizer(run)
    plain.hf = type(plain.hf).from_str(plain.hf.to_str().replace("<|mask|>", "<|other|>"))
    with pytest.raises(LmlabError, match=r"no mask token \(\[MASK\] or <mask> or <\|mask\|>\)"):
        fill_mask(model, plain, "the king")


def test_fill_mask_shows_a_newline_candidate_escaped(tmp_path, capsys):
    from lmlab.data.tokenizers import train_tokenizer
    from tests.encoders import TEXT

    tok = train_tokenizer("bpe", ["\n".join(TEXT)] * 3, vocab_size=300, min_frequency=1)
    tok.hf.add_special_tokens(["<|mask|>"])
    run = lmlab_run(tmp_path / "run", tokenizer=tok)
    model, tok = load(run)
    newline = tok.encode("\n")[0]
    with torch.no_grad():  # make the newline the only likely token
        model.mlm.bias.zero_()
        model.mlm.bias[newline] = 100.0
    from lmlab.models import save_model

    save_model(model, run)
    assert main(["fill-mask", "--ckpt", str(run), "--text", "the <|mask|> king", "--top-k", "1", "--device",
                 "cpu"]) == 0
    assert capsys.readouterr().out.split() == ["1.0000", "'\\n'"]
