"""What the training plans share: one device's trainer, its settings and the side-by-side loop.

Internal to :mod:`dnpu_bluesky.plans`; the plans (``train``, ``train_genetic``,
``evaluate_controls``) are the API. A trainer works on a *point*: the control voltages, followed,
when the input levels are trained, by each input's logical-0 and logical-1 voltage
(:mod:`dnpu_bluesky.tasks.levels`). Which electrodes are inputs is the device's ``inputs``
signal, which a trainer may change between steps (screening).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import Msg, RunEngineControlException, short_uid

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
from ._common import device_setup, start_metadata
from ._gradients import METHODS, Step
from .stubs import new_gradient_record, set_input_cases, within_run

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
class Measure:
    """Asked by one device's training loop: play the device's stream once, save it to
    ``stream`` and send back the reading. Requests of several devices are played together."""

    stream: str


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
        """The point clipped into its bounds, the levels at least the minimum swing apart."""
        point = np.clip(point, self.bounds[:, 0], self.bounds[:, 1])
        if self.learn_levels:
            levels = project_levels(self.levels_of(point), self.level_bounds, self.min_swing_v)
            point[self.controls.size :] = levels.ravel()
        return point

    def random_point(self, descending: np.ndarray | None = None) -> np.ndarray:
        """Random controls within their bounds and, when trained, levels at the ends of each
        input's bounds, logical 1 at the lower end where ``descending`` says so (default: at
        random)."""
        controls = self.rng.uniform(self.control_bounds[:, 0], self.control_bounds[:, 1])
        if not self.learn_levels:
            return controls
        if descending is None:
            descending = self.rng.random(self.inputs.size) < 0.5
        levels = full_swing_levels(self.level_bounds, descending)
        return np.concatenate([controls, levels.ravel()])

    def with_levels(self, controls: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
        """A point from controls and (when trained) levels; None takes the task's levels."""
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
        """Outputs per case with no tones applied (one stream)."""
        yield from bps.mv(self.dnpu.mode, "off")
        reading = yield from self.measure(name)
        return np.asarray(reading[self.dnpu.case_currents.name]["value"], dtype=float)

    # -- one descent step -------------------------------------------------------------------
    def loss_of(self, outputs: np.ndarray, indices: np.ndarray | None) -> tuple[float, Any]:
        """The task's loss and dL/dI of the measured cases."""
        return self.task.loss(outputs, indices=indices)

    def step(self, point: np.ndarray, indices: np.ndarray | None) -> Plan:
        """Measure the loss and its gradient w.r.t. the point (already applied) by the
        trainer's gradient method; returns the :class:`Step`."""
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
        """The run's :class:`TrainResult`: ``setting`` evaluated without tones (unless ``final``
        already holds that evaluation; at ``threshold_na`` if given), then, for tasks with
        held-out data, the test split classified at the training split's threshold."""
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
    """A record's ``input_zero_v`` and ``input_one_v`` (with ``prefix``) from ``(n, 2)``
    levels."""
    levels = np.asarray(levels, dtype=float)
    return {f"{prefix}input_zero_v": levels[:, 0], f"{prefix}input_one_v": levels[:, 1]}


def resolve_inputs(inputs: str | Sequence[str] | None, task: Task) -> tuple[bool, str | None]:
    """(screen or not, pinned names or None) from a plan's ``inputs`` argument: None screens
    for a Boolean gate and keeps the device's inputs otherwise, ``"screen"`` screens, names
    pin them."""
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
    """A plan factory that puts back the tones and input electrodes the devices had."""
    saved = []
    for device in dnpus:
        for electrode in device.electrodes:
            saved += [
                (electrode.frequency, electrode.frequency.get()),
                (electrode.amplitude, electrode.amplitude.get()),
            ]
        saved.append((device.inputs, device.inputs.get()))

    def restore() -> Plan:
        args: list[Any] = []
        for signal, value in saved:
            args += [signal, value]
        if args:
            yield from bps.mv(*args)

    return restore


def on_inputs(dnpus: list[DNPU], pinned: str | None, body: Callable[[], Plan]) -> Plan:
    """Run ``body()`` with the devices' inputs set to ``pinned`` (if given); the tones and
    inputs the devices had come back however it ends, refusals included."""
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


