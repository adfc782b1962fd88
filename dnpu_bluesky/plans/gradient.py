"""Bluesky plans that measure gradients by homodyne gradient extraction (HGE)."""

from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from ophyd import Component as Cpt
from ophyd import Signal

from ..callbacks.lockin import Demodulated, LockInCallback
from ..devices.dnpu import DNPU
from ..devices.records import CalibrationRecord, ResultRecord, ValidationRecord
from ..hge import GradientEstimate, PhaseCalibration
from ..tasks.training import DEFAULT_FD_STEP_V
from ._common import check_choice, move_controls, start_metadata
from ._gradients import finite_differences
from .stubs import Plan, measure_gradient, new_gradient_record, set_input_cases, within_run

ESTIMATORS = ("projection", "sign")


class ValidationSummaryRecord(ResultRecord):
    """A gradient validation in numbers.

    The median cosine similarity and R^2 of HGE against finite differences (and against the
    model's exact Jacobian when simulated).
    """

    cosine_hge_fd_median = Cpt(Signal, value=0.0, kind="hinted")
    r2_hge_vs_fd = Cpt(Signal, value=0.0, kind="hinted")
    cosine_hge_true_median = Cpt(Signal, value=0.0, kind="hinted")
    r2_hge_vs_true = Cpt(Signal, value=0.0, kind="hinted")


def _random_controls(dnpu: DNPU, rng: np.random.Generator, margin_v: float) -> np.ndarray:
    """Draw a random operating point for the controls, ``margin_v`` inside their limits."""
    controls = dnpu.indices("control")
    limits = dnpu.limits[controls]
    low, high = limits[:, 0] + margin_v, limits[:, 1] - margin_v
    if np.any(low >= high):
        raise ValueError(f"control limits too narrow for a margin of {margin_v} V")
    return rng.uniform(low, high)


def hge_gradient(
    dnpu: DNPU,
    *,
    mode: str = "parallel",
    input_cases: list[list[float]] | None = None,
    repeats: int = 1,
    estimator: str = "projection",
    md: dict | None = None,
) -> Plan:
    """Measure the output and its gradient w.r.t. the controls at the current setpoints.

    One run with two streams: ``hge_raw`` (the raw output waveform of each measurement) and
    ``primary`` (per-tone X, Y, amplitude, phase, standard errors and the gradient per input
    case: ``run.primary.read()``).

    Parameters
    ----------
    dnpu : DNPU
        The device; its control electrodes must carry tones (see ``configure_hge``).
    mode : str
        ``"parallel"`` (all tones in one window) or ``"sequential"`` (one per window).
    input_cases : list of list of float, optional
        ``(n_cases, n_inputs)`` input voltages; None keeps the device's setting.
    repeats : int
        Number of measurements at the same point.
    estimator : str
        ``"projection"`` onto the calibrated in-phase axis, or ``"sign"``.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    GradientEstimate
        The estimate of the last measurement.

    Yields
    ------
    Msg
        The plan's messages.
    """
    check_choice("mode", mode, ("parallel", "sequential"))
    check_choice("estimator", estimator, ESTIMATORS)
    if int(repeats) < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if input_cases is not None:
        yield from set_input_cases(dnpu, np.asarray(input_cases, dtype=float))
    yield from bps.mv(dnpu.mode, mode)
    dnpu.build_waveform()  # refuse a bad setup here, before the run opens
    lockin = LockInCallback(dnpu.name, estimator=estimator)
    record = new_gradient_record(dnpu, estimator)
    metadata = start_metadata(
        dnpu,
        "hge_gradient",
        {"dnpu": repr(dnpu.name), "mode": mode, "repeats": repeats, "estimator": estimator},
        md,
    )
    metadata.setdefault("hints", {"dimensions": [(["time"], "primary")]})

    def inner() -> Plan:
        result: Demodulated | None = None
        for _ in range(int(repeats)):
            yield from bps.checkpoint()  # a Ctrl-C pauses here, between two measurements
            result = yield from measure_gradient(dnpu, lockin, record, stream="primary")
        return result.gradient

    estimate: GradientEstimate = yield from within_run(
        inner(), md=metadata, stage=[dnpu], subs=[lockin]
    )
    return estimate


