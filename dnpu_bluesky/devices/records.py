"""Soft devices that put derived results (gradients, validation, calibration) into streams."""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal

from .measured import Measured


class ResultRecord(Device):
    """Base for derived-result devices: fill with :meth:`record`, then read in a plan."""

    def record(self, **values: Any) -> None:
        """Put each value into the signal of that name (unknown names raise)."""
        for key, value in values.items():
            signal = getattr(self, key, None)
            if not isinstance(signal, Signal):
                raise AttributeError(f"{self.name} has no field {key!r}")
            signal.put(np.asarray(value) if isinstance(value, list | tuple) else value)


class GradientRecord(ResultRecord):
    """One demodulated HGE measurement: per-segment lock-in output and per-case gradients."""

    raw_seq_num = Cpt(Measured, value=0, kind="normal")
    x = Cpt(Measured, value=np.zeros((1, 1)), dims=("segment", "tone"), kind="normal", units="nA")
    y = Cpt(Measured, value=np.zeros((1, 1)), dims=("segment", "tone"), kind="normal", units="nA")
    amplitude = Cpt(
        Measured, value=np.zeros((1, 1)), dims=("segment", "tone"), kind="normal", units="nA"
    )
    phase = Cpt(
        Measured, value=np.zeros((1, 1)), dims=("segment", "tone"), kind="normal", units="rad"
    )
    lockin_stderr = Cpt(
        Measured, value=np.zeros((1, 1)), dims=("segment", "tone"), kind="normal", units="nA"
    )
    gradient = Cpt(
        Measured, value=np.zeros((1, 1)), dims=("case", "tone"), kind="hinted", units="nA/V"
    )
    gradient_stderr = Cpt(
        Measured, value=np.zeros((1, 1)), dims=("case", "tone"), kind="normal", units="nA/V"
    )
    case_currents = Cpt(Measured, value=np.zeros(1), dims=("case",), kind="normal", units="nA")
    tone_electrodes = Cpt(Signal, value="", kind="config")
    tone_frequencies = Cpt(Signal, value=[0.0], kind="config")
    estimator = Cpt(Signal, value="projection", kind="config")


class ValidationRecord(ResultRecord):
    """HGE against finite differences (and the model's exact Jacobian when simulated)."""

    point = Cpt(Measured, value=0, kind="hinted")
    operating_point = Cpt(
        Measured, value=np.zeros(7), dims=("electrode",), kind="normal", units="V"
    )
    hge = Cpt(Measured, value=np.zeros(1), dims=("tone",), kind="normal", units="nA/V")
    hge_stderr = Cpt(Measured, value=np.zeros(1), dims=("tone",), kind="normal", units="nA/V")
    hge_sequential = Cpt(Measured, value=np.zeros(1), dims=("tone",), kind="normal", units="nA/V")
    finite_difference = Cpt(
        Measured, value=np.zeros(1), dims=("tone",), kind="normal", units="nA/V"
    )
    true_gradient = Cpt(Measured, value=np.zeros(1), dims=("tone",), kind="normal", units="nA/V")
    cosine_hge_fd = Cpt(Measured, value=0.0, kind="hinted")
    cosine_hge_true = Cpt(Measured, value=0.0, kind="hinted")


class SpectrumRecord(ResultRecord):
    """A one-sided current-noise spectrum."""

    frequency = Cpt(Measured, value=np.zeros(1), dims=("frequency",), kind="normal", units="Hz")
    psd = Cpt(Measured, value=np.zeros(1), dims=("frequency",), kind="normal", units="nA^2/Hz")
    dc_current = Cpt(Measured, value=0.0, kind="hinted", units="nA")


class CalibrationRecord(ResultRecord):
    """The phase calibration fitted for each tone."""

    tone_frequencies = Cpt(Measured, value=np.zeros(1), dims=("tone",), kind="normal", units="Hz")
    lag_rad = Cpt(Measured, value=np.zeros(1), dims=("tone",), kind="normal", units="rad")
    gain = Cpt(Measured, value=np.zeros(1), dims=("tone",), kind="normal")


