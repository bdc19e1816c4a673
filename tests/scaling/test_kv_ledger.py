"""The KV-cache ledger: DeepSeek-V2 Table 1's formulas by hand, measured cache bytes equal to them for
every attention kind, the comparison configs, and ``lmlab kv-cache`` end to end with its refusals."""

from __future__ import annotations

import json

import pytest
import yaml

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.decoder import Decoder, DecoderConfig
from lmlab.models.registry import get_preset, save_model
from lmlab.scaling import kv_ledger as kl

GIB = 2**30


def test_llama2_7b_at_32k_by_hand():
    """DeepSeek-V2 Table 1 at LLaMA-2-7B's shape (l=32, n_h=32, d_h=128), 32K tokens, bf16."""
    cfg = get_preset("llama2-7b", block_size=32768)
    ledger = kl.kv_ledger(cfg, 32768, batch=1, dtype="bf16")
    rows = {r.kind: r for r in ledger.rows}
    assert [r.kind for r in ledger.rows] == ["mha", "gqa", "mqa", "mla"]
    assert ledger.own.kind == "mha"
    mha, gqa, mqa, mla = rows["mha"], rows["gqa"], rows["mqa"], rows["mla"]
    assert mha.terms == {"n_h": 32, "d_h": 128, "l": 32}
    assert mha.elements_per_token == 2 * 32 * 128 * 32 == 262_144
    assert mha.bytes_per_token == 524_288
    assert mha.elements_total == 262_144 * 32768
    assert mha.bytes_total == 16 * GIB
    assert gqa.terms == {"n_g": 8, "d_h": 128, "l": 32}  # the largest divisor of 32 up to 8
    assert gqa.elements_per_token == 2 * 8 * 128 * 32 and gqa.bytes_total == 4 * GIB
    assert mqa.elements_per_token == 2 * 128 * 32 and mqa.bytes_total == GIB // 2
    assert mla.terms == {"d_c": 512, "d_h^R": 64, "l": 32}  # DeepSeek-V2: d_c = 4 d_h, d_h^R = d_h / 2
    assert mla.elements_per_token == (512 + 64) * 32 == 18_432
    assert mla.bytes_total == 18_432 * 32768 * 2 == 1_207_959_552
    assert ledger.ratio_to_mha(mla) == pytest.approx(576 / 8192)
    assert mla.substituted == "(512 + 64) x 32" and gqa.substituted == "2 x 8 x 128 x 32"
    assert mla.formula == "(d_c + d_h^R) l" and mqa.formula == "2 d_h l"


def test_deepseek_v2_lite_and_fp32_batch():
    """An MLA model's own row uses its own d_c and d_h^R; batch and dtype scale the totals."""
    cfg = get_preset("deepseek-v2-lite")
    ledger = kl.kv_ledger(cfg, 4096, batch=3, dtype="fp32")
    assert ledger.own.kind == "mla"
    assert ledger.own.elements_per_token == (512 + 64) * 27 == 15_552
    assert ledger.own.bytes_total == 15_552 * 4096 * 3 * 4
    mha = next(r for r in ledger.rows if r.kind == "mha")
    assert mha.terms == {"n_h": 16, "d_h": 128, "l": 27}
    assert mha.bytes_per_token == 2 * 16 * 128 * 27 * 4


def test_gqa_groups_and_comparison_configs():
    cfg = get_preset("llama-small")  # 8 heads, 4 KV heads: GQA
    ledger = kl.kv_ledger(cfg, 512)
    assert [(r.kind, r.own) for r in ledger.rows] == [("mha", False), ("gqa", True), ("mqa", False),
                                                       ("mla", False)]
    assert ledger.own.terms["n_g"] == 4
    other = kl.kv_ledger(cfg, 512, gqa_groups=2)  # a second GQA row beside the model's own
    assert [(r.kind, r.own, r.terms.get("n_g")) for r in other.rows if r.kind == "gqa"] == [
        ("gqa", True, 4), ("gqa", False, 2)]
    for kind in kl.KINDS:
        changed = kl.kind_config(cfg, kind, 2)
        assert kl.attention_kind(changed) == kind
        assert (changed.d_model, changed.n_layer, changed.n_head, changed.head_dim) == (256, 6, 8, 32)
    mla = kl.kind_config(get_preset("gpt2-tiny"), "mla")
    assert mla.pos == "rope" and (mla.kv_lora_rank, mla.qk_rope_head_dim) == (64, 8)
    assert kl.default_gqa_groups(32) == 8 and kl.default_gqa_groups(12) == 6
    assert kl.default_gqa_groups(4) == 2 and kl.default_gqa_groups(2) is None
    assert kl.mla_ratios(128) == (512, 64) and kl.mla_ratios(6) == (24, 2)
    two_heads = get_preset("gpt2-tiny", n_head=2)
    assert [r.kind for r in kl.kv_ledger(two_heads, 8).rows] == ["mha", "mqa", "mla"]  # nothing to group
    with pytest.raises(LmlabError, match="must divide n_head=8"):
        kl.kind_config(cfg, "gqa", 3)
    with pytest.raises(LmlabError, match="GQA needs its number of KV groups"):
        kl.kind_config(cfg, "gqa")
    with pytest.raises(LmlabError, match="unknown attention kind 'mqa2'"):
        kl.kind_config(cfg, "mqa2")


