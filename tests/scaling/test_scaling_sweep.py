"""`lmlab scaling sweep`: IsoFLOP grid arithmetic, a tiny real sweep, skipping and resuming, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from lmlab.cli import main
from lmlab.config import load_yaml
from lmlab.errors import LmlabError
from lmlab.models import Decoder, load_model
from lmlab.scaling.flops import count_params, train_flops_per_token
from lmlab.scaling.sweep import COLUMNS, SweepConfig, budget_tag, family_config, plan_grid, pretrain_config
from tests.markdown_tables import tables

# 2 budgets x 2 sizes of a llama-style family with 8-wide heads: about 110 training steps in all.
TINY = ["--budgets", "2e8,6e8", "--sizes", "16,32", "--head-dim", "8", "--block-size", "32",
        "--batch-size", "4", "--eval-tokens", "1024", "--precision", "fp32", "--device", "cpu",
        "--no-progress"]


@pytest.fixture(autouse=True)
def _no_flops_probe(monkeypatch):
    monkeypatch.setenv("LMLAB_PEAK_FLOPS", "1e11")  # no matmul timing for the MFU of each run


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_family_shapes_and_names():
    cfg = family_config("llama", 96, head_dim=16, aspect=32, vocab_size=64, block_size=32)
    assert (cfg.n_layer, cfg.n_head, cfg.n_kv_heads, cfg.d_ff) == (3, 6, 6, 256)  # int(8*96/3) = 256
    assert (cfg.norm, cfg.mlp, cfg.pos, cfg.tie_embeddings) == ("rmsnorm", "swiglu", "rope", True)
    assert count_params(cfg).total == Decoder(cfg).num_params()
    g = family_config("gpt2", 48, head_dim=16, aspect=32, vocab_size=64, block_size=32)
    assert (g.n_layer, g.n_head, g.d_ff, g.pos, g.bias) == (2, 3, 192, "learned", True)  # 48/32 = 1.5 -> 2
    assert family_config("llama", 16, head_dim=8, aspect=32, vocab_size=64, block_size=32).n_layer == 1
    assert [budget_tag(b) for b in (1e12, 3e12, 3.16e12, 2e8, 1.5e20)] == ["1e12", "3e12", "3.16e12", "2e8",
                                                                         "1.5e20"]


def test_dry_run_grid_arithmetic(capsys):
    args = ["scaling", "sweep", "--vocab-size", "64", "--budgets", "1e9,3e9", "--sizes", "xs,64,2xl",
            "--block-size", "32", "--batch-size", "4", "--dry-run"]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    per_step = 4 * 32
    assert res["tokens_per_step"] == per_step
    planned = {r["name"]: r for r in res["runs"]}
    skipped = {s["name"] for s in res["skipped"]}
    for budget in (1e9, 3e9):
        for d in (32, 64, 192):
            name = f"C{budget_tag(budget)}-d{d}"
            cfg = family_config("llama", d, head_dim=16, aspect=32, vocab_size=64, block_size=32)
            f = train_flops_per_token(cfg, 32, "chinchilla")
            if budget < f * per_step:  # not even one step: left out, listed
                assert name in skipped and name not in planned
                continue
            r = planned[name]
            assert r["params"] == count_params(cfg).total
            assert r["params_non_embedding"] == count_params(cfg).non_embedding
            assert r["flops_per_token"] == f
            assert r["steps"] == math.ceil(budget / f / per_step)
            assert r["tokens"] == r["steps"] * per_step
            assert r["compute"] == pytest.approx(f * r["tokens"])
            assert budget <= r["compute"] < budget + f * per_step  # at most one step over the budget
            assert r["compute_6nd"] == 6 * r["params"] * r["tokens"]
    assert skipped == {"C1e9-d192"}  # d192 (6 layers) costs ~16.5M FLOPs/token: 1e9 buys < 128 tokens
    assert len(planned) == 5
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "C3e9-d192" in text and "skipped C1e9-d192" in text and "steps" in text


def test_dry_run_other_flop_counts_change_tokens():
    kw = dict(vocab_size=64, block_size=32, batch_size=4)
    by = {m: plan_grid([1e10], ["32"], flops=m, **kw).runs[0] for m in ("6N", "kaplan", "chinchilla", "palm")}
    assert by["6N"].flops_per_token == 6 * by["6N"].params_non_embedding
    assert by["6N"].tokens > by["kaplan"].tokens > by["chinchilla"].tokens


def test_bad_grid_input(tmp_path, capsys):
    kw = dict(vocab_size=64, block_size=32, batch_size=4)
    with pytest.raises(LmlabError, match="positive numbers of FLOPs"):
        plan_grid([1e9, 0.0], ["32"], **kw)
    with pytest.raises(LmlabError, match="positive numbers of FLOPs"):
        plan_grid([-1e9], ["32"], **kw)
    with pytest.raises(LmlabError, match="give --budgets"):
        plan_grid([], ["32"], **kw)
    with pytest.raises(LmlabError, match="not a multiple of --head-dim 16"):
        plan_grid([1e9], ["40"], **kw)
    with pytest.raises(LmlabError, match="neither a d_model value"):
        plan_grid([1e9], ["huge"], **kw)
    with pytest.raises(LmlabError, match="same 3 significant digits"):
        plan_grid([1e9, 1.0001e9], ["32"], **kw)
    with pytest.raises(LmlabError) as e:
        plan_grid([1e5, 1e9], ["32", "64"], **kw)
    cfg = family_config("llama", 32, head_dim=16, aspect=32, vocab_size=64, block_size=32)
    smallest = train_flops_per_token(cfg, 32) * 4 * 32
    assert "too small for the smallest model (d_model 32" in str(e.value)
    assert f"the smallest budget that works is {smallest:.4g} FLOPs" in str(e.value)
    assert plan_grid([smallest], ["32", "64"], **kw).runs[0].steps == 1  # and that budget does work

    base = ["scaling", "sweep", "--budgets", "1e9"]
    cases = [([*base, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "s")], "does not exist"),
             ([*base, "--dry-run"], "needs --vocab-size"),
             ([*base], "needs --data DIR"),
             ([*base, "--vocab-size", "64", "--dry-run", "--warmup-fraction", "1.5"],
              "--warmup-fraction is a fraction"),
             (["scaling", "sweep", "--budgets", "0", "--vocab-size", "64", "--dry-run"], "positive numbers")]
    for args, msg in cases:
        assert main(args) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def sweep(char_data, tmp_path_factory, one_torch_thread):
    """A real 2 x 2 sweep on char data; returns (sweep folder, seconds it took)."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    mp = pytest.MonkeyPatch()
    mp.setenv("LMLAB_PEAK_FLOPS", "1e11")
    try:
        t0 = time.perf_counter()
        assert main(["scaling", "sweep", "--data", str(char_data.dir), "--out", str(out), *TINY]) == 0
        seconds = time.perf_counter() - t0
    finally:
        mp.undo()
    return out, seconds


