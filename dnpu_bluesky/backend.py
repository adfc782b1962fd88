"""The DAQ backend protocol shared by the simulated and the NI-DAQmx backends.

A backend plays a multichannel analog-output waveform on the electrodes and records the
current amplifier's output voltage on the same sample clock. Nothing above
``dnpu_bluesky.devices`` knows which backend is in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Acquisition:
    """What one synchronous play-and-record returned.

    Attributes:
        ai_volts: Amplifier output voltage, shape ``(n_samples,)``, one sample per AO sample.
        device_seconds: Seconds the instrument spent (the waveform's duration plus any
            fixed per-acquisition overhead a real setup would have), independent of wall time.
    """

    ai_volts: np.ndarray
    device_seconds: float


@runtime_checkable
class DAQBackend(Protocol):
    """Play electrode voltages and record the output synchronously."""

    name: str
    n_channels: int

    def play_and_record(self, ao_volts: np.ndarray, sample_rate: float) -> Acquisition:
        """Write ``ao_volts`` (shape ``(n_samples, n_channels)``) and record as many AI samples.

        Blocking; the caller keeps it off the RunEngine's event loop where that matters.
        The waveform must start and end at 0 V; backends refuse one that does not.
        """
        ...

    def set_dc(self, volts: np.ndarray) -> None:
        """Hold every channel at a static voltage (used to park the electrodes at 0 V)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Identity and settings for provenance (JSON-serialisable)."""
        ...

    def close(self) -> None:
        """Release the hardware (or the simulation); safe to call twice."""
        ...
