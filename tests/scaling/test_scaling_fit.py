"""Scaling-law fits: recovering known constants from synthetic runs, bad inputs, `lmlab scaling fit`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.scaling.fit import (
    RunTable,
    fit_approach1,
    fit_approach2,
    fit_approach3,
    fit_kaplan,
    flops_per_param_token,
    huber_objective,
    lower_envelope,
    optimum_at,
    read_runs,
)
from lmlab.scaling.laws import HOFFMANN_EXACT, KAPLAN
from tests.markdown_tables import tables

LAW = HOFFMANN_EXACT  # alpha != beta, so a fit that swaps N and D fails the checks below
BUDGETS = np.logspace(18, 21, 6)
TEST_GRID = {"alpha": (0.5,), "beta": (0.5,), "e": (0.5,), "a": (5.0, 15.0), "b": (5.0, 15.0)}


def isoflop_runs(noise: float, seed: int, sizes: int = 9, span: float = 16.0,
                 jitter: bool = False) -> RunTable:
    """Runs along IsoFLOP lines around the law's optimum, losses from the law with lognormal noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in BUDGETS:
        n0 = LAW.optimal(c).n_params
        exps = np.linspace(-1, 1, sizes) if not jitter else rng.uniform(-1, 1, sizes)
        for n in n0 * span**exps:
            d = c / (6 * n)
            rows.append((n, d, LAW.loss(n, d) * np.exp(rng.normal(0, noise)), c))
    n, d, loss, c = map(np.array, zip(*rows))
    return RunTable.from_arrays(n, d, loss, c)


