"""Ophyd devices: electrodes, the current amplifier, DAQ backends and the DNPU itself."""

from .amplifier import CurrentAmplifier
from .build import build_dnpu, make_backend
from .dnpu import DEFAULT_AMPLITUDE_V, DNPU, MODES
from .electrode import Electrode

__all__ = [
    "DEFAULT_AMPLITUDE_V",
    "DNPU",
    "MODES",
    "CurrentAmplifier",
    "Electrode",
    "build_dnpu",
    "make_backend",
]
