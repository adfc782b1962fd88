"""Digital lock-in: in-phase and quadrature components of every tone in every window.

Convention: for ``s(t) = A sin(2 pi f t + phi)`` over whole periods of a window (``t`` counted
from the window start), ``x = A/2 cos(phi)`` and ``y = A/2 sin(phi)``, so
``amplitude = 2 hypot(x, y) = A`` and ``phase = atan2(y, x) = phi``.

Noise floor: the same normalised DFT evaluated at off-tone bins of the window gives components
with the same variance as ``x`` and ``y`` of a tone in that noise, so ``|X_k|^2 / 2`` at clean
bins near a tone estimates the variance of one component. Clean bins exclude DC, Nyquist, every
tone with its neighbours, the tones' harmonics up to ``exclude_order`` and the IM products of
the tones up to ``exclude_order``.

* Up to ``noise_bins // 2`` of the nearest clean bins are taken on each side of a tone, and
  the two side means are interpolated to the tone linearly in ``1/f``: exact in expectation
  for any white + 1/f spectrum ``a + b/f``, with positive weights only.
* A dense plan covers the bins around its tones with third-order products, so for each tone
  the product order is lowered (never below 2; harmonics stay excluded) until
  ``noise_bins // 4`` clean bins lie on each side within ``noise_bins`` bins of the tone, or
  as many as order 2 leaves. Third-order products grow as the cube of the tone amplitude; on
  the virtual DNPU they stay far below the noise at the usual 5-30 mV.
* If a side has so few bins that the interpolation would leave fewer than ``noise_bins / 2``
  degrees of freedom (``2 / sum(w^2)``), the weights move toward equal weights until it has
  that many.
* Without a clean bin below a tone (the lowest tones of a dense plan starting a few bins above
  DC), the floor is the mean of the ``noise_bins`` nearest bins above it, which reads low
  under 1/f noise.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dnpu_bluesky.hge._products import fold, product_matrix

_WINDOWS = ("rect", "hann")


@dataclass(frozen=True, eq=False)
class LockInResult:
    """Demodulated components of each tone in each analysis window.

    Attributes
    ----------
    frequencies : numpy.ndarray
        ``(n_tones,)`` demodulation frequencies in Hz.
    x : numpy.ndarray
        ``(n_segments, n_tones)`` in-phase component (sine reference).
    y : numpy.ndarray
        ``(n_segments, n_tones)`` quadrature component (cosine reference).
    stderr : numpy.ndarray
        ``(n_segments, n_tones)`` standard error of one component (x or y), from the
        window's own off-tone noise floor; NaN if the window has no clean bin.
    dc : numpy.ndarray
        ``(n_segments,)`` mean of each window.
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
    """Demodulate a 1-D recording at every tone, one row per analysis window.

    Parameters
    ----------
    signal : numpy.ndarray
        1-D recording (e.g. output current in nA).
    frequencies : sequence of float or numpy.ndarray
        Tone frequencies in Hz, each in ``(0, sample_rate / 2)``.
    sample_rate : float
        Samples per second.
    windows : sequence of slice, optional
        Analysis slices (e.g. ``Waveform.windows``); default: the whole signal.
        The phase reference of each row is the start of its window.
    window : str
        ``"rect"`` (default; optimal for tones with whole periods in the window) or
        ``"hann"`` (normalised by its coherent gain so amplitudes stay calibrated; use it
        for tones off the window's grid; distinct tones must be >= 2 bins apart). Each
        window's (weighted) mean is removed first.
    noise_bins : int
        Clean DFT bins used for each tone's noise floor: up to half of them on
        each side of the tone (all of them on one side if the other has none).
    exclude_order : int
        IM products up to this order (and harmonics up to this multiple) are
        kept out of the noise bins. Where they leave too few clean bins close to a tone on
        both sides, that tone's floor excludes products of a lower order only (not below 2;
        see the module docstring).

    Returns
    -------
    LockInResult
        The lock-in result.

    Raises
    ------
    ValueError
        On a bad shape, frequency, window name or slice.
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
        chosen, bin_weights = _noise_bin_table(
            tuple(positions.tolist()), int(length), window, int(noise_bins), int(exclude_order)
        )
        if chosen.shape[1] == 0:
            stderr[rows] = np.nan
        else:
            stderr[rows] = np.sqrt(np.einsum("stk,tk->st", power[:, chosen], bin_weights))
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
) -> tuple[np.ndarray, np.ndarray]:
    """Noise bins and weights of each tone: ``stderr^2 = sum_k weights[t, k] P[bins[t, k]]``.

    ``positions`` are the tones in bins (``f * length / fs``, possibly fractional). Both
    arrays have shape ``(n_tones, n_used)``; a tone with fewer bins pads with zero weights.
    The weights of a tone sum to 1 (see the module docstring for the choice). Cached: every
    window of a waveform shares one table.
    """
    n_rfft = length // 2 + 1
    pos = np.asarray(positions, dtype=float)
    product_guard = 0 if window == "rect" else 1  # Hann main lobe spans +-1 bin

    def exclude(mask: np.ndarray, centres: np.ndarray, guard: int) -> None:
        for lo, hi in zip(np.floor(centres) - guard, np.ceil(centres) + guard, strict=True):
            mask[max(int(lo), 0) : min(int(hi), n_rfft - 1) + 1] = False

    base = np.ones(n_rfft, dtype=bool)
    base[: 1 + product_guard] = False  # DC and, for Hann, its main lobe
    if length % 2 == 0:
        base[-1] = False  # Nyquist bin: real only, twice the variance per component
    exclude(base, pos, 1)
    if exclude_order >= 2:  # harmonics stay excluded whatever order the products drop to
        multiples = np.arange(2, exclude_order + 1)
        exclude(base, fold(np.outer(pos, multiples).ravel(), length), product_guard)
    # Clean bins for each exclusion order, from the requested one down to 2 (supersets).
    candidates = []
    for order in range(exclude_order, 1, -1) if exclude_order >= 2 else [exclude_order]:
        clean = base.copy()
        if order >= 2:
            exclude(clean, fold(product_matrix(pos.size, order) @ pos, length), product_guard)
        candidates.append(np.flatnonzero(clean))

    per_side = count // 2
    wanted = max(1, per_side // 2)  # clean bins per side within `count` bins of the tone
    rows = []
    for centre in pos:
        sides = [_sides(bins, centre) for bins in candidates]
        near = [
            min(
                np.count_nonzero(centre - below <= count), np.count_nonzero(above - centre <= count)
            )
            for below, above in sides
        ]
        need = max(1, min(wanted, near[-1]))
        level = next((i for i, n in enumerate(near) if n >= need), len(sides) - 1)
        below, above = sides[level]
        if per_side >= 1 and below.size and above.size:
            below, above = below[:per_side], above[:per_side]
            # Interpolate the two side means linearly in u = 1/f (exact for a + b/f); the
            # side means are at the mean u of their bins. Tone and bins share the factor
            # length / fs, so bin indices serve as frequencies.
            u_below, u_above = np.mean(1.0 / below), np.mean(1.0 / above)
            share = (1.0 / centre - u_above) / (u_below - u_above)
            bins = np.concatenate([below, above])
            weights = np.concatenate(
                [
                    np.full(below.size, share / below.size),
                    np.full(above.size, (1 - share) / above.size),
                ]
            )
            # One or two bins on a side would carry most of the weight: few degrees of
            # freedom (2 / sum(w^2) for equal bin variances), a noisy stderr per window.
            # Move toward equal weights until there are count / 2 (count / 4 equal bins).
            # The change sums to zero, so sum(w^2) = 1/n + lam^2 sum((w - 1/n)^2).
            equal = 1.0 / bins.size
            excess = np.sum((weights - equal) ** 2)
            if excess > 0:
                lam = math.sqrt(max(4.0 / count - equal, 0.0) / excess)
                weights = equal + min(lam, 1.0) * (weights - equal)
        else:  # one side only: the nearest bins, equally weighted
            bins = candidates[-1]
            bins = bins[np.lexsort((bins, np.abs(bins - centre)))[:count]]
            weights = np.full(bins.size, 1.0 / max(bins.size, 1))
        rows.append((bins, weights))

    used = max(bins.size for bins, _ in rows)
    table = np.zeros((pos.size, used), dtype=np.int64)
    table_weights = np.zeros((pos.size, used))
    for tone, (bins, weights) in enumerate(rows):
        table[tone, : bins.size] = bins
        if bins.size:
            table[tone, bins.size :] = bins[0]
        table_weights[tone, : bins.size] = weights
    table.setflags(write=False)
    table_weights.setflags(write=False)
    return table, table_weights


def _sides(bins: np.ndarray, centre: float) -> tuple[np.ndarray, np.ndarray]:
    """Clean bins below and above ``centre``, each nearest first."""
    return bins[bins < centre][::-1], bins[bins > centre]