def run_side_by_side(bodies: dict[Trainer, Plan], metadata: dict[str, Any], subs: list[Any]):
    """Run each trainer's loop, each device in a run of its own.

    One device: one run, as :func:`~dnpu_bluesky.plans.stubs.within_run` makes it. Several:
    one run per device, open at the same time (bluesky's run keys: the device's name), each
    with the streams a device trained alone has and the device's own ``detectors``,
    ``dnpu_backend`` and ``hge`` in its start document, plus ``side_by_side``: the
    ``devices`` in the order given and a ``group`` uid shared by the runs.

    Parameters
    ----------
    bodies : dict
        Each trainer's loop, in the order of the devices.
    metadata : dict
        The start document's metadata (:func:`run_metadata`).
    subs : list
        Callbacks subscribed for the run(s), e.g. the lock-in callbacks.

    Returns
    -------
    list
        The loops' results, in order.
    """
    stage = [trainer.dnpu for trainer in bodies]
    if len(bodies) == 1:
        return (yield from within_run(_side_by_side(bodies), md=metadata, stage=stage, subs=subs))
    group = {"devices": [t.dnpu.name for t in bodies], "group": str(uuid.uuid4())}
    plan: Plan = _side_by_side(bodies, keyed=True)
    for trainer in reversed(list(bodies)):
        device = trainer.dnpu
        md = {**metadata, **device_setup(device), "detectors": [device.name]}
        md["side_by_side"] = group
        plan = _keyed_run(plan, md, device.name)
    plan = bpp.stage_wrapper(plan, stage)
    plan = bpp.rewindable_wrapper(plan, False)  # see within_run
    if subs:
        plan = bpp.subs_wrapper(plan, subs)
    return (yield from plan)


def _keyed_run(plan: Plan, md: dict[str, Any], key: str) -> Plan:
    """Run ``plan`` inside the run of key ``key``, as ``bpp.run_wrapper`` does for one run.

    Parameters
    ----------
    plan : generator
        The plan.
    md : dict
        The run's start-document metadata.
    key : str
        The run key.

    Returns
    -------
    object
        What ``plan`` returned.
    """
    returned: list[Any] = []

    def body() -> Plan:
        returned.append((yield from plan))

    def close(error: BaseException | None = None) -> Plan:
        if error is None:
            yield Msg("close_run", run=key)
        elif isinstance(error, RunEngineControlException):
            yield Msg("close_run", exit_status=error.exit_status, run=key)
        else:
            yield Msg("close_run", exit_status="fail", reason=str(error), run=key)

    hints = dict(md.get("hints", {}))
    hints.setdefault("dimensions", [(["time"], "primary")])  # see within_run
    yield Msg("open_run", run=key, **{**md, "hints": hints})
    yield from bpp.contingency_wrapper(body(), except_plan=close, else_plan=close)
    return returned[0]


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


def _side_by_side(bodies: dict[Trainer, Plan], keyed: bool = False) -> Plan:
    """Run each device's loop, playing the devices' :class:`Measure` requests together.

    Parameters
    ----------
    bodies : dict
        Each trainer's loop.
    keyed : bool
        Send each device's messages to its own run (run key: the device's name).

    Returns
    -------
    list
        The loops' results, in order.
    """
    results: dict[Trainer, Any] = {}
    ready: dict[Trainer, Any] = dict.fromkeys(bodies)
    while ready:
        requests: dict[Trainer, Measure] = {}
        for trainer, reply in ready.items():
            body = bodies[trainer]
            while True:
                try:
                    item = body.send(reply)
                except StopIteration as done:
                    results[trainer] = done.value
                    break
                if isinstance(item, Measure):
                    requests[trainer] = item
                    break
                if keyed and isinstance(item, Msg):
                    item = item._replace(run=trainer.dnpu.name)
                reply = yield item
        ready = (yield from _measure_together(requests, keyed)) if requests else {}
    return [results[trainer] for trainer in bodies]


def _measure_together(requests: dict[Trainer, Measure], keyed: bool = False) -> Plan:
    """Trigger every requesting device at once, then save each reading to its stream.

    Parameters
    ----------
    requests : dict
        Each requesting trainer's :class:`Measure`.
    keyed : bool
        Save each reading in its device's own run (run key: the device's name).

    Returns
    -------
    dict
        Each trainer's reading.
    """
    group = short_uid("measure")
    for trainer in requests:
        yield from bps.trigger(trainer.dnpu, group=group)
    yield from bps.wait(group=group)
    readings = {}
    for trainer, request in requests.items():
        run = trainer.dnpu.name if keyed else None
        yield Msg("create", name=request.stream, run=run)
        readings[trainer] = yield Msg("read", trainer.dnpu, run=run)
        yield Msg("save", run=run)
    return readings
