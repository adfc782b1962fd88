"""Bluesky plans (open a run) for HGE, training, its peers, validation and characterisation."""

from .characterise import iv_sweep, noise_spectrum
from .genetic import train_genetic
from .gradient import calibrate_phase, hge_gradient, validate_gradients
from .queue import train_gate, train_sphere
from .stubs import configure_hge, measure_gradient, set_input_cases
from .train import (
    GRADIENT_METHODS,
    TrainResult,
    evaluate_controls,
    train,
    train_boolean_gates,
)

__all__ = [
    "GRADIENT_METHODS",
    "TrainResult",
    "calibrate_phase",
    "configure_hge",
    "evaluate_controls",
    "hge_gradient",
    "iv_sweep",
    "measure_gradient",
    "noise_spectrum",
    "set_input_cases",
    "train",
    "train_boolean_gates",
    "train_gate",
    "train_genetic",
    "train_sphere",
    "validate_gradients",
]
