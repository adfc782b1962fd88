"""The measurement chain between the device's output electrode and the recorded samples.

The output current passes a transimpedance (current) amplifier and an ADC. On the way it
picks up current noise (white plus 1/f), the displacement current of the electrode-to-output
capacitances and, optionally, a slow linear drift. Everything random is drawn from the
caller's generator, so a seeded caller gets a reproducible stream.

Noise model (one-sided current-noise PSD, input referred)::

    S(f) = white * (1 + corner / f)        for f above corner / 1000

The 1/f part is a McWhorter sum of independent Ornstein-Uhlenbeck (Lorentzian) processes
with corner frequencies two per decade from ``corner / 1000`` to ``100 * corner``, each of
equal variance ``white * corner * ln(sqrt(10))``; a log-uniform density of relaxation rates
is what makes the sum fall as 1/f. Processes faster than half the sample rate are left out
(sampling them would fold their spectrum back into the band). Below ``corner / 1000`` the
spectrum levels off; slower wander is what ``drift_na_per_s`` stands for.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import signal

#: The flicker spectrum extends this many decades below its corner frequency.
_FLICKER_DECADES_BELOW = 3
#: ... and up to this multiple of the corner (its share of the PSD is 1 % there).
_FLICKER_TOP_FACTOR = 100.0
#: Relaxation processes per decade; 2 keeps the ripple of the sum within about 1 %.
_FLICKER_PER_DECADE = 2

#: Processes with corners below this fraction of the sample rate are drawn on a grid of
#: _SLOW_STEP samples (correlation >= 0.98 from node to node) and linearly interpolated.
_SLOW_CORNER_FRACTION = 1.0 / 3000.0
_SLOW_STEP = 9

_DEFAULT_CAPACITANCE_PF = (0.30, 0.25, 0.20, 0.35, 0.35, 0.20, 0.25)


@dataclass(frozen=True)
class Electronics:
    """Transimpedance amplifier, current noise and ADC of the readout.

    The defaults describe a 1e7 V/A current amplifier with a 2 kHz first-order bandwidth
    read by a 16-bit +-10 V ADC: 300 nA give 3 V, well inside the range, and one ADC step
    is 0.03 nA. The noise level is the one the HGE paper's model uses (1e-5 nA^2/Hz white,
    with a 1/f corner at 100 Hz).

    Attributes
    ----------
    gain_v_per_na : float
        Amplifier gain in volts per nanoampere (0.01 V/nA = 1e7 V/A).
    bandwidth_hz : float
        -3 dB frequency of the amplifier's first-order low-pass response.
    inverting : bool
        Whether the amplifier inverts (most transimpedance amplifiers do).
    white_psd_na2_per_hz : float
        White current-noise PSD, one-sided, in nA^2/Hz.
    flicker_corner_hz : float
        Frequency where the 1/f noise equals the white noise; 0 for none.
    adc_bits : int
        ADC resolution in bits.
    adc_range_v : float
        ADC input range is ``[-adc_range_v, +adc_range_v]``; beyond it clips.
    drift_na_per_s : float
        Linear drift of the output current offset, nA per device second.
    capacitance_pf : tuple of float
        Electrode-to-output capacitance per electrode in pF; each adds the
        displacement current ``C dV/dt`` to the output current.
    """

    gain_v_per_na: float = 0.01
    bandwidth_hz: float = 2000.0
    inverting: bool = True
    white_psd_na2_per_hz: float = 1e-5
    flicker_corner_hz: float = 100.0
    adc_bits: int = 16
    adc_range_v: float = 10.0
    drift_na_per_s: float = 0.0
    capacitance_pf: tuple[float, ...] = field(default=_DEFAULT_CAPACITANCE_PF)

    def __post_init__(self) -> None:
        if self.gain_v_per_na <= 0:
            raise ValueError(f"gain_v_per_na must be positive, got {self.gain_v_per_na}")
        if self.bandwidth_hz <= 0:
            raise ValueError(f"bandwidth_hz must be positive, got {self.bandwidth_hz}")
        if self.white_psd_na2_per_hz < 0 or self.flicker_corner_hz < 0:
            raise ValueError("noise PSD and flicker corner must not be negative")
        if not 2 <= int(self.adc_bits) <= 32:
            raise ValueError(f"adc_bits must be in [2, 32], got {self.adc_bits}")
        if self.adc_range_v <= 0:
            raise ValueError(f"adc_range_v must be positive, got {self.adc_range_v}")
        # Lists from YAML/JSON are accepted; the stored value stays hashable.
        object.__setattr__(self, "capacitance_pf", tuple(float(c) for c in self.capacitance_pf))

    @property
    def adc_step_v(self) -> float:
        """Voltage of one ADC code (least significant bit)."""
        return 2.0 * self.adc_range_v / 2**self.adc_bits

    def noise_psd(self, f_hz: np.ndarray | float) -> np.ndarray:
        """Return the one-sided current-noise PSD at the amplifier input, in nA^2/Hz.

        Parameters
        ----------
        f_hz : numpy.ndarray or float
            Frequencies in Hz (positive).

        Returns
        -------
        numpy.ndarray
            ``white * (1 + corner / f)``, levelling off below ``corner / 1000``.
        """
        f = np.abs(np.asarray(f_hz, dtype=float))
        white = self.white_psd_na2_per_hz
        corner = self.flicker_corner_hz
        if corner == 0:
            return np.full_like(f, white)
        floor = corner / 10**_FLICKER_DECADES_BELOW
        return white * (1.0 + corner / np.sqrt(f**2 + floor**2))

    def transfer(self, f_hz: np.ndarray | float, sample_rate: float) -> np.ndarray:
        """Complex response from input current (nA) to recorded volts, as simulated.

        This is the exact response of the discrete amplifier filter used at
        ``sample_rate``, times the signed gain. Well below the sample rate it equals
        ``+-gain / (1 + j f / bandwidth)``: phase lag ``atan(f / bandwidth)``, magnitude
        ``gain * cos(lag)``.

        Parameters
        ----------
        f_hz : numpy.ndarray or float
            Frequencies in Hz.
        sample_rate : float
            Samples per second.

        Returns
        -------
        numpy.ndarray
            Complex array in V/nA.
        """
        b, a = _amplifier_filter(self.bandwidth_hz, float(sample_rate))
        _, h = signal.freqz(b, a, worN=np.atleast_1d(np.asarray(f_hz, float)), fs=sample_rate)
        return self._signed_gain * h

    def output_volts(
        self,
        current_na: np.ndarray,
        volts: np.ndarray,
        sample_rate: float,
        rng: np.random.Generator,
        *,
        t0_s: float = 0.0,
        state: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Amplifier output as the ADC reads it, for a device current and electrode stream.

        Parameters
        ----------
        current_na : numpy.ndarray
            Noiseless device current, shape ``(n_samples,)``, in nA.
        volts : numpy.ndarray
            Electrode voltages, shape ``(n_samples, n_electrodes)``; their time
            derivative drives the capacitive coupling.
        sample_rate : float
            Samples per second.
        rng : numpy.random.Generator
            Source of all randomness (noise).
        t0_s : float
            Device time at the first sample, for the drift.
        state : dict, optional
            A dict owned by the caller. Pass the same one on successive calls to
            continue the 1/f noise processes from where the last call left them;
            with None every call starts from a fresh (stationary) draw.

        Returns
        -------
        numpy.ndarray
            Recorded voltages, shape ``(n_samples,)``: filtered, scaled, clipped to the ADC
            range and quantised to its step.
        """
        current = np.asarray(current_na, dtype=float)
        v = np.asarray(volts, dtype=float)
        n = current.shape[0]
        if current.ndim != 1 or v.ndim != 2 or v.shape[0] != n:
            raise ValueError(
                f"current_na must be (n,) and volts (n, n_electrodes); got {current.shape}, "
                f"{v.shape}"
            )
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if n == 0:
            return np.zeros(0)
        total = current + self._capacitive_na(v, sample_rate)
        total += self._noise_na(n, sample_rate, rng, state)
        if self.drift_na_per_s:
            total += self.drift_na_per_s * (t0_s + np.arange(n) / sample_rate)
        b, a = _amplifier_filter(self.bandwidth_hz, float(sample_rate))
        # Initial state at rest: every stream starts at 0 V after the electrodes idled there.
        out = signal.lfilter(b, a, total)
        out *= self._signed_gain
        return self._adc(out)

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-serialisable settings; ``Electronics(**d)`` rebuilds an equal object."""
        d = asdict(self)
        d["capacitance_pf"] = list(self.capacitance_pf)
        return d

    @property
    def _signed_gain(self) -> float:
        return -self.gain_v_per_na if self.inverting else self.gain_v_per_na

    def _capacitive_na(self, volts: np.ndarray, sample_rate: float) -> np.ndarray:
        n_cap = len(self.capacitance_pf)
        if n_cap != volts.shape[1]:
            raise ValueError(
                f"capacitance_pf has {n_cap} entries but the stream has {volts.shape[1]} electrodes"
            )
        # The sum is linear, so weight first and differentiate one trace, not n_electrodes.
        charge_pc = volts @ np.asarray(self.capacitance_pf)
        if charge_pc.shape[0] < 2:
            return np.zeros_like(charge_pc)
        # Central difference: zero phase error, so the capacitive term sits at exactly 90 deg.
        return np.gradient(charge_pc) * (sample_rate * 1e-3)  # pF V/s = pA -> nA

    def _noise_na(
        self,
        n: int,
        sample_rate: float,
        rng: np.random.Generator,
        state: dict[str, Any] | None,
    ) -> np.ndarray:
        white = self.white_psd_na2_per_hz
        noise = rng.standard_normal(n)
        noise *= math.sqrt(white * sample_rate / 2.0)
        if self.flicker_corner_hz == 0 or white == 0:
            return noise
        corners, variance = _flicker_processes(self.flicker_corner_hz, white)
        key = f"flicker {self.flicker_corner_hz!r} {white!r}"
        if state is None:
            state = {}
        values = state.get(key)
        if values is None:  # start in the stationary distribution
            values = rng.standard_normal(corners.size) * math.sqrt(variance)
        values = np.array(values, dtype=float)
        # Each process is an Ornstein-Uhlenbeck process, sampled exactly as an AR(1) with
        # a = exp(-2 pi corner dt). Slow ones are drawn on a coarse grid and interpolated.
        slow = corners <= sample_rate * _SLOW_CORNER_FRACTION
        fast = ~slow & (corners < sample_rate / 2.0)
        for k in np.flatnonzero(fast):
            a = math.exp(-2.0 * math.pi * corners[k] / sample_rate)
            drive = rng.standard_normal(n)
            drive *= math.sqrt(variance * (1.0 - a * a))
            track, _ = signal.lfilter([1.0], [1.0, -a], drive, zi=[a * values[k]])
            values[k] = track[-1]
            noise += track
        if np.any(slow):
            noise += self._slow_flicker(
                n, sample_rate, corners, variance, values, np.flatnonzero(slow), rng
            )
        state[key] = values
        return noise

    @staticmethod
    def _slow_flicker(
        n: int,
        sample_rate: float,
        corners: np.ndarray,
        variance: float,
        values: np.ndarray,
        which: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Sum of slow OU processes: exact on a coarse grid, linear in between.

        Grid nodes sit at the previous call's last sample (-1) and then so that the last one
        falls on sample n - 1; ``values`` is updated in place with the exact node values there.
        """
        n_nodes = -(-n // _SLOW_STEP)
        first = n - (n_nodes - 1) * _SLOW_STEP
        positions = np.concatenate(([-1.0], first - 1.0 + _SLOW_STEP * np.arange(n_nodes)))
        total = np.zeros(n_nodes + 1)
        for k in which:
            a = math.exp(-2.0 * math.pi * corners[k] / sample_rate)
            a_first, a_step = a**first, a**_SLOW_STEP
            z = rng.standard_normal(n_nodes)
            nodes = np.empty(n_nodes + 1)
            nodes[0] = values[k]
            nodes[1] = a_first * values[k] + math.sqrt(variance * (1 - a_first**2)) * z[0]
            if n_nodes > 1:
                gain = math.sqrt(variance * (1 - a_step**2))
                nodes[2:], _ = signal.lfilter([gain], [1.0, -a_step], z[1:], zi=[a_step * nodes[1]])
            values[k] = nodes[-1]
            total += nodes
        return np.interp(np.arange(n, dtype=float), positions, total)

    def _adc(self, volts: np.ndarray) -> np.ndarray:
        step = self.adc_step_v
        half = 2 ** (self.adc_bits - 1)
        codes = np.rint(volts / step)
        np.clip(codes, -half, half - 1, out=codes)
        codes *= step
        return codes


@functools.lru_cache(maxsize=64)
def _amplifier_filter(bandwidth_hz: float, sample_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear transform of ``1 / (1 + s / (2 pi bandwidth))`` at ``sample_rate``."""
    return signal.bilinear([1.0], [1.0 / (2 * math.pi * bandwidth_hz), 1.0], fs=sample_rate)


def _flicker_processes(corner_hz: float, white: float) -> tuple[np.ndarray, float]:
    """Corner frequencies and the common variance of the McWhorter relaxation processes."""
    ratio = 10.0 ** (1.0 / _FLICKER_PER_DECADE)
    decades = _FLICKER_DECADES_BELOW + math.log10(_FLICKER_TOP_FACTOR)
    n = round(decades * _FLICKER_PER_DECADE) + 1
    corners = corner_hz / 10**_FLICKER_DECADES_BELOW * ratio ** np.arange(n)
    # A Lorentzian of corner x and variance s2 has PSD (2 / pi) s2 / x / (1 + (f/x)^2); with
    # log-uniform x the sum is (pi / 2) (2 / pi) s2 / ln(ratio) / f, so s2 = white corner ln r.
    return corners, white * corner_hz * math.log(ratio)
