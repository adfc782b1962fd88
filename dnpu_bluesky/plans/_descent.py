"""One device's descent: screening the input electrodes, then attempts from the best starts.

Internal to :mod:`dnpu_bluesky.plans`: :func:`dnpu_bluesky.plans.train` runs :func:`descend`
for each device. An arm (a candidate of the screening, or an attempt) keeps its point, its
optimizer and its progress; the progress across arms decides the final setting.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps

from ..devices.records import ScreeningRecord
from ..tasks.screening import reachable_margin
from ..tasks.training import ArmProgress, RunProgress, reaches_target
from ._training import Plan, Setting, Trainer, level_fields

#: Steps each surviving candidate takes per screening round; half survive each round.
SCREEN_ROUNDS = (1, 1, 2, 4)

# The training's own logger: its warnings are the train plan's, as users configure them.
_log = logging.getLogger("dnpu_bluesky.plans.train")


@dataclass
class _Arm:
    """One candidate of the screening, or one attempt.

    It holds where it is, its own optimizer, how it has done
    (:class:`~dnpu_bluesky.tasks.training.ArmProgress`) and its last step.
    """

    inputs: str
    point: np.ndarray
    optimizer: Any
    progress: ArmProgress
    promise: float = -np.inf
    # The last step measured: the step, its cases, the point and the point's bounds.
    last: tuple[Any, np.ndarray | None, np.ndarray, np.ndarray] | None = None


def descend(
    trainer: Trainer,
    new_optimizer: Callable[[Trainer], Any],
    start: Setting | None,
    *,
    max_iterations: int,
    max_attempts: int,
    patience: int,
    target_margin_na: float,
    target_accuracy: float,
    screen_budget_s: float | None,
) -> Plan:
    """One device's training loop; yields plan messages and measurement requests.

    An attempt ends after ``patience`` steps that improved neither its loss (with
    minibatches: a running mean of it) nor its best measured score. With minibatches each
    attempt ends with an unperturbed evaluation of its best point on the whole training
    split: the final setting is the best one evaluated (these, and the checks of minibatches
    that reached the target), measured once more at the end.
    """
    task = trainer.task
    uses_batches = task.batch_size is not None
    progress: RunProgress[Setting] = RunProgress()

    def reached(score: Any) -> bool:
        return reaches_target(score, target_accuracy, target_margin_na)

    def new_arm(inputs: str, point: np.ndarray) -> _Arm:
        return _Arm(inputs, point, new_optimizer(trainer), ArmProgress(uses_batches))

    def one_step(arm: _Arm, attempt: int) -> Plan:
        """Measure and record one step of ``arm``; returns True when the arm must stop."""
        # Where a Ctrl-C (a deferred pause) takes effect: between steps, not within one.
        yield from bps.checkpoint()
        yield from trainer.use_inputs(arm.inputs)
        indices = task.minibatch(trainer.rng) if uses_batches else None
        yield from trainer.apply(arm.point, indices)
        clipped_before = trainer.clipped_samples
        step = yield from trainer.step(arm.point, indices)
        clipped = trainer.clipped_samples - clipped_before
        setting = Setting(arm.inputs, arm.point.copy())
        iteration = progress.step(setting)
        score = yield from trainer.record_step(
            iteration, attempt, arm.point, step, indices, clipped
        )
        if clipped:
            # Outputs and gradient read through a clipped ADC are wrong: start afresh.
            _report_clipped_step(trainer, arm.point, iteration, attempt, max_attempts)
            arm.progress.record_clipped()
            arm.last = None
            return True
        loss = arm.progress.record(step.loss, score, arm.point)
        arm.last = (step, indices, arm.point.copy(), trainer.bounds)
        progress.measured(loss, setting)
        if reached(score):
            checked, clipped = yield from trainer.evaluate(setting, attempt)
            if reached(checked) and not clipped:
                progress.solve(setting, checked)
                return True
            if uses_batches and not clipped:
                progress.offer_evaluation(setting, checked)
        arm.point = trainer.project(arm.optimizer.step(arm.point, step.gradient))
        return False

    ranked: list[_Arm] = []
    if screen_budget_s is not None:
        ranked = yield from _screen(trainer, new_arm, one_step, screen_budget_s, progress)
    attempt = 0
    for attempt in range(max_attempts if progress.solved is None else 0):
        arm = yield from _next_arm(
            trainer, new_arm, start if attempt == 0 else None, ranked, attempt
        )
        arm.progress.restart(arm.point)
        for _ in range(max_iterations):
            if (yield from one_step(arm, attempt)):
                break
            if arm.progress.exhausted(patience):
                break
        if progress.solved is not None:
            break
        if uses_batches:
            setting = Setting(arm.inputs, arm.progress.best_point.copy())
            checked, clipped = yield from trainer.evaluate(setting, attempt)
            if not clipped:
                progress.offer_evaluation(setting, checked)
    final_setting, final = progress.final()
    if final_setting is None:  # not one step was taken
        final_setting = Setting(trainer.input_names, trainer.random_point())
    return (
        yield from trainer.finish(
            final_setting,
            final,
            attempt=attempt,
            iterations=progress.iterations,
            attempts=attempt + 1,
        )
    )


def _promise(trainer: Trainer, arm: _Arm) -> float:
    """Return how far the arm's last measurement says a descent from there can go.

    That is the reachable margin where the method measured each output's derivatives, else
    minus the loss; -inf for an arm not measured or whose last step clipped.
    """
    if arm.last is None:
        return -np.inf
    step, indices, point, bounds = arm.last
    if step.jacobian is None:
        return -arm.progress.losses[-1]
    targets = trainer.task.targets()
    targets = targets if indices is None else targets[indices]
    return reachable_margin(step.outputs, step.jacobian, targets, point, bounds)


def _screen(
    trainer: Trainer,
    new_arm: Callable[[str, np.ndarray], _Arm],
    one_step: Callable[[_Arm, int], Plan],
    budget_s: float,
    progress: RunProgress,
) -> Plan:
    """Successive halving over the candidate inputs; returns the candidates ranked.

    Every assignment of the inputs starts one descent per polarity class (with trained
    levels and two or more inputs: whether each further input's logical 1 lies on the same
    side as the first input's, which a descent never changes) from random controls and levels
    at the ends of the inputs' ranges. After each round of :data:`SCREEN_ROUNDS` steps the
    half with the highest promise goes on (:func:`_promise`: the margin the linearised device
    reaches). Screening ends when the rounds are done, the budget is spent or a step solves
    the task. Candidates dropped earlier rank below those dropped later.
    """
    arms = []
    n_classes = 2 ** (trainer.inputs.size - 1) if trainer.learn_levels else 1
    for polarity in range(n_classes):
        for names in trainer.candidates():
            yield from trainer.use_inputs(names)
            first = trainer.rng.random() < 0.5
            others = [bool((polarity >> k) & 1) != first for k in range(trainer.inputs.size - 1)]
            point = trainer.random_point(np.array([first, *others]))
            arms.append(new_arm(names, point))
    dropped: list[_Arm] = []
    spent_at_start = trainer.device_seconds
    for steps in SCREEN_ROUNDS:
        for arm in arms:
            for _ in range(steps):
                if trainer.device_seconds - spent_at_start >= budget_s:
                    break
                if (yield from one_step(arm, -1)):
                    break
            if progress.solved is not None:
                for candidate in arms:
                    candidate.promise = _promise(trainer, candidate)
                return (yield from _record_ranking(trainer, arms + dropped))
        for candidate in arms:
            candidate.promise = _promise(trainer, candidate)
        arms.sort(key=lambda arm: arm.promise, reverse=True)
        keep = max(1, round(len(arms) / 2))
        dropped = arms[keep:] + dropped
        arms = arms[:keep]
        if trainer.device_seconds - spent_at_start >= budget_s:
            break
    return (yield from _record_ranking(trainer, arms + dropped))


def _record_ranking(trainer: Trainer, ranked: list[_Arm]) -> Plan:
    """Save the screening's ranking to the ``screening`` stream; returns it."""
    record = ScreeningRecord(name="screening")
    for position, arm in enumerate(ranked):
        yield from trainer.use_inputs(arm.inputs)
        record.record(
            rank=position + 1,
            inputs=arm.inputs,
            steps=len(arm.progress.losses),
            loss=float(arm.progress.losses[-1]) if arm.progress.losses else np.inf,
            promise_na=float(arm.promise),
            best_margin_na=float(arm.progress.best_margin_na),
            controls=arm.point[: trainer.controls.size],
            **level_fields(trainer.levels_of(arm.point), ""),
        )
        yield from bps.trigger_and_read([record], name="screening")
    return ranked


def _next_arm(
    trainer: Trainer,
    new_arm: Callable[[str, np.ndarray], _Arm],
    start: Setting | None,
    ranked: list[_Arm],
    attempt: int,
) -> Plan:
    """Return attempt ``attempt``'s arm.

    That is the given start, the next screened candidate (continued where its screening left
    it, with its own optimizer), or a random start on the best candidate's inputs (without
    screening: the device's).
    """
    if start is None and attempt < len(ranked):
        yield from trainer.use_inputs(ranked[attempt].inputs)
        return ranked[attempt]
    inputs = start.inputs if start is not None else trainer.input_names
    if start is None and ranked:
        inputs = ranked[0].inputs
    yield from trainer.use_inputs(inputs)
    point = start.point.copy() if start is not None else trainer.random_point()
    return new_arm(inputs, trainer.project(point))


def _report_clipped_step(
    trainer: Trainer, point: np.ndarray, iteration: int, attempt: int, attempts: int
) -> None:
    then = "a new start" if attempt + 1 < attempts else "no attempts left"
    _log.warning(
        "%s, iteration %d: the output left the AI range (%s) at %s %s; attempt %d of "
        "%d ends there, %s",
        trainer.dnpu.name,
        iteration,
        trainer.dnpu.clipped_samples.name,
        trainer.input_names,
        np.array2string(point, precision=3),
        attempt + 1,
        attempts,
        then,
    )
