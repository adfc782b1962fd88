"""Gradient descent in materio: the training loop as a Bluesky plan, and its peers."""

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky.utils import short_uid

from ..callbacks.lockin import LockInCallback
from ..devices.dnpu import DNPU
from ..devices.records import EvaluationRecord, TrainRecord
from ..tasks import GATES, BooleanGate, Task, make_optimizer
from .hge import (
    _check_choice,
    _check_positive,
    _device_setup,
    _move_controls,
    _start_metadata,
)
from .stubs import Plan, new_gradient_record, record_gradient, set_input_cases, within_run

GRADIENT_METHODS = ("hge", "fd", "spsa")

_log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one training run achieved, as the benchmark and the CLI table report it.

    ``solved`` is True when the final evaluation without perturbations classified every case
    correctly and the output stayed inside the AI range (``clipped_samples`` is 0).
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass(frozen=True)
class _Measure:
    """Asked by one device's training loop: play the device's stream once, save it to
    ``stream`` and send back the reading. Requests of several devices are played together."""

    stream: str


@dataclass
class _Step:
    outputs: np.ndarray
    loss: float
    gradient: np.ndarray
    measurements: int


class _Trainer:
    """State shared by the steps of one training run (not public: the plans are the API)."""

    def __init__(
        self,
        dnpu: DNPU,
        task: Task,
        method: str,
        seed: int | list[int],
        settings: dict,
        suffix: str = "",
    ) -> None:
        self.dnpu = dnpu
        self.suffix = suffix
        self.task = task
        self.method = method
        self.settings = settings
        self.rng = np.random.default_rng(seed)
        self.controls = dnpu.indices("control")
        self.bounds = dnpu.limits[self.controls].copy()
        margin = settings["perturbation_margin_v"]
        self.bounds[:, 0] += margin
        self.bounds[:, 1] -= margin
        self.lockin = LockInCallback(dnpu.name, stream_name=self.stream("hge_raw"))
        self.gradient_record = new_gradient_record(dnpu, "projection")
        self.train_record = TrainRecord(name="train")
        self.eval_record = EvaluationRecord(name="evaluation")
        self.measurements = 0
        self.clipped_samples = 0
        self.device_seconds_at_start = dnpu.total_device_seconds

    def stream(self, base: str) -> str:
        """This device's name for a stream (devices trained side by side each have their own)."""
        return base + self.suffix

    def measure(self, stream: str) -> Plan:
        """Play the device's stream once (together with the other devices' requests)."""
        reading = yield _Measure(self.stream(stream))
        self.measurements += 1
        self.clipped_samples += int(reading[self.dnpu.clipped_samples.name]["value"])
        return reading

    @property
    def device_seconds(self) -> float:
        return self.dnpu.total_device_seconds - self.device_seconds_at_start

    def random_controls(self) -> np.ndarray:
        return self.rng.uniform(self.bounds[:, 0], self.bounds[:, 1])

    def present(self, indices: np.ndarray | None, split: str = "train") -> Plan:
        cases = self.task.input_voltages(split)
        if indices is not None:
            cases = cases[indices]
        yield from set_input_cases(self.dnpu, cases)

    def evaluate_outputs(self, name: str = "eval_raw") -> Plan:
        """Outputs per case with no tones applied (one stream)."""
        yield from bps.mv(self.dnpu.mode, "off")
        reading = yield from self.measure(name)
        return np.asarray(reading[self.dnpu.case_currents.name]["value"], dtype=float)

    def step(self, point: np.ndarray, indices: np.ndarray | None) -> Plan:
        """Measure the loss and its gradient w.r.t. the controls at ``point``."""

        def loss_of(outputs: np.ndarray) -> tuple[float, np.ndarray]:
            if indices is None:
                return self.task.loss(outputs)
            return self.task.loss(outputs, indices=indices)

        if self.method == "hge":
            yield from bps.mv(self.dnpu.mode, "parallel")
            yield from self.measure("hge_raw")
            result = yield from record_gradient(
                self.lockin, self.gradient_record, self.stream("hge")
            )
            outputs = result.gradient.current
            loss, d_loss = loss_of(outputs)
            return _Step(outputs, loss, d_loss @ result.gradient.gradient, 1)
        if self.method == "fd":
            h = self.settings["fd_step_v"]
            jacobian = []
            evaluated = []
            for j in range(point.size):
                pair = []
                for sign in (+1.0, -1.0):
                    shifted = point.copy()
                    shifted[j] += sign * h
                    yield from _move_controls(self.dnpu, shifted)
                    pair.append((yield from self.evaluate_outputs("fd_raw")))
                jacobian.append((pair[0] - pair[1]) / (2 * h))
                evaluated += pair
            yield from _move_controls(self.dnpu, point)
            outputs = np.mean(evaluated, axis=0)
            loss, d_loss = loss_of(outputs)
            return _Step(outputs, loss, d_loss @ np.array(jacobian).T, 2 * point.size)
        # SPSA: two evaluations along a random +-1 direction, whatever the number of controls.
        c = self.settings["spsa_step_v"]
        delta = self.rng.choice([-1.0, 1.0], size=point.size)
        losses, pair = [], []
        for sign in (+1.0, -1.0):
            yield from _move_controls(self.dnpu, point + sign * c * delta)
            outputs = yield from self.evaluate_outputs("spsa_raw")
            pair.append(outputs)
            losses.append(loss_of(outputs)[0])
        yield from _move_controls(self.dnpu, point)
        outputs = np.mean(pair, axis=0)
        loss = loss_of(outputs)[0]
        return _Step(outputs, loss, (losses[0] - losses[1]) / (2 * c) * delta, 2)

    def record_step(
        self,
        iteration: int,
        attempt: int,
        point: np.ndarray,
        step: _Step,
        indices: np.ndarray | None,
        clipped: int,
    ) -> Plan:
        score = self.score(step.outputs, indices)
        self.train_record.record(
            iteration=iteration,
            attempt=attempt,
            loss=float(step.loss),
            accuracy=score.accuracy,
            margin_na=score.margin_na,
            outputs=step.outputs,
            controls=point,
            gradient=step.gradient,
            device_seconds=self.device_seconds,
            measurements=self.measurements,
            clipped_samples=clipped,
        )
        yield from bps.trigger_and_read([self.train_record], name=self.stream("train"))
        return score

    def score(self, outputs: np.ndarray, indices: np.ndarray | None = None, split: str = "train"):
        if indices is None:
            return self.task.evaluate(outputs, split)
        return self.task.evaluate(outputs, split, indices=indices)

    def evaluate(
        self,
        point: np.ndarray,
        attempt: int,
        split: str = "train",
        threshold_na: float | None = None,
    ) -> Plan:
        """Evaluate the controls without perturbations on a whole split and record it.

        ``threshold_na`` scores the split at a threshold chosen elsewhere (held-out data is
        classified at the training split's threshold); None picks the best one for this split.
        Returns the score and the number of clipped samples (a clipped split is not solved).
        """
        yield from _move_controls(self.dnpu, point)
        yield from self.present(None, split)
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
            controls=point,
            accuracy=score.accuracy,
            margin_na=score.margin_na,
            threshold_na=score.threshold_na,
            solved=bool(score.solved) and not clipped,
            clipped_samples=clipped,
        )
        yield from bps.trigger_and_read([self.eval_record], name=self.stream(f"evaluation{suffix}"))
        return score, clipped

    def finish(
        self,
        point: np.ndarray,
        final: Any,
        *,
        attempt: int,
        iterations: int,
        attempts: int,
        threshold_na: float | None = None,
    ) -> Plan:
        """The run's :class:`TrainResult`: ``point`` evaluated without tones (unless ``final``
        already holds that evaluation; at ``threshold_na`` if given), then, for tasks with
        held-out data, the test split classified at the training split's threshold."""
        clipped = 0
        if final is None:
            final, clipped = yield from self.evaluate(point, attempt, threshold_na=threshold_na)
        test_accuracy = None
        if _has_held_out_data(self.task):
            test, _ = yield from self.evaluate(point, attempt, "test", final.threshold_na)
            test_accuracy = float(test.accuracy)
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
            controls=point.tolist(),
            test_accuracy=test_accuracy,
            device=self.dnpu.name,
            clipped_samples=clipped,
        )


