"""Waveform synthesis: 0 V ends, linear ramps, bounded slew, whole-period windows, mask."""

import time

import numpy as np
import pytest

from dnpu_bluesky.hge import Segment, hge_segments, plan_frequencies, synthesize_waveform
from dnpu_bluesky.safety import check_waveform

FS = 10_000.0
WINDOW_S = 0.05
SETTLE_S = 0.01
RAMP_S = 0.005
CONTROLS = [0, 1, 3, 4, 6]  # inputs on electrodes 2 and 5 carry no tone


def _setup(mode: str):
    plan = plan_frequencies(len(CONTROLS), WINDOW_S, FS)
    freqs = np.zeros(7)
    freqs[CONTROLS] = plan.frequencies
    amps = np.where(freqs > 0, 0.02, 0.0)
    rng = np.random.default_rng(7)
    points = rng.uniform(-0.9, 0.9, size=(4, 7))
    segments = hge_segments(points, amps, mode)
    wf = synthesize_waveform(segments, freqs, FS, WINDOW_S, settle_s=SETTLE_S, ramp_s=RAMP_S)
    return wf, freqs, amps, points


def _sine_part(wf, seg_index):
    """Window voltages minus the segment DC, and the expected sines."""
    w = wf.windows[seg_index]
    seg = wf.segments[seg_index]
    t = np.arange(w.stop - w.start) / FS
    expected = seg.amplitudes[None, :] * np.sin(2 * np.pi * wf.frequencies[None, :] * t[:, None])
    return wf.voltages[w] - seg.dc[None, :], expected


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_stream_starts_and_ends_at_zero_with_bounded_slew(mode):
    wf, freqs, amps, _ = _setup(mode)
    assert np.all(wf.voltages[0] == 0.0)
    assert np.all(wf.voltages[-1] == 0.0)
    levels = np.vstack([np.zeros(7), [s.dc for s in wf.segments], np.zeros(7)])
    dc_slew = np.abs(np.diff(levels, axis=0)).max() / RAMP_S
    fade_s = SETTLE_S / 2
    sine_slew = (amps * (2 * np.pi * freqs + np.pi / (2 * fade_s))).max()
    bound = max(dc_slew, sine_slew)
    check_waveform(wf.voltages, FS, max_slew_v_per_s=bound)
    # The largest DC ramp really runs at |dV| / ramp_s, and nothing exceeds the bound.
    measured = np.abs(np.diff(wf.voltages, axis=0)).max() * FS
    assert dc_slew * (1 - 1e-9) <= measured <= bound * (1 + 1e-9)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_ramps_are_linear_and_mask_excludes_them(mode):
    wf, *_ = _setup(mode)
    n_window = round(WINDOW_S * FS)
    n_ramp = round(RAMP_S * FS)
    n_settle = round(SETTLE_S * FS)
    assert wf.analysis_mask.sum() == len(wf.segments) * n_window
    assert len(wf.windows) == len(wf.segments)
    expected_mask = np.zeros(wf.voltages.shape[0], dtype=bool)
    for w in wf.windows:
        assert w.stop - w.start == n_window
        expected_mask[w] = True
    assert np.array_equal(wf.analysis_mask, expected_mask)
    # Before each window: n_ramp equal steps from the previous DC, then n_settle samples.
    k = np.arange(1, n_ramp + 1)[:, None] / n_ramp
    previous_dc = np.zeros(7)
    previous_stop = 1  # sample 0 is the 0 V start
    for w, seg in zip(wf.windows, wf.segments, strict=True):
        ramp_end = w.start - n_settle - 1
        assert ramp_end - n_ramp + 1 == previous_stop
        expected = previous_dc + (seg.dc - previous_dc) * k
        assert np.allclose(wf.voltages[ramp_end - n_ramp + 1 : ramp_end + 1], expected, atol=1e-12)
        assert not wf.analysis_mask[previous_stop : w.start].any()
        previous_dc, previous_stop = seg.dc, w.stop
    final = wf.voltages[previous_stop:]
    assert final.shape[0] == n_ramp
    assert np.allclose(final, previous_dc * (1 - k), atol=1e-12)
    assert wf.duration_s == pytest.approx(wf.voltages.shape[0] / FS)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_windows_hold_whole_periods_referenced_to_window_start(mode):
    wf, freqs, *_ = _setup(mode)
    assert np.allclose(freqs * WINDOW_S, np.rint(freqs * WINDOW_S))
    for i, w in enumerate(wf.windows):
        measured, expected = _sine_part(wf, i)
        assert np.allclose(measured, expected, atol=1e-12)
        assert np.allclose(measured[0], 0.0, atol=1e-12)  # sine starts at 0 ...
        # ... and one sample past the window it would be 0 again (whole periods).
        t_end = (w.stop - w.start) / FS
        assert np.allclose(np.sin(2 * np.pi * freqs * t_end), 0.0, atol=1e-9)


