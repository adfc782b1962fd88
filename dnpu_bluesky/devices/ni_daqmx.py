"""The NI-DAQmx hardware backend: plays electrode streams on AO and records the output on AI.

One acquisition uses two finite tasks on the same device timebase: an AO task holding the
electrode channels at the stream's sample rate and an AI task reading the amplifier output at
``readout_oversampling`` times that rate. The AI task is armed first on the AO start trigger
(``trigger.start_trigger_source`` in the profile), then the AO task starts both. The AI samples
are averaged in blocks of ``readout_oversampling``, one block per AO sample.

Safety is enforced here, whatever the caller does: every stream is checked against the
profile's limits and slew rate before any task exists (refused whole, never clipped); static
voltages are reached by linear ramps within the slew limit; an error during an acquisition
ramps the electrodes to 0 V from where the generation stopped before the error propagates; and
``close()`` and an interpreter-exit hook park every electrode at 0 V.

The backend assumes the electrodes rest at 0 V when it is created (NI analog outputs power up
at 0 V and every earlier session parks them there).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from .._errors import HardwareUnavailableError
from ..backend import Acquisition
from ..config import SetupProfile
from ..safety import ZERO_TOLERANCE_V, UnsafeWaveformError, check_waveform

__all__ = ["HardwareUnavailableError", "NIDAQmxBackend"]

_log = logging.getLogger(__name__)

#: Seconds added to a stream's duration before a read or wait gives up.
_TIMEOUT_MARGIN_S = 10.0

_TERMINAL_CONFIG = {
    "default": "DEFAULT",
    "rse": "RSE",
    "nrse": "NRSE",
    "diff": "DIFF",
    "pseudo_diff": "PSEUDO_DIFF",
}


def _import_nidaqmx() -> ModuleType:
    module = importlib.import_module("nidaqmx")
    for name in ("constants", "errors", "system"):
        importlib.import_module(f"nidaqmx.{name}")
    return module


def _park_at_exit(backend_ref: weakref.ref[NIDAQmxBackend]) -> None:
    backend = backend_ref()
    if backend is None:
        return
    try:
        backend.close()
    except Exception:
        _log.exception("could not park the electrodes at 0 V at interpreter exit")


class NIDAQmxBackend:
    """A :class:`~dnpu_bluesky.backend.DAQBackend` on NI-DAQmx hardware.

    Args:
        profile: A validated setup profile with ``backend: nidaqmx``.
        nidaqmx_module: The ``nidaqmx`` module to use; a test double can be injected here.
            Default: the installed ``nidaqmx`` package.

    Raises:
        ValueError: if the profile is not an NI-DAQmx profile.
        HardwareUnavailableError: if the NI-DAQmx driver is missing.
    """

    name = "nidaqmx"

    def __init__(self, profile: SetupProfile, *, nidaqmx_module: Any = None) -> None:
        if profile.backend != "nidaqmx" or profile.trigger is None:
            raise ValueError(
                f"profile {profile.name!r} is for backend {profile.backend!r}, not 'nidaqmx'"
            )
        self.profile = profile
        self.n_channels: int = len(profile.electrodes)
        self._daq = nidaqmx_module if nidaqmx_module is not None else _import_nidaqmx()
        self._limits = profile.limits_v
        self._names = list(profile.electrode_names)
        # What the electrodes hold now, as far as the backend knows.
        self._levels = np.zeros(self.n_channels)
        self._closed = False
        self._lock = threading.RLock()
        self._driver_version = self._probe_driver()
        self._exit_hook = functools.partial(_park_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    # -- public API ---------------------------------------------------------------------

    def play_and_record(self, ao_volts: np.ndarray, sample_rate: float) -> Acquisition:
        """Play a checked stream on the electrodes and record the output on the same clock.

        Args:
            ao_volts: Stream of shape ``(n_samples, n_channels)`` in volts; it must start and
                end at 0 V, stay inside every electrode's limits and keep to the slew limit.
            sample_rate: AO samples per second; AI runs ``readout_oversampling`` times faster.

        Returns:
            The AI voltage averaged back to one value per AO sample, and the device seconds
            (measured time the instrument was busy, at least the stream's duration).

        Raises:
            ValueError: for a stream of the wrong shape or a non-positive rate.
            UnsafeWaveformError: if the stream breaks a safety rule (no task was created).
            HardwareUnavailableError: if the driver is missing.
            nidaqmx.errors.DaqError: from the driver, after the electrodes were parked.
        """
        volts = np.asarray(ao_volts, dtype=float)
        if volts.ndim != 2 or volts.shape[1] != self.n_channels:
            raise ValueError(
                f"stream must have shape (n_samples, {self.n_channels}), got {volts.shape}"
            )
        rate = float(sample_rate)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
        check_waveform(
            volts,
            rate,
            limits=self._limits,
            max_slew_v_per_s=self.profile.max_slew_v_per_s,
            channel_names=self._names,
        )
        with self._lock:
            self._check_open()
            started = time.perf_counter()
            try:
                ramp_seconds = self._move_to(np.zeros(self.n_channels))
                ai_volts = self._stream(volts, rate)
            except BaseException as exc:
                self._park_after_error(exc)
                raise
            wall = time.perf_counter() - started
        device_seconds = max(wall, ramp_seconds + len(volts) / rate)
        return Acquisition(ai_volts=ai_volts, device_seconds=device_seconds)

    def set_dc(self, volts: np.ndarray) -> None:
        """Ramp every electrode to a static voltage within the slew limit, then hold it.

        Args:
            volts: One voltage per electrode, in channel order.

        Raises:
            ValueError: for the wrong number of values.
            UnsafeWaveformError: for a value outside an electrode's limits (nothing written).
            RuntimeError: after ``close()``, unless the electrodes already hold ``volts``.
        """
        target = np.asarray(volts, dtype=float)
        if target.shape != (self.n_channels,):
            raise ValueError(f"need {self.n_channels} voltages, got shape {target.shape}")
        for i, value in enumerate(target):
            low, high = self._limits[i]
            if not (math.isfinite(value) and low <= value <= high):
                raise UnsafeWaveformError(
                    f"{self._names[i]}: {value:+.4f} V is outside the limits "
                    f"[{low:+.3f}, {high:+.3f}] V; nothing was written"
                )
        with self._lock:
            if self._closed and np.allclose(target, self._levels, rtol=0, atol=ZERO_TOLERANCE_V):
                return
            self._check_open()
            self._move_to(target)

    def describe(self) -> dict[str, Any]:
        """Driver and package versions, the readout's full-scale current and the profile."""
        amplifier = self.profile.amplifier
        return {
            "name": self.name,
            "driver_version": self._driver_version,
            "nidaqmx_version": str(getattr(self._daq, "__version__", "unknown")),
            "full_scale_current_na": self.profile.output.ai_range_v / amplifier.gain_v_per_a * 1e9,
            "profile": self.profile.to_dict(),
        }

    def close(self) -> None:
        """Ramp every electrode to 0 V and release the backend; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                self._move_to(np.zeros(self.n_channels))
            finally:
                self._closed = True
                atexit.unregister(self._exit_hook)

    # -- acquisition --------------------------------------------------------------------

    def _stream(self, volts: np.ndarray, rate: float) -> np.ndarray:
        constants = self._daq.constants
        output = self.profile.output
        oversampling = self.profile.readout_oversampling
        n_samples = len(volts)
        n_ai = n_samples * oversampling
        timeout = n_samples / rate + _TIMEOUT_MARGIN_S
        with contextlib.ExitStack() as stack:
            ao = stack.enter_context(self._new_task())
            ai = stack.enter_context(self._new_task())
            self._add_electrodes(ao)
            ao.timing.cfg_samp_clk_timing(
                rate, sample_mode=constants.AcquisitionType.FINITE, samps_per_chan=n_samples
            )
            ai.ai_channels.add_ai_voltage_chan(
                output.channel,
                name_to_assign_to_channel="output",
                terminal_config=getattr(
                    constants.TerminalConfiguration, _TERMINAL_CONFIG[output.terminal_config]
                ),
                min_val=-output.ai_range_v,
                max_val=output.ai_range_v,
            )
            ai.timing.cfg_samp_clk_timing(
                rate * oversampling,
                sample_mode=constants.AcquisitionType.FINITE,
                samps_per_chan=n_ai,
            )
            ai.triggers.start_trigger.cfg_dig_edge_start_trig(
                self.profile.trigger.start_trigger_source
            )
            ao.write(self._channel_major(volts), auto_start=False, timeout=timeout)
            ai.start()  # armed: acquires from the AO start trigger on
            try:
                ao.start()
                raw = ai.read(number_of_samples_per_channel=n_ai, timeout=timeout)
                ao.wait_until_done(timeout=timeout)
            except BaseException:
                self._levels = self._levels_after_abort(ao, volts, before=self._levels)
                raise
        self._levels = np.zeros(self.n_channels)  # every stream ends at 0 V
        samples = np.asarray(raw, dtype=float)
        if samples.shape != (n_ai,):
            raise RuntimeError(f"AI returned {samples.shape} samples, expected ({n_ai},)")
        return samples.reshape(n_samples, oversampling).mean(axis=1)

    def _move_to(self, target: np.ndarray) -> float:
        """Ramp linearly from the present levels to ``target``; returns the ramp's seconds."""
        start = self._levels
        delta = target - start
        largest = float(np.max(np.abs(delta)))
        if largest <= ZERO_TOLERANCE_V:
            return 0.0
        rate = self.profile.sample_rate
        # At least two samples: finite AO generation refuses a one-sample buffer.
        n_steps = max(2, math.ceil(largest * rate / self.profile.max_slew_v_per_s))
        fraction = np.arange(1, n_steps + 1) / n_steps
        ramp = start + fraction[:, np.newaxis] * delta
        ramp[-1] = target
        timeout = n_steps / rate + _TIMEOUT_MARGIN_S
        with contextlib.ExitStack() as stack:
            ao = stack.enter_context(self._new_task())
            self._add_electrodes(ao)
            ao.timing.cfg_samp_clk_timing(
                rate,
                sample_mode=self._daq.constants.AcquisitionType.FINITE,
                samps_per_chan=n_steps,
            )
            ao.write(self._channel_major(ramp), auto_start=False, timeout=timeout)
            try:
                ao.start()
                ao.wait_until_done(timeout=timeout)
            except BaseException:
                self._levels = self._levels_after_abort(ao, ramp, before=start)
                raise
        self._levels = target.copy()
        return n_steps / rate

    def _levels_after_abort(self, ao: Any, samples: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Stop a failed generation and work out which sample the electrodes were left at."""
        try:
            ao.stop()
            generated = int(ao.out_stream.total_samp_per_chan_generated)
        except Exception:
            # Unknown position: assume the middle of the span the electrodes could be in,
            # which halves the worst-case jump of the parking ramp's first sample.
            span = np.vstack([before, samples])
            _log.warning("cannot tell where the generation stopped; parking from mid-span")
            return (span.min(axis=0) + span.max(axis=0)) / 2
        if generated <= 0:
            return before.copy()
        return samples[min(generated, len(samples)) - 1].copy()

    def _park_after_error(self, exc: BaseException) -> None:
        try:
            self._move_to(np.zeros(self.n_channels))
        except Exception as park_exc:
            _log.exception("could not park the electrodes at 0 V after an error")
            exc.add_note(f"parking the electrodes at 0 V failed too: {park_exc!r}")

    # -- helpers ------------------------------------------------------------------------

    def _add_electrodes(self, task: Any) -> None:
        # The channel range is the electrode's limits, so the driver refuses anything beyond.
        for electrode in self.profile.electrodes:
            task.ao_channels.add_ao_voltage_chan(
                electrode.channel,
                name_to_assign_to_channel=electrode.name,
                min_val=electrode.min_v,
                max_val=electrode.max_v,
            )

    def _channel_major(self, samples: np.ndarray) -> np.ndarray:
        """``(n, channels)`` to the layout ``Task.write`` expects."""
        if self.n_channels == 1:
            return np.ascontiguousarray(samples[:, 0])
        return np.ascontiguousarray(samples.T)

    @contextlib.contextmanager
    def _driver_errors(self) -> Iterator[None]:
        errors = self._daq.errors
        try:
            yield
        except (errors.DaqNotFoundError, errors.DaqNotSupportedError) as exc:
            raise HardwareUnavailableError(
                "NI-DAQmx driver not found: install NI-DAQmx from ni.com (Windows or a "
                "supported Linux) or use the sim backend (backend: sim in the setup profile)"
            ) from exc

    def _new_task(self) -> Any:
        with self._driver_errors():
            return self._daq.Task()

    def _probe_driver(self) -> str:
        with self._driver_errors():
            version = self._daq.system.System.local().driver_version
        return f"{version.major_version}.{version.minor_version}.{version.update_version}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"NI-DAQmx backend for {self.profile.name!r} is closed")