def train(
    dnpu: DNPU | Sequence[DNPU],
    task: Task,
    *,
    method: str = "hge",
    optimizer: str = "adam",
    lr: float = 0.05,
    max_iterations: int = 120,
    max_attempts: int = 4,
    patience: int = 25,
    target_margin_na: float = 2.0,
    target_accuracy: float = 1.0,
    fd_step_v: float = 0.01,
    spsa_step_v: float = 0.02,
    initial_controls: list[float] | None = None,
    seed: int = 0,
    md: dict | None = None,
) -> Plan:
    """Train the device's controls on a task by gradient descent measured on the device.

    Each iteration presents the task's input cases, measures the outputs and the gradient of
    the loss w.r.t. the controls (``method``: ``"hge"`` homodyne gradient extraction, one
    stream per step; ``"fd"`` central finite differences, 2 streams per control; ``"spsa"``
    simultaneous perturbation, 2 streams), takes an optimizer step clipped to the electrode
    limits and moves the controls. When the measured outputs reach ``target_accuracy`` (at
    1.0, the default: every case right and the classes ``target_margin_na`` apart), the
    controls are evaluated without perturbations on the whole training split; training stops
    once that evaluation reaches it too. An attempt that has not improved its loss for
    ``patience`` iterations (with minibatches: a running mean of it) is abandoned for a new
    random start (at most ``max_attempts``).

    Streams: the raw waveforms (``hge_raw``/``fd_raw``/``spsa_raw``/``eval_raw``), ``hge``
    (gradients, HGE only), ``train`` (loss, score, controls, device seconds per iteration) and
    ``evaluation`` (unperturbed evaluations).

    Several devices: given a list of DNPUs, trains each on the task side by side in one run.
    Their measurements are triggered together, so devices on separate backends acquire at the
    same time; each device keeps its own loop (attempts, stopping) and its own streams, named
    with the device's name appended (``train_dnpu2``, ``hge_raw_dnpu2``, ...). The first device
    draws its random starts from ``seed``, device ``k`` from the seed sequence ``[seed, k]``;
    ``initial_controls``, if given, is every device's first start (e.g. the controls of an
    earlier run, to continue it): it is refused outside the electrode limits and otherwise
    moved in from them by the perturbation's amplitude. It is recorded in the start document.

    Returns:
        A :class:`TrainResult`, or a list of them (in the order given) for a list of DNPUs.
    """
    several_given = not isinstance(dnpu, DNPU)
    dnpus = list(dnpu) if several_given else [dnpu]
    _check_choice("method", method, GRADIENT_METHODS)
    for name, value in (("max_iterations", max_iterations), ("max_attempts", max_attempts)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    _check_positive(lr=lr, fd_step_v=fd_step_v, spsa_step_v=spsa_step_v)
    _check_target_accuracy(target_accuracy)
    settings = {"fd_step_v": fd_step_v, "spsa_step_v": spsa_step_v}

    def perturbation_margin(device: DNPU) -> float:
        return max(float(device.amplitudes().max()), fd_step_v, spsa_step_v)

    trainers = _make_trainers(dnpus, task, method, seed, settings, perturbation_margin)
    start = None if initial_controls is None else np.asarray(initial_controls, dtype=float)
    if start is not None:
        for trainer in trainers:
            _check_controls(trainer, start, "initial_controls")
    optimizers = [make_optimizer(optimizer, lr, trainer.bounds) for trainer in trainers]
    yield from _prepare(trainers, "parallel" if method == "hge" else "off")
    plan_args = {
        "dnpu": _device_names(dnpus, several_given),
        "task": task.name,
        "method": method,
        "optimizer": optimizer,
        "lr": lr,
        "max_iterations": max_iterations,
        "max_attempts": max_attempts,
        "patience": patience,
        "target_margin_na": target_margin_na,
        "target_accuracy": target_accuracy,
        "seed": seed,
    }
    if start is not None:
        plan_args["initial_controls"] = start.tolist()
    metadata = _run_metadata(trainers, "train", plan_args, md)
    metadata.update(
        optimizer=optimizers[0].describe(),
        seed=seed,
        hints={"dimensions": [(["train_iteration"], trainers[0].stream("train"))]},
    )
    loop = {
        "max_iterations": int(max_iterations),
        "max_attempts": int(max_attempts),
        "patience": patience,
        "target_margin_na": target_margin_na,
        "target_accuracy": float(target_accuracy),
    }
    bodies = {
        trainer: _descend(trainer, opt, start, **loop)
        for trainer, opt in zip(trainers, optimizers, strict=True)
    }
    results = yield from _run_side_by_side(bodies, metadata, [t.lockin for t in trainers])
    return results if several_given else results[0]


def evaluate_controls(
    dnpu: DNPU,
    task: Task,
    controls: Sequence[float],
    *,
    threshold_na: float | None = None,
    md: dict | None = None,
) -> Plan:
    """Measure a task at fixed controls, without training: e.g. re-check today a gate trained
    earlier (the controls of :func:`dnpu_bluesky.results.trained_setting`) for drift.

    One run with the streams of a training run's final evaluation: ``eval_raw`` and
    ``evaluation`` on the training cases and, for tasks with held-out data, ``eval_test_raw``
    and ``evaluation_test``, classified at the training cases' threshold. Bad controls are
    refused before any voltage is applied.

    Args:
        dnpu: The device.
        task: The task, whose inputs the device's input electrodes take.
        controls: One voltage per control electrode, in the device's order, within its limits.
        threshold_na: Classify the training cases at this threshold (e.g. the one chosen when
            the controls were trained); None picks the best one for the outputs measured now.
        md: Extra start-document metadata (e.g. ``{"source_run": uid}``).

    Returns:
        A :class:`TrainResult` with ``method="evaluate"`` and no iterations.
    """
    (trainer,) = _make_trainers([dnpu], task, "evaluate", 0, {}, lambda device: 0.0)
    point = np.asarray(controls, dtype=float)
    _check_controls(trainer, point, "controls")
    yield from _prepare([trainer], "off")
    plan_args = {"dnpu": repr(dnpu.name), "task": task.name, "controls": point.tolist()}
    if threshold_na is not None:
        plan_args["threshold_na"] = float(threshold_na)
    metadata = _run_metadata([trainer], "evaluate_controls", plan_args, md)
    body = trainer.finish(
        point, None, attempt=0, iterations=0, attempts=0, threshold_na=threshold_na
    )
    (result,) = yield from _run_side_by_side({trainer: body}, metadata, [])
    return result


def _check_controls(trainer: _Trainer, point: np.ndarray, name: str) -> None:
    """Refuse, before the run opens, controls of the wrong number or outside the electrode
    limits, with the electrode's own limit check (a ``LimitError``, which is a ValueError)."""
    if point.shape != trainer.controls.shape:
        raise ValueError(
            f"{name} needs {trainer.controls.size} values for {trainer.dnpu.name}, "
            f"got {point.shape}"
        )
    for index, value in zip(trainer.controls, point, strict=True):
        trainer.dnpu.electrodes[index].setpoint.check_value(value)


def _make_trainers(
    dnpus: list[DNPU],
    task: Task,
    method: str,
    seed: int,
    settings: dict[str, float],
    perturbation_margin: Callable[[DNPU], float],
) -> list[_Trainer]:
    """One trainer per device; the first draws from ``seed``, device ``k`` from ``[seed, k]``.

    ``perturbation_margin(device)`` is how far inside its limits the device's controls stay.
    """
    _check_devices(dnpus, task)
    trainers = []
    for index, device in enumerate(dnpus):
        suffix = f"_{device.name}" if len(dnpus) > 1 else ""
        device_settings = {**settings, "perturbation_margin_v": perturbation_margin(device)}
        device_seed = seed if index == 0 else [seed, index]
        trainers.append(_Trainer(device, task, method, device_seed, device_settings, suffix))
    return trainers


def _prepare(trainers: list[_Trainer], mode: str) -> Plan:
    """Present the task and set the mode; refuse a bad setup before the run opens."""
    for trainer in trainers:
        yield from trainer.present(None)
        yield from bps.mv(trainer.dnpu.mode, mode)
        trainer.dnpu.build_waveform()


def _device_names(dnpus: list[DNPU], several_given: bool) -> str | list[str]:
    return [d.name for d in dnpus] if several_given else repr(dnpus[0].name)


def _run_metadata(
    trainers: list[_Trainer], plan_name: str, plan_args: dict[str, Any], md: dict | None
) -> dict[str, Any]:
    """Start-document metadata; for several devices, their setups keyed by device name."""
    dnpus = [t.dnpu for t in trainers]
    metadata = _start_metadata(dnpus[0], plan_name, plan_args, md)
    if len(dnpus) > 1:
        setups = {d.name: _device_setup(d) for d in dnpus}
        metadata["detectors"] = list(setups)
        for key in ("dnpu_backend", "hge"):
            metadata[key] = {name: setup[key] for name, setup in setups.items()}
        metadata["stream_suffixes"] = {t.dnpu.name: t.suffix for t in trainers}
    task = trainers[0].task
    metadata.update(task=task.describe(), method=trainers[0].method)
    if isinstance(task, BooleanGate):
        metadata["gate"] = task.gate
    return metadata


def _run_side_by_side(
    bodies: dict[_Trainer, Plan], metadata: dict[str, Any], subs: list[Any]
) -> Plan:
    """One run in which each trainer's loop runs; returns their results in order."""
    stage = [trainer.dnpu for trainer in bodies]
    return (yield from within_run(_side_by_side(bodies), md=metadata, stage=stage, subs=subs))


def _check_devices(dnpus: list[DNPU], task: Task) -> None:
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
                f"default_sim_profile(inputs=...)))"
            )
        _check_input_levels(device, task)