def test_sines_fade_in_during_settling_without_steps():
    wf, *_ = _setup("parallel")
    n_settle = round(SETTLE_S * FS)
    w, seg = wf.windows[1], wf.segments[1]
    settle = wf.voltages[w.start - n_settle : w.start] - seg.dc
    assert np.allclose(settle[0], 0.0)  # envelope starts at 0 right after the ramp
    t = np.arange(-n_settle, 0) / FS
    full = seg.amplitudes * np.sin(2 * np.pi * wf.frequencies * t[:, None])
    # Second half of settling at full amplitude, first half smaller and rising.
    assert np.allclose(settle[n_settle // 2 :], full[n_settle // 2 :], atol=1e-12)
    ratio_ok = np.abs(settle[: n_settle // 2]) <= np.abs(full[: n_settle // 2]) + 1e-15
    assert ratio_ok.all()


def test_sequential_has_one_segment_per_case_and_tone():
    wf, _, amps, points = _setup("sequential")
    assert len(wf.segments) == points.shape[0] * len(CONTROLS)
    for k, seg in enumerate(wf.segments):
        case, tone = divmod(k, len(CONTROLS))
        assert seg.case == case
        assert np.flatnonzero(seg.amplitudes).tolist() == [CONTROLS[tone]]
        assert np.array_equal(seg.dc, points[case])
    parallel = hge_segments(points, amps, "parallel")
    assert len(parallel) == points.shape[0]
    assert all(np.array_equal(s.amplitudes, amps) for s in parallel)


def test_all_zero_amplitudes_give_plain_evaluation_segments():
    points = np.array([[0.1, -0.2, 0.3], [0.0, 0.5, -0.5]])
    for mode in ("parallel", "sequential"):
        segments = hge_segments(points, np.zeros(3), mode)
        assert [s.case for s in segments] == [0, 1]
        wf = synthesize_waveform(segments, np.zeros(3), 1000.0, 0.1)
        for w, seg in zip(wf.windows, segments, strict=True):
            assert np.allclose(wf.voltages[w], seg.dc)


def test_arrays_are_read_only():
    wf, *_ = _setup("parallel")
    with pytest.raises(ValueError, match="read-only"):
        wf.voltages[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        wf.segments[0].dc[0] = 1.0


@pytest.mark.parametrize(
    ("points", "amps", "mode", "pattern"),
    [
        (np.zeros(7), np.zeros(7), "parallel", r"shape \(n_cases, n_electrodes\)"),
        (np.zeros((2, 7)), np.zeros(6), "parallel", r"amplitudes must have shape \(7,\)"),
        (np.zeros((2, 3)), np.array([0.01, -0.01, 0.0]), "parallel", r">= 0 V"),
        (np.full((2, 3), np.nan), np.zeros(3), "parallel", r"finite"),
        (np.zeros((2, 3)), np.zeros(3), "both", r"mode must be one of"),
    ],
)
def test_hge_segments_validates(points, amps, mode, pattern):
    with pytest.raises(ValueError, match=pattern):
        hge_segments(points, amps, mode)


def test_synthesize_validates():
    seg = Segment(dc=np.zeros(2), amplitudes=np.array([0.01, 0.01]), case=0)
    good = np.array([50.0, 70.0])
    with pytest.raises(
        ValueError, match=r"electrode 1: 75 Hz makes 7\.5 periods .* not a whole number"
    ):
        synthesize_waveform([seg], np.array([50.0, 75.0]), 1000.0, 0.1)
    with pytest.raises(ValueError, match="segment 0 perturbs electrode 1, which has no freq"):
        synthesize_waveform([seg], np.array([50.0, 0.0]), 1000.0, 0.1)
    with pytest.raises(ValueError, match="whole number of samples"):
        synthesize_waveform([seg], good, 1000.0, 0.1005)
    with pytest.raises(ValueError, match="ramp_s must be > 0"):
        synthesize_waveform([seg], good, 1000.0, 0.1, ramp_s=0.0)
    with pytest.raises(ValueError, match="below Nyquist"):
        synthesize_waveform([seg], np.array([50.0, 500.0]), 1000.0, 0.1)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        synthesize_waveform([seg], np.zeros(3), 1000.0, 0.1)
    with pytest.raises(ValueError, match="non-empty"):
        synthesize_waveform([], good, 1000.0, 0.1)


def test_one_second_of_seven_electrodes_builds_in_milliseconds():
    freqs = np.zeros(7)
    freqs[CONTROLS] = plan_frequencies(5, 1.0, FS).frequencies
    segments = hge_segments(np.full((1, 7), 0.3), np.where(freqs > 0, 0.02, 0.0))
    best = np.inf
    for _ in range(5):
        start = time.perf_counter()
        synthesize_waveform(segments, freqs, FS, 1.0)
        best = min(best, time.perf_counter() - start)
    # Measured about 2.5 ms on a 2-core machine; the bound leaves room for a busy runner.
    assert best < 0.05
