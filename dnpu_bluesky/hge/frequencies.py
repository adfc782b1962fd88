"""Frequency planning: tones that stay orthogonal in one analysis window.

Every tone sits on the grid ``k / T`` of the analysis window ``T`` (whole periods, so a
rectangular lock-in separates grid tones exactly). The device is nonlinear, so the output also
carries harmonics and intermodulation (IM) products ``sum_i m_i f_i``; a product that lands on a
tone adds to that tone's lock-in reading and biases its gradient. A plan therefore keeps every
tone off

* every harmonic ``k * f_i`` (any ``k >= 2``) of another tone, and
* every nontrivial IM product of order ``2 <= sum |m_i| <= order``, including its alias folded
  about the Nyquist frequency of the window's sampling.

Products are counted by their net coefficients ``m``, so self-cancelling terms such as
``f_i + f_j - f_i`` reduce to the tone itself and are (correctly) not counted; products at DC
are harmless.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnpu_bluesky.hge._products import fold, product_matrix

#: Tones stay at or below this fraction of the sample rate (Nyquist is 0.5): headroom for the
#: anti-aliasing filter roll-off and enough samples per period for a clean sine.
NYQUIST_MARGIN = 0.4

#: Default lowest tone, in bins of the window grid. A linear drift leaks into bin ``k`` as
#: ``1/k`` with a rectangular window, and the noise floor of a tone is read from bins on both
#: sides of it, so tones start a few bins above DC.
DEFAULT_MIN_BINS = 5

#: Default lowest tone in Hz, whatever the window: 1/f noise and thermal drift grow at low
#: frequency, so long windows must not put tones at a few Hz.
DEFAULT_MIN_FREQUENCY_HZ = 20.0

_INTEGER_TOLERANCE = 1e-6


class FrequencyPlanError(ValueError):
    """A frequency plan cannot meet its constraints; the message names the one that failed."""


@dataclass(frozen=True)
class FrequencyPlan:
    """Tone frequencies for one analysis window, checked against harmonics and IM products.

    Attributes
    ----------
    frequencies : tuple of float
        Tone frequencies in Hz, ascending, one per perturbed electrode.
    window_s : float
        Analysis window in seconds; every tone has whole periods in it.
    sample_rate : float
        Samples per second.
    order : int
        Highest intermodulation order kept off the tones.
    """

    frequencies: tuple[float, ...]
    window_s: float
    sample_rate: float
    order: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "frequencies", tuple(float(f) for f in self.frequencies))
        if list(self.frequencies) != sorted(self.frequencies):
            raise FrequencyPlanError(f"frequencies must be ascending, got {self.frequencies}")
        check_frequencies(self.frequencies, self.window_s, self.sample_rate, order=self.order)

    @property
    def bins(self) -> tuple[int, ...]:
        """Each tone's grid index ``f * T`` (whole periods in the window)."""
        return tuple(round(f * self.window_s) for f in self.frequencies)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description for start documents."""
        return {
            "frequencies": list(self.frequencies),
            "bins": list(self.bins),
            "window_s": float(self.window_s),
            "sample_rate": float(self.sample_rate),
            "order": int(self.order),
        }


def plan_frequencies(
    n_tones: int,
    window_s: float,
    sample_rate: float,
    *,
    band_hz: float | None = None,
    order: int = 3,
    spacing_bins: int = 1,
    min_frequency_hz: float | None = None,
) -> FrequencyPlan:
    """Choose ``n_tones`` grid frequencies free of harmonic and IM collisions.

    Greedy search: candidates are the bins ``b0, b0 + s, b0 + 2 s, ...`` (``s = spacing_bins``,
    ``b0`` the first bin at or above the lowest frequency), each accepted when the set stays
    collision free.

    Parameters
    ----------
    n_tones : int
        Number of tones (perturbed electrodes), at least 1.
    window_s : float
        Analysis window ``T`` in seconds; must hold a whole number of samples.
    sample_rate : float
        Samples per second.
    band_hz : float, optional
        Upper end of the usable band (the current amplifier's bandwidth), or None.
    order : int
        Highest IM order ``sum |m_i|`` kept off the tones (1 = only harmonics).
    spacing_bins : int
        Spacing of the candidate bins, so tones are at least
        ``spacing_bins / T`` apart.
    min_frequency_hz : float, optional
        Lowest allowed tone. Default: the larger of
        ``DEFAULT_MIN_BINS / T`` and ``DEFAULT_MIN_FREQUENCY_HZ`` (away from DC, drift and
        the steepest 1/f noise).

    Returns
    -------
    FrequencyPlan
        The plan, tones ascending.

    Raises
    ------
    FrequencyPlanError
        Naming the constraint that cannot be met and the numbers involved.
    """
    if isinstance(n_tones, bool) or not isinstance(n_tones, numbers.Integral) or n_tones < 1:
        raise FrequencyPlanError(f"n_tones must be an integer >= 1, got {n_tones!r}")
    if not isinstance(spacing_bins, numbers.Integral) or spacing_bins < 1:
        raise FrequencyPlanError(f"spacing_bins must be an integer >= 1, got {spacing_bins!r}")
    n_samples = _window_samples(window_s, sample_rate)
    _check_order(order)
    grid_hz = 1.0 / window_s
    limit_hz, limit_text, limit_clause = _upper_limit(sample_rate, band_hz)
    if grid_hz > limit_hz:
        raise FrequencyPlanError(
            f"window {window_s:g} s gives a {grid_hz:g} Hz grid, above {limit_text}: "
            "lengthen the window"
        )
    if min_frequency_hz is None:
        min_frequency_hz = max(DEFAULT_MIN_BINS * grid_hz, DEFAULT_MIN_FREQUENCY_HZ)
    if not math.isfinite(min_frequency_hz) or min_frequency_hz < 0:
        raise FrequencyPlanError(f"min_frequency_hz must be >= 0, got {min_frequency_hz!r}")
    first_bin = max(1, math.ceil(min_frequency_hz * window_s - _INTEGER_TOLERANCE))
    top_bin = math.floor(limit_hz * window_s + _INTEGER_TOLERANCE)
    if first_bin > top_bin:
        raise FrequencyPlanError(
            f"the lowest tone {first_bin * grid_hz:g} Hz (min_frequency_hz "
            f"{min_frequency_hz:g}) is above {limit_text}: lower min_frequency_hz"
        )

    bins = _greedy_bins(n_tones, order, first_bin, spacing_bins, top_bin, n_samples)
    if bins is None:
        needed = _greedy_bins(n_tones, order, first_bin, spacing_bins, None, None)
        assert needed is not None  # unbounded search always succeeds
        need = needed[-1]
        search = (
            f"(lowest tone {first_bin * grid_hz:g} Hz, candidate spacing {spacing_bins} bin"
            f"{'s' if spacing_bins > 1 else ''})"
        )
        if need > top_bin:
            remedy = (
                "widen the band"
                if band_hz is not None and band_hz < NYQUIST_MARGIN * sample_rate
                else "raise the sample rate"
            )
            raise FrequencyPlanError(
                f"{n_tones} tones at order {order} need bins up to {need} "
                f"({need * grid_hz:g} Hz) but {limit_clause}: {remedy}, lengthen the window "
                f"(now {window_s:g} s) or lower the order {search}"
            )
        raise FrequencyPlanError(
            f"{n_tones} tones at order {order} fit below {limit_text} only if aliased IM "
            f"products are ignored (at {sample_rate:g} S/s they fold back onto tones): raise the "
            f"sample rate or lower the order {search}"
        )
    return FrequencyPlan(
        frequencies=tuple(b / window_s for b in bins),
        window_s=float(window_s),
        sample_rate=float(sample_rate),
        order=int(order),
    )


def check_frequencies(
    frequencies: Sequence[float] | np.ndarray,
    window_s: float,
    sample_rate: float,
    *,
    band_hz: float | None = None,
    order: int = 3,
) -> None:
    """Validate user-chosen tones with the rules :func:`plan_frequencies` follows.

    Zeros are ignored (electrodes without a tone), so a per-electrode frequency array can be
    passed directly.

    Parameters
    ----------
    frequencies : sequence of float or numpy.ndarray
        Tone frequencies in Hz.
    window_s : float
        Analysis window in seconds.
    sample_rate : float
        Samples per second.
    band_hz : float, optional
        Upper end of the usable band, or None.
    order : int
        Highest IM order kept off the tones.

    Raises
    ------
    FrequencyPlanError
        Naming the offending tone, pair or product.
    """
    n_samples = _window_samples(window_s, sample_rate)
    _check_order(order)
    freqs = np.asarray(frequencies, dtype=float).ravel()
    if not np.all(np.isfinite(freqs)) or np.any(freqs < 0):
        raise FrequencyPlanError(f"frequencies must be finite and >= 0 Hz, got {freqs.tolist()}")
    freqs = freqs[freqs > 0]
    if freqs.size == 0:
        raise FrequencyPlanError("no tones: every frequency is 0 Hz")
    exact = freqs * window_s
    bins = np.rint(exact).astype(np.int64)
    off_grid = np.abs(exact - bins) > _INTEGER_TOLERANCE
    if np.any(off_grid):
        f = freqs[np.argmax(off_grid)]
        raise FrequencyPlanError(
            f"tone {f:g} Hz is off the {1 / window_s:g} Hz grid of the {window_s:g} s window "
            f"({f * window_s:g} periods, not a whole number)"
        )
    limit_hz, limit_text, _ = _upper_limit(sample_rate, band_hz)
    too_high = freqs > limit_hz * (1 + 1e-12)
    if np.any(too_high):
        raise FrequencyPlanError(f"tone {freqs[np.argmax(too_high)]:g} Hz is above {limit_text}")
    for i, j in itertools.combinations(range(bins.size), 2):
        if bins[i] == bins[j]:
            raise FrequencyPlanError(f"tones {i} and {j} are both {freqs[i]:g} Hz")
    for i, j in itertools.permutations(range(bins.size), 2):
        if bins[j] % bins[i] == 0:
            raise FrequencyPlanError(
                f"tone {freqs[j]:g} Hz is {bins[j] // bins[i]} x {freqs[i]:g} Hz, "
                f"a harmonic of tone {i}"
            )
    hit = _first_collision(bins, order, n_samples)
    if hit is not None:
        tone, coefficients, raw = hit
        product = _format_product(coefficients, freqs)
        order_of_product = int(np.abs(coefficients).sum())
        where = f"tone {freqs[tone]:g} Hz lands on the order-{order_of_product} product {product}"
        if raw != bins[tone]:
            where += f" = {raw / window_s:g} Hz, which aliases onto it at {sample_rate:g} S/s"
        raise FrequencyPlanError(where)


def _window_samples(window_s: float, sample_rate: float) -> int:
    """Return the samples in one window; refuse non-positive or fractional figures."""
    if not (isinstance(window_s, numbers.Real) and math.isfinite(window_s)):
        raise FrequencyPlanError(f"window_s must be a finite number, got {window_s!r}")
    if not (isinstance(sample_rate, numbers.Real) and math.isfinite(sample_rate)):
        raise FrequencyPlanError(f"sample_rate must be a finite number, got {sample_rate!r}")
    if window_s <= 0:
        raise FrequencyPlanError(f"window_s must be > 0 s, got {window_s:g}")
    if sample_rate <= 0:
        raise FrequencyPlanError(f"sample_rate must be > 0 S/s, got {sample_rate:g}")
    exact = window_s * sample_rate
    n_samples = round(exact)
    if n_samples < 1 or abs(exact - n_samples) > _INTEGER_TOLERANCE * max(1.0, exact):
        raise FrequencyPlanError(
            f"window {window_s:g} s at {sample_rate:g} S/s is {exact:g} samples, "
            "not a whole number of samples"
        )
    return n_samples


def _check_order(order: int) -> None:
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1:
        raise FrequencyPlanError(f"order must be an integer >= 1, got {order!r}")


def _upper_limit(sample_rate: float, band_hz: float | None) -> tuple[float, str, str]:
    """Return the highest usable tone frequency, a noun phrase for it and a clause stating it."""
    nyquist_limit = NYQUIST_MARGIN * sample_rate
    detail = f"{NYQUIST_MARGIN:g}*fs = {nyquist_limit:g} Hz (Nyquist {sample_rate / 2:g} Hz)"
    if band_hz is not None:
        if not math.isfinite(band_hz) or band_hz <= 0:
            raise FrequencyPlanError(f"band_hz must be > 0 Hz, got {band_hz!r}")
        if band_hz < nyquist_limit:
            return (
                float(band_hz),
                f"the band edge {band_hz:g} Hz",
                f"the band ends at {band_hz:g} Hz",
            )
    return nyquist_limit, f"the usable limit {detail}", f"tones must stay below {detail}"


def _first_collision(
    bins: np.ndarray, order: int, n_samples: int | None
) -> tuple[int, np.ndarray, int] | None:
    """First (tone index, coefficients, unfolded product bin) that lands on a tone."""
    if order < 2 or bins.size < 1:
        return None
    matrix = product_matrix(bins.size, order)
    raw = np.abs(matrix @ bins)
    folded = fold(raw, n_samples)
    hits = folded[:, None] == bins[None, :]
    if not hits.any():
        return None
    # Report the lowest-order product, on the highest tone (a sum reads better than a difference).
    pairs = np.argwhere(hits)
    orders = np.abs(matrix[pairs[:, 0]]).sum(axis=1)
    row, tone = pairs[np.lexsort((-bins[pairs[:, 1]], orders))[0]]
    return int(tone), matrix[row], int(raw[row])


def _greedy_bins(
    n_tones: int,
    order: int,
    first_bin: int,
    spacing: int,
    top_bin: int | None,
    n_samples: int | None,
) -> list[int] | None:
    """Lowest-first greedy choice of collision-free bins; None if ``top_bin`` is reached."""
    chosen: list[int] = []
    candidate = first_bin
    while len(chosen) < n_tones:
        if top_bin is not None and candidate > top_bin:
            return None
        if all(candidate % b for b in chosen):
            trial = np.array([*chosen, candidate], dtype=np.int64)
            if _first_collision(trial, order, n_samples) is None:
                chosen.append(candidate)
        candidate += spacing
    return chosen


def _format_product(coefficients: np.ndarray, freqs: np.ndarray) -> str:
    """``2*70 Hz - 90 Hz`` style text for a product, written with a positive value."""
    if float(coefficients @ freqs) < 0:
        coefficients = -coefficients
    # Positive terms first: the value is positive, so the text starts without a sign.
    order = sorted(range(len(freqs)), key=lambda i: coefficients[i] < 0)
    text = ""
    for i in order:
        m = int(coefficients[i])
        if m == 0:
            continue
        if text:
            text += " - " if m < 0 else " + "
        text += f"{abs(m)}*" if abs(m) > 1 else ""
        text += f"{freqs[i]:g} Hz"
    return text
