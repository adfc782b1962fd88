"""The ceiling benchmark's core on tiny made-up models whose ceilings are known exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.ceiling import (
    GATES,
    default_inputs,
    gate_ceilings,
    main,
    margins,
    project_levels,
    random_success,
    sample_levels,
    smooth_margin,
)
from dnpu_bluesky.sim import VirtualDNPU

RANGES = np.array([[-1.0, 1.0]] * 3 + [[-0.5, 0.5]] + [[-1.0, 1.0]] * 3)


class Linear:
    """``I = w . V``: a gate's margin is ``min(|w_i| s_i, |w_j| s_j)`` for AND and OR (both
    weights positive) or NAND and NOR (both negative), ``s`` the input's swing."""

    n_electrodes = 7
    voltage_ranges = RANGES
    w = np.array([3.0, -2.0, 1.0, 0.5, -1.5, 0.2, 2.5])  # times the widths: 6 -4 2 .5 -3 .4 5

    def current(self, volts: np.ndarray) -> np.ndarray:
        return volts @ self.w

    def jacobian(self, volts: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.w, volts.shape).copy()

    def describe(self) -> dict[str, Any]:
        return {"kind": "linear"}


class Square(Linear):
    """``I = -k (V0 - V1)^2``: XNOR only on e0, e1, best ``k (2 V)^2`` with equal levels."""

    k = 1.5

    def current(self, volts: np.ndarray) -> np.ndarray:
        return -self.k * (volts[..., 0] - volts[..., 1]) ** 2

    def jacobian(self, volts: np.ndarray) -> np.ndarray:
        jac = np.zeros(volts.shape)
        jac[..., 0] = -2 * self.k * (volts[..., 0] - volts[..., 1])
        jac[..., 1] = -jac[..., 0]
        return jac


FAST = {"starts_per_pair": 3, "iterations": 150, "polish_iterations": 150}


def test_linear_model_ceilings_are_the_analytic_ones() -> None:
    found = gate_ceilings(Linear(), **FAST)
    for gate in ("AND", "OR"):  # the two largest positive w * width: e0 (6) and e6 (5)
        assert found[gate].margin_na == pytest.approx(5.0, abs=1e-3)
        assert found[gate].pair == (0, 6)
        # e6 needs its whole range; e0 only a swing of 5 / 3 V.
        assert (found[gate].low_v[1], found[gate].high_v[1]) == pytest.approx((-1, 1), abs=1e-3)
        assert found[gate].high_v[0] - found[gate].low_v[0] >= 5 / 3 - 1e-3
    for gate in ("NAND", "NOR"):  # with both inputs reversed, the same pair as AND and OR
        assert found[gate].margin_na == pytest.approx(5.0, abs=1e-3)
        assert found[gate].pair == (0, 6)
        assert found[gate].high_v[1] == pytest.approx(-1, abs=1e-3)  # logical 1 below 0
        assert found[gate].low_v[1] == pytest.approx(1, abs=1e-3)
    assert found["XOR"].margin_na < 0 and found["XNOR"].margin_na < 0  # linear: impossible
    assert len(found["AND"].per_pair_na) == 21
    # With logical 1 above logical 0 on both inputs, NAND and NOR need the negative weights.
    ordered = gate_ceilings(Linear(), gates=("NAND", "NOR"), polarity_free=False, **FAST)
    for gate in ("NAND", "NOR"):  # the two negative ones: e1 (-4) and e4 (-3)
        assert ordered[gate].margin_na == pytest.approx(3.0, abs=1e-3)
        assert ordered[gate].pair == (1, 4)


def test_quadratic_model_xnor_ceiling_and_levels() -> None:
    found = gate_ceilings(Square(), gates=("XNOR",), **FAST)["XNOR"]
    assert found.margin_na == pytest.approx(6.0, abs=1e-2)
    assert found.pair == (0, 1)
    assert found.low_v == pytest.approx((-1.0, -1.0), abs=1e-2)
    assert found.high_v == pytest.approx((1.0, 1.0), abs=1e-2)
    assert max(m for p, m in found.per_pair_na.items() if p != "0,1") <= 1e-9


def test_fixed_levels_bound_the_ceiling() -> None:
    found = gate_ceilings(Linear(), pairs=[(0, 6)], levels=(-0.5, 0.0), gates=("AND",), **FAST)
    assert found["AND"].margin_na == pytest.approx(min(3.0 * 0.5, 2.5 * 0.5))


def test_random_success_counts_settings_above_each_margin() -> None:
    fixed = random_success(Linear(), 500, pair=(0, 6), levels=(-1.0, 1.0), margins_na=(4.9, 5.1))
    assert fixed["fractions"]["AND"] == {4.9: 1.0, 5.1: 0.0}
    assert fixed["fractions"]["NAND"] == {4.9: 0.0, 5.1: 0.0}
    free = random_success(Linear(), 2000, margins_na=(0.0, 5.0))
    # A pair and both levels at random: AND needs two positive weights and never beats 5.
    assert 0 < free["fractions"]["AND"][0.0] < 1 and free["fractions"]["AND"][5.0] == 0
    assert free["best_na"]["AND"] <= 5.0


def test_levels_are_sampled_and_projected_inside_the_triangle() -> None:
    rng = np.random.default_rng(0)
    lows, highs = sample_levels(rng, RANGES, (5000,), 0.3)
    assert np.all(lows >= RANGES[:, 0]) and np.all(highs <= RANGES[:, 1])
    assert np.all(highs - lows >= 0.3 - 1e-12)
    r = RANGES[:1]
    cases = {(0.1, -0.5): (-0.35, -0.05), (-2.0, -1.5): (-1.0, -0.7), (-2.0, 0.0): (-1.0, 0.0)}
    cases[(-0.2, 0.4)] = (-0.2, 0.4)  # feasible: unchanged
    for (low, high), expected in cases.items():
        got = project_levels(np.array([low]), np.array([high]), r, 0.3)
        assert (got[0][0], got[1][0]) == pytest.approx(expected)


def test_smooth_margin_is_a_lower_bound_with_the_right_gradient() -> None:
    currents = np.random.default_rng(1).normal(0, 10, (20, 4))
    for gate in GATES:
        value, grad = smooth_margin(currents, gate, 2.0)
        assert np.all(value <= margins(currents, gate))
        assert np.all(value >= margins(currents, gate) - 2.0 * np.log(3) - 1e-9)
        step = np.eye(4) * 1e-6
        numeric = [
            (smooth_margin(currents + d, gate, 2.0)[0] - smooth_margin(currents - d, gate, 2.0)[0])
            / 2e-6
            for d in step
        ]
        assert np.stack(numeric, axis=-1) == pytest.approx(grad, abs=1e-6)


def test_default_inputs_are_the_gates_defaults_on_the_virtual_dnpu() -> None:
    assert default_inputs(VirtualDNPU(0)) == ((3, 4), (-0.7, 0.3))


def test_a_missing_model_file_is_refused(tmp_path: Any) -> None:
    with pytest.raises(SystemExit):
        main(["--seeds", "--model", str(tmp_path / "absent.pt")])
