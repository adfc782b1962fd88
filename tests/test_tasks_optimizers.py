"""Optimizers: minimise a known quadratic inside bounds, Adam's update rule, reset, errors."""

from __future__ import annotations

import numpy as np
import pytest

from dnpu_bluesky.tasks import Adam, GradientDescent, Optimizer, make_optimizer

BOUNDS = np.array([[-1.2, 0.6], [-1.2, 0.6], [-0.7, 0.3], [-1.2, 0.6], [-1.0, 1.0]])
# The unconstrained minimum lies outside the box in parameters 1 and 2.
CENTRE = np.array([0.3, 1.5, -2.0, -0.4, 0.05])
CURVATURE = np.array([1.0, 4.0, 0.5, 10.0, 2.0])


def _quadratic(params: np.ndarray) -> tuple[float, np.ndarray]:
    delta = params - CENTRE
    return float(0.5 * np.sum(CURVATURE * delta**2)), CURVATURE * delta


@pytest.mark.parametrize(("kind", "lr", "n_steps"), [("gd", 0.05, 500), ("adam", 0.02, 1500)])
def test_minimises_a_quadratic_inside_the_bounds(kind: str, lr: float, n_steps: int) -> None:
    optimizer = make_optimizer(kind, lr, BOUNDS)
    assert isinstance(optimizer, Optimizer)
    params = np.array([-1.0, -1.0, 0.2, 0.5, -0.9])
    start_loss, _ = _quadratic(params)
    for _ in range(n_steps):
        params = optimizer.step(params, _quadratic(params)[1])
        assert np.all(params >= BOUNDS[:, 0])
        assert np.all(params <= BOUNDS[:, 1])
    # A separable convex quadratic's minimum in a box is the centre clipped into the box.
    expected = np.clip(CENTRE, BOUNDS[:, 0], BOUNDS[:, 1])
    np.testing.assert_allclose(params, expected, atol=2e-3)
    assert _quadratic(params)[0] < start_loss


def test_gradient_descent_step_is_lr_times_gradient() -> None:
    gd = GradientDescent(lr=0.1, bounds=BOUNDS)
    params = np.zeros(5)
    grad = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    np.testing.assert_allclose(gd.step(params, grad), [-0.1, 0.2, -0.05, 0.0, -0.3])


def test_adam_matches_the_published_update_rule() -> None:
    rng = np.random.default_rng(5)
    lr, beta1, beta2, eps = 0.01, 0.8, 0.99, 1e-6
    adam = Adam(lr=lr, bounds=np.tile([-100.0, 100.0], (3, 1)), beta1=beta1, beta2=beta2, eps=eps)
    params = np.zeros(3)
    m = np.zeros(3)
    v = np.zeros(3)
    reference = params.copy()
    for t in range(1, 20):
        grad = rng.normal(size=3) * [1e-3, 1.0, 1e3]
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        reference = reference - lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
        params = adam.step(params, grad)
        np.testing.assert_allclose(params, reference, rtol=1e-12)
    assert adam.step_count == 19


def test_adam_first_step_is_lr_per_parameter_whatever_the_scale() -> None:
    adam = Adam(lr=0.02, bounds=BOUNDS)
    grad = np.array([1e-4, -50.0, 3.0, -0.2, 1e4])
    step = adam.step(np.zeros(5), grad) - np.zeros(5)
    np.testing.assert_allclose(step, -0.02 * np.sign(grad), rtol=1e-3)


def test_reset_makes_adam_start_afresh() -> None:
    adam = Adam(lr=0.02, bounds=BOUNDS)
    grad = np.array([1.0, -1.0, 0.5, 2.0, -3.0])
    first = adam.step(np.zeros(5), grad)
    for _ in range(10):
        adam.step(np.zeros(5), -grad)
    assert not np.allclose(adam.step(np.zeros(5), grad), first)
    adam.reset()
    assert adam.step_count == 0
    np.testing.assert_allclose(adam.step(np.zeros(5), grad), first)


@pytest.mark.parametrize("cls", [GradientDescent, Adam])
def test_steps_are_clipped_to_bounds(cls) -> None:
    optimizer = cls(lr=10.0, bounds=BOUNDS)
    params = optimizer.step(np.zeros(5), np.array([1.0, -1.0, 1.0, -1.0, 1.0]))
    np.testing.assert_allclose(params, [-1.2, 0.6, -0.7, 0.6, -1.0])


@pytest.mark.parametrize("cls", [GradientDescent, Adam])
def test_bad_inputs_are_refused(cls) -> None:
    with pytest.raises(ValueError, match="shape"):
        cls(lr=0.01, bounds=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="min <= max"):
        cls(lr=0.01, bounds=np.array([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="learning rate"):
        cls(lr=-0.01, bounds=BOUNDS)
    optimizer = cls(lr=0.01, bounds=BOUNDS)
    with pytest.raises(ValueError, match="not finite"):
        optimizer.step(np.zeros(5), np.array([0.0, np.nan, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        optimizer.step(np.zeros(4), np.zeros(4))


def test_make_optimizer_and_describe() -> None:
    adam = make_optimizer("Adam", 0.02, BOUNDS, beta1=0.5)
    assert isinstance(adam, Adam)
    assert adam.describe()["beta1"] == 0.5
    assert adam.describe()["bounds"] == BOUNDS.tolist()
    assert make_optimizer("gd", 0.1, BOUNDS).describe() == {
        "kind": "gd",
        "lr": 0.1,
        "bounds": BOUNDS.tolist(),
    }
    with pytest.raises(ValueError, match="unknown optimizer 'sgdm'"):
        make_optimizer("sgdm", 0.1, BOUNDS)
    with pytest.raises(ValueError, match="beta1"):
        make_optimizer("gd", 0.1, BOUNDS, beta1=0.9)
