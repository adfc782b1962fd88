"""Electrode streams for homodyne gradient extraction.

A stream visits one operating point per segment. Each segment is: a linear ramp from the
previous DC level, a settling time during which the sines fade in (raised-cosine envelope over
its first half, full amplitude over its second half), and the analysis window itself, where
electrode ``j`` carries ``a_j * sin(2 pi f_j (t - t_window_start))``. Tones sit on the window's
grid, so the sines hold whole periods and return to zero at the end of the window, where the
ramp to the next segment starts: no sample ever jumps. The stream starts and ends at exactly
0 V.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_INTEGER_TOLERANCE = 1e-6
_MODES = ("parallel", "sequential")


@dataclass(frozen=True, eq=False)
class Segment:
    """One operating point held for one analysis window.

    Attributes
    ----------
    dc : numpy.ndarray
        ``(n_electrodes,)`` operating point in V, including the input voltages.
    amplitudes : numpy.ndarray
        ``(n_electrodes,)`` sine amplitude in V, 0 where not perturbed here.
    case : int
        Index of the input case the segment belongs to.
    """

    dc: np.ndarray
    amplitudes: np.ndarray
    case: int

    def __post_init__(self) -> None:
        dc = _frozen_copy(self.dc)
        amplitudes = _frozen_copy(self.amplitudes)
        if dc.ndim != 1 or amplitudes.shape != dc.shape:
            raise ValueError(
                f"dc and amplitudes must be 1-D of equal length, got {dc.shape} and "
                f"{amplitudes.shape}"
            )
        if not (np.all(np.isfinite(dc)) and np.all(np.isfinite(amplitudes))):
            raise ValueError("dc and amplitudes must be finite")
        if np.any(amplitudes < 0):
            raise ValueError(f"amplitudes must be >= 0 V, got {amplitudes.tolist()}")
        if int(self.case) != self.case or self.case < 0:
            raise ValueError(f"case must be an integer >= 0, got {self.case!r}")
        object.__setattr__(self, "dc", dc)
        object.__setattr__(self, "amplitudes", amplitudes)
        object.__setattr__(self, "case", int(self.case))


@dataclass(frozen=True, eq=False)
class Waveform:
    """A complete electrode stream and the bookkeeping needed to analyse its recording.

    Attributes
    ----------
    voltages : numpy.ndarray
        ``(n_samples, n_electrodes)`` in V; first and last sample exactly 0 V.
    sample_rate : float
        Samples per second.
    frequencies : numpy.ndarray
        ``(n_electrodes,)`` tone frequency of each electrode in Hz, 0 = no tone.
    windows : tuple of slice
        Analysis slice of each segment, in segment order.
    segments : tuple of Segment
        The segments, in playing order.
    analysis_mask : numpy.ndarray
        ``(n_samples,)`` True inside analysis windows (ramps and settling
        excluded).
    """

    voltages: np.ndarray
    sample_rate: float
    frequencies: np.ndarray
    windows: tuple[slice, ...]
    segments: tuple[Segment, ...]
    analysis_mask: np.ndarray

    @property
    def duration_s(self) -> float:
        """Length of the stream in seconds."""
        return self.voltages.shape[0] / self.sample_rate


def hge_segments(
    operating_points: np.ndarray, amplitudes: np.ndarray, mode: str = "parallel"
) -> list[Segment]:
    """Build the segments that measure the gradient at each operating point.

    Parameters
    ----------
    operating_points : numpy.ndarray
        ``(n_cases, n_electrodes)`` DC voltages, one row per input case.
    amplitudes : numpy.ndarray
        ``(n_electrodes,)`` sine amplitudes in V; 0 = electrode not perturbed.
        All zero gives plain evaluation segments (one per case, no tones).
    mode : str
        ``"parallel"``: one segment per case with every tone at once; ``"sequential"``:
        one segment per (case, perturbed electrode), case-major, with only that tone.

    Returns
    -------
    list of Segment
        The segments in playing order.

    Raises
    ------
    ValueError
        On a bad shape, non-finite or negative value, or unknown mode.
    """
    points = np.asarray(operating_points, dtype=float)
    amps = np.asarray(amplitudes, dtype=float)
    if points.ndim != 2 or points.shape[0] < 1 or points.shape[1] < 1:
        raise ValueError(
            "operating_points must have shape (n_cases, n_electrodes) with both >= 1, got "
            f"{points.shape}; use points.reshape(1, -1) for a single case"
        )
    if amps.shape != (points.shape[1],):
        raise ValueError(
            f"amplitudes must have shape ({points.shape[1]},) to match operating_points "
            f"{points.shape}, got {amps.shape}"
        )
    if not np.all(np.isfinite(points)):
        raise ValueError("operating_points must be finite")
    if not np.all(np.isfinite(amps)) or np.any(amps < 0):
        raise ValueError(f"amplitudes must be finite and >= 0 V, got {amps.tolist()}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")

    perturbed = np.flatnonzero(amps > 0)
    if mode == "parallel" or perturbed.size == 0:
        return [Segment(dc=row, amplitudes=amps, case=c) for c, row in enumerate(points)]
    segments = []
    for c, row in enumerate(points):
        for j in perturbed:
            single = np.zeros_like(amps)
            single[j] = amps[j]
            segments.append(Segment(dc=row, amplitudes=single, case=c))
    return segments


def synthesize_waveform(
    segments: Sequence[Segment],
    frequencies: np.ndarray,
    sample_rate: float,
    window_s: float,
    *,
    settle_s: float = 0.01,
    ramp_s: float = 0.005,
) -> Waveform:
    """Build the electrode stream that plays ``segments`` one after another.

    Layout: one 0 V sample, then per segment a linear ramp (``ramp_s``) to its DC, settling
    (``settle_s``; sines fade in over its first half) and the analysis window (exactly
    ``window_s * sample_rate`` samples, sines phase-referenced to the window start), then a
    linear ramp back to 0 V. The largest DC slew is ``|dV| / ramp_s``.

    Tones must sit on the window's grid (whole periods) below Nyquist. Harmonic and IM
    collisions are not checked here (a sequential stream may reuse one frequency); use
    :func:`~dnpu_bluesky.hge.check_frequencies` for parallel tones.

    Parameters
    ----------
    segments : sequence of Segment
        Segments in playing order (see :func:`hge_segments`).
    frequencies : numpy.ndarray
        ``(n_electrodes,)`` tone of each electrode in Hz, 0 = no tone.
    sample_rate : float
        Samples per second.
    window_s : float
        Analysis window per segment, in seconds.
    settle_s : float
        Settling time after each ramp, before the window.
    ramp_s : float
        Duration of each linear DC ramp (> 0).

    Returns
    -------
    Waveform
        The waveform.

    Raises
    ------
    ValueError
        On inconsistent shapes, off-grid tones, an amplitude on an electrode
        without a tone, or non-positive / fractional timing.
    """
    segments = tuple(segments)
    if not segments or not all(isinstance(s, Segment) for s in segments):
        raise ValueError("segments must be a non-empty sequence of Segment")
    n_electrodes = segments[0].dc.size
    if any(s.dc.size != n_electrodes for s in segments):
        raise ValueError("all segments must have the same number of electrodes")
    freqs = np.asarray(frequencies, dtype=float)
    if freqs.shape != (n_electrodes,):
        raise ValueError(f"frequencies must have shape ({n_electrodes},), got {freqs.shape}")
    if not (math.isfinite(sample_rate) and sample_rate > 0):
        raise ValueError(f"sample_rate must be > 0, got {sample_rate!r}")
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window_s must be > 0 s, got {window_s!r}")
    if not (math.isfinite(settle_s) and settle_s >= 0):
        raise ValueError(f"settle_s must be >= 0 s, got {settle_s!r}")
    if not (math.isfinite(ramp_s) and ramp_s > 0):
        raise ValueError(f"ramp_s must be > 0 s (no steps), got {ramp_s!r}")
    n_window = _whole_samples(window_s * sample_rate, "window_s * sample_rate")
    if not np.all(np.isfinite(freqs)) or np.any(freqs < 0):
        raise ValueError(f"frequencies must be finite and >= 0 Hz, got {freqs.tolist()}")
    if np.any(freqs >= sample_rate / 2):
        raise ValueError(
            f"frequencies must be below Nyquist {sample_rate / 2:g} Hz, got {freqs.tolist()}"
        )
    periods = freqs * window_s
    off_grid = np.abs(periods - np.rint(periods)) > _INTEGER_TOLERANCE
    if np.any(off_grid):
        j = int(np.argmax(off_grid))
        raise ValueError(
            f"electrode {j}: {freqs[j]:g} Hz makes {periods[j]:g} periods in the "
            f"{window_s:g} s window, not a whole number (grid {1 / window_s:g} Hz)"
        )
    amplitudes = np.stack([s.amplitudes for s in segments])
    orphan = (amplitudes > 0) & (freqs == 0)[None, :]
    if np.any(orphan):
        i, j = np.argwhere(orphan)[0]
        raise ValueError(f"segment {i} perturbs electrode {j}, which has no frequency")

    # Ramps round up so the slew never exceeds |dV| / ramp_s.
    n_ramp = max(1, math.ceil(ramp_s * sample_rate - _INTEGER_TOLERANCE))
    n_settle = math.ceil(settle_s * sample_rate - _INTEGER_TOLERANCE)
    n_segments = len(segments)
    segment_length = n_ramp + n_settle + n_window
    n_samples = 1 + n_segments * segment_length + n_ramp
    window_starts = 1 + np.arange(n_segments) * segment_length + n_ramp + n_settle
    window_ends = window_starts + n_window

    # DC track: piecewise linear through (ramp end, dc_i) and (window end, dc_i).
    dc = np.stack([s.dc for s in segments])
    knots = np.empty(2 * n_segments + 2)
    knots[0], knots[-1] = 0, n_samples - 1
    knots[1:-1:2] = window_starts - n_settle - 1
    knots[2:-1:2] = window_ends - 1
    levels = np.zeros((2 * n_segments + 2, n_electrodes))
    levels[1:-1:2] = dc
    levels[2:-1:2] = dc
    index = np.arange(n_samples, dtype=float)
    voltages = np.column_stack([np.interp(index, knots, levels[:, j]) for j in range(n_electrodes)])

    # Sines over settling + window, identical in every segment up to the amplitudes.
    offsets = np.arange(-n_settle, n_window)
    n_fade = n_settle // 2
    envelope = np.ones(offsets.size)
    if n_fade:
        envelope[:n_fade] = 0.5 * (1.0 - np.cos(np.pi * np.arange(n_fade) / n_fade))
    tones = envelope[:, None] * np.sin(2 * np.pi * freqs[None, :] * offsets[:, None] / sample_rate)
    rows = window_starts[:, None] + offsets[None, :]
    voltages[rows] += amplitudes[:, None, :] * tones[None, :, :]

    mask = np.zeros(n_samples, dtype=bool)
    mask[(window_starts[:, None] + np.arange(n_window)[None, :]).ravel()] = True
    voltages.setflags(write=False)
    mask.setflags(write=False)
    return Waveform(
        voltages=voltages,
        sample_rate=float(sample_rate),
        frequencies=_frozen_copy(freqs),
        windows=tuple(
            slice(int(a), int(b)) for a, b in zip(window_starts, window_ends, strict=True)
        ),
        segments=segments,
        analysis_mask=mask,
    )


def _whole_samples(exact: float, what: str) -> int:
    count = round(exact)
    if count < 1 or abs(exact - count) > _INTEGER_TOLERANCE * max(1.0, exact):
        raise ValueError(f"{what} = {exact:g} must be a whole number of samples >= 1")
    return count


def _frozen_copy(values: np.ndarray) -> np.ndarray:
    array = np.array(values, dtype=float)
    array.setflags(write=False)
    return array
