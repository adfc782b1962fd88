"""The DNPU as one ophyd device: seven electrodes, the current amplifier and a DAQ backend."""

from __future__ import annotations

import json
import logging
import threading
import weakref
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus, Signal, SignalRO

from ..backend import Acquisition, DAQBackend
from ..config import (
    DEFAULT_AMPLITUDE_V,
    DEFAULT_MIN_FREQUENCY_HZ,
    DEFAULT_TONE_ORDER,
    DEFAULT_WINDOW_S,
    N_ELECTRODES,
    slew_limited_frequency_hz,
)
from ..hge import (
    FrequencyPlan,
    Waveform,
    check_frequencies,
    hge_segments,
    plan_frequencies,
    synthesize_waveform,
)
from ..hge.frequencies import NYQUIST_MARGIN
from ..safety import check_waveform
from .amplifier import CurrentAmplifier
from .electrode import Electrode
from .measured import Measured, MeasuredReadOnly

ELECTRODE_NAMES = tuple(f"e{i}" for i in range(N_ELECTRODES))
# DEFAULT_AMPLITUDE_V and DEFAULT_MIN_FREQUENCY_HZ (re-exported here) live in the config, whose
# profile checks plan the same default tones (dnpu_bluesky.config.default_tone_plan).
__all__ = [
    "DEFAULT_AMPLITUDE_V",
    "DEFAULT_MIN_FREQUENCY_HZ",
    "DNPU",
    "ELECTRODE_NAMES",
    "MODES",
]
MODES = ("parallel", "sequential", "off")

_log = logging.getLogger(__name__)

# One lock per backend: DNPUs on separate backends acquire at the same time, DNPUs that share
# one backend take turns.
_BACKEND_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_BACKEND_LOCKS_GUARD = threading.Lock()


def _backend_lock(backend: DAQBackend) -> threading.Lock:
    with _BACKEND_LOCKS_GUARD:
        return _BACKEND_LOCKS.setdefault(backend, threading.Lock())


class InputsSignal(Signal):
    """Which electrodes take the input cases' voltages: names joined by commas (``"e3,e4"``).

    Empty means the roles of the setup profile. Setting it (``bps.mv(dnpu.inputs, "e0,e2")``)
    makes the named electrodes inputs and every other one a control; it is read with every
    measurement, so each event records the assignment it was measured with. Roles decide only
    which electrodes take the input cases: limits, slew and the 0 V ends hold for every
    electrode whatever its role.
    """

    def check_value(self, value: Any) -> None:
        """Refuse anything but distinct electrode names leaving at least one control."""
        super().check_value(value)
        if value == "":
            return
        names = value.split(",") if isinstance(value, str) else None
        if (
            names is None
            or set(names) - set(ELECTRODE_NAMES)
            or len(set(names)) != len(names)
            or not 0 < len(names) < N_ELECTRODES
        ):
            raise ValueError(
                f"{self.name}: inputs must be 1 to {N_ELECTRODES - 1} distinct names of "
                f"{', '.join(ELECTRODE_NAMES)} joined by commas (e.g. 'e3,e4'), got {value!r}"
            )

    def put(self, value: Any, **kwargs: Any) -> None:
        """Check, then store the names in channel order."""
        super().put(self._in_channel_order(value), **kwargs)

    def set(self, value: Any, **kwargs: Any) -> Any:
        """Check, then set the names in channel order (the readback ``set`` waits for)."""
        return super().set(self._in_channel_order(value), **kwargs)

    def _in_channel_order(self, value: Any) -> str:
        self.check_value(value)
        return ",".join(n for n in ELECTRODE_NAMES if n in value.split(",")) if value else ""


