"""Training matmuls on oneDNN (lmlab/nn/linear.py) give F.linear's values and gradients; the auto route
is measured once per machine, cached, and overridden by LMLAB_CPU_MATMUL."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import lmlab.nn.linear as linear_module
from lmlab.errors import LmlabError
from lmlab.nn.linear import (
    Linear,
    auto_matmul_choice,
    cpu_matmul_backend,
    linear,
    onednn_available,
    reset_matmul_choice,
    uses_onednn,
    weight_grad,
)
from lmlab.nn.losses import linear_cross_entropy, token_cross_entropy

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN (mkldnn)")
x86_only = pytest.mark.skipif(not linear_module._X86, reason="auto measures the routes on x86 CPUs only")


@pytest.fixture(autouse=True)
def tiny_shapes_on_onednn(monkeypatch, tmp_path) -> None:
    """Send the tests' small matmuls to oneDNN too, and wide weight gradients transposed; the auto
    route's cache lives in a temporary dir and starts empty."""
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 0)
    monkeypatch.setattr(linear_module, "WIDE_GRAD_MIN_ROWS", 0)
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "onednn")
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache"))
    reset_matmul_choice()
    yield
    reset_matmul_choice()


@needs_onednn
@pytest.mark.parametrize("shape, out, bias", [
    ((4, 7, 16), 48, True), ((33, 40), 8, False), ((5, 24), 24, True),
])
def test_linear_matches_f_linear_with_gradients(shape, out, bias) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(out, shape[-1], requires_grad=True)
    b = torch.randn(out, requires_grad=True) if bias else None
    assert uses_onednn(x, w)
    y = linear(x, w, b)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, w] + ([b] if bias else []), g)
    y_ref = F.linear(x, w, b)
    grads_ref = torch.autograd.grad(y_ref, [x, w] + ([b] if bias else []), g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, ref in zip(grads, grads_ref):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
        assert got.is_contiguous()


def test_linear_gradcheck_in_float64_takes_the_plain_path() -> None:
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert not uses_onednn(x, w)  # fp64, as every non-fp32 dtype, stays on F.linear
    assert torch.autograd.gradcheck(linear, (x, w))


@needs_onednn
@pytest.mark.parametrize("wide", [True, False])
def test_weight_grad_sums_row_blocks_in_either_orientation(wide: bool) -> None:
    torch.manual_seed(0)
    n_out, n_in = (40, 6) if wide else (6, 40)
    g, x = torch.randn(50, n_out), torch.randn(50, n_in)
    expected = g.t() @ x
    torch.testing.assert_close(weight_grad(g, x), expected, rtol=1e-5, atol=1e-4)
    blocks = weight_grad(list(g.split(16)), list(x.split(16)))
    torch.testing.assert_close(blocks, expected, rtol=1e-5, atol=1e-4)


def test_small_shapes_autocast_and_the_switch_use_f_linear(monkeypatch) -> None:
    x = torch.randn(3, 8, requires_grad=True)
    w = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, w)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 1 << 22)
    big = torch.randn(512, 128, requires_grad=True)
    assert not uses_onednn(x, w)
    assert uses_onednn(big, torch.randn(64, 128)) == (cpu_matmul_backend() == "onednn")
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "aten")
    assert cpu_matmul_backend() == "aten" and not uses_onednn(big, torch.randn(64, 128))
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "mkl")
    with pytest.raises(LmlabError, match="LMLAB_CPU_MATMUL='mkl'.*auto, onednn or aten"):
        cpu_matmul_backend()


@needs_onednn
def test_inference_takes_the_same_route_without_a_graph() -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 9, 16), torch.randn(24, 16, requires_grad=True), torch.randn(24)
    with torch.no_grad():
        y = linear(x, w, b)
        assert uses_onednn(x, w) and y.grad_fn is None
    torch.testing.assert_close(y, linear(x, w, b).detach(), rtol=0, atol=0)  # bitwise: same kernel
    torch.testing.assert_close(y, F.linear(x, w, b).detach(), rtol=1e-5, atol=1e-5)


def test_linear_module_keeps_nn_linear_state_dict() -> None:
    layer = Linear(8, 3)
    plain = torch.nn.Linear(8, 3)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8)
    torch.testing.assert_close(layer(x), plain(x))
    assert isinstance(layer, torch.nn.Linear)


@needs_onednn
def test_flop_counter_counts_onednn_matmuls() -> None:
    layer = Linear(8, 16)
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(3, 5, 8))
    assert counter.get_total_flops() == 2 * 15 * 8 * 16


@pytest.mark.parametrize("backend", ["onednn", "aten"])
def test_fused_loss_over_many_row_blocks(backend: str, monkeypatch) -> None:
    """A vocabulary wide enough that the oneDNN head runs in several row blocks, with ignored rows."""
    monkeypatch.setenv("LMLAB_CPU_MATMUL", backend)
    torch.manual_seed(0)
    h = torch.randn(200, 8, requires_grad=True)
    w = (0.3 * torch.randn(40_000, 8)).requires_grad_()
    t = torch.randint(0, 40_000, (200,))
    t[::7] = -100
    loss = linear_cross_entropy(h, w, t)
    gh, gw = torch.autograd.grad(loss, [h, w])
    h2, w2 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = token_cross_entropy(h2 @ w2.t(), t)
    rh, rw = torch.autograd.grad(ref, [h2, w2])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gh, rh.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, rw.float(), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- the auto route: measured, cached