def test_sweep_trains_the_grid_and_writes_runs_csv(sweep, char_data):
    out, _ = sweep
    rows = read_csv(out / "runs.csv")
    assert list(rows[0]) == COLUMNS
    assert [r["name"] for r in rows] == ["C2e8-d16", "C2e8-d32", "C6e8-d16", "C6e8-d32"]
    saved = load_yaml(out / "config.yaml")
    assert saved["vocab_size"] == char_data.vocab_size and saved["budgets"] == [2e8, 6e8]
    for r in rows:
        model = load_model(out / "runs" / r["name"])
        assert int(r["N"]) == int(r["params_total"]) == model.num_params()
        assert int(r["N_nonembedding"]) == model.num_params(non_embedding=True)
        f = train_flops_per_token(model.config, 32, "chinchilla")
        assert float(r["flops_per_token"]) == f
        assert int(r["D"]) == int(r["steps"]) * 4 * 32
        assert float(r["C"]) == pytest.approx(f * int(r["D"]))
        assert float(r["budget"]) <= float(r["C"]) < float(r["budget"]) + f * 128
        assert float(r["C_6ND"]) == 6 * int(r["N"]) * int(r["D"])
        assert int(r["eval_tokens"]) == 1024  # 32 windows of 32 predictions, the same for every run
        assert 0 < float(r["loss"]) < math.log(char_data.vocab_size) and float(r["val_bpb"]) > 0
        assert float(r["seconds"]) > 0
        steps = [json.loads(line)["step"] for line in (out / "runs" / r["name"] / "metrics.jsonl")
                 .read_text().splitlines()]
        assert steps[-1] <= int(r["steps"])
    by = {r["name"]: float(r["loss"]) for r in rows}
    assert by["C6e8-d16"] < by["C2e8-d16"] and by["C6e8-d32"] < by["C2e8-d32"]  # more compute, lower loss
    report = (out / "report.md").read_text()  # the table of runs.csv, the settings and the fit command
    shown = tables(report)["run"]
    assert [r["run"].strip("`") for r in shown] == [r["name"] for r in rows]
    for s, r in zip(shown, rows):
        assert int(s["N"].replace(",", "")) == int(r["N"]) and int(s["D"].replace(",", "")) == int(r["D"])
        assert float(s["val loss"]) == pytest.approx(float(r["loss"]), abs=1e-4)
        assert float(s["bits/byte"]) == pytest.approx(float(r["val_bpb"]), abs=1e-4)
    assert "- budgets (FLOPs): `2e+08, 6e+08`" in report and f"lmlab scaling fit {out}" in report


