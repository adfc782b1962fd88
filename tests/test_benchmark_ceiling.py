"""The ceiling benchmark's core on tiny made-up models whose ceilings are known exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.ceiling import (
    GATES,
    best_accuracies,
    default_inputs,
    gate_ceilings,
    main,
    margins,
    project_levels,
    random_success,
    sample_levels,
    smooth_margin,
    sphere_ceiling,
    sphere_triples,
)
from dnpu_bluesky.sim import VirtualDNPU
from dnpu_bluesky.tasks import accuracy_and_threshold

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


class Bowl(Linear):
    """``I = -k |V_(0,3,5) - V6|^2``: a ball around ``V6`` (one electrode, e6) in e0, e3, e5.

    With free levels the cube of the sphere task can be centred on ``V6`` (e6 in 0.4 .. 1 V),
    so every point is classified correctly; with the fixed cube -1 .. 1 V centred at 0 it
    cannot. Only the triple e0, e3, e5 sees the whole ball.
    """

    k = 2.0
    voltage_ranges = np.array([[-1.0, 1.0]] * 6 + [[0.4, 1.0]])
    inputs = (0, 3, 5)

    def current(self, volts: np.ndarray) -> np.ndarray:
        d = volts[..., list(self.inputs)] - volts[..., 6:7]
        return -self.k * (d**2).sum(axis=-1)

    def jacobian(self, volts: np.ndarray) -> np.ndarray:
        d = volts[..., list(self.inputs)] - volts[..., 6:7]
        jac = np.zeros(volts.shape)
        jac[..., list(self.inputs)] = -2 * self.k * d
        jac[..., 6] = 2 * self.k * d.sum(axis=-1)
        return jac


SPHERE_FAST = {"n_points": 80, "starts": 8, "iterations": 150, "polish_iterations": 150}


def test_sphere_ceiling_reaches_the_ball_with_free_levels_only() -> None:
    bowl = Bowl()
    free = sphere_ceiling(bowl, (0, 3, 5), **SPHERE_FAST)
    assert free["train_accuracy"] == 1.0 and free["test_accuracy"] == 1.0
    assert free["inputs"] == [0, 3, 5] and free["meets_min_spread"]
    levels = np.array(free["levels_v"])
    assert np.all(np.abs(levels[:, 1] - levels[:, 0]) >= 0.3 - 1e-9)
    assert np.all((levels >= -1.0 - 1e-9) & (levels <= 1.0 + 1e-9))
    # The cube's centre sits on the ball's centre V6 (within the slack the points leave).
    assert levels.mean(axis=1) == pytest.approx([free["controls_v"]["e6"]] * 3, abs=0.15)
    fixed = sphere_ceiling(bowl, (0, 3, 5), free_levels=False, **SPHERE_FAST)
    assert fixed["levels_v"] == [[-1.0, 1.0]] * 3
    assert 0.5 < fixed["train_accuracy"] < 0.95
    # Every iterate spans far less than 1e6 nA: none counts.
    assert not sphere_ceiling(bowl, (0, 3, 5), min_spread_na=1e6, **SPHERE_FAST)["meets_min_spread"]


def test_sphere_triples_find_the_bowls_inputs() -> None:
    found = sphere_triples(
        Bowl(),
        n_points=80,
        starts_per_triple=2,
        best_triples=2,
        starts=8,
        iterations=150,
        polish_iterations=150,
    )
    assert len(found["per_triple"]) == 35
    assert found["inputs"] == [0, 3, 5] and found["train_accuracy"] == 1.0
    assert max(v for k, v in found["per_triple"].items() if k != "0,3,5") < 1.0


def test_best_accuracies_match_the_task_metric() -> None:
    rng = np.random.default_rng(2)
    labels = np.array([0, 1] * 10)
    currents = rng.normal(0, 1, (30, 20)) + 0.8 * labels
    currents[0, :4] = 0.5  # ties: a split between equal outputs is not allowed
    accuracy, gap = best_accuracies(currents, labels)
    for row, acc in zip(currents, accuracy, strict=True):
        assert acc == accuracy_and_threshold(row, labels)[0]
    assert np.all((gap >= 0) & (gap <= 1))
