"""The descent's bookkeeping on its own: patience, running mean, best point, final setting."""

from __future__ import annotations

import numpy as np
import pytest

from dnpu_bluesky.tasks import TaskScore
from dnpu_bluesky.tasks.training import (
    BATCH_LOSS_WEIGHT,
    ArmProgress,
    RunProgress,
    rank,
    reaches_target,
)


def score(accuracy: float = 0.5, margin_na: float = -1.0) -> TaskScore:
    return TaskScore(accuracy=accuracy, margin_na=margin_na, threshold_na=0.0, solved=False)


def point(value: float) -> np.ndarray:
    return np.array([value, -value])


def test_patience_counts_steps_that_improve_nothing() -> None:
    arm = ArmProgress()
    arm.record(1.0, score(), point(0))
    for k in range(1, 4):
        arm.record(1.0 + k, score(), point(k))
        assert arm.since_best == k
    assert arm.exhausted(3)
    assert not arm.exhausted(4)


def test_patience_is_reset_when_the_loss_improves() -> None:
    arm = ArmProgress()
    arm.record(1.0, score(), point(0))
    arm.record(2.0, score(), point(1))
    arm.record(3.0, score(), point(2))
    assert arm.since_best == 2
    arm.record(0.5, score(), point(3))  # the loss improves, the score does not
    assert arm.since_best == 0
    assert not arm.exhausted(1)
    np.testing.assert_array_equal(arm.best_point, point(3))


def test_patience_is_reset_when_the_score_improves_though_the_loss_does_not() -> None:
    arm = ArmProgress()
    arm.record(1.0, score(0.5, 1.0), point(0))
    arm.record(2.0, score(0.5, 0.5), point(1))
    assert arm.since_best == 1
    arm.record(2.0, score(0.75, -3.0), point(2))
    assert arm.since_best == 0
    assert arm.best_rank == (0.75, -3.0)
    assert arm.best_margin_na == 1.0  # the widest margin, whichever step measured it
    np.testing.assert_array_equal(arm.best_point, point(2))


def test_an_improvement_must_exceed_the_tolerance() -> None:
    arm = ArmProgress()
    arm.record(100.0, score(), point(0))
    arm.record(99.95, score(), point(1))  # 0.05 % lower: within the 0.1 % tolerance
    assert arm.since_best == 1
    arm.record(99.8, score(), point(2))
    assert arm.since_best == 0


def test_minibatches_are_judged_by_the_running_mean_of_their_losses() -> None:
    arm = ArmProgress(running_mean=True)
    assert arm.record(4.0, score(), point(0)) == 4.0
    judged = arm.record(0.0, score(), point(1))
    assert judged == pytest.approx((1 - BATCH_LOSS_WEIGHT) * 4.0)
    assert arm.losses == [4.0, judged]
    # A bad batch moves the mean a quarter of the way towards it: no improvement.
    arm.record(100.0, score(), point(2))
    assert arm.losses[-1] == pytest.approx((1 - BATCH_LOSS_WEIGHT) * judged + 25.0)
    assert arm.since_best == 1


def test_without_minibatches_the_loss_is_judged_as_measured() -> None:
    arm = ArmProgress()
    arm.record(4.0, score(), point(0))
    assert arm.record(0.0, score(), point(1)) == 0.0


def test_a_clipped_step_counts_as_an_infinite_loss_and_changes_nothing_else() -> None:
    arm = ArmProgress()
    arm.record(1.0, score(0.5, 2.0), point(0))
    arm.record_clipped()
    assert arm.losses == [1.0, np.inf]
    assert arm.since_best == 0
    np.testing.assert_array_equal(arm.best_point, point(0))


def test_a_restart_gives_the_attempt_fresh_patience_from_its_start() -> None:
    arm = ArmProgress()
    arm.record(1.0, score(), point(0))
    arm.record(2.0, score(), point(1))
    arm.record(3.0, score(), point(2))
    start = point(7)
    arm.restart(start)
    start[:] = 0  # the bookkeeping keeps its own copy
    assert arm.since_best == 0
    np.testing.assert_array_equal(arm.best_point, point(7))
    # The losses of before still set the bar an improvement must pass.
    arm.record(1.5, score(), point(8))
    assert arm.since_best == 1
    np.testing.assert_array_equal(arm.best_point, point(7))


def test_the_best_point_is_a_copy() -> None:
    arm = ArmProgress()
    where = point(1)
    arm.record(1.0, score(), where)
    where += 10
    np.testing.assert_array_equal(arm.best_point, point(1))


def test_rank_and_target() -> None:
    assert rank(score(1.0, 0.1)) > rank(score(0.75, 30.0))
    assert rank(score(1.0, 3.0)) > rank(score(1.0, 2.0))
    assert reaches_target(score(1.0, 2.0), 1.0, 2.0)
    assert not reaches_target(score(1.0, 1.9), 1.0, 2.0)
    assert reaches_target(score(0.9, -5.0), 0.9, 2.0)  # below 1.0 the margin is not asked
    assert not reaches_target(score(0.85, 10.0), 0.9, 2.0)


def test_run_progress_counts_steps_and_keeps_the_lowest_loss() -> None:
    run: RunProgress[str] = RunProgress()
    assert run.final() == (None, None)
    assert run.step("a") == 1
    run.measured(3.0, "a")
    assert run.step("b") == 2
    run.measured(1.0, "b")
    assert run.step("c") == 3
    run.measured(2.0, "c")
    assert run.step("d") == 4  # clipped: not measured
    assert run.last == "d"
    assert run.final() == ("b", None)


def test_run_progress_without_a_measured_loss_ends_at_the_last_setting() -> None:
    run: RunProgress[str] = RunProgress()
    run.step("a")
    run.step("b")
    assert run.final() == ("b", None)


def test_run_progress_prefers_the_best_evaluation_to_the_lowest_loss() -> None:
    run: RunProgress[str] = RunProgress()
    run.step("a")
    run.measured(0.1, "a")
    run.offer_evaluation("b", score(0.75, 1.0))
    run.offer_evaluation("c", score(0.75, 0.5))  # ranks lower: not kept
    run.offer_evaluation("d", score(0.75, 1.0))  # ties: the first is kept
    assert run.final() == ("b", None)
    run.offer_evaluation("e", score(0.8, -2.0))
    assert run.final() == ("e", None)


def test_a_solved_run_ends_at_its_solution_with_its_evaluation() -> None:
    run: RunProgress[str] = RunProgress()
    run.step("a")
    run.measured(0.1, "a")
    run.offer_evaluation("b", score(0.75, 1.0))
    solution = score(1.0, 3.0)
    run.solve("c", solution)
    assert run.final() == ("c", solution)
