"""Gradient descent in materio: the training loop as a Bluesky plan, and its peers."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps

from ..devices.dnpu import DNPU
from ..devices.records import ScreeningRecord
from ..tasks import GATES, BooleanGate, Task, make_optimizer
from ..tasks.levels import DEFAULT_MIN_SWING_V, DEFAULT_SCREEN_BUDGET_S
from ..tasks.optimizers import DEFAULT_LR
from ..tasks.screening import reachable_margin
from ._training import (
    Setting,
    Trainer,
    TrainResult,
    check_target_accuracy,
    device_names,
    level_fields,
    make_trainers,
    on_inputs,
    prepare,
    rank,
    reaches_target,
    resolve_inputs,
    run_metadata,
    run_side_by_side,
)
from .hge import _check_choice, _check_positive
from .stubs import Plan, configure_hge

__all__ = [
    "DEFAULT_SCREEN_BUDGET_S",
    "GRADIENT_METHODS",
    "TrainResult",
    "evaluate_controls",
    "train",
    "train_boolean_gates",
]

GRADIENT_METHODS = ("hge", "fd", "spsa")

#: Steps each surviving candidate takes per screening round; half survive each round.
SCREEN_ROUNDS = (1, 1, 2, 4)

_log = logging.getLogger(__name__)

#: Distance kept between a trained voltage's bound and the point its perturbation may reach.
_GUARD_V = 1e-6


def train(
    dnpu: DNPU | Sequence[DNPU],
    task: Task,
    *,
    method: str = "hge",
    optimizer: str = "adam",
    lr: float = DEFAULT_LR,
    max_iterations: int = 120,
    max_attempts: int = 4,
    patience: int = 25,
    target_margin_na: float = 2.0,
    target_accuracy: float = 1.0,
    fd_step_v: float = 0.01,
    spsa_step_v: float = 0.02,
    inputs: str | Sequence[str] | None = None,
    learn_levels: bool = True,
    min_swing_v: float = DEFAULT_MIN_SWING_V,
    screen_budget_s: float = DEFAULT_SCREEN_BUDGET_S,
    initial_controls: list[float] | None = None,
    initial_levels: list[list[float]] | None = None,
    seed: int = 0,
    md: dict | None = None,
) -> Plan:
    """Train a device on a task by gradient descent measured on the device.

    Each iteration presents the task's input cases, measures the outputs and the gradient of
    the loss (``method``: ``"hge"`` homodyne gradient extraction, one stream per step; ``"fd"``
    central finite differences, 2 streams per parameter; ``"spsa"`` simultaneous
    perturbation, 2 streams), takes an optimizer step and applies it. The parameters are the
    control voltages and, with ``learn_levels``, each input's logical-0 and logical-1 voltage
    (a sphere: each input range's two ends), kept inside the electrode's limits and at least
    ``min_swing_v`` apart (:mod:`dnpu_bluesky.tasks.levels`). With HGE every electrode then
    carries a tone, so one stream per step measures the slopes of inputs and controls alike.

    Which electrodes are the inputs: ``inputs=None`` screens them for a Boolean gate (and
    keeps the device's own for other tasks); ``inputs="screen"`` screens for any task; names
    (``"e3,e4"`` or ``["e3", "e4"]``) pin them. Screening starts a short descent on every
    assignment, once per polarity class (whether the second input's logical 1 lies on the
    same side as the first's), from random controls and levels at the ends of the inputs'
    ranges; after each round (of 1, 1, 2 and 4 steps) the half whose last measurement
    promises the wider margin goes on (:func:`dnpu_bluesky.tasks.screening.reachable_margin`),
    within ``screen_budget_s`` device seconds. Attempt ``a`` then continues the ``a``-th
    best candidate where its screening left it.

    When the measured outputs reach ``target_accuracy`` (at 1.0, the default: every case
    right and the classes ``target_margin_na`` apart), the setting is evaluated without
    perturbations on the whole training split; training stops once that evaluation reaches
    it too. An attempt that has improved neither its loss (with minibatches: a running mean
    of it) nor its best measured score for ``patience`` iterations is abandoned for the next
    start (at most ``max_attempts``).

    Streams: the raw waveforms (``hge_raw``/``fd_raw``/``spsa_raw``/``eval_raw``), ``hge``
    (gradients, HGE only), ``train`` (loss, score, controls, inputs and levels, device seconds
    per iteration, screening included), ``screening`` (the candidates as ranked) and
    ``evaluation`` (unperturbed evaluations).

    Several devices: given a list of DNPUs, trains each on the task side by side in one run.
    Their measurements are triggered together; each device keeps its own loop and its own
    streams, named with the device's name appended (``train_dnpu2``, ...). The first device
    draws its random starts from ``seed``, device ``k`` from the seed sequence ``[seed, k]``.

    Parameters
    ----------
    dnpu : DNPU or list of DNPU
        The device, or devices trained side by side.
    task : Task
        What to learn, e.g. ``BooleanGate("XOR")``.
    method : str
        ``"hge"``, ``"fd"`` or ``"spsa"``.
    optimizer : str
        ``"adam"`` or ``"gd"``.
    lr : float
        Learning rate, volts per step.
    max_iterations : int
        Steps per attempt.
    max_attempts : int
        Starts at most.
    patience : int
        Steps without improvement before an attempt is abandoned.
    target_margin_na : float
        Separation (nA) at which a gate counts as trained.
    target_accuracy : float
        Accuracy at which training stops, in (0, 1].
    fd_step_v : float
        Finite-difference step, volts.
    spsa_step_v : float
        SPSA perturbation, volts.
    inputs : str or list of str, optional
        ``None`` (screen for Boolean gates), ``"screen"``, or the input electrodes' names.
    learn_levels : bool
        Train the input levels too (otherwise they stay the task's).
    min_swing_v : float
        Smallest distance between an input's two levels, volts.
    screen_budget_s : float
        Device seconds the screening may spend.
    initial_controls : list of float, optional
        First start's controls (e.g. an earlier run's, to continue it).
    initial_levels : list of list of float, optional
        First start's levels, ``(n_inputs, 2)`` volts (with ``learn_levels``).
    seed : int
        Seed of the random starts.
    md : dict, optional
        Extra start-document metadata.

    Yields
    ------
    Msg
        The plan's messages.

    Returns
    -------
    TrainResult or list of TrainResult
        One per device, in the order given.
    """
    several_given = not isinstance(dnpu, DNPU)
    dnpus = list(dnpu) if several_given else [dnpu]
    _check_choice("method", method, GRADIENT_METHODS)
    for name, value in (("max_iterations", max_iterations), ("max_attempts", max_attempts)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    _check_positive(lr=lr, fd_step_v=fd_step_v, spsa_step_v=spsa_step_v, min_swing_v=min_swing_v)
    if not (np.isfinite(screen_budget_s) and screen_budget_s >= 0):
        raise ValueError(f"screen_budget_s must be >= 0 device seconds, got {screen_budget_s!r}")
    check_target_accuracy(target_accuracy)
    screen, pinned = resolve_inputs(inputs, task)
    if initial_levels is not None and not learn_levels:
        raise ValueError("initial_levels needs learn_levels=True")
    settings = {
        "fd_step_v": fd_step_v,
        "spsa_step_v": spsa_step_v,
        "learn_levels": bool(learn_levels),
        "min_swing_v": float(min_swing_v),
    }
    amplitudes = {d.name: float(d.amplitudes().max()) for d in dnpus}

    def perturbation_margin(device: DNPU) -> float:
        # A setting on its bound plus a tone's crest must not round past the limit.
        return max(amplitudes[device.name], fd_step_v, spsa_step_v) + _GUARD_V

    def new_optimizer(trainer: Trainer) -> Any:
        return make_optimizer(optimizer, lr, trainer.bounds)

    def prepared_run() -> Plan:
        trainers = make_trainers(dnpus, task, method, seed, settings, perturbation_margin)
        # Tones on every electrode when the inputs' slopes are needed or the inputs move.
        all_tones = method == "hge" and (learn_levels or screen)
        if all_tones:
            for device in dnpus:
                yield from configure_hge(
                    device,
                    amplitude_v=amplitudes[device.name],
                    window_s=float(device.window_s.get()),
                    electrodes="all",
                )
        starts = [_first_start(t, initial_controls, initial_levels) for t in trainers]
        for trainer in trainers:
            if screen and not trainer.candidates():
                raise ValueError(
                    f"{trainer.dnpu.name}: no {task.n_inputs} electrodes can hold the task's input "
                    "levels; give levels inside the electrode limits or name the inputs"
                )
        yield from prepare(trainers, "parallel" if method == "hge" else "off")
        plan_args = {
            "dnpu": device_names(dnpus, several_given),
            "task": task.name,
            "method": method,
            "optimizer": optimizer,
            "lr": lr,
            "max_iterations": max_iterations,
            "max_attempts": max_attempts,
            "patience": patience,
            "target_margin_na": target_margin_na,
            "target_accuracy": target_accuracy,
            "inputs": "screen" if screen else trainers[0].input_names,
            "learn_levels": bool(learn_levels),
            "min_swing_v": float(min_swing_v),
            "screen_budget_s": float(screen_budget_s) if screen else 0.0,
            "seed": seed,
        }
        if initial_controls is not None:
            plan_args["initial_controls"] = [float(v) for v in initial_controls]
        if initial_levels is not None:
            plan_args["initial_levels"] = np.asarray(initial_levels, dtype=float).tolist()
        metadata = run_metadata(trainers, "train", plan_args, md)
        metadata.update(
            optimizer=new_optimizer(trainers[0]).describe(),
            seed=seed,
            hints={"dimensions": [(["train_iteration"], trainers[0].stream("train"))]},
        )
        loop = {
            "max_iterations": int(max_iterations),
            "max_attempts": int(max_attempts),
            "patience": patience,
            "target_margin_na": target_margin_na,
            "target_accuracy": float(target_accuracy),
            "screen_budget_s": float(screen_budget_s) if screen else None,
        }

        bodies = {
            trainer: _descend(trainer, new_optimizer, start, **loop)
            for trainer, start in zip(trainers, starts, strict=True)
        }
        return (yield from run_side_by_side(bodies, metadata, [t.lockin for t in trainers]))

    results = yield from on_inputs(dnpus, pinned, prepared_run)
    return results if several_given else results[0]


def _first_start(
    trainer: Trainer, controls: list[float] | None, levels: list[list[float]] | None
) -> Setting | None:
    """The given first start, refused before the run opens if it does not fit the device."""
    if controls is None and levels is None:
        return None
    if controls is None:
        point = trainer.random_point()[: trainer.controls.size]
    else:
        point = np.asarray(controls, dtype=float)
        _check_controls(trainer, point, "initial_controls")
    if levels is not None:
        levels = np.asarray(levels, dtype=float)
        if levels.shape != (trainer.inputs.size, 2):
            raise ValueError(
                f"initial_levels needs ({trainer.inputs.size}, 2) volts, got {levels.shape}"
            )
    return Setting(trainer.input_names, trainer.project(trainer.with_levels(point, levels)))


def evaluate_controls(
    dnpu: DNPU,
    task: Task,
    controls: Sequence[float],
    *,
    inputs: str | None = None,
    input_levels: list[list[float]] | None = None,
    threshold_na: float | None = None,
    md: dict | None = None,
) -> Plan:
    """Measure a task at a fixed setting, without training: e.g. re-check today a gate trained
    earlier (the setting of :func:`dnpu_bluesky.results.trained_setting`) for drift.

    One run with the streams of a training run's final evaluation: ``eval_raw`` and
    ``evaluation`` on the training cases and, for tasks with held-out data, ``eval_test_raw``
    and ``evaluation_test``, classified at the training cases' threshold. A bad setting is
    refused before any voltage is applied.

    Parameters
    ----------
    dnpu : DNPU
        The device.
    task : Task
        The task, whose inputs the device's input electrodes take.
    controls : list of float
        One voltage per control electrode, in channel order, within its limits.
    inputs : str, optional
        The input electrodes (``"e0,e2"``); default: the device's current ones.
    input_levels : list of list of float, optional
        ``(n_inputs, 2)`` logical-0 and logical-1 volts; default: the task's levels.
    threshold_na : float, optional
        Classify the training cases at this threshold (e.g. the one chosen when the setting
        was trained); None picks the best one for the outputs measured now.
    md : dict, optional
        Extra start-document metadata (e.g. ``{"source_run": uid}``).

    Yields
    ------
    Msg
        The plan's messages.

    Returns
    -------
    TrainResult
        With ``method="evaluate"`` and no iterations.
    """
    _, pinned = resolve_inputs(inputs, task) if inputs is not None else (False, None)

    levels = None if input_levels is None else np.asarray(input_levels, dtype=float)
    if levels is not None and levels.shape != (task.n_inputs, 2):
        raise ValueError(f"input_levels needs ({task.n_inputs}, 2) volts")

    def prepared_run() -> Plan:
        settings = {} if levels is None else {"input_levels": levels}
        (trainer,) = make_trainers([dnpu], task, "evaluate", 0, settings, lambda device: 0.0)
        point = np.asarray(controls, dtype=float)
        _check_controls(trainer, point, "controls")
        yield from prepare([trainer], "off")
        plan_args: dict[str, Any] = {
            "dnpu": repr(dnpu.name),
            "task": task.name,
            "controls": point.tolist(),
            "inputs": trainer.input_names,
        }
        if levels is not None:
            plan_args["input_levels"] = levels.tolist()
        if threshold_na is not None:
            plan_args["threshold_na"] = float(threshold_na)
        metadata = run_metadata([trainer], "evaluate_controls", plan_args, md)
        setting = Setting(trainer.input_names, point)
        body = trainer.finish(
            setting, None, attempt=0, iterations=0, attempts=0, threshold_na=threshold_na
        )
        return (yield from run_side_by_side({trainer: body}, metadata, []))

    (result,) = yield from on_inputs([dnpu], pinned, prepared_run)
    return result


def _check_controls(trainer: Trainer, point: np.ndarray, name: str) -> None:
    """Refuse, before the run opens, controls of the wrong number or outside the electrode
    limits, with the electrode's own limit check (a ``LimitError``, which is a ValueError)."""
    if point.shape != trainer.controls.shape:
        raise ValueError(
            f"{name} needs {trainer.controls.size} values for {trainer.dnpu.name}, "
            f"got {point.shape}"
        )
    for index, value in zip(trainer.controls, point, strict=True):
        trainer.dnpu.electrodes[index].setpoint.check_value(value)


#: Weight of the newest minibatch loss in the running mean that judges progress with batches.
_BATCH_LOSS_WEIGHT = 0.25


@dataclass
class _Arm:
    """One candidate of the screening, or one attempt: where it is, its own optimizer, and how
    it has done (its latest step and its best measured score)."""

    inputs: str
    point: np.ndarray
    optimizer: Any
    losses: list[float] = field(default_factory=list)
    best: tuple[float, float] = (-np.inf, -np.inf)
    since_best: int = 0
    promise: float = -np.inf
    best_margin_na: float = -np.inf
    # The last step measured: the step, its cases, the point and the point's bounds.
    last: tuple[Any, np.ndarray | None, np.ndarray, np.ndarray] | None = None


@dataclass
class _Progress:
    """What one device's training has found so far (the bookkeeping across attempts)."""

    iteration: int = 0
    best: tuple[float, Setting] | None = None
    evaluated: tuple[Setting, Any] | None = None  # minibatches: the best setting evaluated
    solved: tuple[Setting, Any] | None = None
    last: Setting | None = None


def _descend(
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
    minibatch = getattr(task, "minibatch", None)
    uses_batches = minibatch is not None and getattr(task, "batch_size", None) is not None
    progress = _Progress()

    def reached(score: Any) -> bool:
        return reaches_target(score, target_accuracy, target_margin_na)

    def one_step(arm: _Arm, attempt: int) -> Plan:
        """Measure and record one step of ``arm``; returns True when the arm must stop."""
        # Where a Ctrl-C (a deferred pause) takes effect: between steps, not within one.
        yield from bps.checkpoint()
        yield from trainer.use_inputs(arm.inputs)
        indices = minibatch(trainer.rng) if uses_batches else None
        yield from trainer.apply(arm.point, indices)
        clipped_before = trainer.clipped_samples
        step = yield from trainer.step(arm.point, indices)
        clipped = trainer.clipped_samples - clipped_before
        progress.iteration += 1
        score = yield from trainer.record_step(
            progress.iteration, attempt, arm.point, step, indices, clipped
        )
        setting = Setting(arm.inputs, arm.point.copy())
        progress.last = setting
        if clipped:
            # Outputs and gradient read through a clipped ADC are wrong: start afresh.
            _report_clipped_step(trainer, arm.point, progress.iteration, attempt, max_attempts)
            arm.losses.append(np.inf)
            arm.last = None
            return True
        loss = step.loss
        if uses_batches:
            w = _BATCH_LOSS_WEIGHT
            loss = loss if not arm.losses else (1 - w) * arm.losses[-1] + w * loss
        improved = not arm.losses or loss < min(arm.losses) - 1e-3 * abs(min(arm.losses))
        arm.losses.append(loss)
        if rank(score) > arm.best or improved:
            arm.best, arm.since_best = max(arm.best, rank(score)), 0
        else:
            arm.since_best += 1
        arm.best_margin_na = max(arm.best_margin_na, score.margin_na)
        arm.last = (step, indices, arm.point.copy(), trainer.bounds)
        if progress.best is None or loss < progress.best[0]:
            progress.best = (loss, setting)
        if reached(score):
            checked, clipped = yield from trainer.evaluate(setting, attempt)
            if reached(checked) and not clipped:
                progress.solved = (setting, checked)
                return True
            if uses_batches and not clipped:
                progress.evaluated = _better_of(progress.evaluated, setting, checked)
        arm.point = trainer.project(arm.optimizer.step(arm.point, step.gradient))
        return False

    ranked: list[_Arm] = []
    if screen_budget_s is not None:
        ranked = yield from _screen(trainer, new_optimizer, one_step, screen_budget_s, progress)
    attempt = 0
    for attempt in range(max_attempts if progress.solved is None else 0):
        arm = yield from _next_arm(
            trainer, new_optimizer, start if attempt == 0 else None, ranked, attempt
        )
        arm.since_best = 0
        best_point = arm.point.copy()
        for _ in range(max_iterations):
            if (yield from one_step(arm, attempt)):
                break
            if arm.since_best == 0:
                best_point = progress.last.point.copy()
            if arm.since_best >= patience:
                break
        if progress.solved is not None:
            break
        if uses_batches:
            setting = Setting(arm.inputs, best_point)
            checked, clipped = yield from trainer.evaluate(setting, attempt)
            if not clipped:
                progress.evaluated = _better_of(progress.evaluated, setting, checked)
    final = None
    if progress.solved is not None:
        final_setting, final = progress.solved
    elif progress.evaluated is not None:
        # Measured once more, so that the run's last evaluation is of its final setting.
        final_setting = progress.evaluated[0]
    else:
        # Unsolved: the best setting measured within range (the last one if none was) is
        # evaluated without tones.
        final_setting = progress.best[1] if progress.best is not None else progress.last
    if final_setting is None:  # not one step was taken
        final_setting = Setting(trainer.input_names, trainer.random_point())
    return (
        yield from trainer.finish(
            final_setting,
            final,
            attempt=attempt,
            iterations=progress.iteration,
            attempts=attempt + 1,
        )
    )


def _promise(trainer: Trainer, arm: _Arm) -> float:
    """How far the arm's last measurement says a descent from there can go: the reachable
    margin where the method measured each output's derivatives, else minus the loss; -inf
    for an arm not measured or whose last step clipped."""
    if arm.last is None:
        return -np.inf
    step, indices, point, bounds = arm.last
    if step.jacobian is None:
        return -arm.losses[-1]
    targets = trainer.task.targets()
    targets = targets if indices is None else targets[indices]
    return reachable_margin(step.outputs, step.jacobian, targets, point, bounds)


def _screen(
    trainer: Trainer,
    new_optimizer: Callable[[Trainer], Any],
    one_step: Callable[[_Arm, int], Plan],
    budget_s: float,
    progress: _Progress,
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
            arms.append(_Arm(names, point, new_optimizer(trainer)))
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
            steps=len(arm.losses),
            loss=float(arm.losses[-1]) if arm.losses else np.inf,
            promise_na=float(arm.promise),
            best_margin_na=float(arm.best_margin_na),
            controls=arm.point[: trainer.controls.size],
            **level_fields(trainer.levels_of(arm.point), ""),
        )
        yield from bps.trigger_and_read([record], name=trainer.stream("screening"))
    return ranked


def _next_arm(
    trainer: Trainer,
    new_optimizer: Callable[[Trainer], Any],
    start: Setting | None,
    ranked: list[_Arm],
    attempt: int,
) -> Plan:
    """Attempt ``attempt``'s arm: the given start, the next screened candidate (continued
    where its screening left it, with its own optimizer), or a random start on the best
    candidate's inputs (without screening: the device's)."""
    if start is None and attempt < len(ranked):
        yield from trainer.use_inputs(ranked[attempt].inputs)
        return ranked[attempt]
    inputs = start.inputs if start is not None else trainer.input_names
    if start is None and ranked:
        inputs = ranked[0].inputs
    yield from trainer.use_inputs(inputs)
    point = start.point.copy() if start is not None else trainer.random_point()
    return _Arm(inputs, trainer.project(point), new_optimizer(trainer))


def _better_of(
    kept: tuple[Setting, Any] | None, setting: Setting, score: Any
) -> tuple[Setting, Any]:
    """``(setting, score)`` if its score ranks above the ``kept`` pair's; otherwise ``kept``."""
    if kept is None or rank(score) > rank(kept[1]):
        return setting, score
    return kept


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


def train_boolean_gates(
    dnpu: DNPU | Sequence[DNPU],
    gates: str | tuple[str, ...] | list[str] = GATES,
    *,
    method: str = "hge",
    seed: int = 0,
    task_options: dict | None = None,
    md: dict | None = None,
    **train_options: Any,
) -> Plan:
    """Train each Boolean gate in its own run; returns ``{gate: TrainResult}``.

    Parameters
    ----------
    dnpu : DNPU or list of DNPU
        The device, or devices trained side by side (the values are then lists).
    gates : str or list of str
        Names such as ``["XOR", "AND"]``, or one name.
    method : str
        Gradient method, see :func:`train`.
    seed : int
        Seed of the first gate; gate ``i`` uses ``seed + i``.
    task_options : dict, optional
        Keyword arguments of :class:`~dnpu_bluesky.tasks.BooleanGate`.
    md : dict, optional
        Extra start-document metadata.
    **train_options
        Passed on to :func:`train`.

    Yields
    ------
    Msg
        The plan's messages.

    Returns
    -------
    dict
        ``{gate: TrainResult}``.
    """
    names = [gates] if isinstance(gates, str) else gates
    tasks = [BooleanGate(gate=gate, **(task_options or {})) for gate in names]
    results = {}
    for index, task in enumerate(tasks):
        results[task.gate] = yield from train(
            dnpu, task, method=method, seed=seed + index, md=md, **train_options
        )
    return results
