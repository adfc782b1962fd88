"""Frequency planner: grid, limits, collision freedom (checked by brute force) and errors."""

import json

import numpy as np
import pytest

from dnpu_bluesky.hge import FrequencyPlan, FrequencyPlanError, check_frequencies, plan_frequencies


def _brute_force_collisions(bins: np.ndarray, order: int, n_samples: int) -> list[str]:
    """Every integer vector m with 2 <= sum|m| <= order, independent of the package's code."""
    n = bins.size
    axes = np.meshgrid(*[np.arange(-order, order + 1)] * n, indexing="ij")
    m = np.stack([a.ravel() for a in axes], axis=1)
    m = m[(np.abs(m).sum(axis=1) >= 2) & (np.abs(m).sum(axis=1) <= order)]
    products = np.abs(m @ bins) % n_samples
    folded = np.minimum(products, n_samples - products)
    found = [f"{row.tolist()} -> {p}" for row, p in zip(m, folded, strict=True) if p in bins]
    for i in range(n):
        for j in range(n):
            if i != j and bins[j] % bins[i] == 0:
                found.append(f"harmonic {bins[j]} of {bins[i]}")
    return found


@pytest.mark.parametrize(
    ("n_tones", "window_s", "sample_rate", "band_hz", "order", "spacing"),
    [
        (5, 0.1, 10_000, None, 3, 1),
        (5, 0.1, 10_000, 2_000, 3, 4),
        (7, 0.1, 10_000, None, 3, 1),
        (4, 0.05, 2_000, 800, 2, 2),
        (3, 0.2, 2_000, None, 5, 1),
        # Short window, low rate: products reach past Nyquist and must be folded.
        (3, 0.1, 800, None, 3, 1),
    ],
)
def test_plan_is_on_grid_within_limits_and_collision_free(
    n_tones, window_s, sample_rate, band_hz, order, spacing
):
    # At low rates start near 0.3*fs so some products reach past Nyquist and fold.
    low = 0.3 * sample_rate if sample_rate <= 1000 else None
    plan = plan_frequencies(
        n_tones,
        window_s,
        sample_rate,
        band_hz=band_hz,
        order=order,
        spacing_bins=spacing,
        min_frequency_hz=low,
    )
    freqs = np.array(plan.frequencies)
    bins = np.array(plan.bins)
    assert freqs.size == n_tones
    assert np.allclose(freqs * window_s, bins, atol=1e-9)
    assert np.all(np.diff(freqs) > 0)
    assert np.all(np.diff(bins) % spacing == 0)
    assert freqs.max() <= 0.4 * sample_rate + 1e-9
    if band_hz is not None:
        assert freqs.max() <= band_hz + 1e-9
    # Default lowest tone: max(5 bins, 20 Hz), and the greedy search starts there.
    if sample_rate > 1000:
        assert freqs[0] == pytest.approx(max(5 / window_s, 20.0))
    n_samples = round(window_s * sample_rate)
    assert _brute_force_collisions(bins, order, n_samples) == []


def test_greedy_is_dense_for_one_bin_spacing():
    plan = plan_frequencies(5, 0.1, 10_000)
    # Known lowest-first result for order 3 (5, 6 adjacent; 7 = 2*6 - 5 is skipped).
    assert plan.bins == (5, 6, 8, 23, 27)
    assert plan.frequencies == pytest.approx((50.0, 60.0, 80.0, 230.0, 270.0))


def test_min_frequency_and_spacing_are_honoured():
    plan = plan_frequencies(3, 0.1, 10_000, min_frequency_hz=200.0, spacing_bins=4)
    assert plan.frequencies[0] == pytest.approx(200.0)
    assert all((b - 20) % 4 == 0 for b in plan.bins)


def test_plan_round_trips_through_json():
    plan = plan_frequencies(5, 0.1, 10_000, spacing_bins=4)
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["bins"] == list(plan.bins)
    rebuilt = FrequencyPlan(
        frequencies=tuple(d["frequencies"]),
        window_s=d["window_s"],
        sample_rate=d["sample_rate"],
        order=d["order"],
    )
    assert rebuilt == plan


