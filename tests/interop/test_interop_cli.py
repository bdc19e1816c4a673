"""End-to-end: `lmlab export hf`, `lmlab import hf`, `lmlab generate` and `lmlab.load`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.data.tokenizers import train_tokenizer
from lmlab.generate import generate_text
from lmlab.loader import load
from lmlab.models import build_model, get_preset, load_model, save_model

TEXT = ["ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
        "café naïve 🦊 " * 20]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained-looking run folder: model.safetensors + tokenizer.json."""
    out = tmp_path_factory.mktemp("run")
    tok = train_tokenizer("bpe", TEXT, vocab_size=320)
    tok.save(out / "tokenizer.json")
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, block_size=128))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    save_model(model, out)
    return out


def cli_json(capsys, *args: str) -> dict:
    assert main([str(a) for a in args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_export_hf_loads_with_auto_classes(run_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "hf"
    info = cli_json(capsys, "export", "hf", "--ckpt", run_dir, "--out", out, "--json")
    assert info["architecture"] == "LlamaForCausalLM"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "generation_config.json", "config.yaml"):
        assert (out / name).is_file(), name
    ours, tok = load(run_dir)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, tok.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() < 1e-4
    hf_tok = AutoTokenizer.from_pretrained(out)
    text = "ROMEO: what light? café 🦊<|endoftext|>"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf_tok.eos_token == "<|endoftext|>" and hf.config.eos_token_id == tok.eot_id
    assert main(["export", "hf", "--ckpt", str(run_dir), "--out", str(out)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_import_hf_round_trip(run_dir, tmp_path, capsys):
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    assert main(["export", "hf", "--ckpt", str(run_dir), "--out", str(hf_dir)]) == 0
    info = cli_json(capsys, "import", "hf", "--src", hf_dir, "--out", back, "--json")
    assert info["model_type"] == "llama" and "tokenizer.json" in info["files"]
    a, b = load_model(run_dir), load_model(back)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    assert (back / "config.yaml").is_file() and (back / "tokenizer.json").read_text() == \
        (run_dir / "tokenizer.json").read_text()
    # bf16 import
    info = cli_json(capsys, "import", "hf", "--src", hf_dir, "--out", tmp_path / "bf16", "--dtype", "bf16",
                    "--json")
    assert info["dtype"] == "bfloat16"
    assert load_model(tmp_path / "bf16").tok_emb.weight.dtype == torch.bfloat16


def test_load_returns_model_and_tokenizer_for_run_and_hf_folders(run_dir, tmp_path):
    from lmlab.data.tokenizers import Tokenizer
    from lmlab.models import Decoder

    main(["export", "hf", "--ckpt", str(run_dir), "--out", str(tmp_path / "hf")])
    (m1, t1), (m2, t2) = load(run_dir), load(tmp_path / "hf")
    assert isinstance(m1, Decoder) and isinstance(m2, Decoder) and not m1.training
    assert isinstance(t1, Tokenizer) and t1.encode("soft light") == t2.encode("soft light")
    x = torch.randint(0, t1.vocab_size, (1, 12))
    torch.testing.assert_close(m1(x), m2(x))
    assert load(run_dir, dtype="bf16")[0].tok_emb.weight.dtype == torch.bfloat16


def test_generate_cli_matches_the_python_api(run_dir, tmp_path, capsys):
    got = cli_json(capsys, "generate", "--ckpt", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "25",
                   "--temperature", "0", "--json")
    model, tok = load(run_dir)
    ref = generate_text(model, tok, "ROMEO:", 25, temperature=0)[0]
    row = got["completions"][0]
    assert row["text"] == ref.text and row["tokens"] == len(ref.ids) and got["tokens_per_s"] > 0
    # streaming text mode prints the prompt and the same continuation
    assert main(["generate", "--ckpt", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "25",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "ROMEO:" + ref.text + "\n"
    # a batch from a file equals single runs; sampling with a seed is reproducible
    (tmp_path / "p.txt").write_text("ROMEO:\nBut soft, what\n", encoding="utf-8")
    batch = cli_json(capsys, "generate", "--ckpt", run_dir, "--prompt-file", tmp_path / "p.txt",
                     "--max-new-tokens", "15", "--temperature", "0", "--json")
    single = [generate_text(model, tok, p, 15, temperature=0)[0].text for p in ("ROMEO:", "But soft, what")]
    assert [c["text"] for c in batch["completions"]] == single
    args = ["generate", "--ckpt", run_dir, "--prompt", "", "--max-new-tokens", "20", "--seed", "4",
            "--top-p", "0.9", "--json"]
    first, again = cli_json(capsys, *args)["completions"], cli_json(capsys, *args)["completions"]
    assert first == again
    assert first[0]["tokens"] == 20 or first[0]["finish_reason"] == "eos"


def test_generate_cli_stop_string_and_hf_folder(run_dir, tmp_path, capsys):
    free = cli_json(capsys, "generate", "--ckpt", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "30",
                    "--temperature", "0", "--json")["completions"][0]["text"]
    stop = free[4:6]
    got = cli_json(capsys, "generate", "--ckpt", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "30",
                   "--temperature", "0", "--stop", stop, "--json")["completions"][0]
    assert got["finish_reason"] == "stop" and got["text"] == free[: free.find(stop)]
    main(["export", "hf", "--ckpt", str(run_dir), "--out", str(tmp_path / "hf")])
    capsys.readouterr()
    via_hf = cli_json(capsys, "generate", "--ckpt", tmp_path / "hf", "--prompt", "ROMEO:", "--max-new-tokens",
                      "30", "--temperature", "0", "--json")["completions"][0]["text"]
    assert via_hf == free


def test_cli_errors_exit_2_with_a_fix(run_dir, tmp_path, cli, capsys):
    r = cli("generate", "--ckpt", tmp_path / "missing", "--prompt", "x")  # the real entry point
    assert r.returncode == 2 and r.stderr.startswith("error:") and "run directory" in r.stderr
    model = build_model(get_preset("gpt2-tiny", pos="sinusoidal"))
    save_model(model, tmp_path / "sin")
    cases = [(["export", "hf", "--ckpt", tmp_path / "sin", "--out", tmp_path / "o"],
              "no Hugging Face architecture"),
             (["import", "hf", "--src", run_dir, "--out", tmp_path / "x"], "config.json"),
             (["generate", "--ckpt", run_dir, "--prompt", "x" * 400, "--max-new-tokens", "10"], "--truncate"),
             (["generate", "--ckpt", run_dir, "--prompt-file", tmp_path / "none.txt"], "--prompt-file")]
    for args, msg in cases:
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and msg in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


def test_load_dispatches_on_the_architecture(tmp_path, capsys):
    from lmlab.models import build_model, get_preset, save_model

    save_model(build_model(get_preset("lstm-tiny", vocab_size=50)), tmp_path)
    model, tok = load(tmp_path)
    assert type(model).__name__ == "RNNLM" and tok is None
    train_tokenizer("byte", []).save(tmp_path / "tokenizer.json")
    # an RNN LM generates (tests/test_generate_classic.py); this one's 50 ids do not fit the byte tokenizer
    assert main(["generate", "--ckpt", str(tmp_path), "--prompt", "x"]) == 2
    assert "outside the model's vocabulary" in capsys.readouterr().err

