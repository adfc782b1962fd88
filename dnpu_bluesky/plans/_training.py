"""What the training plans share: one device's trainer and its settings.

Internal to :mod:`dnpu_bluesky.plans`; the plans (``train``, ``train_genetic``,
``evaluate_controls``) are the API. A trainer works on a *point*: the control voltages, followed,
when the input levels are trained, by each input's logical-0 and logical-1 voltage
(:mod:`dnpu_bluesky.tasks.levels`). Which electrodes are inputs is the device's ``inputs``
signal, which a trainer may change between steps (screening).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import Msg

from ..callbacks.lockin import LockInCallback
from ..devices.dnpu import DNPU
from ..devices.records import EvaluationRecord, TrainRecord
from ..tasks import BooleanGate, Task
from ..tasks.levels import (
    apply_levels,
    check_level_bounds,
    full_swing_levels,
    project_levels,
)
from ._common import start_metadata
from ._gradients import METHODS, Step
from ._side_by_side import Measure
from .stubs import new_gradient_record, set_input_cases

Plan = Generator[Msg, Any, Any]


@dataclass
class TrainResult:
    """What one training run achieved, as the benchmark and the CLI table report it.

    ``solved`` is True when the final evaluation without perturbations classified every case
    correctly and the output stayed inside the AI range (``clipped_samples`` is 0).
    ``inputs`` names the input electrodes of the result (``"e0,e2"``) and ``input_levels``
    holds each input's logical-0 and logical-1 volts (for a sphere: its range's two ends).
    """

    task: str
    method: str
    solved: bool
    accuracy: float
    margin_na: float
    threshold_na: float
    iterations: int
    attempts: int
    measurements: int
    device_s: float
    controls: list[float] = field(default_factory=list)
    test_accuracy: float | None = None
    device: str = ""
    clipped_samples: int = 0
    inputs: str = ""
    input_levels: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass(frozen=True)
class Setting:
    """A point together with the input electrodes it was found on."""

    inputs: str
    point: np.ndarray


class Trainer:
    """State shared by the steps of one device's training run.

    Parameters
    ----------
    dnpu : DNPU
        The device.
    task : Task
        The task.
    method : str
        A gradient method (a key of :data:`~dnpu_bluesky.plans._gradients.METHODS`), or
        ``"ga"`` or ``"evaluate"`` for trainers that take no gradient steps.
    seed : int or list of int
        Seed of the trainer's random draws.
    settings : dict
        ``perturbation_margin_v`` (how far inside the limits every voltage stays),
        ``learn_levels`` (bool), ``min_swing_v``, ``input_levels`` (fixed levels other than
        the task's own), and the method's step sizes.
    """

    def __init__(
        self,
        dnpu: DNPU,
        task: Task,
        method: str,
        seed: int | list[int],
        settings: dict,
    ) -> None:
        self.dnpu = dnpu
        self.task = task
        self.method = method
        self.settings = settings
        self.learn_levels = bool(settings.get("learn_levels", False))
        self.min_swing_v = float(settings.get("min_swing_v", 0.3))
        self.margin_v = float(settings.get("perturbation_margin_v", 0.0))
        self.rng = np.random.default_rng(seed)
        self.fixed_levels = np.asarray(settings.get("input_levels", task.input_levels()), float)
        self.refresh_roles()
        self.lockin = LockInCallback(dnpu.name, stream_name="hge_raw")
        self.gradient_record = new_gradient_record(dnpu, "projection")
        self.train_record = TrainRecord(name="train")
        self.eval_record = EvaluationRecord(name="evaluation")
        self.measurements = 0
        self.clipped_samples = 0
        self.device_seconds_at_start = dnpu.total_device_seconds

    # -- the parameter vector ---------------------------------------------------------------
    def refresh_roles(self) -> None:
        """Read the device's input assignment and derive the point's layout and bounds."""
        self.inputs = self.dnpu.indices("input")
        self.controls = self.dnpu.indices("control")
        limits = self.dnpu.limits
        self.control_bounds = limits[self.controls] + [self.margin_v, -self.margin_v]
        self.level_bounds = limits[self.inputs] + [self.margin_v, -self.margin_v]
        bounds = [self.control_bounds]
        if self.learn_levels:
            bounds += [np.repeat(self.level_bounds, 2, axis=0)]
        self.bounds = np.concatenate(bounds)

    @property
    def input_names(self) -> str:
        """The current input electrodes, ``"e3,e4"``."""
        return str(self.dnpu.inputs.get())

    def levels_of(self, point: np.ndarray) -> np.ndarray:
        """``(n_inputs, 2)`` logical-0 and logical-1 volts of a point."""
        if not self.learn_levels:
            return self.fixed_levels
        return np.asarray(point[self.controls.size :], dtype=float).reshape(-1, 2)

    def project(self, point: np.ndarray) -> np.ndarray:
        """Clip the point into its bounds, the levels at least the minimum swing apart."""
        point = np.clip(point, self.bounds[:, 0], self.bounds[:, 1])
        if self.learn_levels:
            levels = project_levels(self.levels_of(point), self.level_bounds, self.min_swing_v)
            point[self.controls.size :] = levels.ravel()
        return point

    def random_point(self, descending: np.ndarray | None = None) -> np.ndarray:
        """Draw random controls within their bounds and, when trained, levels.

        The levels sit at the ends of each input's bounds, logical 1 at the lower end where
        ``descending`` says so (default: at random).
        """
        controls = self.rng.uniform(self.control_bounds[:, 0], self.control_bounds[:, 1])
        if not self.learn_levels:
            return controls
        if descending is None:
            descending = self.rng.random(self.inputs.size) < 0.5
        levels = full_swing_levels(self.level_bounds, descending)
        return np.concatenate([controls, levels.ravel()])

    def with_levels(self, controls: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
        """Make a point from controls and (when trained) levels; None takes the task's levels."""
        if not self.learn_levels:
            return np.asarray(controls, dtype=float)
        levels = self.fixed_levels if levels is None else np.asarray(levels, dtype=float)
        return np.concatenate([np.asarray(controls, dtype=float), levels.ravel()])

    def candidates(self) -> list[str]:
        """Every assignment of the task's inputs to electrodes that can hold its levels."""
        n_inputs = self.task.n_inputs
        limits = self.dnpu.limits + np.array([self.margin_v, -self.margin_v])
        names = [e.attr_name for e in self.dnpu.electrodes]
        found = []
        for combo in itertools.combinations(range(len(names)), n_inputs):
            bounds = limits[list(combo)]
            if self.learn_levels:
                fits = np.all(bounds[:, 1] - bounds[:, 0] >= self.min_swing_v)
            else:
                fits = np.all(self.fixed_levels.min(axis=1) >= bounds[:, 0]) and np.all(
                    self.fixed_levels.max(axis=1) <= bounds[:, 1]
                )
            if fits:
                found.append(",".join(names[i] for i in combo))
        return found

    def check_levels(self) -> None:
        """Refuse, before any voltage, levels the current input electrodes cannot hold."""
        if self.learn_levels:
            check_level_bounds(self.level_bounds, self.min_swing_v)
            return
        for column, index in enumerate(self.inputs):
            low, high = self.dnpu.limits[index]
            values = self.fixed_levels[column]
            if values.min() < low or values.max() > high:
                electrode = self.dnpu.electrodes[index].name
                raise ValueError(
                    f"task {self.task.name!r} puts {values.min():+.3f} .. {values.max():+.3f} V "
                    f"on input {electrode}, outside its limits [{low:+.3f}, {high:+.3f}] V: give "
                    "the task input levels inside them (BooleanGate input_low_v/input_high_v, "
                    "SphereClassification input_range_v; CLI --input-range)"
                )

    # -- talking to the device --------------------------------------------------------------
    def use_inputs(self, names: str) -> Plan:
        """Make ``names`` the device's input electrodes (no voltage is applied)."""
        if names != self.input_names:
            yield from bps.mv(self.dnpu.inputs, names)
            self.refresh_roles()

    def apply(self, point: np.ndarray, indices: np.ndarray | None = None, split: str = "train"):
        """Set the controls and the input cases (of ``indices``, or the whole split)."""
        args: list[Any] = []
        for index, value in zip(self.controls, point[: self.controls.size], strict=True):
            args += [self.dnpu.electrodes[index].setpoint, float(value)]
        yield from bps.mv(*args)
        yield from self.present(self.levels_of(point), indices, split)

    def present(self, levels: np.ndarray, indices: np.ndarray | None = None, split: str = "train"):
        """Set the input cases (of ``indices``, or the whole split) at ``levels``."""
        unit = self.task.unit_inputs(split)
        if indices is not None:
            unit = unit[indices]
        yield from set_input_cases(self.dnpu, apply_levels(unit, levels))

    def measure(self, stream: str) -> Plan:
        """Play the device's stream once (together with the other devices' requests)."""
        reading = yield Measure(stream)
        self.measurements += 1
        self.clipped_samples += int(reading[self.dnpu.clipped_samples.name]["value"])
        return reading

    @property
    def device_seconds(self) -> float:
        """Device seconds this trainer has spent."""
        return self.dnpu.total_device_seconds - self.device_seconds_at_start

    def evaluate_outputs(self, name: str = "eval_raw") -> Plan:
        """Measure the outputs per case with no tones applied (one stream)."""
        yield from bps.mv(self.dnpu.mode, "off")
        reading = yield from self.measure(name)
        return np.asarray(reading[self.dnpu.case_currents.name]["value"], dtype=float)

    # -- one descent step -------------------------------------------------------------------
    def loss_of(self, outputs: np.ndarray, indices: np.ndarray | None) -> tuple[float, Any]:
        """Return the task's loss and dL/dI of the measured cases."""
        return self.task.loss(outputs, indices=indices)

    def step(self, point: np.ndarray, indices: np.ndarray | None) -> Plan:
        """Measure the loss and its gradient w.r.t. the point (already applied).

        The trainer's gradient method measures them; the plan returns the :class:`Step`.
        """
        return (yield from METHODS[self.method].step(self, point, indices))

    def record_step(
        self,
        iteration: int,
        attempt: int,
        point: np.ndarray,
        step: Step,
        indices: np.ndarray | None,
        clipped: int,
    ) -> Plan:
        """Save one step to the ``primary`` stream; returns the score of its outputs."""
        score = self.score(step.outputs, indices)
        self.train_record.record(
            iteration=iteration,
            attempt=attempt,
            loss=float(step.loss),
            accuracy=score.accuracy,
            margin_na=score.margin_na,
            outputs=step.outputs,
            controls=point[: self.controls.size],
            inputs=self.input_names,
            **level_fields(self.levels_of(point), ""),
            gradient=step.gradient,
            device_seconds=self.device_seconds,
            measurements=self.measurements,
            clipped_samples=clipped,
        )
        yield from bps.trigger_and_read([self.train_record], name="primary")
        return score

    def score(self, outputs: np.ndarray, indices: np.ndarray | None = None, split: str = "train"):
        """Accuracy and margin of measured outputs."""
        return self.task.evaluate(outputs, split, indices=indices)

    def evaluate(
        self,
        setting: Setting,
        attempt: int,
        split: str = "train",
        threshold_na: float | None = None,
    ) -> Plan:
        """Evaluate a setting without perturbations on a whole split and record it.

        ``threshold_na`` scores the split at a threshold chosen elsewhere (held-out data is
        classified at the training split's threshold); None picks the best one for this split.
        Returns the score and the number of clipped samples (a clipped split is not solved).
        """
        yield from self.use_inputs(setting.inputs)
        yield from self.apply(setting.point, None, split)
        # Splits differ in their number of cases, so each has its own streams.
        suffix = "" if split == "train" else f"_{split}"
        clipped_before = self.clipped_samples
        outputs = yield from self.evaluate_outputs(f"eval{suffix}_raw")
        clipped = self.clipped_samples - clipped_before
        score = self.task.evaluate(outputs, split, threshold_na=threshold_na)
        self.eval_record.record(
            attempt=attempt,
            split=split,
            outputs=outputs,
            targets=self.task.targets(split),
            controls=setting.point[: self.controls.size],
            inputs=self.input_names,
            **level_fields(self.levels_of(setting.point), ""),
            accuracy=score.accuracy,
            margin_na=score.margin_na,
            threshold_na=score.threshold_na,
            solved=bool(score.solved) and not clipped,
            clipped_samples=clipped,
        )
        yield from bps.trigger_and_read([self.eval_record], name=f"evaluation{suffix}")
        return score, clipped

    def finish(
        self,
        setting: Setting,
        final: Any,
        *,
        attempt: int,
        iterations: int,
        attempts: int,
        threshold_na: float | None = None,
    ) -> Plan:
        """Evaluate ``setting`` and return the run's :class:`TrainResult`.

        ``setting`` is evaluated without tones (unless ``final`` already holds that evaluation;
        at ``threshold_na`` if given), then, for tasks with held-out data, the test split is
        classified at the training split's threshold.
        """
        clipped = 0
        if final is None:
            final, clipped = yield from self.evaluate(setting, attempt, threshold_na=threshold_na)
        test_accuracy = None
        if self.task.has_test_split:
            test, _ = yield from self.evaluate(setting, attempt, "test", final.threshold_na)
            test_accuracy = float(test.accuracy)
        yield from self.use_inputs(setting.inputs)
        return TrainResult(
            task=self.task.name,
            method=self.method,
            solved=bool(final.solved) and not clipped,
            accuracy=float(final.accuracy),
            margin_na=float(final.margin_na),
            threshold_na=float(final.threshold_na),
            iterations=iterations,
            attempts=attempts,
            measurements=self.measurements,
            device_s=self.device_seconds,
            controls=setting.point[: self.controls.size].tolist(),
            test_accuracy=test_accuracy,
            device=self.dnpu.name,
            clipped_samples=clipped,
            inputs=setting.inputs,
            input_levels=self.levels_of(setting.point).tolist(),
        )


def level_fields(levels: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    """Return a record's ``input_zero_v`` and ``input_one_v`` (with ``prefix``).

    The fields come from ``(n, 2)`` levels.
    """
    levels = np.asarray(levels, dtype=float)
    return {f"{prefix}input_zero_v": levels[:, 0], f"{prefix}input_one_v": levels[:, 1]}


def resolve_inputs(inputs: str | Sequence[str] | None, task: Task) -> tuple[bool, str | None]:
    """Return (screen or not, pinned names or None) from a plan's ``inputs`` argument.

    None screens for a Boolean gate and keeps the device's inputs otherwise, ``"screen"``
    screens, names pin them.
    """
    if inputs is None:
        return isinstance(task, BooleanGate), None
    if isinstance(inputs, str) and inputs == "screen":
        return True, None
    names = inputs.split(",") if isinstance(inputs, str) else [str(n) for n in inputs]
    names = [n.strip() for n in names]
    if len(names) != task.n_inputs:
        raise ValueError(
            f"inputs names {len(names)} electrodes ({', '.join(names)}) but task "
            f"{task.name!r} has {task.n_inputs} inputs"
        )
    return False, ",".join(names)


def _device_state(dnpus: list[DNPU]) -> Callable[[], Plan]:
    """Make a plan factory that puts back the devices' tones, inputs, input cases and mode.

    The input cases go with the input electrodes: cases trained on other electrodes, left in
    place, would put their levels on the restored inputs (outside their limits, often), and
    every later stream would be refused.
    """
    saved = []
    for device in dnpus:
        for electrode in device.electrodes:
            saved += [
                (electrode.frequency, electrode.frequency.get()),
                (electrode.amplitude, electrode.amplitude.get()),
            ]
        saved += [
            (device.inputs, device.inputs.get()),
            (device.input_cases, device.input_cases.get()),
            (device.mode, device.mode.get()),
        ]

    def restore() -> Plan:
        args: list[Any] = []
        for signal, value in saved:
            args += [signal, value]
        if args:
            yield from bps.mv(*args)

    return restore


def on_inputs(dnpus: list[DNPU], pinned: str | None, body: Callable[[], Plan]) -> Plan:
    """Run ``body()`` with the devices' inputs set to ``pinned`` (if given).

    The tones, inputs, input cases and mode the devices had come back however it ends,
    refusals included; the controls keep the values the body left them at.
    """
    restore = _device_state(dnpus)

    def pinned_body() -> Plan:
        if pinned is not None:
            for device in dnpus:
                yield from bps.mv(device.inputs, pinned)
        return (yield from body())

    return (yield from bpp.finalize_wrapper(pinned_body(), restore()))


def make_trainers(
    dnpus: list[DNPU],
    task: Task,
    method: str,
    seed: int,
    settings: dict[str, Any],
    perturbation_margin: Callable[[DNPU], float],
) -> list[Trainer]:
    """One trainer per device; the first draws from ``seed``, device ``k`` from ``[seed, k]``.

    ``perturbation_margin(device)`` is how far inside its limits every voltage stays.
    """
    check_devices(dnpus, task)
    trainers = []
    for index, device in enumerate(dnpus):
        device_settings = {**settings, "perturbation_margin_v": perturbation_margin(device)}
        device_seed = seed if index == 0 else [seed, index]
        trainers.append(Trainer(device, task, method, device_seed, device_settings))
    return trainers


def prepare(trainers: list[Trainer], mode: str) -> Plan:
    """Present the task and set the mode; refuse a bad setup before the run opens."""
    for trainer in trainers:
        trainer.check_levels()
        levels = trainer.fixed_levels
        if trainer.learn_levels:
            levels = project_levels(levels, trainer.level_bounds, trainer.min_swing_v)
        yield from trainer.present(levels)
        yield from bps.mv(trainer.dnpu.mode, mode)
        trainer.dnpu.build_waveform()


def device_names(dnpus: list[DNPU], several_given: bool) -> str | list[str]:
    """How the start document's ``plan_args`` names the devices."""
    return [d.name for d in dnpus] if several_given else repr(dnpus[0].name)


def run_metadata(
    trainers: list[Trainer], plan_name: str, plan_args: dict[str, Any], md: dict | None
) -> dict[str, Any]:
    """Build the start-document metadata of the first device's run.

    :func:`run_side_by_side` gives each other device's run its own ``detectors``,
    ``dnpu_backend`` and ``hge``.

    Parameters
    ----------
    trainers : list of Trainer
        The devices' trainers, in order.
    plan_name : str
        The plan's name.
    plan_args : dict
        The plan's arguments, as the start document shows them.
    md : dict or None
        The caller's extra metadata.

    Returns
    -------
    dict
        The metadata, with the task's description, the method and (Boolean gates) the gate.
    """
    metadata = start_metadata(trainers[0].dnpu, plan_name, plan_args, md)
    task = trainers[0].task
    metadata.update(task=task.describe(), method=trainers[0].method)
    if isinstance(task, BooleanGate):
        metadata["gate"] = task.gate
    return metadata


def check_devices(dnpus: list[DNPU], task: Task) -> None:
    """Refuse an empty list, repeated names, non-DNPUs or a device with too few inputs."""
    if not dnpus:
        raise ValueError("no DNPU given: pass a DNPU or a non-empty list of them")
    names = [d.name for d in dnpus]
    if len(set(names)) != len(names):
        raise ValueError(f"DNPUs trained side by side need distinct names, got {names}")
    for device in dnpus:
        if not isinstance(device, DNPU):
            raise TypeError(f"expected DNPU devices, got {device!r}")
        if task.n_inputs != device.indices("input").size:
            raise ValueError(
                f"task {task.name!r} has {task.n_inputs} inputs but {device.name} has "
                f"{device.indices('input').size} input electrodes: use a device with "
                f"{task.n_inputs} electrodes of role 'input' (virtual: build_dnpu("
                f"default_sim_profile(inputs=...))) or name them with inputs="
            )


def check_target_accuracy(target_accuracy: float) -> None:
    """Refuse a target accuracy outside (0, 1]."""
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