def _has_held_out_data(task: Task) -> bool:
    """Tasks with a test split (the sphere) also draw training minibatches."""
    return hasattr(task, "minibatch")


def _check_input_levels(device: DNPU, task: Task) -> None:
    """Every voltage the task puts on an input electrode lies within that electrode's limits
    (said in the task's terms here, rather than as a waveform sample later)."""
    splits = ("train", "test") if _has_held_out_data(task) else ("train",)
    cases = np.concatenate([task.input_voltages(split) for split in splits])
    for column, index in enumerate(device.indices("input")):
        low, high = device.limits[index]
        values = cases[:, column]
        if values.min() < low or values.max() > high:
            electrode = device.electrodes[index].name
            raise ValueError(
                f"task {task.name!r} puts {values.min():+.3f} .. {values.max():+.3f} V on input "
                f"{electrode}, outside its limits [{low:+.3f}, {high:+.3f}] V: give the task "
                "input levels inside them (BooleanGate input_low_v/input_high_v, "
                "SphereClassification input_range_v; CLI --input-range)"
            )


#: Weight of the newest minibatch loss in the running mean that judges progress with batches.
_BATCH_LOSS_WEIGHT = 0.25


def _descend(
    trainer: _Trainer,
    opt: Any,
    start: np.ndarray | None,
    *,
    max_iterations: int,
    max_attempts: int,
    patience: int,
    target_margin_na: float,
    target_accuracy: float,
) -> Plan:
    """One device's training loop; yields plan messages and :class:`_Measure` requests.

    With minibatches the loss of one step is measured on a few random cases, so steps are
    compared by a running mean of it, and each attempt ends with an unperturbed evaluation of
    its best point on the whole training split: the final point is the best point evaluated so
    (these, and the checks of minibatches that reached the target), measured once more at the
    end.
    """
    task = trainer.task
    minibatch = getattr(task, "minibatch", None)
    uses_batches = minibatch is not None and getattr(task, "batch_size", None) is not None

    def reached(score: Any) -> bool:
        return _reaches_target(score, target_accuracy, target_margin_na)

    iteration = 0
    best: tuple[float, np.ndarray] | None = None
    evaluated: tuple[np.ndarray, Any] | None = None  # batches: the best attempt, evaluated
    solved_at: np.ndarray | None = None
    final = None
    attempt = 0
    for attempt in range(max_attempts):
        point = start.copy() if (attempt == 0 and start is not None) else None
        point = (
            trainer.random_controls()
            if point is None
            else np.clip(point, trainer.bounds[:, 0], trainer.bounds[:, 1])
        )
        opt.reset()
        best_in_attempt, stalled = np.inf, 0
        attempt_best: np.ndarray | None = None
        running = None
        for _ in range(max_iterations):
            # Where a Ctrl-C (a deferred pause) takes effect: between steps, not within one.
            yield from bps.checkpoint()
            indices = minibatch(trainer.rng) if uses_batches else None
            yield from trainer.present(indices)
            yield from _move_controls(trainer.dnpu, point)
            clipped_before = trainer.clipped_samples
            step = yield from trainer.step(point, indices)
            clipped = trainer.clipped_samples - clipped_before
            iteration += 1
            score = yield from trainer.record_step(
                iteration, attempt, point, step, indices, clipped
            )
            if clipped:
                # Outputs and gradient read through a clipped ADC are wrong: start afresh.
                _report_clipped_step(trainer, point, iteration, attempt, max_attempts)
                break
            loss = step.loss
            if uses_batches:
                w = _BATCH_LOSS_WEIGHT
                running = loss if running is None else (1 - w) * running + w * loss
                loss = running
            if best is None or loss < best[0]:
                best = (loss, point.copy())
            first = not np.isfinite(best_in_attempt)
            if first or loss < best_in_attempt - 1e-3 * abs(best_in_attempt):
                best_in_attempt, stalled, attempt_best = loss, 0, point.copy()
            else:
                stalled += 1
            if reached(score):
                checked, clipped = yield from trainer.evaluate(point, attempt)
                yield from trainer.present(None)
                if reached(checked) and not clipped:
                    solved_at, final = point.copy(), checked
                    break
                if uses_batches and not clipped:
                    evaluated = _better_of(evaluated, point.copy(), checked)
            if stalled >= patience:
                break
            point = opt.step(point, step.gradient)
        if solved_at is not None:
            break
        if uses_batches and attempt_best is not None:
            checked, clipped = yield from trainer.evaluate(attempt_best, attempt)
            if not clipped:
                evaluated = _better_of(evaluated, attempt_best, checked)
    if solved_at is not None:
        final_point = solved_at
    elif evaluated is not None:
        # Measured once more, so that the run's last evaluation is of its final controls.
        final_point = evaluated[0]
    else:
        # Unsolved: the best point measured within range (the last one if none was) is
        # evaluated without tones.
        final_point = best[1] if best is not None else point
    return (
        yield from trainer.finish(
            final_point, final, attempt=attempt, iterations=iteration, attempts=attempt + 1
        )
    )


