"""Ophyd devices: electrodes, the current amplifier, DAQ backends and the DNPU itself."""

from .amplifier import CurrentAmplifier
from .dnpu import DEFAULT_AMPLITUDE_V, DNPU, MODES
from .electrode import Electrode
from .factory import build_dnpu

__all__ = ["DEFAULT_AMPLITUDE_V", "DNPU", "MODES", "CurrentAmplifier", "Electrode", "build_dnpu"]