@pytest.mark.parametrize("preset,overrides,kind", [
    ("gpt2-tiny", {}, "mha"),
    ("llama-tiny", {}, "gqa"),
    ("llama-tiny", {"n_kv_heads": 1}, "mqa"),
    ("deepseek-tiny", {}, "mla"),
])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_measured_bytes_equal_the_formula(preset, overrides, kind, dtype):
    """model.new_kv_cache(batch, context, dtype).nbytes == the formula, for the model's own kind and
    every comparison kind (each built as a real model config)."""
    cfg = get_preset(preset, **overrides)
    ledger = kl.measure_ledger(kl.kv_ledger(cfg, 37, batch=3, dtype=dtype))
    assert ledger.own.kind == kind and ledger.measured
    assert {r.kind for r in ledger.rows} == set(kl.KINDS)
    for r in ledger.rows:
        assert r.measured_bytes == r.bytes_total > 0
        assert r.as_dict()["measured_equals_formula"] is True
    # the same cache a real (not meta) model makes
    own = Decoder(cfg).new_kv_cache(3, 37, dtype=kl.DTYPES[dtype])
    assert own.nbytes == ledger.own.bytes_total == kl.measure_kv_bytes(cfg, 3, 37, dtype)


def test_measure_refuses_more_than_the_memory_limit():
    ledger = kl.kv_ledger(get_preset("llama-tiny"), 256, batch=4)  # MHA: 256 elements x 1024 tokens x 2 B
    with pytest.raises(LmlabError, match="would allocate 512 KiB for the MHA cache"):
        kl.measure_ledger(ledger, memory_limit=100_000)


def test_context_limits_and_bad_numbers():
    cases = [(get_preset("gpt2-tiny"), 129, "exceeds the 128 positions of the model's learned position"),
             (get_preset("gpt2-tiny", pos="sinusoidal"), 200, "sinusoidal position table"),
             (get_preset("llama-tiny"), 257, "context of 256 tokens (block_size, RoPE without rope_scaling)"),
             (get_preset("llama-1b"), 131073, "RoPE already scaled by rope_scaling (factor 32.0)"),
             (get_preset("llama-tiny"), 0, "--context must be a positive")]
    for cfg, context, msg in cases:
        with pytest.raises(LmlabError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            kl.kv_ledger(cfg, context)
    assert kl.kv_ledger(get_preset("gpt2-tiny"), 128).context == 128  # the limit itself is fine
    with pytest.raises(LmlabError, match="--batch must be a positive"):
        kl.kv_ledger(get_preset("llama-tiny"), 8, batch=0)
    with pytest.raises(LmlabError, match="--dtype 'int8'"):
        kl.kv_ledger(get_preset("llama-tiny"), 8, dtype="int8")
    infini = DecoderConfig(attn="infini", pos="rope", segment_len=64, block_size=256, n_layer=1, n_head=2,
                           d_model=32)
    with pytest.raises(LmlabError, match="attn=infini keeps a fixed-size state"):
        kl.kv_ledger(infini, 8)


def test_cli_end_to_end_json_and_out(cli, tmp_path):
    out = tmp_path / "ledger"
    r = cli("kv-cache", "--model", "llama-tiny", "--context", "64", "--batch", "2", "--dtype", "fp32",
            "--measure", "--json", "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["model"] == "llama-tiny" and res["context"] == 64 and res["batch"] == 2
    assert res["bytes_per_element"] == 4
    by_kind = {k["kind"]: k for k in res["kinds"]}
    assert by_kind["gqa"]["own"] and by_kind["gqa"]["elements_per_token"] == 2 * 2 * 16 * 2
    assert by_kind["mla"]["elements_per_token"] == (64 + 8) * 2
    for k in res["kinds"]:
        assert k["measured_bytes"] == k["bytes_total"] == k["elements_per_token"] * 64 * 2 * 4
    assert json.loads((out / "kv_cache.json").read_text()) == res
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == "llama-tiny" and saved["context"] == 64 and saved["measure"] is True


def test_cli_text_run_folder_and_overrides(tmp_path, capsys):
    cfg = get_preset("deepseek-tiny", vocab_size=50)
    save_model(Decoder(cfg), tmp_path / "run")
    assert main(["kv-cache", "--model", str(tmp_path / "run"), "--context", "256", "--measure"]) == 0
    text = capsys.readouterr().out
    assert "MLA (own)  (d_c + d_h^R) l  (32 + 8) x 2" in text
    assert "equal to the formula for every kind" in text
    assert main(["kv-cache", "--model", "llama2-7b", "--model-args", "block_size=32768", "--context", "32768",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kinds"][0]["bytes_total"] == 16 * GIB and "measured_bytes" not in res["kinds"][0]


def test_cli_reports_a_mismatch(monkeypatch, capsys):
    monkeypatch.setattr(kl, "measure_kv_bytes", lambda cfg, batch, context, dtype: 1)
    assert main(["kv-cache", "--model", "gpt2-tiny", "--context", "8", "--measure"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_cli_refusals(tmp_path, capsys):
    save_model(Decoder(get_preset("gpt2-tiny", vocab_size=50)), tmp_path / "run")
    cases = [([], "give --model"),
             (["--model", "llama-tiny"], "give --context"),
             (["--model", "gpt5", "--context", "8"], "neither a decoder preset"),
             (["--model", "nplm-tiny", "--context", "8"], "the KV-cache formulas are for decoder presets"),
             (["--model", "llama-tiny", "--context", "0"], "--context must be a positive"),
             (["--model", "llama-tiny", "--context", "-5"], "--context must be a positive"),
             (["--model", "llama-tiny", "--context", "8", "--batch", "0"], "--batch must be a positive"),
             (["--model", "llama-tiny", "--context", "8", "--gqa-groups", "3"], "--gqa-groups 3 must divide"),
             (["--model", "llama-tiny", "--context", "4096"], "exceeds the model's context of 256 tokens"),
             (["--model", str(tmp_path / "run"), "--context", "129"], "exceeds the 128 positions")]
    for extra, msg in cases:
        assert main(["kv-cache", *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
