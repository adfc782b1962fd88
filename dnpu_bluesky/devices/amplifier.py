"""The transimpedance (current) amplifier between the DNPU output and the DAQ input."""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal

from .measured import MeasuredReadOnly


class CurrentAmplifier(Device):
    """The current amplifier: gain, bandwidth and polarity, and the output current it reads.

    ``current`` is the DNPU's output current in nA (the mean over the input cases of the
    last stream's analysis windows); inside a :class:`~dnpu_bluesky.devices.DNPU` its data
    key is the DNPU's name with ``_current`` (``dnpu_current``). Triggering the amplifier
    measures through its DNPU, so ``count([dnpu.amplifier])`` records the current at the
    present settings.
    """

    current = Cpt(MeasuredReadOnly, value=0.0, kind="hinted", units="nA")
    gain_v_per_a = Cpt(Signal, value=1.0e8, kind="config")
    bandwidth_hz = Cpt(Signal, value=1.0e4, kind="config")
    inverting = Cpt(Signal, value=False, kind="config")

    def trigger(self) -> Any:
        """Play one stream at the DNPU's present settings and read the current.

        Returns
        -------
        ophyd.DeviceStatus
            The DNPU's status, done when the stream was played and recorded.

        Raises
        ------
        RuntimeError
            For an amplifier that is not part of a DNPU (it has no stream to read).
        """
        if self.parent is None:
            raise RuntimeError(f"{self.name}: an amplifier measures only as part of a DNPU")
        return self.parent.trigger()

    def to_nanoamps(self, volts: np.ndarray) -> np.ndarray:
        """Convert the amplifier's output voltage to the device current.

        Parameters
        ----------
        volts
            The amplifier's output voltage.

        Returns
        -------
        numpy.ndarray
            The current in nA.
        """
        gain_v_per_na = float(self.gain_v_per_a.get()) * 1e-9
        sign = -1.0 if self.inverting.get() else 1.0
        return sign * np.asarray(volts, dtype=float) / gain_v_per_na
