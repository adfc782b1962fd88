"""The NI-DAQmx hardware backend: plays electrode streams on AO and records the output on AI.

One acquisition uses two finite tasks on the same device timebase: an AO task holding the
electrode channels at the stream's sample rate and an AI task reading the amplifier output at
``readout_oversampling`` times that rate. The AI task is armed first on the AO start trigger
(``trigger.start_trigger_source`` in the profile), then the AO task starts both. The AI samples
are averaged in blocks of ``readout_oversampling``, one block per AO sample.

Safety is enforced here, whatever the caller does: every stream is checked against the
profile's limits, sample rate and slew rate before any task exists (refused whole, never
clipped); static voltages are reached by linear ramps within the slew limit; an input-side
error lets the finite stream run out to its final 0 V, and an output-side error ramps the
electrodes to 0 V from where the generation stopped, before the error propagates; ``close()``,
an interpreter-exit hook, a multiprocessing finalizer (children end with ``os._exit``) and
SIGTERM (when its handler is the default) park every electrode at 0 V, and Ctrl-C is held back
while a park ramp runs.

One backend at a time drives an AO device: each backend locks the devices of its channels
(``lockf`` on a file per device) until it closes or its process ends. The analog outputs
cannot be read back, so while its electrodes hold a non-zero level or a generation runs, the
backend keeps a state file per device next to the lock, in the ``nidaqmx`` folder of
``$DNPU_STATE_DIR`` (default: ``platformdirs.user_state_path("dnpu-bluesky")``). A new backend
that finds one refuses to start: the pins may still hold those levels, or be at 0 V after a
reset, and a ramp from the wrong level would be a step.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import multiprocessing.util
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import numpy as np

from .._errors import HardwareUnavailableError
from ..backend import Acquisition, at_range_limit
from ..config import SetupProfile
from ..safety import ZERO_TOLERANCE_V, UnsafeWaveformError, check_waveform
from ._ni_outputs import OutputRecords, forget_locks
from ._ni_tasks import RATE_TOLERANCE, TaskBuilder, import_nidaqmx

__all__ = ["HardwareUnavailableError", "NIDAQmxBackend"]

_log = logging.getLogger(__name__)

#: Seconds added to a stream's duration before a read or wait gives up.
_TIMEOUT_MARGIN_S = 10.0
#: Before other multiprocessing finalizers (priority 0 and up to 10 in the standard library).
_EXIT_PRIORITY = 100
#: The open backends of this process, which SIGTERM parks.
_open_backends: set[NIDAQmxBackend] = set()
#: A SIGTERM arrived while the main thread was inside a backend call.
_sigterm_pending = False


def _park_at_exit(backend: NIDAQmxBackend) -> None:
    # In a forked child, which inherits the hooks, close() leaves the parent's outputs alone.
    try:
        backend.close()
    except Exception:
        _log.exception("could not park the electrodes at 0 V at interpreter exit")


def _park_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: park every open backend, then end as SIGTERM's default would."""
    global _sigterm_pending
    if any(backend._lock._is_owned() for backend in list(_open_backends)):
        # This thread is inside a backend call (a stream, a ramp): parking now would
        # interleave with it. It is delivered again when the call returns (``_locked``).
        _sigterm_pending = True
        return
    _sigterm_pending = False
    for backend in list(_open_backends):
        try:
            backend.close()
        except Exception:
            _log.exception("could not park the electrodes at 0 V on SIGTERM")
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _park_on_sigterm_from_now() -> None:
    """Park on SIGTERM, unless the process has a handler of its own or this is not the main thread.

    A SIGTERM handler of the process's own then decides; the exit hooks still park on a normal
    exit.
    """
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _park_on_sigterm)