def _check_target_accuracy(target_accuracy: float) -> None:
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}")


def _reaches_target(score: Any, target_accuracy: float, target_margin_na: float) -> bool:
    """At least ``target_accuracy``; at 1.0 also the classes ``target_margin_na`` apart."""
    if score.accuracy < target_accuracy:
        return False
    return target_accuracy < 1.0 or score.margin_na >= target_margin_na


def _rank(score: Any) -> tuple[float, float]:
    """Orders scores: higher accuracy first, then the wider margin."""
    return score.accuracy, score.margin_na


def _better_of(
    kept: tuple[np.ndarray, Any] | None, point: np.ndarray, score: Any
) -> tuple[np.ndarray, Any]:
    """``(point, score)`` if its score ranks above the ``kept`` pair's; otherwise ``kept``."""
    if kept is None or _rank(score) > _rank(kept[1]):
        return point, score
    return kept


def _report_clipped_step(
    trainer: _Trainer, point: np.ndarray, iteration: int, attempt: int, attempts: int
) -> None:
    then = "a new random start" if attempt + 1 < attempts else "no attempts left"
    _log.warning(
        "%s, iteration %d: the output left the AI range (%s) at controls %s; attempt %d of "
        "%d ends there, %s",
        trainer.dnpu.name,
        iteration,
        trainer.dnpu.clipped_samples.name,
        np.array2string(point, precision=3),
        attempt + 1,
        attempts,
        then,
    )