class DNPU(Device):
    """A dopant network processing unit measured through a DAQ backend.

    ``trigger()`` builds one stream from the electrodes' setpoints, the input cases and the
    perturbation settings, checks it against every safety rule, plays it and records the
    output. Each stream starts and ends at 0 V, so between triggers the electrodes rest at 0 V.

    Modes: ``"parallel"`` perturbs every control with a tone at once (one window per input
    case), ``"sequential"`` one control per window, ``"off"`` applies no tones (evaluation).

    Several DNPUs triggered together acquire at the same time when each has its own backend;
    DNPUs sharing one backend are measured one after the other.

    ``clipped_samples`` counts the samples of the measurement windows at which the recording
    reached the end of the AI range: the currents and gradients of such a stream are wrong.
    The first clipped stream after staging is logged as a warning.

    The output current is ``amplifier.current`` (data key ``<name>_current``), the one field
    the DNPU hints. Each electrode is a bluesky ``Movable`` (see :class:`Electrode`), so
    ``scan([dnpu], dnpu.e0, -0.2, 0.2, 5)`` sweeps e0 and tabulates its readback against the
    current.
    """

    e0 = Cpt(Electrode)
    e1 = Cpt(Electrode)
    e2 = Cpt(Electrode)
    e3 = Cpt(Electrode)
    e4 = Cpt(Electrode)
    e5 = Cpt(Electrode)
    e6 = Cpt(Electrode)
    amplifier = Cpt(CurrentAmplifier)

    output = Cpt(Measured, value=np.zeros(1), dims=("sample",), kind="normal", units="nA")
    case_currents = Cpt(Measured, value=np.zeros(1), dims=("case",), kind="normal", units="nA")
    window_start = Cpt(Measured, value=np.zeros(1, dtype=int), dims=("segment",), kind="normal")
    segment_case = Cpt(Measured, value=np.zeros(1, dtype=int), dims=("segment",), kind="normal")
    segment_dc = Cpt(
        Measured, value=np.zeros((1, 7)), dims=("segment", "electrode"), kind="normal", units="V"
    )
    segment_amplitudes = Cpt(
        Measured, value=np.zeros((1, 7)), dims=("segment", "electrode"), kind="normal", units="V"
    )
    device_seconds = Cpt(Measured, value=0.0, kind="normal", units="s")
    clipped_samples = Cpt(Measured, value=0, kind="normal")

    mode = Cpt(Signal, value="parallel", kind="config")
    sample_rate = Cpt(SignalRO, value=10_000.0, kind="config")
    window_s = Cpt(Signal, value=DEFAULT_WINDOW_S, kind="config")
    settle_s = Cpt(Signal, value=0.01, kind="config")
    ramp_s = Cpt(Signal, value=0.005, kind="config")
    max_slew_v_per_s = Cpt(SignalRO, value=100.0, kind="config")
    input_cases = Cpt(Signal, value=[], kind="config")
    phase_lag_rad = Cpt(Signal, value=[0.0] * 7, kind="config")
    phase_gain = Cpt(Signal, value=[1.0] * 7, kind="config")
    backend_info = Cpt(Signal, value="{}", kind="config")
    inputs = Cpt(InputsSignal, value="", kind="normal")

    def __init__(self, *args: Any, backend: DAQBackend, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The current is what a DNPU measures: its data key carries the DNPU's name.
        self.amplifier.current.name = f"{self.name}_current"
        self.backend = backend
        self.backend_info.put(json.dumps(backend.describe(), sort_keys=True, default=str))
        self.last_waveform: Waveform | None = None
        self.total_device_seconds = 0.0
        self._lock = _backend_lock(backend)
        self._clipping_reported = False
        self._timing_fixed = False

    def configure_timing(self, sample_rate: float, max_slew_v_per_s: float) -> None:
        """Fix the sample rate and the slew limit.

        The factory calls this once, from the setup profile: a plan rehearsed on the virtual
        device must not rely on others.

        Parameters
        ----------
        sample_rate : float
            AO samples per second.
        max_slew_v_per_s : float
            The fastest any electrode may change, V/s.

        Raises
        ------
        RuntimeError
            If they were fixed already; build a new device for other timing.
        """
        if self._timing_fixed:
            raise RuntimeError(
                f"{self.name}: the sample rate and slew limit are fixed when the device is "
                "built (from its setup profile); build a new device for others"
            )
        self._timing_fixed = True
        self.sample_rate._readback = float(sample_rate)
        self.max_slew_v_per_s._readback = float(max_slew_v_per_s)

    @property
    def current(self) -> MeasuredReadOnly:
        """The output current signal in nA: ``amplifier.current``."""
        return self.amplifier.current

    @property
    def hints(self) -> dict[str, list[str]]:
        """The fields a table or plot shows: the output current.

        The electrodes are left out: a scan names the electrode it moves as its dimension
        (``dnpu.e0.hints``), so only that one is shown.
        """
        electrodes = {key for e in self.electrodes for key in e.describe()}
        return {"fields": [f for f in super().hints["fields"] if f not in electrodes]}

    @property
    def electrodes(self) -> list[Electrode]:
        """The voltage electrodes in channel order."""
        return [getattr(self, name) for name in ELECTRODE_NAMES]

    def indices(self, role: str) -> np.ndarray:
        """Return the indices of the electrodes with the given role.

        Parameters
        ----------
        role : str
            ``"input"`` or ``"control"``, as ``inputs`` assigns them now (the profile's roles
            until a plan assigns others).

        Returns
        -------
        numpy.ndarray
            The electrodes' indices, ascending.
        """
        names = self.inputs.get().split(",") if self.inputs.get() else []
        if not names:
            return np.array([i for i, e in enumerate(self.electrodes) if e.role.get() == role], int)
        is_input = [e.attr_name in names for e in self.electrodes]
        return np.array([i for i, flag in enumerate(is_input) if flag == (role == "input")], int)

    @property
    def limits(self) -> np.ndarray:
        """``(7, 2)`` array of ``[min_v, max_v]`` per electrode."""
        return np.array([e.limits for e in self.electrodes], dtype=float)

    def setpoints(self) -> np.ndarray:
        """Return the DC setpoints of all electrodes, volts."""
        return np.array([e.setpoint.get() for e in self.electrodes], dtype=float)

    def frequencies(self) -> np.ndarray:
        """Tone frequency per electrode in Hz (0 where the electrode carries no tone)."""
        return np.array([e.frequency.get() for e in self.electrodes], dtype=float)

    def amplitudes(self) -> np.ndarray:
        """Tone amplitude per electrode in volts (0 where the electrode carries no tone)."""
        return np.array([e.amplitude.get() for e in self.electrodes], dtype=float)

    def plan_tones(
        self,
        *,
        amplitude_v: float = DEFAULT_AMPLITUDE_V,
        window_s: float | None = None,
        order: int = DEFAULT_TONE_ORDER,
        spacing_bins: int = 1,
        band_hz: float | None = None,
        min_frequency_hz: float = DEFAULT_MIN_FREQUENCY_HZ,
        electrodes: str = "controls",
    ) -> FrequencyPlan:
        """Plan one tone per control electrode (or per electrode); nothing is changed or applied.

        Parameters
        ----------
        amplitude_v : float
            Tone amplitude the plan is for; it caps the band so that no tone
            slews faster than the setup allows.
        window_s : float, optional
            Analysis window (default: the current ``window_s``).
        order : int
            Highest intermodulation order kept off the tones.
        spacing_bins : int
            Tone spacing in units of 1/T.
        band_hz : float, optional
            Highest usable frequency (default and upper bound: the amplifier
            bandwidth, at most 0.4 x the sample rate).
        min_frequency_hz : float
            Lowest tone.
        electrodes : str
            ``"controls"`` (one tone per control) or ``"all"`` (one per electrode,
            inputs included: HGE then also measures each input's slope, see
            :mod:`dnpu_bluesky.tasks.levels`).

        Raises
        ------
        ValueError
            For a band above the amplifier bandwidth or 0.4 x the sample rate.
        dnpu_bluesky.hge.FrequencyPlanError
            Naming the constraint that cannot be met.
        """
        if not amplitude_v > 0:
            raise ValueError(f"amplitude_v must be positive, got {amplitude_v}")
        widest, widest_text = self._tone_band()
        if band_hz is None:
            band_hz = widest
        elif band_hz > widest:
            raise ValueError(f"band_hz {band_hz:g} Hz is above {widest_text}")
        band_hz = min(band_hz, self._slew_limited_frequency(amplitude_v))
        return plan_frequencies(
            self._toned(electrodes).size,
            float(window_s if window_s is not None else self.window_s.get()),
            float(self.sample_rate.get()),
            band_hz=band_hz,
            order=order,
            spacing_bins=spacing_bins,
            min_frequency_hz=min_frequency_hz,
        )

    def _tone_band(self) -> tuple[float, str]:
        """Return the highest tone frequency this setup can demodulate reliably, and why.

        Above the amplifier's bandwidth each tone's gain and phase change fast with
        frequency, so an uncalibrated gradient there is badly off.
        """
        bandwidth = float(self.amplifier.bandwidth_hz.get())
        rate = float(self.sample_rate.get())
        if bandwidth <= NYQUIST_MARGIN * rate:
            return bandwidth, f"the amplifier bandwidth {bandwidth:g} Hz"
        return NYQUIST_MARGIN * rate, f"{NYQUIST_MARGIN:g} x the sample rate {rate:g} S/s"

    def _check_tones(self, frequencies: np.ndarray, amplitudes: np.ndarray, mode: str) -> None:
        """Refuse tones above the usable band, and in parallel mode tones too alike.

        Two tones are too alike when the lock-in cannot tell them apart (the same frequency, or
        one a harmonic of another).
        """
        played = np.flatnonzero(amplitudes > 0)
        band, band_text = self._tone_band()
        above = [i for i in played if frequencies[i] > band * (1 + 1e-12)]
        if above:
            names = ", ".join(
                f"{self.electrodes[i].attr_name} {frequencies[i]:g} Hz" for i in above
            )
            raise ValueError(f"{self.name}: tone {names} is above {band_text}")
        if mode == "parallel":
            try:
                check_frequencies(
                    frequencies[played],
                    float(self.window_s.get()),
                    float(self.sample_rate.get()),
                    order=1,
                )
            except ValueError as exc:
                tones = ", ".join(f"{frequencies[i]:g}" for i in played)
                names = ", ".join(self.electrodes[i].attr_name for i in played)
                raise ValueError(f"{self.name}: tones {tones} Hz on {names}: {exc}") from None

    def _slew_limited_frequency(self, amplitude_v: float) -> float:
        return slew_limited_frequency_hz(float(self.max_slew_v_per_s.get()), amplitude_v)

    def tone_settings(
        self, tones: FrequencyPlan, amplitude_v: float, electrodes: str = "controls"
    ) -> list[tuple[Signal, float]]:
        """Return (signal, value) pairs that put ``tones`` on the controls, for ``mv`` or ``put``.

        Parameters
        ----------
        tones : FrequencyPlan
            The tones, e.g. from :meth:`plan_tones`.
        amplitude_v : float
            Tone amplitude on each electrode, volts.
        electrodes : str
            ``"controls"`` or ``"all"``: every electrode, the controls first.

        Returns
        -------
        list of tuple of (Signal, float)
            The signals and their values.

        Raises
        ------
        ValueError
            For a non-positive amplitude, a tone that would slew too fast, or a
            plan with another number of tones than the electrodes it is for.
        """
        if not amplitude_v > 0:
            raise ValueError(f"amplitude_v must be positive, got {amplitude_v}")
        fastest = self._slew_limited_frequency(amplitude_v)
        if max(tones.frequencies) > fastest:
            raise ValueError(
                f"a {amplitude_v * 1e3:.0f} mV tone at {max(tones.frequencies):.0f} Hz slews "
                f"faster than the limit {self.max_slew_v_per_s.get():g} V/s allows (tones up "
                f"to {fastest:.0f} Hz): lower the amplitude or the band"
            )
        toned = self._toned(electrodes)
        if len(tones.frequencies) != toned.size:
            raise ValueError(
                f"{self.name}: the plan has {len(tones.frequencies)} tones for {toned.size} "
                f"electrodes ({electrodes})"
            )
        frequencies = dict(zip(toned.tolist(), tones.frequencies, strict=True))
        pairs: list[tuple[Signal, float]] = []
        for index, electrode in enumerate(self.electrodes):
            frequency = float(frequencies.get(index, 0.0))
            pairs += [
                (electrode.frequency, frequency),
                (electrode.amplitude, amplitude_v * (frequency > 0)),
            ]
        return pairs

    def _toned(self, electrodes: str) -> np.ndarray:
        """Return the electrodes a plan's tones go to, in order: the controls first.

        So each control keeps the tone (and the phase calibration) it has with control tones
        alone, since the greedy plan of more tones begins with the plan of fewer.
        """
        if electrodes == "controls":
            return self.indices("control")
        if electrodes == "all":
            return np.concatenate([self.indices("control"), self.indices("input")])
        raise ValueError(f"electrodes must be 'controls' or 'all', got {electrodes!r}")

    @property
    def input_names(self) -> list[str]:
        """The input electrodes' names (``e3``, ...), in channel order."""
        return [self.electrodes[i].attr_name for i in self.indices("input")]

    def operating_points(self) -> np.ndarray:
        """Return ``(n_cases, 7)`` DC voltages: the setpoints with each input case applied."""
        base = self.setpoints()
        cases = np.asarray(self.input_cases.get(), dtype=float)
        if cases.size == 0:
            return base[np.newaxis, :]
        inputs = self.indices("input")
        if cases.ndim != 2 or cases.shape[1] != inputs.size:
            raise ValueError(
                f"{self.name}: input_cases must have shape (n_cases, {inputs.size}) for the "
                f"{inputs.size} input electrodes, got {cases.shape}"
            )
        points = np.repeat(base[np.newaxis, :], len(cases), axis=0)
        points[:, inputs] = cases
        return points

    def build_waveform(self) -> Waveform:
        """Build and safety-check the stream the next trigger will play; no voltage is applied.

        Raises
        ------
        ValueError
            For a bad mode, input cases, or tone settings.
        dnpu_bluesky.safety.UnsafeWaveformError
            If the stream breaks a safety rule.
        """
        mode = self.mode.get()
        if mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got {mode!r}")
        points = self.operating_points()
        frequencies = self.frequencies()
        amplitudes = np.where(frequencies > 0, self.amplitudes(), 0.0)
        if mode == "off":  # nothing is played, so the tones' settings do not matter
            amplitudes = np.zeros_like(amplitudes)
            frequencies = np.zeros_like(frequencies)
        elif not np.any(amplitudes > 0):
            raise ValueError(
                f"{self.name}: mode {mode!r} needs tones: no electrode has a frequency and an "
                "amplitude (run configure_hge first, or set mode 'off')"
            )
        else:
            self._check_tones(frequencies, amplitudes, mode)
        segments = hge_segments(
            points, amplitudes, mode="sequential" if mode == "sequential" else "parallel"
        )
        rate = float(self.sample_rate.get())
        waveform = synthesize_waveform(
            segments,
            frequencies,
            rate,
            float(self.window_s.get()),
            settle_s=float(self.settle_s.get()),
            ramp_s=self._ramp_time(amplitudes),
        )
        check_waveform(
            waveform.voltages,
            rate,
            limits=self.limits,
            max_slew_v_per_s=float(self.max_slew_v_per_s.get()),
            channel_names=[e.name for e in self.electrodes],
        )
        return waveform

    def _ramp_time(self, amplitudes: np.ndarray) -> float:
        """Return the configured ramp time, lengthened so that no sample can slew too fast.

        The ramp is sized for the largest step the limits allow (not the step at hand), so
        every stream of a configuration has the same length and each stream's data shape
        stays fixed. Where a window ends, the tone's own slope adds to the first step of the
        next ramp, so the ramp gets only the part of the slew limit the tones leave free.
        """
        limits = self.limits
        largest_step = float(np.max(limits[:, 1] - limits[:, 0]))
        tone_slew = float(np.max(2 * np.pi * self.frequencies() * amplitudes))
        free_slew = float(self.max_slew_v_per_s.get()) - tone_slew
        if free_slew <= 0:
            raise ValueError(
                f"{self.name}: the tones alone slew {tone_slew:.0f} V/s, at or above the limit "
                f"{self.max_slew_v_per_s.get():g} V/s; lower the amplitudes or frequencies"
            )
        return max(float(self.ramp_s.get()), largest_step / free_slew * 1.01)

    def trigger(self) -> DeviceStatus:
        """Play the stream and record the output off the RunEngine's event loop."""
        waveform = self.build_waveform()
        status = DeviceStatus(self)

        def acquire() -> None:
            try:
                with self._lock:
                    acquisition = self.backend.play_and_record(
                        waveform.voltages, waveform.sample_rate
                    )
                self._publish(waveform, acquisition)
            except Exception as exc:
                status.set_exception(exc)
            else:
                status.set_finished()

        threading.Thread(target=acquire, name=f"{self.name}-acquire", daemon=True).start()
        return status

    def _publish(self, waveform: Waveform, acquisition: Acquisition) -> None:
        output = self.amplifier.to_nanoamps(acquisition.ai_volts)
        device_seconds = acquisition.device_seconds
        starts = np.array([w.start for w in waveform.windows], dtype=int)
        cases = np.array([s.case for s in waveform.segments], dtype=int)
        window_means = np.array([output[w].mean() for w in waveform.windows])
        case_means = np.array([window_means[cases == c].mean() for c in np.unique(cases)])
        self.last_waveform = waveform
        self.total_device_seconds += device_seconds
        self.output.put(output)
        self.window_start.put(starts)
        self.segment_case.put(cases)
        self.segment_dc.put(np.array([s.dc for s in waveform.segments]))
        self.segment_amplitudes.put(np.array([s.amplitudes for s in waveform.segments]))
        self.case_currents.put(case_means)
        self.amplifier.current.put(float(case_means.mean()), force=True)
        levels = np.mean([s.dc for s in waveform.segments], axis=0)
        for electrode, level in zip(self.electrodes, levels, strict=True):
            electrode.readback.put(float(level), force=True)
        self.device_seconds.put(float(device_seconds))
        self._report_clipping(waveform, acquisition.clipped)

    def _report_clipping(self, waveform: Waveform, clipped: np.ndarray | None) -> None:
        windows = waveform.analysis_mask
        count = 0 if clipped is None else int(np.count_nonzero(clipped & windows))
        self.clipped_samples.put(count)
        if count and not self._clipping_reported:
            self._clipping_reported = True
            _log.warning(
                "%s: the output reached the end of the AI range in %d of %d measured samples: "
                "the currents and gradients there read wrong. Lower the amplifier gain, widen "
                "the AI range or keep the controls out of this region (further clipped streams "
                "are counted in %s, not logged)",
                self.name,
                count,
                int(np.count_nonzero(windows)),
                self.clipped_samples.name,
            )

    def stage(self) -> list[Any]:
        """Stage for a run; the run's first clipped stream will be logged."""
        self._clipping_reported = False
        return super().stage()

    def park(self) -> None:
        """Bring every electrode to 0 V now (the backend ramps)."""
        with self._lock:
            self.backend.set_dc(np.zeros(len(ELECTRODE_NAMES)))

    def unstage(self) -> list[Any]:
        """Park at 0 V whenever a plan lets go of the device, however it ended."""
        try:
            self.park()
        finally:
            result = super().unstage()
        return result

    def stop(self, *, success: bool = False) -> None:
        """Park every electrode at 0 V.

        Every stream ends at 0 V by itself, so a pause or an abort between streams already
        leaves the device there; this covers a level held by other means (``set_dc``).
        """
        self.park()
        super().stop(success=success)