def _default_sigterm_when_none_open() -> None:
    if _open_backends or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _park_on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _forget_backends_in_child() -> None:
    # A forked child drives none of its parent's outputs and holds none of its locks.
    _open_backends.clear()
    forget_locks()
    with contextlib.suppress(ValueError):  # forked from a thread other than the main one
        if signal.getsignal(signal.SIGTERM) is _park_on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_backends_in_child)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then deliver them.

    Only the main thread receives signals, and only there can handlers be replaced.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None and handler != signal.SIG_IGN:
            previous[signum] = handler
            signal.signal(signum, lambda number, _frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


class NIDAQmxBackend:
    """A :class:`~dnpu_bluesky.backend.DAQBackend` on NI-DAQmx hardware.

    Building it locks the AO devices and lets the driver verify both tasks (channels,
    clocks, trigger terminal) without generating anything (see the module docstring).

    Parameters
    ----------
    profile : SetupProfile
        A validated setup profile with ``backend: nidaqmx``.
    nidaqmx_module : object, optional
        The ``nidaqmx`` module to use; a test double can be injected here.
        Default: the installed ``nidaqmx`` package.

    Raises
    ------
    ValueError
        If the profile is not an NI-DAQmx profile, or the device cannot make its
        sample rate exactly.
    HardwareUnavailableError
        If the NI-DAQmx driver is missing or refuses a channel or
        the trigger terminal (one line naming it), another backend holds the AO devices,
        or an earlier session ended without parking them (its state file names the
        levels, which may or may not still be on the pins).
    """

    name = "nidaqmx"

    def __init__(self, profile: SetupProfile, *, nidaqmx_module: Any = None) -> None:
        if profile.backend != "nidaqmx" or profile.trigger is None:
            raise ValueError(
                f"profile {profile.name!r} is for backend {profile.backend!r}, not 'nidaqmx'"
            )
        self.profile = profile
        self.n_channels: int = len(profile.electrodes)
        self._daq = nidaqmx_module if nidaqmx_module is not None else import_nidaqmx()
        self._tasks = TaskBuilder(self._daq, profile)
        self._limits = profile.limits_v
        self._names = list(profile.electrode_names)
        self._channels = [e.channel for e in profile.electrodes]
        # What the electrodes hold now, as far as the backend knows (after a generation
        # stopped at an unknown sample: a guess, and the state file still says "running").
        self._levels = np.zeros(self.n_channels)
        self._closed = False
        self._pid = os.getpid()  # a forked child must not drive its parent's outputs
        self._lock = threading.RLock()
        self._records = OutputRecords(profile.name, self._channels)
        self._driver_version = self._tasks.driver_version()
        try:
            self._records.lock()
            self._records.check_none_left()
            self._tasks.verify_setup()
        except BaseException:
            self._records.release()
            raise
        # Held strongly: a backend dropped without close() may still hold a voltage.
        self._exit_hook = functools.partial(_park_at_exit, self)
        atexit.register(self._exit_hook)
        self._finalizer = multiprocessing.util.Finalize(
            None, self._exit_hook, exitpriority=_EXIT_PRIORITY
        )
        _open_backends.add(self)
        _park_on_sigterm_from_now()

    # -- public API ---------------------------------------------------------------------

    def play_and_record(self, ao_volts: np.ndarray, sample_rate: float) -> Acquisition:
        """Play a checked stream on the electrodes and record the output on the same clock.

        Parameters
        ----------
        ao_volts : numpy.ndarray
            Stream of shape ``(n_samples, n_channels)`` in volts; it must start and
            end at 0 V, stay inside every electrode's limits and keep to the slew limit.
        sample_rate : float
            AO samples per second; AI runs ``readout_oversampling`` times faster.

        Returns
        -------
        Acquisition
            The AI voltage averaged back to one value per AO sample, the device seconds
            (measured time the instrument was busy, at least the stream's duration) and,
            per AO sample, whether any of its AI samples reached the end of the AI range.

        Raises
        ------
        ValueError
            For a stream of the wrong shape, a rate other than the profile's, or
            a rate the driver cannot make exactly (nothing was generated).
        UnsafeWaveformError
            If the stream breaks a safety rule (no task was created).
        HardwareUnavailableError
            If the driver is missing.
        nidaqmx.errors.DaqError
            From the driver, after the electrodes were parked.
        """
        volts = np.array(ao_volts, dtype=float)  # a copy: the caller's array may change later
        if volts.ndim != 2 or volts.shape[1] != self.n_channels:
            raise ValueError(
                f"stream must have shape (n_samples, {self.n_channels}), got {volts.shape}"
            )
        rate = float(sample_rate)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
        if not math.isclose(rate, self.profile.sample_rate, rel_tol=RATE_TOLERANCE):
            # The profile's rate is the one checked against aliasing and the tone plan.
            raise ValueError(
                f"sample_rate {rate:g} S/s differs from the setup profile's "
                f"{self.profile.sample_rate:g} S/s; change it in the profile"
            )
        check_waveform(
            volts,
            rate,
            limits=self._limits,
            max_slew_v_per_s=self.profile.max_slew_v_per_s,
            channel_names=self._names,
        )
        with self._locked():
            self._check_open()
            started = time.perf_counter()
            try:
                ramp_seconds = self._move_to(np.zeros(self.n_channels))
                ai_volts, clipped = self._stream(volts, rate)
            except BaseException as exc:
                self._park_after_error(exc)
                raise
            wall = time.perf_counter() - started
        device_seconds = max(wall, ramp_seconds + len(volts) / rate)
        return Acquisition(ai_volts=ai_volts, device_seconds=device_seconds, clipped=clipped)

    def set_dc(self, volts: np.ndarray) -> None:
        """Ramp every electrode to a static voltage within the slew limit, then hold it.

        Parameters
        ----------
        volts : numpy.ndarray
            One voltage per electrode, in channel order.

        Raises
        ------
        ValueError
            For the wrong number of values.
        UnsafeWaveformError
            For a value outside an electrode's limits (nothing written).
        RuntimeError
            After ``close()``, unless the electrodes already hold ``volts``.
        """
        target = np.array(volts, dtype=float)  # a copy: the caller's array may change later
        if target.shape != (self.n_channels,):
            raise ValueError(f"need {self.n_channels} voltages, got shape {target.shape}")
        for i, value in enumerate(target):
            low, high = self._limits[i]
            if not (math.isfinite(value) and low <= value <= high):
                raise UnsafeWaveformError(
                    f"{self._names[i]}: {value:+.4f} V is outside the limits "
                    f"[{low:+.3f}, {high:+.3f}] V; nothing was written"
                )
        with self._locked():
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
        """Ramp every electrode to 0 V and release the backend; safe to call twice.

        The backend stays open (and its exit hooks armed) if the ramp fails.
        """
        if os.getpid() != self._pid:
            return  # a forked child's copy: the parent drives (and parks) these outputs
        with self._lock, _signals_deferred():
            if self._closed:
                return
            self._move_to(np.zeros(self.n_channels))
            self._closed = True
            atexit.unregister(self._exit_hook)
            self._finalizer.cancel()
            self._records.release()  # to the next session
            _open_backends.discard(self)
        _default_sigterm_when_none_open()  # after the block, which restores the handler

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the backend's lock, and deliver a SIGTERM held off during the call after it."""
        with self._lock:
            yield
        if _sigterm_pending and not self._lock._is_owned():
            signal.raise_signal(signal.SIGTERM)

    # -- acquisition --------------------------------------------------------------------

    def _stream(self, volts: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
        """Play and record one stream: the AI volts per AO sample and where they clipped."""
        oversampling = self.profile.readout_oversampling
        n_samples = len(volts)
        n_ai = n_samples * oversampling
        timeout = n_samples / rate + _TIMEOUT_MARGIN_S
        before = self._levels
        with contextlib.ExitStack() as stack:
            ao = stack.enter_context(self._tasks.new_task())
            ai = stack.enter_context(self._tasks.new_task())
            self._tasks.configure_acquisition(ao, ai, rate, n_samples)
            ao.write(self._tasks.channel_major(volts), auto_start=False, timeout=timeout)
            ai.start()  # armed: acquires from the AO start trigger on
            self._records.write(self._levels, running=True)
            ran_out = False
            try:
                ao.start()
                try:
                    raw = ai.read(number_of_samples_per_channel=n_ai, timeout=timeout)
                except Exception as exc:
                    # An input-side failure: stopping the output part-way would leave it
                    # away from 0 V, where the finite stream itself ends.
                    ran_out = self._run_out(ao, timeout, exc)
                    raise
                ao.wait_until_done(timeout=timeout)
                self._levels = np.zeros(self.n_channels)  # now, before anything can interrupt
            except BaseException:
                if not ran_out:
                    self._abort(ao, volts, before)
                raise
        self._held(np.zeros(self.n_channels))  # every stream ends at 0 V
        samples = np.asarray(raw, dtype=float)
        if samples.shape != (n_ai,):
            raise RuntimeError(f"AI returned {samples.shape} samples, expected ({n_ai},)")
        per_ao_sample = samples.reshape(n_samples, oversampling)
        clipped = at_range_limit(per_ao_sample, self.profile.output.ai_range_v).any(axis=1)
        return per_ao_sample.mean(axis=1), clipped

    def _run_out(self, ao: Any, timeout: float, exc: BaseException) -> bool:
        """Let a finite generation run to its end after an input-side error.

        Returns
        -------
        bool
            ``True`` if it did (the electrodes are at 0 V), ``False`` if the wait failed.
        """
        try:
            ao.wait_until_done(timeout=timeout)
        except Exception as wait_exc:  # a Ctrl-C here propagates: the caller stops and parks
            exc.add_note(f"the generation did not run to its end either: {wait_exc!r}")
            return False
        self._held(np.zeros(self.n_channels))
        return True

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
            ao = stack.enter_context(self._tasks.new_task())
            self._tasks.add_electrodes(ao)
            self._tasks.set_clock(ao, rate, n_steps)
            ao.write(self._tasks.channel_major(ramp), auto_start=False, timeout=timeout)
            # Parking must not depend on the disk: a state file that cannot be updated still
            # holds the last non-zero levels, which is the safe record if the ramp fails.
            parking = bool(np.all(np.abs(target) <= ZERO_TOLERANCE_V))
            self._records.write(self._levels, running=True, required=not parking)
            try:
                ao.start()
                ao.wait_until_done(timeout=timeout)
                self._levels = ramp[-1].copy()  # now, before anything can interrupt
            except BaseException:
                self._abort(ao, ramp, start)
                raise
        self._held(ramp[-1])
        return n_steps / rate

    def _abort(self, ao: Any, samples: np.ndarray, before: np.ndarray) -> None:
        """Stop a failed generation and work out which sample the electrodes were left at."""
        with _signals_deferred():
            try:
                ao.stop()
                generated = int(ao.out_stream.total_samp_per_chan_generated)
            except BaseException as exc:
                # Unknown position (a second Ctrl-C included), never taken as 0 V: assume the
                # middle of the span the electrodes could be in, which halves the worst-case
                # jump of the parking ramp's first sample.
                span = np.vstack([before, samples])
                _log.warning(
                    "cannot tell where the generation stopped (%r); parking from mid-span", exc
                )
                self._levels = (span.min(axis=0) + span.max(axis=0)) / 2
            else:
                last = min(generated, len(samples)) - 1
                self._held(before.copy() if last < 0 else samples[last])

    def _park_after_error(self, exc: BaseException) -> None:
        try:
            with _signals_deferred():
                self._move_to(np.zeros(self.n_channels))
        except Exception as park_exc:
            _log.exception("could not park the electrodes at 0 V after an error")
            exc.add_note(f"parking the electrodes at 0 V failed too: {park_exc!r}")

    # -- output state across sessions ---------------------------------------------------

    def _held(self, levels: np.ndarray) -> None:
        """Record that the electrodes hold ``levels``; only non-zero levels are kept on disk."""
        self._levels = np.array(levels, dtype=float)
        if np.all(np.abs(self._levels) <= ZERO_TOLERANCE_V):
            self._records.clear()
        else:
            self._records.write(self._levels, running=False)

    # -- helpers ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"NI-DAQmx backend for {self.profile.name!r} belongs to process {self._pid}; "
                "a forked child must build its own"
            )
        if self._closed:
            raise RuntimeError(f"NI-DAQmx backend for {self.profile.name!r} is closed")
