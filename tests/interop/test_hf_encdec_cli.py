"""End-to-end for encoder-decoders: `lmlab import hf` / `lmlab export hf` round trips of tiny T5 and BART
folders with their tokenizers, `lmlab generate` on them and on a tiny run saved through the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

import lmlab
from lmlab.cli import main
from lmlab.data.tokenizers import train_tokenizer
from lmlab.generate import generate_text
from lmlab.models import build_model, get_preset, save_model
from tests.interop.test_hf_encdec import V, hf_bart, hf_t5

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models; a shared CPU
WORDS = [f"w{i}" for i in range(V)]
SOURCE = "w7 w12 w40 w3 w19"


def hf_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with T5's (<pad> </s> <unk>, appends </s>) or BART's (<s> <pad> </s> <unk>
    <mask>, wraps in <s> ... </s>) special tokens and post-processing, V ids in all."""
    specials = ["<pad>", "</s>", "<unk>"] if kind == "t5" else ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS[: V - len(specials)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = ("</s>", vocab["</s>"])
    if kind == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[eos])
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                       unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), eos])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


def cli_json(capsys, *args) -> dict:
    assert main([str(a) for a in args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["t5", "bart"])
def imported(request, tmp_path_factory) -> tuple:
    """A tiny random HF T5 or BART folder with its tokenizer, and the run `lmlab import hf` made of it."""
    root = tmp_path_factory.mktemp(request.param)
    src = root / "hf"
    hf = hf_t5(src, num_decoder_layers=2) if request.param == "t5" else hf_bart(src)
    hf_tok = hf_tokenizer(request.param)
    hf_tok.save_pretrained(src)
    run = root / "run"
    assert main(["import", "hf", "--src", str(src), "--out", str(run), "--json"]) == 0
    return hf, hf_tok, run


def test_import_brings_the_tokenizer(imported, capsys):
    hf, hf_tok, run = imported
    model, tok = lmlab.load(str(run))
    assert type(model).__name__ == "EncoderDecoder"
    assert tok.hf.encode(SOURCE).ids == hf_tok(SOURCE).input_ids  # post-processing (</s>, <s>) included
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "config.yaml"} <= {p.name for p in run.iterdir()}


def _hf_text(hf, tok, ids, **settings) -> str:
    gc = GenerationConfig(max_new_tokens=10, do_sample=False, eos_token_id=hf.config.eos_token_id,
                          pad_token_id=hf.config.pad_token_id, forced_bos_token_id=None,
                          forced_eos_token_id=None, decoder_start_token_id=hf.config.decoder_start_token_id,
                          **settings)
    ref = hf.generate(input_ids=ids, generation_config=gc)[0, 1:].tolist()
    return tok.decode(ref[: ref.index(hf.config.eos_token_id)] if hf.config.eos_token_id in ref else ref)


def test_generate_cli_equals_hf_generate(imported, capsys):
    hf, hf_tok, run = imported
    _, tok = lmlab.load(str(run))
    ids = hf_tok(SOURCE, return_tensors="pt").input_ids
    args = ["generate", "--ckpt", run, "--prompt", SOURCE, "--max-new-tokens", "10", "--json"]
    greedy = cli_json(capsys, *args, "--temperature", "0")["completions"][0]["text"]
    assert greedy == _hf_text(hf, tok, ids, num_beams=1) and len(greedy.split()) >= 3
    beams = cli_json(capsys, *args, "--num-beams", "3", "--length-penalty", "0.5")["completions"][0]["text"]
    assert beams == _hf_text(hf, tok, ids, num_beams=3, length_penalty=0.5)
    if type(hf).__name__.startswith("Bart"):  # learned positions: a one-line error past them
        assert main(["generate", "--ckpt", str(run), "--prompt", SOURCE, "--max-new-tokens", "65"]) == 2
        assert "max_new_tokens (65) exceeds the model's 64 target positions" in capsys.readouterr().err
        long_source = " ".join(WORDS[5:75])
        assert main(["generate", "--ckpt", str(run), "--prompt", long_source, "--max-new-tokens", "5"]) == 2
        assert "the source has 72 tokens but the model has 64 source positions" in capsys.readouterr().err


def test_export_round_trip_loads_in_auto_classes(imported, tmp_path, capsys):
    hf, hf_tok, run = imported
    out = tmp_path / "hf2"
    info = cli_json(capsys, "export", "hf", "--ckpt", run, "--out", out, "--json")
    assert info["architecture"] == type(hf).__name__
    back = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    back_tok = AutoTokenizer.from_pretrained(out)
    ids = hf_tok(SOURCE, return_tensors="pt").input_ids
    assert back_tok(SOURCE).input_ids == ids[0].tolist() and back_tok.eos_token == "</s>"
    dec = torch.randint(3, V, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf(input_ids=ids, decoder_input_ids=dec).logits
        assert (back(input_ids=ids, decoder_input_ids=dec).logits - theirs).abs().max() < 1e-5


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny T5 saved through the registry beside an lmlab tokenizer (special ids from it)."""
    out = tmp_path_factory.mktemp("encdec-run")
    text = ["ROMEO: But soft, what light through yonder window breaks? " * 20]
    tok = train_tokenizer("bpe", text, vocab_size=300)
    tok.save(out / "tokenizer.json")
    torch.manual_seed(0)
    model = build_model(get_preset("t5-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                   eos_token_id=tok.eot_id))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    save_model(model, out)
    return out


def test_generate_cli_on_a_tiny_encdec_run(tiny_run, cli, capsys):
    model, tok = lmlab.load(str(tiny_run))
    want = generate_text(model, tok, "ROMEO: what light", 12, temperature=0)[0]
    r = cli("generate", "--ckpt", tiny_run, "--prompt", "ROMEO: what light", "--max-new-tokens", "12",
            "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want.text + "\n"  # the target alone, streamed (no echo of the source)
    beams = cli_json(capsys, "generate", "--ckpt", tiny_run, "--prompt", "ROMEO: what light",
                     "--max-new-tokens", "12", "--num-beams", "4", "--early-stopping", "true", "--json")
    ref = generate_text(model, tok, "ROMEO: what light", 12, num_beams=4, early_stopping=True)[0]
    assert beams["completions"][0]["text"] == ref.text
    assert main(["generate", "--ckpt", str(tiny_run), "--prompt", "ROMEO", "--num-beams", "0"]) == 2
    assert "num_beams=0 must be at least 1" in capsys.readouterr().err


def test_export_refuses_a_vaswani_transformer(tmp_path, capsys):
    save_model(build_model(get_preset("transformer-tiny", vocab_size=50)), tmp_path / "run")
    assert main(["export", "hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    assert "no Hugging Face counterpart" in capsys.readouterr().err
