"""Accuracy at the best threshold and the separation margin."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dnpu_bluesky.tasks import TaskScore, accuracy_and_threshold, separation_margin


def _brute_force_accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    values = np.sort(outputs)
    candidates = np.concatenate(
        ([values[0] - 1], 0.5 * (values[1:] + values[:-1]), [values[-1] + 1])
    )
    return max(np.mean((outputs > c) == (targets == 1)) for c in candidates)


def test_separable_outputs_get_the_midpoint_threshold() -> None:
    outputs = np.array([12.0, 80.0, 75.0, 20.0])
    targets = np.array([0, 1, 1, 0])
    accuracy, threshold = accuracy_and_threshold(outputs, targets)
    assert accuracy == 1.0
    assert threshold == pytest.approx(47.5)
    assert separation_margin(outputs, targets) == pytest.approx(55.0)


def test_overlap_gives_negative_margin_and_best_accuracy() -> None:
    outputs = np.array([10.0, 30.0, 20.0, 40.0, 35.0])
    targets = np.array([0, 0, 1, 1, 1])
    accuracy, threshold = accuracy_and_threshold(outputs, targets)
    assert accuracy == pytest.approx(0.8)
    assert np.mean((outputs > threshold) == (targets == 1)) == pytest.approx(0.8)
    assert separation_margin(outputs, targets) == pytest.approx(-10.0)


def test_matches_brute_force_on_random_sets_with_ties() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        targets = rng.integers(0, 2, n)
        if targets.min() == targets.max():
            continue
        # Rounded values create ties, which no threshold can split.
        outputs = np.round(rng.normal(0.0, 3.0, n))
        accuracy, threshold = accuracy_and_threshold(outputs, targets)
        assert accuracy == pytest.approx(_brute_force_accuracy(outputs, targets))
        assert np.mean((outputs > threshold) == (targets == 1)) == pytest.approx(accuracy)


def test_equal_outputs_cannot_be_separated() -> None:
    targets = np.array([0, 1, 1, 0])
    accuracy, threshold = accuracy_and_threshold(np.full(4, 5.0), targets)
    assert accuracy == 0.5
    assert np.mean((np.full(4, 5.0) > threshold) == (targets == 1)) == 0.5
    assert separation_margin(np.full(4, 5.0), targets) == 0.0


def test_polarity_is_fixed_high_current_means_one() -> None:
    # An inverted XOR is XNOR, not XOR: its accuracy as XOR must be poor.
    targets = np.array([0, 1, 1, 0])
    accuracy, _ = accuracy_and_threshold(np.array([90.0, 10.0, 12.0, 95.0]), targets)
    assert accuracy == 0.5


@pytest.mark.parametrize("gate_targets", list(itertools.product([0, 1], repeat=4))[1:-1])
def test_every_labelling_of_four_cases_is_scored(gate_targets: tuple[int, ...]) -> None:
    targets = np.array(gate_targets)
    outputs = np.where(targets == 1, 50.0, 10.0) + np.arange(4)
    accuracy, threshold = accuracy_and_threshold(outputs, targets)
    assert accuracy == 1.0
    assert outputs[targets == 0].max() < threshold < outputs[targets == 1].min()


def test_task_score_to_dict_is_plain() -> None:
    score = TaskScore(
        accuracy=np.float64(1.0), margin_na=np.float64(3.0), threshold_na=2.0, solved=True
    )
    as_dict = score.to_dict()
    assert as_dict == {"accuracy": 1.0, "margin_na": 3.0, "threshold_na": 2.0, "solved": True}
    assert all(type(v) in (float, bool) for v in as_dict.values())


def test_a_given_threshold_is_used_as_is() -> None:
    from dnpu_bluesky.tasks.metrics import score

    outputs = np.array([1.0, 2.0, 3.0, 4.0])
    targets = np.array([0, 1, 0, 1])
    best = score(outputs, targets)
    assert best.accuracy == 0.75
    fixed = score(outputs, targets, threshold_na=3.5)
    assert fixed.threshold_na == 3.5 and fixed.accuracy == 0.75 and not fixed.solved
    assert score(outputs, targets, threshold_na=0.0).accuracy == 0.5
    assert score(outputs, targets, threshold_na=0.0).margin_na == best.margin_na == -1.0
