"""From lock-in components to the gradient ``dI/dV`` at each input case.

Physics: the device answers instantaneously, so the true response of tone ``j`` is the real
number ``dI/dV_j * a_j``. What rotates it is the electronics: a first-order current amplifier
of cutoff ``fc`` multiplies tone ``f`` by ``cos(lag) * exp(i lag)`` with ``lag = -atan(f / fc)``.
(Electrode capacitance adds a current ``C dV/dt`` in quadrature; it is not a derivative, and a
projection onto the in-phase axis discards it.) A :class:`PhaseCalibration` holds, per tone,
the axis ``lag`` and the magnitude ``gain`` of that response.

Estimators:

* ``"projection"`` (default): ``dI/dV_j = 2 (x cos(lag) + y sin(lag)) / (gain a_j)``. Linear
  in the data, so zero-mean noise stays zero-mean: unbiased, with standard error
  ``2 stderr / (gain a_j)``.
* ``"sign"``: the amplitude ``R`` with the sign of the in-phase half-plane,
  ``sign(cos(phase - lag)) R / (gain a_j)`` (the original HGE read-out). ``R`` rectifies the
  noise, so small derivatives are overestimated; its reported stderr is the projection's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnpu_bluesky.hge.lockin import LockInResult
from dnpu_bluesky.hge.waveforms import Segment, Waveform

_ESTIMATORS = ("projection", "sign")

#: A first-order fit is accepted when every tone's axis lies within this many degrees of the
#: model (or within four of its own standard errors, if that is wider).
FIT_TOLERANCE_DEG = 3.0

#: Windows enter the axis fit only where the tone's magnitude exceeds this many component
#: standard errors (pure noise does so with probability exp(-SIGNIFICANCE**2 / 2) = 3e-4).
SIGNIFICANCE = 4.0


@dataclass(frozen=True, eq=False)
class PhaseCalibration:
    """Per-tone phase axis and magnitude of the measurement chain.

    Attributes
    ----------
    frequencies : numpy.ndarray
        ``(n_tones,)`` Hz.
    lag_rad : numpy.ndarray
        ``(n_tones,)`` phase of the in-phase axis (0 = no lag, negative = lag).
    gain : numpy.ndarray
        ``(n_tones,)`` magnitude response at each tone (1 = flat).
    cutoff_hz : float or None
        First-order cutoff the calibration was built from, or None if it is a
        per-tone (model-free) or identity calibration.
    """

    frequencies: np.ndarray
    lag_rad: np.ndarray
    gain: np.ndarray
    cutoff_hz: float | None = None

    def __post_init__(self) -> None:
        freqs = _frozen(self.frequencies)
        lag = _frozen(self.lag_rad)
        gain = _frozen(self.gain)
        if freqs.ndim != 1 or lag.shape != freqs.shape or gain.shape != freqs.shape:
            raise ValueError(
                "frequencies, lag_rad and gain must be 1-D of equal length, got "
                f"{freqs.shape}, {lag.shape}, {gain.shape}"
            )
        if not (np.all(np.isfinite(lag)) and np.all(np.isfinite(gain)) and np.all(gain > 0)):
            raise ValueError("lag_rad must be finite and gain finite and > 0")
        object.__setattr__(self, "frequencies", freqs)
        object.__setattr__(self, "lag_rad", lag)
        object.__setattr__(self, "gain", gain)
        if self.cutoff_hz is not None:
            object.__setattr__(self, "cutoff_hz", float(self.cutoff_hz))

    @classmethod
    def identity(cls, frequencies: Sequence[float] | np.ndarray) -> PhaseCalibration:
        """Make a calibration with no lag and unit gain at every tone.

        Parameters
        ----------
        frequencies : sequence of float or numpy.ndarray
            Tone frequencies in Hz.

        Returns
        -------
        PhaseCalibration
            The identity calibration.
        """
        freqs = np.atleast_1d(np.asarray(frequencies, dtype=float))
        return cls(freqs, np.zeros_like(freqs), np.ones_like(freqs))

    @classmethod
    def first_order(
        cls, frequencies: Sequence[float] | np.ndarray, cutoff_hz: float
    ) -> PhaseCalibration:
        """Model a single-pole low-pass: ``lag = -atan(f / cutoff_hz)``, ``gain = cos(lag)``.

        Parameters
        ----------
        frequencies : sequence of float or numpy.ndarray
            Tone frequencies in Hz.
        cutoff_hz : float
            The pole's cutoff frequency, Hz (> 0).

        Returns
        -------
        PhaseCalibration
            The calibration of that low-pass.
        """
        if not (math.isfinite(cutoff_hz) and cutoff_hz > 0):
            raise ValueError(f"cutoff_hz must be > 0, got {cutoff_hz!r}")
        freqs = np.atleast_1d(np.asarray(frequencies, dtype=float))
        lag = -np.arctan(freqs / cutoff_hz)
        return cls(freqs, lag, np.cos(lag), cutoff_hz=cutoff_hz)

    @classmethod
    def fit(cls, results: Sequence[LockInResult]) -> PhaseCalibration:
        """Estimate the chain's response from lock-in results at several operating points.

        Each tone's axis is the amplitude-weighted circular mean of the doubled phase over the
        windows where the tone is significant (magnitude above ``SIGNIFICANCE`` standard
        errors; doubling removes the unknown sign of each derivative), taken on the branch
        ``(-90, 90]`` degrees. A first-order low-pass ``lag = -atan(f / fc)`` is then fitted
        to the axes (weighted least squares in ``fc``); if every tone lies within
        ``FIT_TOLERANCE_DEG`` (or four standard errors) of it, the model gives lag and
        ``gain = cos(lag)``. Otherwise each tone keeps its own axis, still with
        ``gain = cos(lag)``: the magnitude of a single low- or high-pass pole at that phase,
        the only magnitude model the phase alone supports.

        Parameters
        ----------
        results : sequence of LockInResult
            Lock-in results sharing one set of frequencies. Operating points should
            give derivatives well above the noise; their signs do not matter.

        Returns
        -------
        PhaseCalibration
            The fitted calibration.

        Raises
        ------
        ValueError
            If ``results`` is empty, frequencies differ, or a tone has no signal.
        """
        results = list(results)
        if not results:
            raise ValueError("fit needs at least one LockInResult")
        freqs = results[0].frequencies
        for r in results[1:]:
            if r.frequencies.shape != freqs.shape or not np.allclose(r.frequencies, freqs):
                raise ValueError("all results must share the same frequencies")
        z = np.concatenate([r.x + 1j * r.y for r in results], axis=0)
        noise = np.concatenate([r.stderr for r in results], axis=0)
        # Windows where a tone is indistinguishable from noise (e.g. inactive in sequential
        # mode) would only add random directions: keep those above SIGNIFICANCE stderr.
        magnitude = np.abs(z)
        significant = ~(magnitude <= SIGNIFICANCE * noise)  # NaN stderr keeps the point
        magnitude = np.where(significant, magnitude, 0.0)
        missing = magnitude.sum(axis=0) == 0
        if np.any(missing):
            raise ValueError(
                f"no window carries a significant signal at {freqs[missing].tolist()} Hz: "
                "cannot fit the axis"
            )
        safe = np.where(magnitude > 0, magnitude, 1.0)
        resultant = np.sum(np.where(significant, z**2 / safe, 0), axis=0)  # sum |z| e^(2i phase)
        axis = np.angle(resultant) / 2
        axis = np.where(axis <= -np.pi / 2, axis + np.pi, axis)
        # Each point's angle is uncertain by stderr/|z|; weighted by |z| that gives:
        axis_stderr = np.sqrt(np.nansum(np.where(significant, noise**2, 0), axis=0)) / (
            magnitude.sum(axis=0)
        )
        # Inverse-variance weights, floored so a noiseless tone cannot take all the weight.
        weights = 1.0 / (axis_stderr**2 + np.deg2rad(0.1) ** 2)
        cutoff = _fit_cutoff(freqs, axis, weights)
        model = -np.arctan(freqs / cutoff) if cutoff is not None else np.zeros_like(freqs)
        tolerance = np.maximum(np.deg2rad(FIT_TOLERANCE_DEG), 4 * axis_stderr)
        if np.all(np.abs(axis - model) <= tolerance):
            return cls(freqs, model, np.cos(model), cutoff_hz=cutoff)
        return cls(freqs, axis, np.cos(axis))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable form (inverse of :meth:`from_dict`)."""
        return {
            "frequencies": self.frequencies.tolist(),
            "lag_rad": self.lag_rad.tolist(),
            "gain": self.gain.tolist(),
            "cutoff_hz": self.cutoff_hz,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseCalibration:
        """Rebuild a calibration written by :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            The output of :meth:`to_dict`.

        Returns
        -------
        PhaseCalibration
            An equal calibration.
        """
        return cls(
            frequencies=np.asarray(d["frequencies"], dtype=float),
            lag_rad=np.asarray(d["lag_rad"], dtype=float),
            gain=np.asarray(d["gain"], dtype=float),
            cutoff_hz=d.get("cutoff_hz"),
        )


@dataclass(frozen=True, eq=False)
class GradientEstimate:
    """Gradient of the output at each input case.

    Attributes
    ----------
    gradient : numpy.ndarray
        ``(n_cases, n_tones)`` dI/dV in signal units per volt (e.g. nA/V); tones are
        the perturbed electrodes in electrode order. NaN where a case never perturbs a tone.
    stderr : numpy.ndarray
        ``(n_cases, n_tones)`` standard error of ``gradient``.
    current : numpy.ndarray
        ``(n_cases,)`` mean output of each case's windows.
    """

    gradient: np.ndarray
    stderr: np.ndarray
    current: np.ndarray


def estimate_gradients(
    lockin: LockInResult,
    waveform: Waveform | Sequence[Segment],
    calibration: PhaseCalibration | None = None,
    *,
    estimator: str = "projection",
) -> GradientEstimate:
    """Assemble ``dI/dV`` per input case from a demodulated waveform recording.

    The tones are the perturbed electrodes ``np.flatnonzero(waveform.frequencies > 0)``;
    ``lockin`` must be demodulated at ``waveform.frequencies[perturbed]`` over
    ``waveform.windows``. Electrode ``j``'s gradient for a case comes from that case's windows
    in which ``j`` carries a tone (one in parallel mode, its own in sequential mode; several
    are averaged).

    Parameters
    ----------
    lockin : LockInResult
        Lock-in result, one row per segment of ``waveform``.
    waveform : Waveform or sequence of Segment
        The waveform that was played, or just its segments (e.g. rebuilt from event
        documents); then the tones are the electrodes with an amplitude in any segment.
    calibration : PhaseCalibration, optional
        Phase/gain of the chain at the tones; default identity (no lag).
    estimator : str
        ``"projection"`` (default, unbiased) or ``"sign"`` (sign times amplitude).

    Returns
    -------
    GradientEstimate
        The estimate.

    Raises
    ------
    ValueError
        When lock-in, waveform and calibration do not belong together.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    if isinstance(waveform, Waveform):
        segments = waveform.segments
        perturbed = np.flatnonzero(waveform.frequencies > 0)
        tone_freqs = waveform.frequencies[perturbed]
        if lockin.frequencies.shape != tone_freqs.shape or not np.allclose(
            lockin.frequencies, tone_freqs
        ):
            raise ValueError(
                f"lock-in frequencies {lockin.frequencies.tolist()} do not match the waveform's "
                f"tones {tone_freqs.tolist()} (electrode order); demodulate at "
                "waveform.frequencies[waveform.frequencies > 0]"
            )
    else:
        segments = tuple(waveform)
        if not segments or not all(isinstance(s, Segment) for s in segments):
            raise ValueError("waveform must be a Waveform or a non-empty sequence of Segment")
        perturbed = np.flatnonzero(np.any([s.amplitudes > 0 for s in segments], axis=0))
        tone_freqs = lockin.frequencies
        if perturbed.size != tone_freqs.size:
            raise ValueError(
                f"the segments perturb {perturbed.size} electrodes {perturbed.tolist()} but the "
                f"lock-in has {tone_freqs.size} tones; pass the Waveform to map tones by frequency"
            )
    n_segments = len(segments)
    if lockin.x.shape[0] != n_segments:
        raise ValueError(
            f"lock-in has {lockin.x.shape[0]} windows but the waveform has {n_segments} segments"
        )
    if calibration is None:
        calibration = PhaseCalibration.identity(tone_freqs)
    elif calibration.frequencies.shape != tone_freqs.shape or not np.allclose(
        calibration.frequencies, tone_freqs
    ):
        raise ValueError(
            f"calibration frequencies {calibration.frequencies.tolist()} do not match the "
            f"tones {tone_freqs.tolist()}"
        )

    amplitudes = np.stack([s.amplitudes[perturbed] for s in segments])
    active = amplitudes > 0
    scale = np.where(active, 2.0 / (calibration.gain[None, :] * np.where(active, amplitudes, 1)), 0)
    lag = calibration.lag_rad[None, :]
    if estimator == "projection":
        per_window = scale * (lockin.x * np.cos(lag) + lockin.y * np.sin(lag))
    else:
        in_phase = np.cos(lockin.phase - lag) >= 0
        per_window = scale * np.where(in_phase, 1.0, -1.0) * np.hypot(lockin.x, lockin.y)
    per_window_err = scale * lockin.stderr

    cases = np.array([s.case for s in segments])
    n_cases = int(cases.max()) + 1
    membership = (cases[None, :] == np.arange(n_cases)[:, None]).astype(float)
    counts = membership @ active.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        gradient = (membership @ np.where(active, per_window, 0)) / counts
        stderr = np.sqrt(membership @ np.where(active, per_window_err**2, 0)) / counts
        current = (membership @ lockin.dc) / membership.sum(axis=1)
    for array in (gradient, stderr, current):
        array.setflags(write=False)
    return GradientEstimate(gradient=gradient, stderr=stderr, current=current)


def _fit_cutoff(freqs: np.ndarray, axis: np.ndarray, weights: np.ndarray) -> float | None:
    """Weighted least-squares cutoff of ``-atan(f / fc)`` to the axes; None = no lag."""

    def cost(inverse_cutoff: float) -> float:
        residual = axis + np.arctan(freqs * inverse_cutoff)
        return float(np.sum(weights * residual**2))

    # Coarse log grid first (the cost need not be unimodal), then refine the best cell.
    upper = 1e3 / freqs.min()
    grid = np.concatenate([[0.0], np.geomspace(1e-4 / freqs.max(), upper, 200)])
    costs = np.array([cost(k) for k in grid])
    best = int(np.argmin(costs))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    from scipy.optimize import minimize_scalar  # here: the hge package imports in 0.3 s less

    refined = minimize_scalar(cost, bounds=(lo, hi), method="bounded").x
    inverse_cutoff = refined if cost(refined) <= costs[best] else grid[best]
    if inverse_cutoff * freqs.max() < 1e-3:  # under 0.06 degrees at the top tone: no lag
        return None
    return float(1.0 / inverse_cutoff)


def _frozen(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.array(values, dtype=float)
    array.setflags(write=False)
    return array