def _side_by_side(bodies: dict[_Trainer, Plan]) -> Plan:
    """Run each device's loop, passing its plan messages through and playing the devices'
    :class:`_Measure` requests together; returns the loops' results in order."""
    results: dict[_Trainer, Any] = {}
    ready: dict[_Trainer, Any] = dict.fromkeys(bodies)
    while ready:
        requests: dict[_Trainer, _Measure] = {}
        for trainer, reply in ready.items():
            body = bodies[trainer]
            while True:
                try:
                    item = body.send(reply)
                except StopIteration as done:
                    results[trainer] = done.value
                    break
                if isinstance(item, _Measure):
                    requests[trainer] = item
                    break
                reply = yield item
        ready = (yield from _measure_together(requests)) if requests else {}
    return [results[trainer] for trainer in bodies]


def _measure_together(requests: dict[_Trainer, _Measure]) -> Plan:
    """Trigger every requesting device at once, then save each reading to its own stream."""
    group = short_uid("measure")
    for trainer in requests:
        yield from bps.trigger(trainer.dnpu, group=group)
    yield from bps.wait(group=group)
    readings = {}
    for trainer, request in requests.items():
        yield from bps.create(name=request.stream)
        readings[trainer] = yield from bps.read(trainer.dnpu)
        yield from bps.save()
    return readings


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

    ``gates``: names such as ``["XOR", "AND"]``, or one name. Given a list of DNPUs, each run
    trains them side by side (see :func:`train`) and the values are lists of results, one per
    device.
    """
    names = [gates] if isinstance(gates, str) else gates
    tasks = [BooleanGate(gate=gate, **(task_options or {})) for gate in names]
    results = {}
    for index, task in enumerate(tasks):
        results[task.gate] = yield from train(
            dnpu, task, method=method, seed=seed + index, md=md, **train_options
        )
    return results