def write_csv(path: Path, table: RunTable, columns=("N", "D", "loss", "C")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in zip(table.N, table.D, table.loss, table.C):
            w.writerow(row[: len(columns)])
    return path


def test_approach3_recovers_the_law_with_intervals_that_cover_it():
    table = isoflop_runs(noise=0.005, seed=0)
    r = fit_approach3(table, grid=TEST_GRID, bootstrap=40, seed=1)
    p = {k: v.value for k, v in r.params.items()}
    assert p["alpha"] == pytest.approx(LAW.alpha, abs=0.02)
    assert p["beta"] == pytest.approx(LAW.beta, abs=0.02)
    assert p["E"] == pytest.approx(LAW.E, abs=0.05)
    assert p["a"] == pytest.approx(LAW.a, abs=0.015)
    for k in ("alpha", "beta", "a"):
        est = r.params[k]
        assert est.lo < est.value < est.hi and est.hi - est.lo < 0.06
        assert est.lo <= getattr(LAW, k) <= est.hi
    opt = optimum_at(r, 1e23)
    assert opt["n_params"] == pytest.approx(LAW.optimal(1e23).n_params, rel=0.15)


def test_approach3_optimum_uses_the_runs_flops_per_parameter_token():
    """Runs whose C counts more than 6ND (attention) put the optimum at C = k N D with their own k."""
    base = isoflop_runs(noise=0.0, seed=0)
    table = RunTable.from_arrays(base.N, base.D, base.loss, 8.0 * base.N * base.D)
    r = fit_approach3(table, grid=TEST_GRID, bootstrap=0)
    assert flops_per_param_token(table) == pytest.approx(8.0)
    assert flops_per_param_token(base) == pytest.approx(6.0)
    opt = optimum_at(r, 1e23)
    want = LAW.optimal(1e23, flops_per_param_token=8.0)
    assert opt["flops_per_param_token"] == pytest.approx(8.0)
    assert opt["n_params"] == pytest.approx(want.n_params, rel=0.05)
    assert 8.0 * opt["n_params"] * opt["n_tokens"] == pytest.approx(1e23)
    assert any("k = 8" in note for note in r.notes)


def test_huber_objective_gradient_matches_finite_differences():
    from scipy.optimize import check_grad

    t = isoflop_runs(noise=0.01, seed=7)
    args = (np.log(t.N), np.log(t.D), np.log(t.loss))
    for theta in ([6.0, 6.0, 0.5, 0.34, 0.28], [5.0, 8.0, 0.7, 0.4, 0.3]):
        err = check_grad(lambda th: huber_objective(th, *args)[0], lambda th: huber_objective(th, *args)[1],
                         np.array(theta), epsilon=1e-7)
        scale = np.linalg.norm(huber_objective(np.array(theta), *args)[1])
        assert err < 1e-4 * max(scale, 1.0)


def test_approach3_is_exact_on_noiseless_data():
    r = fit_approach3(isoflop_runs(noise=0.0, seed=0), grid=TEST_GRID, bootstrap=0)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert r.params[k].value == pytest.approx(getattr(LAW, k), rel=1e-3)
    assert r.params["alpha"].lo is None  # no bootstrap, no interval


def test_approach3_reports_non_convergence_instead_of_numbers():
    with pytest.raises(LmlabError, match="did not converge"):
        fit_approach3(isoflop_runs(noise=0.005, seed=0), grid=TEST_GRID, bootstrap=0, maxiter=3)


def test_approach2_recovers_the_allocation_exponents():
    r = fit_approach2(isoflop_runs(noise=0.003, seed=2, jitter=True, sizes=12))
    assert r.params["a"].value == pytest.approx(LAW.a, abs=0.02)
    assert r.params["b"].value == pytest.approx(LAW.b, abs=0.02)
    assert r.params["a"].lo <= LAW.a <= r.params["a"].hi
    valleys = r.extras["valleys"]
    assert len(valleys) == len(BUDGETS)
    for v in valleys:
        assert v.n_opt == pytest.approx(LAW.optimal(v.compute).n_params, rel=0.15)


def test_approach1_envelope_gives_the_allocation_roughly():
    table = isoflop_runs(noise=0.002, seed=3, jitter=True, sizes=16)
    r = fit_approach1(table)
    assert len(r.extras["envelope"]) >= len(BUDGETS)
    assert r.params["a"].value == pytest.approx(LAW.a, abs=0.08)
    # C = 6ND on every envelope run, so the two exponents add up to 1
    assert r.params["a"].value + r.params["b"].value == pytest.approx(1.0, abs=1e-9)


def test_lower_envelope():
    x = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([5.0, 6.0, 4.0, 4.5, 3.0, 3.0])
    assert lower_envelope(x, y).tolist() == [0, 2, 4]


def test_kaplan_recovers_eq_1_5_constants():
    rng = np.random.default_rng(4)
    n, d = (a.ravel() for a in np.meshgrid(np.logspace(6, 9, 7), np.logspace(8, 11, 7)))
    table = RunTable.from_arrays(n, d, KAPLAN.loss(n, d) * np.exp(rng.normal(0, 0.003, n.size)))
    r = fit_kaplan(table)
    assert r.params["nd_alpha_N"].value == pytest.approx(0.076, abs=0.003)
    assert r.params["nd_alpha_D"].value == pytest.approx(0.103, abs=0.004)
    assert r.params["nd_N_c"].value == pytest.approx(6.4e13, rel=0.3)
    assert r.params["nd_alpha_N"].lo <= 0.076 <= r.params["nd_alpha_N"].hi
    # the largest runs are data-rich, so the L(N) envelope is close to Kaplan's L(N)
    assert r.params["alpha_N"].value == pytest.approx(0.076, abs=0.01)


def test_plots_and_reports_for_envelope_and_kaplan_fits(tmp_path):
    from lmlab.scaling.plots import write_plots
    from lmlab.scaling.report import write_fit_report

    table = isoflop_runs(noise=0.003, seed=8, jitter=True, sizes=8)
    a1, kaplan = fit_approach1(table), fit_kaplan(table)
    paths = write_plots(a1, tmp_path / "a1")
    paths += write_plots(kaplan, tmp_path / "k")
    assert [p.name for p in paths] == ["frontier.png", "allocation.png", "frontier.png", "contours.png",
                                       "kaplan.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000 for p in paths)
    # report.md: Kaplan's laws have no allocation and say so; approach 1's comes from its power laws
    text = write_fit_report(tmp_path / "k", kaplan, table, None, paths[2:], {}).read_text()
    assert "give no allocation" in text and "](kaplan.png)" in text
    assert {r["constant"] for r in tables(text)["constant"]} == set(kaplan.params)
    optimum = optimum_at(a1, 1e21)
    text = write_fit_report(tmp_path / "a1", a1, table, optimum, paths[:2], {}).read_text()
    allocation = {r["quantity"]: r["value"] for r in tables(text)["quantity"]}
    assert f"({optimum['n_tokens']:,.0f})" in allocation["D_opt (tokens)"]


def test_read_runs_defaults_compute_and_ignores_case_and_extra_columns(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("name,n,D,Loss,c\na,1e6,2e7,4.0,\nb,2e6,1e7,3.9,1.5e14\n\n")
    t = read_runs(tmp_path)  # a folder means folder/runs.csv
    assert t.C.tolist() == [6 * 1e6 * 2e7, 1.5e14]
    assert t.loss.tolist() == [4.0, 3.9]
    path.write_text("N,N_nonembed,D,loss,val_loss\n1e6,4e5,2e7,4.0,4.2\n")
    t = read_runs(path, n_column="n_nonembed", loss_column="val_loss")
    assert (t.N[0], t.loss[0]) == (4e5, 4.2)
    with pytest.raises(LmlabError, match="lacks column.*val"):
        read_runs(path, loss_column="val")


@pytest.mark.parametrize("text,msg", [
    ("N,D\n1e6,2e7\n", "lacks column"),
    ("N,D,loss\n1e6,abc,4\n", "not a number"),
    ("N,D,loss\n-1e6,2e7,4\n", "positive"),
    ("N,D,loss\n", "no runs"),
])
def test_bad_tables(tmp_path, text, msg):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(LmlabError, match=msg):
        read_runs(path)


def test_too_few_points_and_missing_valleys():
    table = isoflop_runs(noise=0.0, seed=0)
    with pytest.raises(LmlabError, match="at least 6 points"):
        fit_approach3(table.subset(np.arange(4)), grid=TEST_GRID, bootstrap=0)
    with pytest.raises(LmlabError, match="at least 5 points"):
        fit_kaplan(table.subset(np.arange(4)))
    # only the small half of each IsoFLOP profile: loss falls monotonically, no valley anywhere
    small = table.subset(np.concatenate([np.arange(i * 9, i * 9 + 3) for i in range(len(BUDGETS))]))
    with pytest.raises(LmlabError, match="Approach 2 found 0 IsoFLOP"):
        fit_approach2(small)
    with pytest.raises(LmlabError, match="does not exist"):
        read_runs(Path("/nonexistent/sweep"))


def test_fit_cli_approach2_writes_json_plots_and_config(tmp_path, capsys):
    csv_path = write_csv(tmp_path / "runs.csv", isoflop_runs(noise=0.003, seed=5, jitter=True, sizes=10))
    out = tmp_path / "fit"
    assert main(["scaling", "fit", str(csv_path), "--approach", "2", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["approach"] == "2" and res["n_runs"] == 60
    assert res["params"]["a"]["value"] == pytest.approx(LAW.a, abs=0.03)
    assert len(res["params"]["a"]["ci95"]) == 2
    assert json.loads((out / "fit.json").read_text())["params"] == res["params"]
    assert (out / "config.yaml").is_file()
    assert sorted(Path(p).name for p in res["plots"]) == ["allocation.png", "frontier.png", "isoflops.png"]
    for p in res["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # report.md: the fitted constants and the allocation as --json has them, the plots by relative path
    report = (out / "report.md").read_text()
    found = tables(report)
    constants = {r["constant"].replace("\\", ""): r for r in found["constant"]}
    assert set(constants) == set(res["params"])
    for name, est in res["params"].items():
        assert float(constants[name]["value"]) == pytest.approx(est["value"], rel=1e-3)
        lo, hi = (float(x) for x in constants[name]["95% interval"].strip("[]").split(", "))
        assert (lo, hi) == pytest.approx(tuple(est["ci95"]), rel=1e-3)
    allocation = {r["quantity"]: r["value"] for r in found["quantity"]}
    optimum = res["optimum_at_max_compute"]
    assert float(allocation["tokens per parameter"]) == pytest.approx(optimum["tokens_per_param"], abs=0.01)
    assert f"({optimum['n_params']:,.0f})" in allocation["N_opt (parameters)"]
    assert len(found["N (parameters)"]) == 60
    for p in res["plots"]:
        assert f"]({Path(p).name})" in report


def test_fit_cli_approach3_text_and_default_out(tmp_path, capsys):
    write_csv(tmp_path / "runs.csv", isoflop_runs(noise=0.005, seed=6), columns=("N", "D", "loss"))
    assert main(["scaling", "fit", str(tmp_path), "--bootstrap", "20"]) == 0
    text = capsys.readouterr().out
    assert "Approach 3" in text and "95% CI" in text and "alpha" in text
    out = tmp_path / "fit-3"
    assert {p.name for p in out.iterdir()} >= {"fit.json", "config.yaml", "contours.png", "isoflops.png",
                                               "report.md"}
    fit = json.loads((out / "fit.json").read_text())
    allocation = {r["quantity"]: r["value"] for r in tables((out / "report.md").read_text())["quantity"]}
    assert float(allocation["predicted loss (nats/token)"]) == pytest.approx(
        fit["optimum_at_max_compute"]["loss"], abs=1e-4)


def test_fit_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("params,tokens\n1,2\n")
    assert main(["scaling", "fit", str(bad)]) == 2
    assert "lacks column(s) N, D, loss" in capsys.readouterr().err
    assert main(["scaling", "fit", str(bad), "--approach", "4"]) == 2
    assert "--approach" in capsys.readouterr().err
    assert not (tmp_path / "bad-fit-3").exists()