def fake_timings(monkeypatch, aten: float, onednn: float) -> list[str]:
    """Make calibration see fixed timings per route; return the list of routes it timed."""
    timed: list[str] = []

    def time_route(route: str) -> float:
        timed.append(route)
        return {"aten": aten, "onednn": onednn}[route]

    monkeypatch.setattr(linear_module, "_time_route", time_route)
    return timed


@needs_onednn
@x86_only
@pytest.mark.parametrize("aten, onednn, faster", [(2.0, 1.0, "onednn"), (1.0, 3.0, "aten")])
def test_auto_takes_the_route_calibration_measured_faster(monkeypatch, aten, onednn, faster) -> None:
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "auto")
    timed = fake_timings(monkeypatch, aten, onednn)
    assert cpu_matmul_backend() == faster
    assert sorted(set(timed)) == ["aten", "onednn"] and timed.count("aten") == timed.count("onednn")
    choice = auto_matmul_choice()
    assert choice["source"] == "measured" and (choice["aten_s"], choice["onednn_s"]) == (aten, onednn)
    big = torch.randn(512, 128)
    monkeypatch.setattr(linear_module, "ONEDNN_MIN_MACS", 1 << 22)
    assert uses_onednn(big, torch.randn(64, 128)) == (faster == "onednn")


@needs_onednn
@x86_only
def test_the_choice_is_cached_on_disk_and_read_once_per_process(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "auto")
    timed = fake_timings(monkeypatch, 1.0, 2.0)
    assert cpu_matmul_backend() == "aten"
    files = list((tmp_path / "cache" / "cpu_matmul").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["route"] == "aten"
    n = len(timed)
    for _ in range(3):
        assert cpu_matmul_backend() == "aten"
    assert len(timed) == n  # not measured again in this process
    monkeypatch.setattr(linear_module, "_time_route", lambda route: pytest.fail("measured again"))
    reset_matmul_choice()  # as a new process: the file answers
    assert cpu_matmul_backend() == "aten" and auto_matmul_choice()["source"] == "cache"
    before = torch.get_num_threads()
    try:  # another thread count is another measurement
        torch.set_num_threads(1 if before > 1 else 2)
        timed = fake_timings(monkeypatch, 3.0, 1.0)
        assert cpu_matmul_backend() == "onednn" and timed
    finally:
        torch.set_num_threads(before)
    assert cpu_matmul_backend() == "aten"
    assert len(list((tmp_path / "cache" / "cpu_matmul").glob("*.json"))) == 2


@needs_onednn
@x86_only
@pytest.mark.parametrize("damage", ["", "{not json", "[1, 2]", '{"key": "another CPU", "route": "onednn"}',
                                    "\xff\xfe"])
def test_a_damaged_cache_file_is_measured_again(monkeypatch, tmp_path, damage: str) -> None:
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "auto")
    fake_timings(monkeypatch, 1.0, 2.0)
    assert cpu_matmul_backend() == "aten"
    (path,) = (tmp_path / "cache" / "cpu_matmul").glob("*.json")
    path.write_bytes(damage.encode("latin-1"))
    reset_matmul_choice()
    timed = fake_timings(monkeypatch, 2.0, 1.0)
    assert cpu_matmul_backend() == "onednn" and timed
    assert auto_matmul_choice()["source"] == "measured" and json.loads(path.read_text())["route"] == "onednn"


@needs_onednn
def test_the_environment_variable_wins_over_the_measurement(monkeypatch) -> None:
    fake_timings(monkeypatch, 1.0, 2.0)  # aten measured faster
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "onednn")
    assert cpu_matmul_backend() == "onednn"
    monkeypatch.setattr(linear_module, "_time_route", lambda route: pytest.fail("a forced route: timed"))
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "aten")
    assert cpu_matmul_backend() == "aten"
    monkeypatch.setenv("LMLAB_CPU_MATMUL", " OneDNN ")
    assert cpu_matmul_backend() == "onednn"


def test_a_read_only_cache_dir_still_gives_a_choice(monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(blocker))  # cache_home()/cpu_matmul cannot be created
    monkeypatch.setenv("LMLAB_CPU_MATMUL", "auto")
    fake_timings(monkeypatch, 2.0, 1.0)
    expected = "onednn" if onednn_available() and linear_module._X86 else "aten"
    assert cpu_matmul_backend() == expected


def test_calibration_runs_both_routes_without_counting_flops(monkeypatch) -> None:
    """The real measurement, on shapes too small to take time; it neither builds autograd graphs nor
    shows up in an active FlopCounterMode. Which route wins is not asserted: that is the machine's."""
    if not onednn_available():
        pytest.skip("this torch build has no oneDNN (mkldnn)")
    monkeypatch.setattr(linear_module, "CALIBRATION_SHAPES", ((4, 8, 16),))
    with FlopCounterMode(display=False) as counter:
        result = linear_module.calibrate()
    assert counter.get_total_flops() == 0
    assert result["route"] in ("aten", "onednn") and result["aten_s"] > 0 and result["onednn_s"] > 0
