"""Gradient descent in materio: the training loop as a Bluesky plan, and its peers."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..devices.dnpu import DNPU
from ..tasks import GATES, BooleanGate, Task, make_optimizer
from ..tasks.levels import DEFAULT_MIN_SWING_V, DEFAULT_SCREEN_BUDGET_S
from ..tasks.optimizers import DEFAULT_LR
from ..tasks.training import (
    DEFAULT_FD_STEP_V,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_METHOD,
    DEFAULT_OPTIMIZER,
    DEFAULT_PATIENCE,
    DEFAULT_SPSA_STEP_V,
    DEFAULT_TARGET_ACCURACY,
    DEFAULT_TARGET_MARGIN_NA,
)
from ._common import check_positive
from ._descent import descend
from ._gradients import METHODS, gradient_method
from ._side_by_side import run_side_by_side
from ._training import (
    Setting,
    Trainer,
    TrainResult,
    check_target_accuracy,
    device_names,
    make_trainers,
    on_inputs,
    prepare,
    resolve_inputs,
    run_metadata,
)
from .stubs import Plan, configure_hge

__all__ = [
    "DEFAULT_SCREEN_BUDGET_S",
    "GRADIENT_METHODS",
    "TrainResult",
    "evaluate_controls",
    "train",
    "train_boolean_gates",
]

#: The gradient methods ``train`` accepts.
GRADIENT_METHODS = tuple(METHODS)

#: Distance kept between a trained voltage's bound and the point its perturbation may reach.
_GUARD_V = 1e-6


def train(
    dnpu: DNPU | Sequence[DNPU],
    task: Task,
    *,
    method: str = DEFAULT_METHOD,
    optimizer: str = DEFAULT_OPTIMIZER,
    lr: float = DEFAULT_LR,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    patience: int = DEFAULT_PATIENCE,
    target_margin_na: float = DEFAULT_TARGET_MARGIN_NA,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    fd_step_v: float = DEFAULT_FD_STEP_V,
    spsa_step_v: float = DEFAULT_SPSA_STEP_V,
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
    (gradients, HGE only), ``primary`` (loss, score, controls, inputs and levels, device
    seconds per iteration, screening included: ``run.primary.read()``), ``screening`` (the
    candidates as ranked) and ``evaluation`` (unperturbed evaluations).

    Several devices: given a list of DNPUs, trains each on the task side by side, each in a
    run of its own (the runs are open at the same time; their start documents share
    ``side_by_side["group"]``). Their measurements are triggered together; each device keeps
    its own loop, and its run has the streams and start-document keys of a device trained
    alone. The first device draws its random starts from ``seed``, device ``k`` from the seed
    sequence ``[seed, k]``.

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
    gradient = gradient_method(method)
    for name, value in (("max_iterations", max_iterations), ("max_attempts", max_attempts)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    check_positive(lr=lr, fd_step_v=fd_step_v, spsa_step_v=spsa_step_v, min_swing_v=min_swing_v)
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
        all_tones = gradient.tones and (learn_levels or screen)
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
        yield from prepare(trainers, gradient.mode)
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
            hints={"dimensions": [(["train_iteration"], "primary")]},
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
            trainer: descend(trainer, new_optimizer, start, **loop)
            for trainer, start in zip(trainers, starts, strict=True)
        }
        return (yield from run_side_by_side(bodies, metadata, [t.lockin for t in trainers]))

    results = yield from on_inputs(dnpus, pinned, prepared_run)
    return results if several_given else results[0]


def _first_start(
    trainer: Trainer, controls: list[float] | None, levels: list[list[float]] | None
) -> Setting | None:
    """Return the given first start, refused before the run opens if it does not fit the device."""
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
    """Measure a task at a fixed setting, without training.

    E.g. re-check today a gate trained earlier (the setting of
    :func:`dnpu_bluesky.results.trained_setting`) for drift.

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
    """Refuse, before the run opens, controls of the wrong number or outside the electrode limits.

    The limits are checked by the electrode's own limit check (a ``LimitError``, which is a
    ValueError).
    """
    if point.shape != trainer.controls.shape:
        raise ValueError(
            f"{name} needs {trainer.controls.size} values for {trainer.dnpu.name}, "
            f"got {point.shape}"
        )
    for index, value in zip(trainer.controls, point, strict=True):
        trainer.dnpu.electrodes[index].setpoint.check_value(value)


def train_boolean_gates(
    dnpu: DNPU | Sequence[DNPU],
    gates: str | tuple[str, ...] | list[str] = GATES,
    *,
    method: str = DEFAULT_METHOD,
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
