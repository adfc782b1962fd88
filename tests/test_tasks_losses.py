"""Losses: analytic gradients against central finite differences, values, degenerate cases."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from dnpu_bluesky.tasks import (
    GATES,
    LOSSES,
    BooleanGate,
    corrsig_loss,
    margin_loss,
    mse_loss,
    sigmoid_classification_loss,
)

LOSS_PARAMS = {
    "corrsig": {},
    "margin": {},
    "mse": {"low_na": 10.0, "high_na": 60.0},
    "sigmoid": {},
    "sigmoid_fixed": {"threshold_na": 30.0},
}


def _loss(key: str):
    return LOSSES["sigmoid" if key == "sigmoid_fixed" else key], LOSS_PARAMS[key]


def _central_differences(
    fn, outputs: np.ndarray, targets: np.ndarray, params: dict, step: float = 1e-4
) -> np.ndarray:
    grad = np.empty_like(outputs)
    for k in range(outputs.size):
        bump = np.zeros_like(outputs)
        bump[k] = step
        up = fn(outputs + bump, targets, **params)[0]
        down = fn(outputs - bump, targets, **params)[0]
        grad[k] = (up - down) / (2 * step)
    return grad


def _random_outputs(rng: np.random.Generator, n: int) -> np.ndarray:
    # Spread wide enough to visit both the overlapping and the separated regimes.
    return rng.uniform(-20.0, 120.0, size=n)


@pytest.mark.parametrize("key", list(LOSS_PARAMS))
@pytest.mark.parametrize("gate", GATES)
def test_gradient_matches_finite_differences_for_every_gate(key: str, gate: str) -> None:
    fn, params = _loss(key)
    targets = BooleanGate(gate).targets()
    rng = np.random.default_rng(zlib.crc32(f"{key}-{gate}".encode()))
    for _ in range(25):
        outputs = _random_outputs(rng, 4)
        loss, grad = fn(outputs, targets, **params)
        assert np.isfinite(loss)
        numeric = _central_differences(fn, outputs, targets, params)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("key", list(LOSS_PARAMS))
def test_gradient_matches_finite_differences_on_many_cases(key: str) -> None:
    fn, params = _loss(key)
    rng = np.random.default_rng(7)
    for _ in range(5):
        targets = rng.permutation(np.repeat([0, 1], 20))
        # Shift the high class so the classes range from overlapping to separated.
        outputs = rng.normal(40.0, 15.0, size=40) + targets * rng.uniform(0.0, 60.0)
        _, grad = fn(outputs, targets, **params)
        numeric = _central_differences(fn, outputs, targets, params)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_corrsig_values_at_the_extremes() -> None:
    targets = np.array([0, 1, 1, 0])
    # Perfectly correlated and separated by 100 nA: (1.1 - 1) / (1 + 0.05).
    loss, _ = corrsig_loss(np.array([0.0, 100.0, 100.0, 0.0]), targets)
    assert loss == pytest.approx(0.1 / 1.05, rel=1e-6)
    # Anticorrelated, overlapping by 100 nA: sigmoid is ~0, so (1.1 + 1) / 0.05.
    loss, _ = corrsig_loss(np.array([100.0, 0.0, 0.0, 100.0]), targets)
    assert loss == pytest.approx(2.1 / 0.05, rel=1e-6)


def test_corrsig_correlation_term_is_pearson() -> None:
    rng = np.random.default_rng(3)
    targets = np.array([1, 0, 0, 1])
    outputs = rng.uniform(0, 100, 4)
    corr = np.corrcoef(outputs, targets)[0, 1]
    margin = outputs[targets == 1].min() - outputs[targets == 0].max()
    expected = (1.1 - corr) / (1 / (1 + np.exp(-(margin - 5.0) / 3.0)) + 0.05)
    loss, _ = corrsig_loss(outputs, targets)
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("fn", [corrsig_loss, margin_loss, sigmoid_classification_loss])
def test_flat_output_has_finite_loss_and_gradient(fn) -> None:
    targets = np.array([0, 0, 0, 1])
    loss, grad = fn(np.full(4, 37.0), targets)
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad))
    # Descending must raise the high case relative to the low ones.
    assert grad[3] < 0
    assert np.all(grad[:3] > grad[3])


def test_flat_output_correlation_is_zero() -> None:
    targets = np.array([0, 1, 1, 0])
    loss, _ = corrsig_loss(np.full(4, 5.0), targets)
    # corr = 0 and margin 0: 1.1 / (sigmoid(-5/3) + 0.05).
    assert loss == pytest.approx(1.1 / (1 / (1 + np.exp(5.0 / 3.0)) + 0.05), rel=1e-9)


def test_margin_loss_keeps_pushing_where_corrsig_saturates() -> None:
    # AND with its high case 60 nA below the low cases, yet well correlated by the scale-free
    # Pearson measure. corrsig's separation term is flat there; the margin loss still pushes
    # the high case up and the highest low case down with unit weight.
    targets = np.array([0, 0, 0, 1])
    outputs = np.array([0.0, 2.0, 200.0, 140.0])
    _, corrsig_grad = corrsig_loss(outputs, targets)
    # With the sigmoid pushed to 0 everywhere only the correlation term has a gradient,
    # -dcorr/dI / 0.05; rescaled to the true denominator it is corrsig's correlation part.
    _, frozen = corrsig_loss(outputs, targets, offset_na=1e6)
    denominator = 0.05 + 1 / (1 + np.exp(65 / 3))
    separation_part = corrsig_grad - frozen * 0.05 / denominator
    assert np.max(np.abs(separation_part)) < 1e-6 * np.max(np.abs(corrsig_grad))
    _, grad = margin_loss(outputs, targets, corr_weight_na=0.0)
    assert grad[3] == pytest.approx(-1.0, abs=1e-6)
    assert grad[2] == pytest.approx(1.0, abs=1e-6)


def test_margin_loss_fades_once_the_margin_is_reached() -> None:
    targets = np.array([0, 1, 1, 0])
    wide = np.array([0.0, 100.0, 100.0, 0.0])
    loss, grad = margin_loss(wide, targets, target_margin_na=10.0, corr_weight_na=0.0)
    assert loss < 1e-30
    assert np.max(np.abs(grad)) < 1e-30
    narrow = np.array([0.0, 5.0, 5.0, 0.0])
    loss, _ = margin_loss(narrow, targets, target_margin_na=10.0, corr_weight_na=0.0)
    # Soft min/max underestimate the 5 nA gap by log(2) each at 1 nA softness.
    assert loss == pytest.approx(np.logaddexp(0, 10.0 - 5.0 + 2 * np.log(2)), rel=1e-9)


def test_mse_loss_value_and_one_class_targets() -> None:
    loss, grad = mse_loss(np.array([12.0, 58.0]), np.array([0, 1]), low_na=10.0, high_na=60.0)
    assert loss == pytest.approx(4.0)
    np.testing.assert_allclose(grad, [2.0, -2.0])
    loss, _ = mse_loss(np.array([10.0, 10.0]), np.array([0, 0]), low_na=10.0, high_na=60.0)
    assert loss == 0.0


def test_sigmoid_loss_is_lower_when_classes_separate() -> None:
    targets = np.array([0, 1, 0, 1])
    mixed, _ = sigmoid_classification_loss(np.array([30.0, 10.0, 40.0, 20.0]), targets)
    apart, _ = sigmoid_classification_loss(np.array([10.0, 30.0, 20.0, 40.0]), targets)
    assert apart < np.log(2) < mixed


@pytest.mark.parametrize("fn", [corrsig_loss, margin_loss, sigmoid_classification_loss])
def test_bad_inputs_are_refused(fn) -> None:
    with pytest.raises(ValueError, match="both classes"):
        fn(np.arange(4.0), np.ones(4))
    with pytest.raises(ValueError, match="equal length"):
        fn(np.arange(3.0), np.array([0, 1, 1, 0]))
    with pytest.raises(ValueError, match="0 or 1"):
        fn(np.arange(4.0), np.array([0, 2, 1, 0]))
    with pytest.raises(ValueError, match="finite"):
        fn(np.array([0.0, np.nan, 1.0, 2.0]), np.array([0, 1, 1, 0]))
