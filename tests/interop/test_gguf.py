"""GGUF export: the gguf reader sees the expected keys and tensors, transformers loads the file with
logits equal to ours (f32; f16 and q8_0 within their rounding), its tokenizer gives our ids, and bad
input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.data.chat import CHAT_TEMPLATE
from lmlab.data.tokenizers import train_tokenizer
from lmlab.interop.gguf_file import permute_rotary_rows
from lmlab.models.registry import build_model, get_preset, save_model

TEXT = "the cat sat on the mat and the dog ran to the park, said the old man to the boy. "
SAMPLE = "the dog sat on the mat, said the boy"


def _run(folder: Path, d_model: int = 64, preset: str = "llama-tiny", kind: str = "bpe", **over) -> Path:
    tok = train_tokenizer(kind, iter([TEXT * 3] * 20), vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(get_preset(preset, vocab_size=tok.vocab_size, d_model=d_model, n_layer=2,
                                   block_size=64, **over))
    folder.mkdir(parents=True)
    save_model(model, folder / "model.safetensors")
    tok.save(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("gguf") / "llama", n_head=4, n_kv_heads=2)


def _export(run: Path, out: Path, dtype: str = "f32") -> dict:
    return main(["export", "gguf", "--ckpt", str(run), "--out", str(out), "--dtype", dtype, "--json"])


def test_reader_sees_the_keys_and_tensors(llama, tmp_path, capsys):
    from gguf import GGUFReader

    import lmlab

    out = tmp_path / "m.gguf"
    assert _export(llama, out) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["out"] == str(out) and (tmp_path / "m.gguf.config.yaml").is_file()
    model, tok = lmlab.load(str(llama))
    cfg = model.config
    r = GGUFReader(str(out))

    def value(key):
        f = r.fields[key]
        return f.contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == cfg.n_layer and value("llama.embedding_length") == cfg.d_model
    assert value("llama.attention.head_count") == 4 and value("llama.attention.head_count_kv") == 2
    assert value("llama.context_length") == cfg.block_size
    assert value("llama.rope.dimension_count") == cfg.head_dim
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.tokens")[:5] == [tok.hf.id_to_token(i) for i in range(5)]
    assert value("tokenizer.ggml.eos_token_id") == tok.eot_id
    assert value("tokenizer.chat_template") == CHAT_TEMPLATE
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight"} \
        <= names
    k = next(t for t in r.tensors if t.name == "blk.0.attn_k.weight")
    assert tuple(k.shape) == (cfg.d_model, 2 * cfg.head_dim)  # GGUF lists dims innermost first


def test_transformers_loads_it_with_our_logits_and_ids(llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lmlab

    model, tok = lmlab.load(str(llama))
    ids = torch.tensor([tok.encode(SAMPLE)])
    with torch.no_grad():
        ours = model(ids)
    for dtype, tol in (("f32", 1e-4), ("f16", 5e-3), ("q8_0", 5e-2)):
        assert _export(llama, tmp_path / f"m-{dtype}.gguf", dtype) == 0
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f"m-{dtype}.gguf").eval()
        with torch.no_grad():
            theirs = hf(ids).logits
        assert (ours - theirs).abs().max() < tol, dtype
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m-f32.gguf")
    assert hf_tok(SAMPLE, add_special_tokens=False)["input_ids"] == tok.encode(SAMPLE)


def test_rotary_permutation_pairs_neighbours():
    # one head of 4 dims: HF pairs (0, 2) and (1, 3); GGUF pairs (0, 1) and (2, 3)
    w = torch.arange(4.0)[:, None]
    assert permute_rotary_rows(w, 1).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]


def test_q8_0_keeps_short_rows_in_f16(tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    run = _run(tmp_path / "d48", d_model=48, n_head=2, n_kv_heads=2)  # rows of 48: no whole q8_0 blocks
    assert _export(run, tmp_path / "q.gguf", "q8_0") == 0
    types = {t.name: t.tensor_type for t in GGUFReader(str(tmp_path / "q.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32


def test_bad_input_is_one_line(llama, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert _export(llama, out) == 0
    assert _export(llama, out) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "gguf", "--ckpt", str(llama), "--out", str(tmp_path / "x.gguf"), "--dtype",
                 "q4"]) == 2
    assert "f32, f16, q8_0" in capsys.readouterr().err
    char = _run(tmp_path / "char", kind="char")
    assert _export(char, tmp_path / "c.gguf") == 2
    assert "byte-level BPE" in capsys.readouterr().err and not (tmp_path / "c.gguf").exists()
    exact = _run(tmp_path / "gpt", preset="gpt2-tiny", gelu_approx="none")
    assert _export(exact, tmp_path / "g.gguf") == 2
    assert "tanh approximation" in capsys.readouterr().err


def test_gpt2_exports_too(tmp_path):
    """GPT-2 as llama.cpp's gpt2: biases, learned positions, tied output. transformers' GGUF loader
    maps the context length to n_ctx but not to n_positions, so the test passes n_positions itself."""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    import lmlab

    run = _run(tmp_path / "gpt", preset="gpt2-tiny")
    assert _export(run, tmp_path / "g.gguf") == 0
    r = GGUFReader(str(tmp_path / "g.gguf"))
    assert r.fields["general.architecture"].contents() == "gpt2"
    names = {t.name for t in r.tensors}
    assert {"position_embd.weight", "blk.0.attn_qkv.bias", "output_norm.bias"} <= names
    assert "output.weight" not in names  # tied: llama.cpp reads token_embd
    model, tok = lmlab.load(str(run))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="g.gguf",
                                              n_positions=model.config.block_size).eval()
    ids = torch.tensor([tok.encode(SAMPLE)])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() < 1e-4


@pytest.mark.slow
def test_llama_cpp_generates_our_greedy_tokens(llama, tmp_path):
    """llama.cpp (llama-cpp-python, an optional extra that compiles llama.cpp) on our f32 export
    continues a prompt with the same greedy tokens as lmlab; q8_0 agrees on most of them."""
    llama_cpp = pytest.importorskip("llama_cpp")

    import lmlab
    from lmlab.generate.decode import decode

    model, tok = lmlab.load(str(llama))
    prompt = [tok.eot_id] + tok.encode(SAMPLE)
    ours = decode(model, [prompt], 16, temperature=0)[0]
    agree = {}
    for dtype in ("f32", "q8_0"):
        assert _export(llama, tmp_path / f"m-{dtype}.gguf", dtype) == 0
        llm = llama_cpp.Llama(model_path=str(tmp_path / f"m-{dtype}.gguf"), n_ctx=64, n_threads=2,
                              verbose=False)
        theirs = []
        for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            theirs.append(int(t))
            if len(theirs) == len(ours):
                break
        agree[dtype] = sum(a == b for a, b in zip(ours, theirs)) / len(ours)
        if dtype == "f32":
            assert theirs == ours
    assert agree["q8_0"] >= 0.5, agree
    gpt = _run(tmp_path / "gpt", preset="gpt2-tiny")  # and llama.cpp's gpt2 on a GPT-2 export
    model, tok = lmlab.load(str(gpt))
    prompt = [tok.eot_id] + tok.encode(SAMPLE)
    ours = decode(model, [prompt], 16, temperature=0)[0]
    assert _export(gpt, tmp_path / "g.gguf") == 0
    llm = llama_cpp.Llama(model_path=str(tmp_path / "g.gguf"), n_ctx=64, n_threads=2, verbose=False)
    theirs = []
    for t in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        theirs.append(int(t))
        if len(theirs) == len(ours):
            break
    assert theirs == ours