def test_rerun_skips_finished_runs(sweep, char_data, capsys):
    out, _ = sweep
    before = (out / "runs.csv").read_text()
    weights = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/model.safetensors")}
    assert main(["scaling", "sweep", "--data", str(char_data.dir), "--out", str(out), *TINY, "--json"]) == 0
    assert len(weights) == 4 and weights == {p: p.stat().st_mtime_ns for p in weights}  # nothing retrained
    res = json.loads(capsys.readouterr().out)
    assert res["trained"] == [] and len(res["done_before"]) == 4 and len(res["runs"]) == 4
    assert (out / "runs.csv").read_text() == before
    # other training settings in the same folder are refused, not mixed into its table
    assert main(["scaling", "sweep", "--data", str(char_data.dir), "--out", str(out),
                 *TINY, "--lr", "1e-2"]) == 2
    assert "holds a sweep with other settings (lr 0.003 there vs 0.01 now)" in capsys.readouterr().err


def test_fit_reads_the_sweep(sweep, capsys):
    """Approach 1 needs 3 runs on the loss-vs-compute envelope: fit when there are, a clear refusal if not."""
    from lmlab.scaling.fit import lower_envelope, read_runs

    out, _ = sweep
    table = read_runs(out)
    assert len(table) == 4
    on_envelope = len(lower_envelope(table.C, table.loss))
    rc = main(["scaling", "fit", str(out), "--approach", "1", "--no-plots", "--out", str(out / "fit1"),
               "--json"])
    captured = capsys.readouterr()
    if on_envelope >= 3:
        assert rc == 0, captured.err
        res = json.loads(captured.out)
        assert res["n_runs"] == 4 and {"a", "b", "k_N", "k_D"} <= set(res["params"])
    else:
        assert rc == 2 and "needs at least 3 points" in captured.err
    # too few runs for the parametric fit and no 3-size IsoFLOP profiles: refused with the reason
    assert main(["scaling", "fit", str(out), "--approach", "3", "--no-plots", "--out", str(out / "f3")]) == 2
    assert "needs at least 6 points" in capsys.readouterr().err
    assert main(["scaling", "fit", str(out), "--approach", "2", "--no-plots", "--out", str(out / "f2")]) == 2
    assert "need 3 for a parabola" in capsys.readouterr().err


def test_interrupted_run_is_resumed_and_matches(sweep, char_data, tmp_path, capsys):
    """A run stopped halfway is resumed by the rerun, and ends where the uninterrupted one did."""
    from lmlab.train import checkpoint as ckpt
    from lmlab.train.pretrain import pretrain

    ref = {r["name"]: r for r in read_csv(sweep[0] / "runs.csv")}
    out = tmp_path / "sw"
    args = ["scaling", "sweep", "--data", str(char_data.dir), "--out", str(out), *TINY]
    args[args.index("--budgets") + 1] = "6e8"
    args[args.index("--sizes") + 1] = "16"
    cfg = SweepConfig(data=char_data.dir, out=out, budgets=[6e8], sizes=["16"], head_dim=8, block_size=32,
                      batch_size=4, eval_tokens=1024, precision="fp32", device="cpu", progress=False)
    run = plan_grid([6e8], ["16"], head_dim=8, vocab_size=char_data.vocab_size, block_size=32,
                    batch_size=4).runs[0]
    half = run.steps // 2
    pcfg = pretrain_config(cfg, run, vocab_size=char_data.vocab_size, resume=False)
    assert not pretrain(dataclasses.replace(pcfg, stop_at_step=half, json=False)).interrupted
    capsys.readouterr()
    assert ckpt.latest_step(out / "runs" / run.name) == half

    assert main(args) == 0
    assert f"resumed from step {half}" in capsys.readouterr().out
    row = read_csv(out / "runs.csv")[0]
    assert ckpt.latest_step(out / "runs" / run.name) == run.steps
    assert float(row["loss"]) == pytest.approx(float(ref[run.name]["loss"]), abs=1e-5)

    # finished training but no row (e.g. killed while scoring): scored again, not retrained
    (out / "runs.csv").write_text(",".join(COLUMNS) + "\n")
    assert main(args) == 0
    assert "evaluated (training had finished)" in capsys.readouterr().out
    again = read_csv(out / "runs.csv")
    assert len(again) == 1 and again[0]["loss"] == row["loss"]
    assert np.isclose(float(again[0]["C"]), float(row["C"]))