class TrainRecord(ResultRecord):
    """One descent step: loss, score, the setting measured and the device time spent so far.

    The setting is the controls, the input electrodes and their levels: ``input_levels[i]``
    holds input ``i``'s logical-0 and logical-1 volts.
    """

    iteration = Cpt(Measured, value=0, kind="hinted")
    attempt = Cpt(Measured, value=0, kind="normal")
    loss = Cpt(Measured, value=0.0, kind="hinted")
    accuracy = Cpt(Measured, value=0.0, kind="hinted")
    margin_na = Cpt(Measured, value=0.0, kind="hinted", units="nA")
    outputs = Cpt(Measured, value=np.zeros(1), dims=("case",), kind="normal", units="nA")
    controls = Cpt(Measured, value=np.zeros(1), dims=("control",), kind="normal", units="V")
    inputs = Cpt(Signal, value="", kind="normal")
    input_zero_v = Cpt(Measured, value=np.zeros(1), dims=("input",), kind="normal", units="V")
    input_one_v = Cpt(Measured, value=np.zeros(1), dims=("input",), kind="normal", units="V")
    gradient = Cpt(Measured, value=np.zeros(1), dims=("parameter",), kind="normal")
    device_seconds = Cpt(Measured, value=0.0, kind="normal", units="s")
    measurements = Cpt(Measured, value=0, kind="normal")
    clipped_samples = Cpt(Measured, value=0, kind="normal")


class EvaluationRecord(ResultRecord):
    """The device evaluated without perturbations at a set of controls."""

    attempt = Cpt(Measured, value=0, kind="normal")
    split = Cpt(Signal, value="train", kind="normal")
    outputs = Cpt(Measured, value=np.zeros(1), dims=("case",), kind="normal", units="nA")
    targets = Cpt(Measured, value=np.zeros(1), dims=("case",), kind="normal")
    controls = Cpt(Measured, value=np.zeros(1), dims=("control",), kind="normal", units="V")
    inputs = Cpt(Signal, value="", kind="normal")
    input_zero_v = Cpt(Measured, value=np.zeros(1), dims=("input",), kind="normal", units="V")
    input_one_v = Cpt(Measured, value=np.zeros(1), dims=("input",), kind="normal", units="V")
    accuracy = Cpt(Measured, value=0.0, kind="hinted")
    margin_na = Cpt(Measured, value=0.0, kind="hinted", units="nA")
    threshold_na = Cpt(Measured, value=0.0, kind="normal", units="nA")
    solved = Cpt(Measured, value=False, kind="normal")
    clipped_samples = Cpt(Measured, value=0, kind="normal")


class GenerationRecord(ResultRecord):
    """One generation of the genetic algorithm."""

    generation = Cpt(Measured, value=0, kind="hinted")
    best_loss = Cpt(Measured, value=0.0, kind="hinted")
    median_loss = Cpt(Measured, value=0.0, kind="normal")
    best_accuracy = Cpt(Measured, value=0.0, kind="hinted")
    best_margin_na = Cpt(Measured, value=0.0, kind="hinted", units="nA")
    best_controls = Cpt(Measured, value=np.zeros(1), dims=("control",), kind="normal", units="V")
    best_inputs = Cpt(Signal, value="", kind="normal")
    best_input_zero_v = Cpt(Measured, value=np.zeros(1), dims=("input",), kind="normal", units="V")
    best_input_one_v = Cpt(Measured, value=np.zeros(1), dims=("input",), kind="normal", units="V")
    device_seconds = Cpt(Measured, value=0.0, kind="normal", units="s")
    measurements = Cpt(Measured, value=0, kind="normal")
    clipped_genomes = Cpt(Measured, value=0, kind="normal")


class ScreeningRecord(ResultRecord):
    """One candidate of the screening (input electrodes and a start), as it was ranked.

    ``promise_na`` is the margin its last measurement says a descent can reach.
    """

    rank = Cpt(Measured, value=0, kind="hinted")
    inputs = Cpt(Signal, value="", kind="hinted")
    steps = Cpt(Measured, value=0, kind="normal")
    loss = Cpt(Measured, value=0.0, kind="hinted")
    promise_na = Cpt(Measured, value=0.0, kind="hinted", units="nA")
    best_margin_na = Cpt(Measured, value=0.0, kind="normal", units="nA")
    controls = Cpt(Measured, value=np.zeros(1), dims=("control",), kind="normal", units="V")
    input_zero_v = Cpt(Measured, value=np.zeros(1), dims=("input",), kind="normal", units="V")
    input_one_v = Cpt(Measured, value=np.zeros(1), dims=("input",), kind="normal", units="V")
