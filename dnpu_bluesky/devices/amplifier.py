"""The transimpedance (current) amplifier between the DNPU output and the DAQ input."""

from __future__ import annotations

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal


class CurrentAmplifier(Device):
    """Gain, bandwidth and polarity of the current amplifier; converts volts read to nA."""

    gain_v_per_a = Cpt(Signal, value=1.0e8, kind="config")
    bandwidth_hz = Cpt(Signal, value=1.0e4, kind="config")
    inverting = Cpt(Signal, value=False, kind="config")

    def to_nanoamps(self, volts: np.ndarray) -> np.ndarray:
        """Convert the amplifier's output voltage to the device current in nA."""
        gain_v_per_na = float(self.gain_v_per_a.get()) * 1e-9
        sign = -1.0 if self.inverting.get() else 1.0
        return sign * np.asarray(volts, dtype=float) / gain_v_per_na