def test_plan_refuses_colliding_frequencies_on_construction():
    with pytest.raises(FrequencyPlanError, match="harmonic"):
        FrequencyPlan(frequencies=(50.0, 100.0), window_s=0.1, sample_rate=1000.0, order=3)
    with pytest.raises(FrequencyPlanError, match="ascending"):
        FrequencyPlan(frequencies=(70.0, 50.0), window_s=0.1, sample_rate=1000.0, order=3)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(n_tones=0, window_s=0.1, sample_rate=1000), r"n_tones must be an integer >= 1"),
        (dict(n_tones=3, window_s=0.0, sample_rate=1000), r"window_s must be > 0 s"),
        (dict(n_tones=3, window_s=0.1, sample_rate=-5), r"sample_rate must be > 0"),
        (
            dict(n_tones=3, window_s=0.1005, sample_rate=1000),
            r"100\.5 samples, not a whole number of samples",
        ),
        (
            dict(n_tones=3, window_s=0.001, sample_rate=1000),
            r"window 0\.001 s gives a 1000 Hz grid, above the usable limit 0\.4\*fs = 400 Hz "
            r"\(Nyquist 500 Hz\)",
        ),
        (
            dict(n_tones=7, window_s=0.1, sample_rate=10_000, band_hz=500),
            r"7 tones at order 3 need bins up to 83 \(830 Hz\) but the band ends at 500 Hz: "
            r"widen the band, lengthen the window \(now 0\.1 s\) or lower the order",
        ),
        (
            dict(n_tones=7, window_s=0.1, sample_rate=1000),
            r"need bins up to 83 \(830 Hz\) but tones must stay below 0\.4\*fs = 400 Hz.*"
            r"raise the sample rate",
        ),
        (
            dict(n_tones=2, window_s=0.1, sample_rate=1000, min_frequency_hz=450),
            r"lowest tone 450 Hz .* is above the usable limit",
        ),
        (dict(n_tones=2, window_s=0.1, sample_rate=1000, order=0), r"order must be"),
        (dict(n_tones=2, window_s=0.1, sample_rate=1000, spacing_bins=0), r"spacing_bins"),
        (dict(n_tones=2, window_s=0.1, sample_rate=1000, band_hz=-1.0), r"band_hz must be > 0"),
    ],
)
def test_impossible_requests_name_the_constraint(kwargs, pattern):
    with pytest.raises(FrequencyPlanError, match=pattern):
        plan_frequencies(**kwargs)


def test_folded_products_are_caught():
    # Unfolded, 3 tones from 180 Hz need bins up to 23 (< 0.4*fs = 240 Hz), but at 600 S/s
    # their products fold back onto them (e.g. 2*200 Hz = 400 Hz appears at 200 Hz).
    with pytest.raises(FrequencyPlanError, match=r"fit below .* only if aliased IM products"):
        plan_frequencies(3, 0.1, 600, min_frequency_hz=180)
    with pytest.raises(FrequencyPlanError, match=r"2\*200 Hz = 400 Hz, which aliases onto it"):
        check_frequencies([200], 0.1, 600)


@pytest.mark.parametrize(
    ("freqs", "pattern"),
    [
        ([50, 100], r"tone 100 Hz is 2 x 50 Hz, a harmonic of tone 0"),
        ([50, 250, 70], r"tone 250 Hz is 5 x 50 Hz, a harmonic"),
        ([20, 30, 50], r"tone 50 Hz lands on the order-2 product 20 Hz \+ 30 Hz"),
        ([50, 70, 90], r"tone 90 Hz lands on the order-3 product 2\*70 Hz - 50 Hz"),
        ([300, 400], r"tone 400 Hz lands on the order-2 product 2\*300 Hz = 600 Hz, which aliases"),
        ([55.5, 70], r"tone 55\.5 Hz is off the 10 Hz grid"),
        ([50, 70, 70], r"tones 1 and 2 are both 70 Hz"),
        ([50, 450], r"tone 450 Hz is above the usable limit"),
        ([-50, 70], r"finite and >= 0"),
        ([0, 0], r"no tones"),
    ],
)
def test_check_frequencies_names_the_offence(freqs, pattern):
    with pytest.raises(FrequencyPlanError, match=pattern):
        check_frequencies(freqs, 0.1, 1000)


def test_check_frequencies_band_and_order():
    with pytest.raises(FrequencyPlanError, match=r"above the band edge 200 Hz"):
        check_frequencies([50, 230], 0.1, 1000, band_hz=200)
    # 50 = 2*70 - 90 is third order: allowed at order 2, refused at order 3.
    check_frequencies([50, 70, 90], 0.1, 1000, order=2)
    with pytest.raises(FrequencyPlanError, match="order-3"):
        check_frequencies([50, 70, 90], 0.1, 1000, order=3)


def test_check_frequencies_accepts_plans_and_per_electrode_arrays():
    plan = plan_frequencies(5, 0.1, 10_000)
    per_electrode = np.zeros(7)
    per_electrode[[0, 2, 3, 4, 6]] = plan.frequencies
    check_frequencies(per_electrode, 0.1, 10_000)
    check_frequencies(plan.frequencies, 0.1, 10_000, band_hz=300.0)
