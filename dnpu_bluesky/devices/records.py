"""Soft devices that put derived results (gradients, validation, calibration) into streams."""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal


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

    raw_seq_num = Cpt(Signal, value=0, kind="normal")
    x = Cpt(Signal, value=np.zeros((1, 1)), kind="normal")
    y = Cpt(Signal, value=np.zeros((1, 1)), kind="normal")
    amplitude = Cpt(Signal, value=np.zeros((1, 1)), kind="normal")
    phase = Cpt(Signal, value=np.zeros((1, 1)), kind="normal")
    lockin_stderr = Cpt(Signal, value=np.zeros((1, 1)), kind="normal")
    gradient = Cpt(Signal, value=np.zeros((1, 1)), kind="hinted")
    gradient_stderr = Cpt(Signal, value=np.zeros((1, 1)), kind="normal")
    case_currents = Cpt(Signal, value=np.zeros(1), kind="normal")
    tone_electrodes = Cpt(Signal, value="", kind="config")
    tone_frequencies = Cpt(Signal, value=[0.0], kind="config")
    estimator = Cpt(Signal, value="projection", kind="config")


class ValidationRecord(ResultRecord):
    """HGE against finite differences (and the model's exact Jacobian when simulated)."""

    point = Cpt(Signal, value=0, kind="hinted")
    operating_point = Cpt(Signal, value=np.zeros(7), kind="normal")
    hge = Cpt(Signal, value=np.zeros(1), kind="normal")
    hge_stderr = Cpt(Signal, value=np.zeros(1), kind="normal")
    hge_sequential = Cpt(Signal, value=np.zeros(1), kind="normal")
    finite_difference = Cpt(Signal, value=np.zeros(1), kind="normal")
    true_gradient = Cpt(Signal, value=np.zeros(1), kind="normal")
    cosine_hge_fd = Cpt(Signal, value=0.0, kind="hinted")
    cosine_hge_true = Cpt(Signal, value=0.0, kind="hinted")


class SpectrumRecord(ResultRecord):
    """A one-sided current-noise spectrum."""

    frequency = Cpt(Signal, value=np.zeros(1), kind="normal")
    psd = Cpt(Signal, value=np.zeros(1), kind="normal")
    dc_current = Cpt(Signal, value=0.0, kind="hinted")


class CalibrationRecord(ResultRecord):
    """The phase calibration fitted for each tone."""

    tone_frequencies = Cpt(Signal, value=np.zeros(1), kind="normal")
    lag_rad = Cpt(Signal, value=np.zeros(1), kind="normal")
    gain = Cpt(Signal, value=np.zeros(1), kind="normal")


class TrainRecord(ResultRecord):
    """One descent step: loss, score of the measured outputs, controls and spent device time."""

    iteration = Cpt(Signal, value=0, kind="hinted")
    attempt = Cpt(Signal, value=0, kind="normal")
    loss = Cpt(Signal, value=0.0, kind="hinted")
    accuracy = Cpt(Signal, value=0.0, kind="hinted")
    margin_na = Cpt(Signal, value=0.0, kind="hinted")
    outputs = Cpt(Signal, value=np.zeros(1), kind="normal")
    controls = Cpt(Signal, value=np.zeros(1), kind="normal")
    gradient = Cpt(Signal, value=np.zeros(1), kind="normal")
    device_seconds = Cpt(Signal, value=0.0, kind="normal")
    measurements = Cpt(Signal, value=0, kind="normal")
    clipped_samples = Cpt(Signal, value=0, kind="normal")


class EvaluationRecord(ResultRecord):
    """The device evaluated without perturbations at a set of controls."""

    attempt = Cpt(Signal, value=0, kind="normal")
    split = Cpt(Signal, value="train", kind="normal")
    outputs = Cpt(Signal, value=np.zeros(1), kind="normal")
    targets = Cpt(Signal, value=np.zeros(1), kind="normal")
    controls = Cpt(Signal, value=np.zeros(1), kind="normal")
    accuracy = Cpt(Signal, value=0.0, kind="hinted")
    margin_na = Cpt(Signal, value=0.0, kind="hinted")
    threshold_na = Cpt(Signal, value=0.0, kind="normal")
    solved = Cpt(Signal, value=False, kind="normal")
    clipped_samples = Cpt(Signal, value=0, kind="normal")


class GenerationRecord(ResultRecord):
    """One generation of the genetic algorithm."""

    generation = Cpt(Signal, value=0, kind="hinted")
    best_loss = Cpt(Signal, value=0.0, kind="hinted")
    median_loss = Cpt(Signal, value=0.0, kind="normal")
    best_accuracy = Cpt(Signal, value=0.0, kind="hinted")
    best_margin_na = Cpt(Signal, value=0.0, kind="hinted")
    best_controls = Cpt(Signal, value=np.zeros(1), kind="normal")
    device_seconds = Cpt(Signal, value=0.0, kind="normal")
    measurements = Cpt(Signal, value=0, kind="normal")
    clipped_genomes = Cpt(Signal, value=0, kind="normal")
