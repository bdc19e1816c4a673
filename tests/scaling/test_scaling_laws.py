"""Published scaling laws: constants, closed-form optimum and the `lmlab scaling plan` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.scaling.laws import (
    EPOCH,
    HOFFMANN,
    HOFFMANN_EXACT,
    KAPLAN,
    PF_DAY_FLOPS,
    compute_from_gpu_hours,
    plan,
)

GOPHER_FLOPS = 5.76e23  # Hoffmann et al. 2022, Table 3 / sec. 4: Gopher's and Chinchilla's budget


def test_unrounded_chinchilla_constants_give_the_papers_40b_for_gopher_budget():
    a = plan(GOPHER_FLOPS, "hoffmann-exact")
    assert a.n_params == pytest.approx(40.36e9, rel=2e-3)  # the paper's "40B" for Approach 3
    assert a.n_tokens == pytest.approx(2.379e12, rel=2e-3)
    assert round(HOFFMANN_EXACT.a, 2) == 0.46 and round(HOFFMANN_EXACT.b, 2) == 0.54  # Table 2, Approach 3
    assert HOFFMANN_EXACT.E == pytest.approx(1.6934, abs=1e-4)
    assert HOFFMANN_EXACT.A == pytest.approx(406.40, abs=0.01)
    assert HOFFMANN_EXACT.B == pytest.approx(410.72, abs=0.01)


def test_rounded_constants_are_biased_as_besiroglu_et_al_report():
    rounded = plan(GOPHER_FLOPS, "hoffmann")
    assert rounded.n_params == pytest.approx(32.19e9, rel=2e-3)
    assert HOFFMANN.a == pytest.approx(0.28 / 0.62)
    # rounding beta 0.2849 -> 0.28 raises the data term by about 13% at D = 1e11
    ratio = (HOFFMANN.B / 1e11**HOFFMANN.beta) / (HOFFMANN_EXACT.B / 1e11**HOFFMANN_EXACT.beta)
    assert ratio == pytest.approx(1.13, abs=0.01)


def test_epoch_refit_gives_about_20_tokens_per_parameter():
    e = plan(GOPHER_FLOPS, "epoch")
    assert EPOCH.a == pytest.approx(0.5126, abs=1e-4)
    assert 17 < e.tokens_per_param < 21
    assert e.n_params == pytest.approx(72.25e9, rel=2e-3)


@pytest.mark.parametrize("law", [HOFFMANN, HOFFMANN_EXACT, EPOCH])
@pytest.mark.parametrize("compute", [1e18, 1e21, GOPHER_FLOPS, 1e26])
def test_closed_form_optimum_minimises_the_law_on_the_isoflop_line(law, compute):
    opt = law.optimal(compute)
    assert 6 * opt.n_params * opt.n_tokens == pytest.approx(compute, rel=1e-12)
    res = minimize_scalar(lambda ln: law.loss(math.exp(ln), compute / (6 * math.exp(ln))),
                          bracket=(10, 30), tol=1e-12)
    assert math.log(opt.n_params) == pytest.approx(res.x, abs=1e-4)
    assert opt.loss == pytest.approx(res.fun, rel=1e-10)
    # moving off the optimum along the IsoFLOP line costs loss
    for f in (0.5, 2.0):
        n = opt.n_params * f
        assert law.loss(n, compute / (6 * n)) > opt.loss


def test_kaplan_constants_and_allocation():
    one_pf_day = plan(PF_DAY_FLOPS, "kaplan")
    assert one_pf_day.n_params == pytest.approx(1.3e9)  # Table 6: N_opt = 1.3e9 C_min^0.73
    assert one_pf_day.n_tokens == pytest.approx(2e10)  # Table 6: D_opt = 2e10 C_min^0.27
    ten_x = plan(10 * PF_DAY_FLOPS, "kaplan")
    assert ten_x.n_params / one_pf_day.n_params == pytest.approx(10**0.73)
    assert KAPLAN.loss_n(8.8e13) == pytest.approx(1.0)
    assert KAPLAN.loss_d(5.4e13 / 2) == pytest.approx(2**0.095)
    assert KAPLAN.loss_c(3.1e8 * PF_DAY_FLOPS) == pytest.approx(1.0)
    # eq. 1.5 reduces to its L(N) (Table 2 constants) when data is unlimited
    n = np.array([1e6, 1e8, 1e10])
    assert KAPLAN.loss(n, 1e30) == pytest.approx((6.4e13 / n) ** 0.076, rel=1e-9)
    assert np.all(KAPLAN.loss(1e8, np.array([1e9, 1e10])) > KAPLAN.loss(1e8, 1e30))


def test_gpu_hours_to_flops():
    assert compute_from_gpu_hours(1000, 1e15, 0.4) == pytest.approx(1.44e21)
    for bad in [(0, 1e15, 0.4), (10, -1, 0.4), (10, 1e15, 0), (10, 1e15, 1.5)]:
        with pytest.raises(LmlabError):
            compute_from_gpu_hours(*bad)


@pytest.mark.parametrize("compute", [0.0, -1e20, float("nan")])
def test_non_positive_compute_is_an_error(compute):
    with pytest.raises(LmlabError, match="positive"):
        plan(compute, "epoch")
    with pytest.raises(LmlabError, match="unknown scaling law"):
        plan(1e20, "chinchilla")


def test_plan_cli_json(capsys):
    assert main(["scaling", "plan", "--compute", "5.76e23", "--law", "hoffmann-exact", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (p,) = out["plans"]
    assert p["law"] == "hoffmann-exact"
    assert p["n_params"] == pytest.approx(40.36e9, rel=2e-3)
    assert p["tokens_per_param"] == pytest.approx(p["n_tokens"] / p["n_params"])
    args = ["--gpu-hours", "1000", "--flops-per-s", "1e15", "--law", "all", "--json"]
    assert main(["scaling", "plan", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["compute_flops"] == pytest.approx(1.44e21)
    assert [p["law"] for p in out["plans"]] == ["hoffmann", "hoffmann-exact", "epoch", "kaplan"]


def test_plan_cli_text(capsys):
    assert main(["scaling", "plan", "--compute", "5.76e23", "--law", "hoffmann-exact"]) == 0
    out = capsys.readouterr().out
    assert "40.4B" in out and "2.38T" in out


@pytest.mark.parametrize("args,msg", [
    (["--compute", "0"], "positive"),
    (["--compute=-3e21"], "positive"),
    ([], "no budget"),
    (["--gpu-hours", "10"], "--flops-per-s"),
    (["--compute", "1e21", "--gpu-hours", "10", "--flops-per-s", "1e15"], "once"),
    (["--gpu-hours", "10", "--flops-per-s", "1e15", "--mfu", "2"], "mfu"),
])
def test_plan_cli_errors(capsys, args, msg):
    assert main(["scaling", "plan", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err
