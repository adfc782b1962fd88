"""The DAQ backend protocol, :class:`DAQBackend`, and what a backend returns.

A backend plays a multichannel analog-output waveform on the electrodes and records the
current amplifier's output voltage on the same sample clock. Two implement it:
:class:`dnpu_bluesky.sim.SimulatedBackend` (the virtual instrument) and
:class:`dnpu_bluesky.devices.ni_daqmx.NIDAQmxBackend` (NI-DAQmx hardware);
:func:`dnpu_bluesky.devices.make_backend` builds the one a setup profile asks for. Nothing
above ``dnpu_bluesky.devices`` knows which backend is in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Readings at or beyond this fraction of the AI range are taken as clipped by the ADC.
CLIPPING_FRACTION = 0.99


def at_range_limit(ai_volts: np.ndarray, ai_range_v: float) -> np.ndarray:
    """Return True for each AI reading at the end of the symmetric range ``+-ai_range_v``.

    Such a reading is clipped.

    Parameters
    ----------
    ai_volts : numpy.ndarray
        AI readings in volts.
    ai_range_v : float
        The AI channel's symmetric range in volts.

    Returns
    -------
    numpy.ndarray
        Booleans with the shape of ``ai_volts``.
    """
    return np.abs(np.asarray(ai_volts, dtype=float)) >= CLIPPING_FRACTION * ai_range_v


@dataclass(frozen=True)
class Acquisition:
    """What one synchronous play-and-record returned.

    Attributes
    ----------
    ai_volts : numpy.ndarray
        Amplifier output voltage, shape ``(n_samples,)``, one sample per AO sample.
    device_seconds : float
        Seconds the instrument spent (the waveform's duration plus any
        fixed per-acquisition overhead a real setup would have), independent of wall time.
    clipped : numpy.ndarray or None
        Shape ``(n_samples,)``, True where the recording reached the end of the AI
        range (any of the AI samples behind that value), so the current read there is
        wrong; None if the backend cannot tell.
    """

    ai_volts: np.ndarray
    device_seconds: float
    clipped: np.ndarray | None = None


@runtime_checkable
class DAQBackend(Protocol):
    """Play electrode voltages and record the output synchronously."""

    name: str
    n_channels: int

    def play_and_record(self, ao_volts: np.ndarray, sample_rate: float) -> Acquisition:
        """Write ``ao_volts`` (shape ``(n_samples, n_channels)``) and record as many AI samples.

        Blocking; the caller keeps it off the RunEngine's event loop where that matters.
        The waveform must start and end at 0 V; backends refuse one that does not.

        Parameters
        ----------
        ao_volts : numpy.ndarray
            Stream of shape ``(n_samples, n_channels)`` in volts.
        sample_rate : float
            AO samples per second.

        Returns
        -------
        Acquisition
            The recording, the device seconds spent and where the AI range clipped.
        """
        ...

    def set_dc(self, volts: np.ndarray) -> None:
        """Hold every channel at a static voltage (used to park the electrodes at 0 V).

        Parameters
        ----------
        volts : numpy.ndarray
            One voltage per channel, in channel order.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Describe identity and settings for provenance (JSON-serialisable)."""
        ...

    def close(self) -> None:
        """Release the hardware (or the simulation); safe to call twice."""
        ...
