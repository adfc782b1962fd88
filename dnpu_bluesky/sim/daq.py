"""A simulated DAQ: plays electrode streams on a device model and records the amplifier."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dnpu_bluesky.backend import Acquisition, at_range_limit
from dnpu_bluesky.safety import UnsafeWaveformError, check_waveform
from dnpu_bluesky.sim.electronics import Electronics
from dnpu_bluesky.sim.models import DeviceModel, VirtualDNPU


class SimulatedBackend:
    """The :class:`~dnpu_bluesky.backend.DAQBackend` of the virtual instrument.

    Each acquisition evaluates the device model on every sample of the stream and passes
    the current through :class:`Electronics` (noise, capacitive pick-up, amplifier, ADC).
    The noise continues from one acquisition to the next as one seeded stream, so the same
    sequence of calls on a DAQ built with the same seed records the same samples.

    Parameters
    ----------
    model : DeviceModel, optional
        The device; default ``VirtualDNPU(seed=0)``.
    electronics : Electronics, optional
        The readout chain; default ``Electronics()``.
    seed : int
        Seeds the noise (not the device: pass a model for another device).
    overhead_s : float
        Fixed device seconds added per acquisition (task start-up, settling).
    realtime : bool
        Take as long as the hardware would: each acquisition returns no sooner
        than its device seconds after it started (to rehearse an experiment's timing).
    limits : numpy.ndarray, optional
        ``(n_electrodes, 2)`` volts every stream must stay within (default: the
        model's voltage ranges); a setup profile's limits.
    max_slew_v_per_s : float, optional
        The setup's slew limit, checked on every stream as the hardware
        backend checks it (default: none).

    Attributes
    ----------
    model : DeviceModel
        The device model.
    electronics : Electronics
        The readout chain.
    dc_volts : numpy.ndarray
        The voltages the electrodes hold between streams (0 V after ``close``).
    """

    name = "sim"

    def __init__(
        self,
        model: DeviceModel | None = None,
        electronics: Electronics | None = None,
        seed: int = 0,
        overhead_s: float = 0.0,
        realtime: bool = False,
        limits: np.ndarray | None = None,
        max_slew_v_per_s: float | None = None,
    ) -> None:
        if overhead_s < 0:
            raise ValueError(f"overhead_s must not be negative, got {overhead_s}")
        self.model: DeviceModel = VirtualDNPU(seed=0) if model is None else model
        self.electronics = Electronics() if electronics is None else electronics
        self.n_channels = int(self.model.n_electrodes)
        if len(self.electronics.capacitance_pf) != self.n_channels:
            raise ValueError(
                f"electronics has {len(self.electronics.capacitance_pf)} capacitances for a "
                f"{self.n_channels}-electrode model"
            )
        self.seed = int(seed)
        self.limits = np.array(self.model.voltage_ranges if limits is None else limits, float)
        self.max_slew_v_per_s = None if max_slew_v_per_s is None else float(max_slew_v_per_s)
        self.overhead_s = float(overhead_s)
        self.realtime = bool(realtime)
        self.dc_volts = np.zeros(self.n_channels)
        self._rng = np.random.default_rng(self.seed)
        self._noise_state: dict[str, Any] = {}
        self._device_time_s = 0.0
        self._closed = False

    @property
    def device_time_s(self) -> float:
        """Device seconds spent so far by all acquisitions (drives the drift)."""
        return self._device_time_s

    def play_and_record(self, ao_volts: np.ndarray, sample_rate: float) -> Acquisition:
        """Play ``ao_volts`` on the electrodes and record the amplifier output.

        Parameters
        ----------
        ao_volts : numpy.ndarray
            Stream of shape ``(n_samples, n_channels)`` in volts; it must start
            and end at 0 V and stay inside ``model.voltage_ranges``.
        sample_rate : float
            Samples per second.

        Returns
        -------
        Acquisition
            The recorded ADC voltages, the device seconds spent and where the ADC clipped.

        Raises
        ------
        UnsafeWaveformError
            If the stream breaks a safety rule; nothing was played.
        RuntimeError
            If the DAQ is closed.
        """
        started = time.monotonic()
        self._check_open()
        if not np.isfinite(sample_rate) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        volts = np.asarray(ao_volts, dtype=float)
        if volts.ndim != 2 or volts.shape[1] != self.n_channels:
            raise UnsafeWaveformError(
                f"stream must have shape (n_samples, {self.n_channels}), got {volts.shape}"
            )
        check_waveform(
            volts,
            sample_rate,
            limits=self.limits,
            max_slew_v_per_s=self.max_slew_v_per_s,
            channel_names=[f"electrode {i}" for i in range(self.n_channels)],
        )
        current = self.model.current(volts)
        recorded = self.electronics.output_volts(
            current,
            volts,
            sample_rate,
            self._rng,
            t0_s=self._device_time_s,
            state=self._noise_state,
        )
        seconds = volts.shape[0] / sample_rate + self.overhead_s
        self._device_time_s += seconds
        self.dc_volts = volts[-1].copy()
        if self.realtime:
            time.sleep(max(0.0, started + seconds - time.monotonic()))
        clipped = at_range_limit(recorded, self.electronics.adc_range_v)
        return Acquisition(ai_volts=recorded, device_seconds=seconds, clipped=clipped)

    def set_dc(self, volts: np.ndarray) -> None:
        """Hold the electrodes at static voltages (inside the model's limits).

        Raises
        ------
        UnsafeWaveformError
            For the wrong shape, a non-finite value, or a value outside the limits.
        RuntimeError
            If the DAQ is closed.
        """
        self._check_open()
        v = np.asarray(volts, dtype=float).reshape(-1)
        if v.shape != (self.n_channels,) or not np.all(np.isfinite(v)):
            raise UnsafeWaveformError(
                f"set_dc needs {self.n_channels} finite voltages, got {np.asarray(volts)}"
            )
        limits = np.asarray(self.model.voltage_ranges)
        bad = np.flatnonzero((v < limits[:, 0]) | (v > limits[:, 1]))
        if bad.size:
            i = bad[0]
            raise UnsafeWaveformError(
                f"electrode {i}: {v[i]:+.4f} V is outside the limits "
                f"[{limits[i, 0]:+.3f}, {limits[i, 1]:+.3f}] V"
            )
        self.dc_volts = v.copy()

    def describe(self) -> dict[str, Any]:
        """Describe backend, seed, overhead, model identity and electronics, JSON-serialisable."""
        return {
            "name": self.name,
            "backend": "SimulatedBackend",
            "n_channels": self.n_channels,
            "seed": self.seed,
            "overhead_s": self.overhead_s,
            "realtime": self.realtime,
            "model": self.model.describe(),
            "electronics": self.electronics.to_dict(),
        }

    def close(self) -> None:
        """Park the electrodes at 0 V and refuse further streams; safe to call twice."""
        self.dc_volts = np.zeros(self.n_channels)
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the simulated DAQ is closed")
