"""Digital lock-in: in-phase and quadrature components of every tone in every window.

Convention: for ``s(t) = A sin(2 pi f t + phi)`` over whole periods of a window (``t`` counted
from the window start), ``x = A/2 cos(phi)`` and ``y = A/2 sin(phi)``, so
``amplitude = 2 hypot(x, y) = A`` and ``phase = atan2(y, x) = phi``.

Noise floor: the same normalised DFT evaluated at off-tone bins of the window gives components
with the same variance as ``x`` and ``y`` of a tone in that noise, so the mean of
``|X_k|^2 / 2`` over clean bins near a tone estimates the variance of one component. Clean
bins exclude DC, Nyquist, every tone with its neighbours and every IM product of the tones up
to ``exclude_order``; the ``noise_bins`` nearest clean bins are used, so a sloped (1/f)
spectrum is followed as far as the plan leaves clean bins near the tone.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dnpu_bluesky.hge.frequencies import _fold, _product_matrix

_WINDOWS = ("rect", "hann")


@dataclass(frozen=True, eq=False)
class LockInResult:
    """Demodulated components of each tone in each analysis window.

    Attributes:
        frequencies: ``(n_tones,)`` demodulation frequencies in Hz.
        x: ``(n_segments, n_tones)`` in-phase component (sine reference).
        y: ``(n_segments, n_tones)`` quadrature component (cosine reference).
        stderr: ``(n_segments, n_tones)`` standard error of one component (x or y), from the
            window's own off-tone noise floor; NaN if the window has no clean bin.
        dc: ``(n_segments,)`` mean of each window.
    """

    frequencies: np.ndarray
    x: np.ndarray
    y: np.ndarray
    stderr: np.ndarray
    dc: np.ndarray

    @property
    def amplitude(self) -> np.ndarray:
        """Tone amplitude ``2 hypot(x, y)``, shape ``(n_segments, n_tones)``."""
        return 2.0 * np.hypot(self.x, self.y)

    @property
    def phase(self) -> np.ndarray:
        """Tone phase ``atan2(y, x)`` in radians, shape ``(n_segments, n_tones)``."""
        return np.arctan2(self.y, self.x)


def demodulate(
    signal: np.ndarray,
    frequencies: Sequence[float] | np.ndarray,
    sample_rate: float,
    *,
    windows: Sequence[slice] | None = None,
    window: str = "rect",
    noise_bins: int = 16,
    exclude_order: int = 3,
) -> LockInResult:
    """Lock-in demodulation of a 1-D recording at every tone, one row per analysis window.

    Args:
        signal: 1-D recording (e.g. output current in nA).
        frequencies: Tone frequencies in Hz, each in ``(0, sample_rate / 2)``.
        sample_rate: Samples per second.
        windows: Analysis slices (e.g. ``Waveform.windows``); default: the whole signal.
            The phase reference of each row is the start of its window.
        window: ``"rect"`` (default; optimal for tones with whole periods in the window) or
            ``"hann"`` (normalised by its coherent gain so amplitudes stay calibrated; use it
            for tones off the window's grid; distinct tones must be >= 2 bins apart). Each
            window's (weighted) mean is removed first.
        noise_bins: Clean DFT bins averaged for each tone's noise floor.
        exclude_order: IM products up to this order are kept out of the noise bins.

    Returns:
        The lock-in result.

    Raises:
        ValueError: on a bad shape, frequency, window name or slice.
    """
    data = np.asarray(signal, dtype=float)
    if data.ndim != 1 or data.size < 2:
        raise ValueError(f"signal must be 1-D with >= 2 samples, got shape {data.shape}")
    if not (math.isfinite(sample_rate) and sample_rate > 0):
        raise ValueError(f"sample_rate must be > 0, got {sample_rate!r}")
    freqs = np.array(frequencies, dtype=float, ndmin=1)  # a copy: it is frozen below
    if freqs.ndim != 1 or freqs.size < 1:
        raise ValueError(f"frequencies must be a non-empty 1-D array, got shape {freqs.shape}")
    if not np.all(np.isfinite(freqs)) or np.any(freqs <= 0) or np.any(freqs >= sample_rate / 2):
        raise ValueError(
            f"frequencies must lie in (0, {sample_rate / 2:g}) Hz, got {freqs.tolist()}; "
            "for a per-electrode array pass frequencies[frequencies > 0]"
        )
    if window not in _WINDOWS:
        raise ValueError(f"window must be one of {_WINDOWS}, got {window!r}")
    if not isinstance(noise_bins, numbers.Integral) or noise_bins < 1:
        raise ValueError(f"noise_bins must be an integer >= 1, got {noise_bins!r}")
    if not isinstance(exclude_order, numbers.Integral) or exclude_order < 1:
        raise ValueError(f"exclude_order must be an integer >= 1, got {exclude_order!r}")
    spans = _spans(windows, data.size)
    if window == "hann":
        shortest = min(length for _, length in spans)
        gaps = np.abs(freqs[:, None] - freqs[None, :]) * shortest / sample_rate
        if np.any((gaps > 0) & (gaps < 2)):
            raise ValueError(
                "with the Hann window distinct tones must be >= 2 bins apart (its main lobe "
                f"spans +-1 bin), got {freqs.tolist()} Hz in a {shortest}-sample window"
            )

    n_segments, n_tones = len(spans), freqs.size
    x = np.empty((n_segments, n_tones))
    y = np.empty((n_segments, n_tones))
    stderr = np.empty((n_segments, n_tones))
    dc = np.empty(n_segments)
    starts = np.array([start for start, _ in spans])
    lengths = np.array([length for _, length in spans])
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        block = data[starts[rows, None] + np.arange(length)[None, :]]
        taper = _taper(window, int(length))
        weights = taper / taper.sum()
        dc[rows] = block.mean(axis=1)
        weighted = (block - (block @ weights)[:, None]) * weights[None, :]
        phase = 2 * np.pi * np.outer(np.arange(length) / sample_rate, freqs)
        x[rows] = weighted @ np.sin(phase)
        y[rows] = weighted @ np.cos(phase)
        # Same normalisation as x, y: Re(X_k) and -Im(X_k) are the bin's components.
        power = np.abs(np.fft.rfft(weighted, axis=1)) ** 2 / 2
        positions = freqs * length / sample_rate
        chosen = _noise_bin_table(
            tuple(positions.tolist()), int(length), window, int(noise_bins), int(exclude_order)
        )
        if chosen.shape[1] == 0:
            stderr[rows] = np.nan
        else:
            stderr[rows] = np.sqrt(power[:, chosen].mean(axis=-1))
    for array in (freqs, x, y, stderr, dc):
        array.setflags(write=False)
    return LockInResult(frequencies=freqs, x=x, y=y, stderr=stderr, dc=dc)


def _spans(windows: Sequence[slice] | None, n_samples: int) -> list[tuple[int, int]]:
    """(start, length) of each analysis window, validated against the signal."""
    if windows is None:
        return [(0, n_samples)]
    spans = []
    for i, w in enumerate(windows):
        if not isinstance(w, slice) or w.step not in (None, 1):
            raise ValueError(f"window {i} must be a contiguous slice, got {w!r}")
        start, stop = w.start or 0, n_samples if w.stop is None else w.stop
        if not 0 <= start < stop <= n_samples or stop - start < 2:
            raise ValueError(
                f"window {i} {w!r} must lie inside the {n_samples}-sample signal and hold >= 2 "
                "samples"
            )
        spans.append((int(start), int(stop - start)))
    if not spans:
        raise ValueError("windows must hold at least one slice")
    return spans


def _taper(window: str, length: int) -> np.ndarray:
    if window == "rect":
        return np.ones(length)
    # Periodic Hann: its DFT vanishes beyond bin 1, so grid tones stay exactly separated.
    return 0.5 * (1.0 - np.cos(2 * np.pi * np.arange(length) / length))


@functools.lru_cache(maxsize=128)
def _noise_bin_table(
    positions: tuple[float, ...], length: int, window: str, count: int, exclude_order: int
) -> np.ndarray:
    """``(n_tones, n_used)`` indices of the clean bins nearest each tone.

    ``positions`` are the tones in bins (``f * length / fs``, possibly fractional). Cached:
    every window of a waveform shares one table.
    """
    n_rfft = length // 2 + 1
    clean = np.ones(n_rfft, dtype=bool)
    clean[0] = False
    if length % 2 == 0:
        clean[-1] = False  # Nyquist bin: real only, twice the variance per component
    product_guard = 0 if window == "rect" else 1  # Hann main lobe spans +-1 bin
    pos = np.asarray(positions)

    def exclude(centres: np.ndarray, guard: int) -> None:
        for lo, hi in zip(np.floor(centres) - guard, np.ceil(centres) + guard, strict=True):
            clean[max(int(lo), 0) : min(int(hi), n_rfft - 1) + 1] = False

    clean[: 1 + product_guard] = False  # DC and, for Hann, its main lobe
    exclude(pos, 1)
    if exclude_order >= 2:
        products = _fold(_product_matrix(pos.size, exclude_order) @ pos, length)
        exclude(products, product_guard)
    candidates = np.flatnonzero(clean)
    used = min(count, candidates.size)
    table = np.empty((pos.size, used), dtype=np.int64)
    for tone, centre in enumerate(pos):
        order = np.lexsort((candidates, np.abs(candidates - centre)))
        table[tone] = candidates[order[:used]]
    table.setflags(write=False)
    return table