def calibrate_phase(
    dnpu: DNPU,
    n_points: int = 6,
    *,
    seed: int = 0,
    md: dict | None = None,
) -> Plan:
    """Measure each tone's phase lag at random operating points and store the calibration.

    The device responds instantaneously, so a tone's phase is the lag of the electronics (or
    that plus 180 degrees); fitting it at several points lets the gradient be projected onto
    the in-phase axis. The fitted lag and gain go into the DNPU's configuration, so every
    later descriptor carries them.

    Parameters
    ----------
    dnpu : DNPU
        The device; its control electrodes must carry tones (see ``configure_hge``).
    n_points : int
        Number of random operating points (at least 2).
    seed : int
        Seed of the random operating points.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    PhaseCalibration
        The fitted calibration.

    Yields
    ------
    Msg
        The plan's messages.
    """
    if int(n_points) < 2:
        raise ValueError(f"n_points must be at least 2, got {n_points}")
    rng = np.random.default_rng(seed)
    start = dnpu.setpoints()
    margin = float(dnpu.amplitudes().max()) + 0.01
    points = [_random_controls(dnpu, rng, margin) for _ in range(int(n_points))]
    n_electrodes = len(dnpu.electrodes)
    yield from bps.mv(
        dnpu.mode,
        "parallel",
        dnpu.phase_lag_rad,
        [0.0] * n_electrodes,
        dnpu.phase_gain,
        [1.0] * n_electrodes,
    )
    dnpu.build_waveform()
    lockin = LockInCallback(dnpu.name)
    record = new_gradient_record(dnpu, "projection")
    calibration_record = CalibrationRecord(name=f"{dnpu.name}_calibration")
    metadata = start_metadata(
        dnpu, "calibrate_phase", {"dnpu": repr(dnpu.name), "n_points": n_points, "seed": seed}, md
    )

    def inner() -> Plan:
        results = []
        for point in points:
            yield from bps.checkpoint()
            yield from move_controls(dnpu, point)
            result = yield from measure_gradient(dnpu, lockin, record)
            results.append(result.lockin)
        calibration = PhaseCalibration.fit(results)
        calibration_record.record(
            tone_frequencies=calibration.frequencies,
            lag_rad=calibration.lag_rad,
            gain=calibration.gain,
        )
        yield from bps.trigger_and_read([calibration_record], name="calibration")
        return calibration

    calibration: PhaseCalibration = yield from within_run(
        inner(), md=metadata, stage=[dnpu], subs=[lockin]
    )
    tones = np.flatnonzero(dnpu.frequencies() > 0)
    lag = np.zeros(n_electrodes)
    gain = np.ones(n_electrodes)
    lag[tones] = calibration.lag_rad
    gain[tones] = calibration.gain
    yield from bps.mv(dnpu.phase_lag_rad, lag.tolist(), dnpu.phase_gain, gain.tolist())
    yield from move_controls(dnpu, start[dnpu.indices("control")])
    return calibration


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def validate_gradients(
    dnpu: DNPU,
    n_points: int = 10,
    *,
    fd_step_v: float = DEFAULT_FD_STEP_V,
    compare_sequential: bool = True,
    seed: int = 0,
    md: dict | None = None,
) -> Plan:
    """Compare HGE with finite differences (and the exact Jacobian when simulated).

    At ``n_points`` random control settings (single input case: the current inputs), measure
    the gradient by parallel HGE, optionally by sequential HGE, by central finite differences
    (2 evaluations per control), and, when the backend exposes a model, take its exact
    Jacobian. Streams: ``hge_raw``, ``hge``, ``fd_raw``, ``validation`` (one event per
    point with every estimate and the cosine similarities), as in the paper's Fig. 3, and
    ``validation_summary``: one event with what the plan returns, so that the run keeps it.

    Parameters
    ----------
    dnpu : DNPU
        The device; every control electrode must carry a tone (see ``configure_hge``).
    n_points : int
        Number of random control settings (at least 1).
    fd_step_v : float
        Step of the central finite differences, volts.
    compare_sequential : bool
        Also measure each point by sequential HGE (one tone per window).
    seed : int
        Seed of the random control settings.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    dict
        The median cosine similarities and the R^2 of HGE against the reference.

    Yields
    ------
    Msg
        The plan's messages.
    """
    if int(n_points) < 1:
        raise ValueError(f"n_points must be at least 1, got {n_points}")
    if not fd_step_v > 0:
        raise ValueError(f"fd_step_v must be positive, got {fd_step_v}")
    rng = np.random.default_rng(seed)
    margin = max(float(dnpu.amplitudes().max()), fd_step_v) + 0.01
    points = [_random_controls(dnpu, rng, margin) for _ in range(int(n_points))]
    start = dnpu.setpoints()
    controls = dnpu.indices("control")
    untoned = [dnpu.electrodes[i].attr_name for i in controls if dnpu.frequencies()[i] <= 0]
    if untoned:
        raise ValueError(
            f"{dnpu.name}: controls {', '.join(untoned)} carry no tone; run configure_hge first"
        )
    controls = controls.tolist()
    model = getattr(dnpu.backend, "model", None)
    yield from bps.mv(dnpu.input_cases, [])
    dnpu.build_waveform()
    record = ValidationRecord(name=f"{dnpu.name}_validation")
    summary_record = ValidationSummaryRecord(name=f"{dnpu.name}_validation")
    if model is None:
        record.true_gradient.kind = "omitted"
        record.cosine_hge_true.kind = "omitted"
        summary_record.cosine_hge_true_median.kind = "omitted"
        summary_record.r2_hge_vs_true.kind = "omitted"
    if not compare_sequential:
        record.hge_sequential.kind = "omitted"
    lockin = LockInCallback(dnpu.name, stream_name=("hge_raw", "hge_sequential_raw"))
    gradient_record = new_gradient_record(dnpu, "projection")
    sequential_record = new_gradient_record(dnpu, "projection", name="hge_sequential")
    metadata = start_metadata(
        dnpu,
        "validate_gradients",
        {
            "dnpu": repr(dnpu.name),
            "n_points": n_points,
            "fd_step_v": fd_step_v,
            "compare_sequential": compare_sequential,
            "seed": seed,
        },
        md,
    )

    def current_at(shifted: np.ndarray) -> Plan:
        yield from move_controls(dnpu, shifted)
        reading = yield from bps.trigger_and_read([dnpu], name="fd_raw")
        return reading[dnpu.current.name]["value"]

    def inner() -> Plan:
        hge_all, reference_all, truth_all = [], [], []
        for index, point in enumerate(points):
            yield from move_controls(dnpu, point)
            yield from bps.mv(dnpu.mode, "parallel")
            parallel = yield from measure_gradient(dnpu, lockin, gradient_record)
            sequential = None
            if compare_sequential:
                yield from bps.mv(dnpu.mode, "sequential")
                # Its own streams: a sequential stream has one window per control.
                sequential = yield from measure_gradient(
                    dnpu,
                    lockin,
                    sequential_record,
                    raw_stream="hge_sequential_raw",
                    stream="hge_sequential",
                )
            yield from bps.mv(dnpu.mode, "off")
            fd, _ = yield from finite_differences(point, fd_step_v, current_at)
            yield from move_controls(dnpu, point)
            # With a tone on the inputs too, the lock-in gives their slopes as well.
            columns = [parallel.tones.index(control) for control in controls]
            hge = parallel.gradient.gradient[0][columns]
            values: dict[str, Any] = {
                "point": index,
                "operating_point": dnpu.setpoints(),
                "hge": hge,
                "hge_stderr": parallel.gradient.stderr[0][columns],
                "finite_difference": fd,
                "cosine_hge_fd": _cosine(hge, fd),
            }
            if sequential is not None:
                values["hge_sequential"] = sequential.gradient.gradient[0][columns]
            if model is not None:
                truth = model.jacobian(dnpu.setpoints())[controls]
                values["true_gradient"] = truth
                values["cosine_hge_true"] = _cosine(hge, truth)
                truth_all.append(truth)
            record.record(**values)
            yield from bps.trigger_and_read([record], name="validation")
            hge_all.append(hge)
            reference_all.append(fd)
        summary = _summarise(np.array(hge_all), np.array(reference_all), np.array(truth_all))
        summary_record.record(**summary)
        yield from bps.trigger_and_read([summary_record], name="validation_summary")
        return summary

    summary = yield from within_run(inner(), md=metadata, stage=[dnpu], subs=[lockin])
    yield from bps.mv(dnpu.mode, "parallel")
    yield from move_controls(dnpu, start[controls])
    return summary


def _r_squared(estimate: np.ndarray, reference: np.ndarray) -> float:
    residual = np.sum((estimate - reference) ** 2)
    total = np.sum((reference - reference.mean()) ** 2)
    return float(1 - residual / total) if total > 0 else float("nan")


def _summarise(hge: np.ndarray, fd: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    summary = {
        "cosine_hge_fd_median": float(
            np.median([_cosine(a, b) for a, b in zip(hge, fd, strict=True)])
        ),
        "r2_hge_vs_fd": _r_squared(hge.ravel(), fd.ravel()),
    }
    if truth.size:
        cosines = [_cosine(a, b) for a, b in zip(hge, truth, strict=True)]
        summary["cosine_hge_true_median"] = float(np.median(cosines))
        summary["r2_hge_vs_true"] = _r_squared(hge.ravel(), truth.ravel())
    return summary
