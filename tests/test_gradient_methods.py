"""The gradient methods' registry and the one finite-difference loop, without a device."""

from __future__ import annotations

import numpy as np
import pytest

from dnpu_bluesky.plans import GRADIENT_METHODS
from dnpu_bluesky.plans._gradients import METHODS, finite_differences, gradient_method


def run(plan):
    """Drive a plan whose only messages are the points it measures; return them and its value."""
    asked = []
    try:
        message = next(plan)
        while True:
            asked.append(message)
            message = plan.send(None)
    except StopIteration as done:
        return asked, done.value


def test_central_differences_measure_each_coordinate_both_ways() -> None:
    matrix = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])

    def outputs_at(x: np.ndarray):
        yield x.copy()
        return matrix @ x + 0.25 * x @ x  # quadratic: central differences are exact

    point = np.array([0.1, -0.2, 0.3])
    asked, (jacobian, evaluated) = run(finite_differences(point, 0.01, outputs_at))
    expected_points = [point + sign * 0.01 * np.eye(3)[j] for j in range(3) for sign in (1, -1)]
    np.testing.assert_allclose(asked, expected_points)
    np.testing.assert_allclose(jacobian, matrix + 0.5 * point, atol=1e-12)
    assert len(evaluated) == 6
    np.testing.assert_allclose(evaluated[1], matrix @ asked[1] + 0.25 * asked[1] @ asked[1])


def test_central_differences_of_a_single_number_give_a_gradient() -> None:
    def outputs_at(x: np.ndarray):
        yield x.copy()
        return float(np.sin(x[0]) + 2 * x[1])

    _, (gradient, _) = run(finite_differences(np.array([0.2, 0.0]), 1e-4, outputs_at))
    assert gradient.shape == (2,)
    np.testing.assert_allclose(gradient, [np.cos(0.2), 2.0], rtol=1e-7)


def test_one_registry_names_the_methods_and_refuses_others() -> None:
    assert GRADIENT_METHODS == tuple(METHODS) == ("hge", "fd", "spsa")
    assert gradient_method("hge").mode == "parallel"
    assert gradient_method("fd").mode == gradient_method("spsa").mode == "off"
    with pytest.raises(
        ValueError, match=r"method must be one of \('hge', 'fd', 'spsa'\), got 'ga'"
    ):
        gradient_method("ga")
