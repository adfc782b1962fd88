"""Training without a device: the training plans' defaults and the bookkeeping of a descent.

:func:`dnpu_bluesky.plans.train` measures; what it keeps track of between its measurements is
here, as plain Python that can be tested without a RunEngine: :class:`ArmProgress` judges one
descent (its loss, with minibatches a running mean of it; its best score and point; the steps
since it last improved, which ``patience`` bounds), :class:`RunProgress` keeps what the whole
run has found and decides its final setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

# The defaults of dnpu_bluesky.plans.train (the learning rate is
# dnpu_bluesky.tasks.optimizers.DEFAULT_LR; the levels' swing and the screening's budget are in
# dnpu_bluesky.tasks.levels).
#: Gradient method.
DEFAULT_METHOD = "hge"
#: Optimizer.
DEFAULT_OPTIMIZER = "adam"
#: Steps per attempt.
DEFAULT_MAX_ITERATIONS = 120
#: Attempts (starts) at most.
DEFAULT_MAX_ATTEMPTS = 4
#: Steps without improvement before an attempt is abandoned.
DEFAULT_PATIENCE = 25
#: Separation (nA) between the classes at which a task counts as trained (also the genetic
#: algorithm's).
DEFAULT_TARGET_MARGIN_NA = 2.0
#: Accuracy at which training stops (also the genetic algorithm's).
DEFAULT_TARGET_ACCURACY = 1.0
#: Finite-difference step, volts (also of the gradient validation).
DEFAULT_FD_STEP_V = 0.01
#: SPSA perturbation, volts.
DEFAULT_SPSA_STEP_V = 0.02

# The defaults of dnpu_bluesky.plans.train_genetic, the group's earlier practice.
#: Genomes per generation.
DEFAULT_POPULATION = 26
#: Generations at most.
DEFAULT_GENERATIONS = 100
#: Best genomes kept unchanged.
DEFAULT_N_ELITE = 5
#: Width of the Gaussian mutation, volts.
DEFAULT_MUTATION_V = 0.1

#: Weight of the newest minibatch loss in the running mean that judges progress with batches.
BATCH_LOSS_WEIGHT = 0.25

#: A loss improves when it falls below the lowest so far by more than this fraction of it.
IMPROVEMENT_TOLERANCE = 1e-3


class Score(Protocol):
    """What the bookkeeping reads of a score (a :class:`~dnpu_bluesky.tasks.TaskScore`)."""

    accuracy: float
    margin_na: float


def rank(score: Score) -> tuple[float, float]:
    """Return the sort key of a score: higher accuracy first, then the wider margin.

    Parameters
    ----------
    score : TaskScore
        A measured score.

    Returns
    -------
    tuple of float
        ``(accuracy, margin_na)``, which compares as the scores rank.
    """
    return score.accuracy, score.margin_na


def reaches_target(score: Score, target_accuracy: float, target_margin_na: float) -> bool:
    """Tell whether a score reaches the training's target.

    Parameters
    ----------
    score : TaskScore
        A measured score.
    target_accuracy : float
        The accuracy to reach, in (0, 1].
    target_margin_na : float
        At an accuracy target of 1.0, the separation (nA) the classes must also reach.

    Returns
    -------
    bool
        At least ``target_accuracy`` and, at 1.0, the classes ``target_margin_na`` apart.
    """
    if score.accuracy < target_accuracy:
        return False
    return target_accuracy < 1.0 or score.margin_na >= target_margin_na


@dataclass
class ArmProgress:
    """How one descent (a candidate of the screening, or an attempt) has done.

    A step *improves* the descent when its loss (with minibatches: the running mean of the
    minibatch losses) falls below the lowest so far by more than
    :data:`IMPROVEMENT_TOLERANCE` of it, or when its score ranks above the best so far; either
    resets :attr:`since_best` and makes the step's point the :attr:`best_point`.

    Parameters
    ----------
    running_mean : bool
        Judge the loss by its running mean (minibatches: each step sees other cases), whose
        newest loss weighs :data:`BATCH_LOSS_WEIGHT`.

    Attributes
    ----------
    losses : list of float
        The judged loss of each step (infinite for a step whose output clipped).
    best_rank : tuple of float
        The best :func:`rank` measured.
    best_margin_na : float
        The widest margin measured.
    since_best : int
        Steps since the descent last improved (or since :meth:`restart`).
    best_point : numpy.ndarray or None
        The point of the last improving step (or the one given to :meth:`restart`).
    """

    running_mean: bool = False
    losses: list[float] = field(default_factory=list)
    best_rank: tuple[float, float] = (-np.inf, -np.inf)
    best_margin_na: float = -np.inf
    since_best: int = 0
    best_point: np.ndarray | None = None

    def record(self, loss: float, score: Score, point: np.ndarray) -> float:
        """Take the loss and score of one step measured within range.

        Parameters
        ----------
        loss : float
            The step's loss (of its minibatch, with minibatches).
        score : TaskScore
            The score of its outputs.
        point : numpy.ndarray
            The point it was measured at (copied).

        Returns
        -------
        float
            The loss that judges the step: ``loss``, or its running mean.
        """
        if self.running_mean and self.losses:
            weight = BATCH_LOSS_WEIGHT
            loss = (1 - weight) * self.losses[-1] + weight * loss
        improved = not self.losses or loss < min(self.losses) - IMPROVEMENT_TOLERANCE * abs(
            min(self.losses)
        )
        self.losses.append(loss)
        if rank(score) > self.best_rank or improved:
            self.best_rank, self.since_best = max(self.best_rank, rank(score)), 0
            self.best_point = np.array(point, dtype=float)
        else:
            self.since_best += 1
        self.best_margin_na = max(self.best_margin_na, score.margin_na)
        return loss

    def record_clipped(self) -> None:
        """Take a step whose output left the AI range: its loss counts as infinite."""
        self.losses.append(np.inf)

    def restart(self, point: np.ndarray) -> None:
        """Start an attempt from ``point``: patience counts afresh, the point is the best.

        Parameters
        ----------
        point : numpy.ndarray
            Where the attempt starts (copied).
        """
        self.since_best = 0
        self.best_point = np.array(point, dtype=float)

    def exhausted(self, patience: int) -> bool:
        """Tell whether the descent has gone ``patience`` steps without improving.

        Parameters
        ----------
        patience : int
            Steps without improvement allowed.

        Returns
        -------
        bool
            True when the attempt should end.
        """
        return self.since_best >= patience


SettingT = TypeVar("SettingT")


@dataclass
class RunProgress(Generic[SettingT]):
    """What one device's training has found across its descents, and its final setting.

    Attributes
    ----------
    iterations : int
        Steps taken, screening included.
    last : setting or None
        The setting of the last step.
    lowest : tuple or None
        ``(judged loss, setting)`` of the lowest judged loss measured within range.
    evaluated : tuple or None
        ``(setting, score)``: the best-ranked unperturbed evaluation (with minibatches).
    solved : tuple or None
        ``(setting, score)`` of the evaluation that reached the target.
    """

    iterations: int = 0
    last: SettingT | None = None
    lowest: tuple[float, SettingT] | None = None
    evaluated: tuple[SettingT, Any] | None = None
    solved: tuple[SettingT, Any] | None = None

    def step(self, setting: SettingT) -> int:
        """Count a step taken at ``setting``.

        Parameters
        ----------
        setting : setting
            Where it was measured.

        Returns
        -------
        int
            The step's iteration number, from 1.
        """
        self.iterations += 1
        self.last = setting
        return self.iterations

    def measured(self, loss: float, setting: SettingT) -> None:
        """Take a step's judged loss, measured within range.

        Parameters
        ----------
        loss : float
            The judged loss (:meth:`ArmProgress.record`).
        setting : setting
            Where it was measured.
        """
        if self.lowest is None or loss < self.lowest[0]:
            self.lowest = (loss, setting)

    def offer_evaluation(self, setting: SettingT, score: Score) -> None:
        """Keep an unperturbed evaluation if it ranks above the best kept so far.

        Parameters
        ----------
        setting : setting
            What was evaluated.
        score : TaskScore
            Its score on the whole training split.
        """
        if self.evaluated is None or rank(score) > rank(self.evaluated[1]):
            self.evaluated = (setting, score)

    def solve(self, setting: SettingT, score: Score) -> None:
        """Record the evaluation that reached the target; training ends.

        Parameters
        ----------
        setting : setting
            What was evaluated.
        score : TaskScore
            Its score.
        """
        self.solved = (setting, score)

    def final(self) -> tuple[SettingT | None, Any]:
        """Return the run's final setting and, when already measured, its evaluation.

        Returns
        -------
        tuple
            The solved setting and its evaluation; else the best evaluated setting (to be
            measured once more, so that the run's last evaluation is of it); else the setting
            of the lowest loss measured within range, or the last one if none was; with None
            for the evaluation. ``(None, None)`` when no step was taken.
        """
        if self.solved is not None:
            return self.solved
        if self.evaluated is not None:
            return self.evaluated[0], None
        if self.lowest is not None:
            return self.lowest[1], None
        return self.last, None
