"""End-to-end HGE on an analytic device: gradients, calibration and the two estimators."""

import json

import numpy as np
import pytest
import scipy.signal

from dnpu_bluesky.hge import (
    LockInResult,
    PhaseCalibration,
    Segment,
    demodulate,
    estimate_gradients,
    hge_segments,
    plan_frequencies,
    synthesize_waveform,
)

FS = 10_000.0
WINDOW_S = 0.1
AMPLITUDE = 0.02
NOISE_PSD = 1e-5  # nA^2/Hz, the paper's white level
SIGMA = np.sqrt(NOISE_PSD * FS / 2)  # per-sample standard deviation of that noise
W = np.array([0.9, -0.6, 0.4, -1.1, 0.7, 0.5, -0.8])


def current(v):
    """I = 50 tanh(v . w) + 20 sin(v0 v1) in nA."""
    return 50 * np.tanh(v @ W) + 20 * np.sin(v[..., 0] * v[..., 1])


def jacobian(v):
    g = 50 * (1 - np.tanh(v @ W) ** 2)[:, None] * W[None, :]
    g[:, 0] += 20 * np.cos(v[:, 0] * v[:, 1]) * v[:, 1]
    g[:, 1] += 20 * np.cos(v[:, 0] * v[:, 1]) * v[:, 0]
    return g


def _measure(mode, rng, *, points=None, lowpass_hz=None):
    plan = plan_frequencies(7, WINDOW_S, FS)
    freqs = np.array(plan.frequencies)
    if points is None:
        points = rng.uniform(-0.8, 0.8, size=(6, 7))
    wf = synthesize_waveform(hge_segments(points, np.full(7, AMPLITUDE), mode), freqs, FS, WINDOW_S)
    signal = current(wf.voltages)
    if lowpass_hz is not None:
        b, a = scipy.signal.butter(1, lowpass_hz, fs=FS)
        signal = scipy.signal.lfilter(b, a, signal)
    # White noise at the digitiser keeps the reported stderr exact (see docs/hge.md for
    # coloured noise).
    signal = signal + rng.normal(0.0, SIGMA, signal.size)
    lockin = demodulate(signal, freqs, FS, windows=wf.windows)
    return wf, lockin, points


def _z(estimate, points):
    return (estimate.gradient - jacobian(points)) / estimate.stderr


def _slopes(estimate, points):
    """Per-tone least-squares scale of the estimate against the Jacobian, and its stderr."""
    j = jacobian(points)
    norm = np.sum(j**2, axis=0)
    return np.sum(estimate.gradient * j, axis=0) / norm, np.sqrt(
        np.sum((j * estimate.stderr) ** 2, axis=0)
    ) / norm


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_gradient_matches_analytic_jacobian(mode):
    wf, lockin, points = _measure(mode, np.random.default_rng(2))
    est = estimate_gradients(lockin, wf)
    assert est.gradient.shape == est.stderr.shape == (6, 7)
    z = _z(est, points)
    assert np.abs(z).max() < 4.5
    assert 0.5 < np.mean(z**2) < 1.6  # the stderr is the real spread, not a loose bound
    # stderr at the Cramer-Rao level sqrt(S / T) / a for white noise
    assert np.median(est.stderr) == pytest.approx(np.sqrt(NOISE_PSD / WINDOW_S) / AMPLITUDE, 0.1)
    # DC per case: the mean over the window, shifted only by the tones' curvature.
    assert np.allclose(est.current, current(points), atol=0.05)


def test_parallel_and_sequential_agree():
    rng = np.random.default_rng(4)
    points = rng.uniform(-0.8, 0.8, size=(6, 7))
    wf_p, lockin_p, _ = _measure("parallel", rng, points=points)
    wf_s, lockin_s, _ = _measure("sequential", rng, points=points)
    par = estimate_gradients(lockin_p, wf_p)
    seq = estimate_gradients(lockin_s, wf_s)
    diff = (par.gradient - seq.gradient) / np.hypot(par.stderr, seq.stderr)
    assert np.abs(diff).max() < 4.5
    assert wf_s.duration_s > 6 * wf_p.duration_s  # what parallel mode saves


def test_lowpass_biases_uncalibrated_estimate_and_fitted_calibration_removes_it():
    rng = np.random.default_rng(6)
    cutoff = 800.0
    wf, lockin, points = _measure("parallel", rng, lowpass_hz=cutoff)
    raw = estimate_gradients(lockin, wf)
    # Uncalibrated: each tone is read at cos^2(lag) of its size (0.48 at 830 Hz).
    assert np.abs(_z(raw, points)).max() > 20
    slope, slope_err = _slopes(raw, points)
    f = lockin.frequencies
    assert np.all(np.abs(slope - 1 / (1 + (f / cutoff) ** 2)) < 4 * slope_err + 0.01)

    calibration = PhaseCalibration.fit([lockin])
    assert calibration.cutoff_hz == pytest.approx(cutoff, rel=0.03)
    fitted = estimate_gradients(lockin, wf, calibration)
    assert np.abs(_z(fitted, points)).max() < 4.5
    slope, slope_err = _slopes(fitted, points)
    assert np.all(np.abs(slope - 1) < 4 * slope_err + 0.01)
    known = estimate_gradients(lockin, wf, PhaseCalibration.first_order(f, cutoff))
    assert np.abs(_z(known, points)).max() < 4.5


def test_calibration_fits_from_sequential_results_despite_idle_tones():
    rng = np.random.default_rng(8)
    wf, lockin, points = _measure("sequential", rng, lowpass_hz=500.0)
    calibration = PhaseCalibration.fit([lockin])
    assert calibration.cutoff_hz == pytest.approx(500.0, rel=0.03)
    assert np.abs(_z(estimate_gradients(lockin, wf, calibration), points)).max() < 4.5


def _synthetic_lockin(freqs, phasors, stderr=1e-3):
    shape = phasors.shape
    return LockInResult(
        frequencies=freqs,
        x=phasors.real,
        y=phasors.imag,
        stderr=np.full(shape, stderr),
        dc=np.zeros(shape[0]),
    )


def test_fit_resolves_sign_ambiguity_and_falls_back_when_model_fails():
    freqs = np.array([50.0, 120.0, 300.0, 700.0])
    rng = np.random.default_rng(0)
    derivatives = rng.choice([-1.0, 1.0], size=(30, 4)) * rng.uniform(0.5, 2.0, (30, 4))
    noise = 1e-3 * (rng.normal(size=(30, 4)) + 1j * rng.normal(size=(30, 4)))

    lag = -np.arctan(freqs / 400.0)
    calib = PhaseCalibration.fit(
        [_synthetic_lockin(freqs, derivatives * np.exp(1j * lag) * np.cos(lag) + noise)]
    )
    assert calib.cutoff_hz == pytest.approx(400.0, rel=0.01)
    assert np.allclose(calib.lag_rad, lag, atol=np.deg2rad(0.2))
    assert np.allclose(calib.gain, np.cos(lag), atol=0.005)

    # A pure delay (linear phase up to -100 deg) is not a single pole: per-tone axes.
    delay_lag = np.angle(np.exp(-2j * np.pi * freqs * 400e-6))
    delayed = PhaseCalibration.fit([_synthetic_lockin(freqs, derivatives * np.exp(1j * delay_lag))])
    assert delayed.cutoff_hz is None
    expected = np.where(delay_lag <= -np.pi / 2, delay_lag + np.pi, delay_lag)  # (-90, 90]
    assert np.allclose(delayed.lag_rad, expected, atol=1e-6)


def test_fit_refuses_tones_without_signal():
    freqs = np.array([50.0, 70.0])
    phasors = np.array([[1.0 + 0j, 0.0], [-1.0 + 0j, 0.0]])
    with pytest.raises(ValueError, match=r"no window carries a significant signal at \[70\.0\]"):
        PhaseCalibration.fit([_synthetic_lockin(freqs, phasors)])


def test_calibration_round_trips_through_json():
    calib = PhaseCalibration.first_order([50.0, 230.0, 830.0], 800.0)
    rebuilt = PhaseCalibration.from_dict(json.loads(json.dumps(calib.to_dict())))
    assert np.allclose(rebuilt.lag_rad, calib.lag_rad)
    assert np.allclose(rebuilt.gain, calib.gain)
    assert rebuilt.cutoff_hz == 800.0
    identity = PhaseCalibration.identity([50.0, 70.0])
    assert np.all(identity.lag_rad == 0) and np.all(identity.gain == 1)


def _linear_device_run(derivatives, n_cases, rng, capacitance=0.0):
    """Two electrodes, I = D . v (+ C dV0/dt), many cases of one operating point."""
    fs, window_s = 4000.0, 0.05
    freqs = np.array([100.0, 140.0])
    points = np.zeros((n_cases, 2))
    wf = synthesize_waveform(
        hge_segments(points, np.full(2, AMPLITUDE)), freqs, fs, window_s, settle_s=0.0025
    )
    signal = wf.voltages @ derivatives
    signal = signal + capacitance * np.gradient(wf.voltages[:, 0]) * fs
    signal = signal + rng.normal(0.0, 0.05, signal.size)
    return wf, demodulate(signal, freqs, fs, windows=wf.windows)


def test_projection_does_not_rectify_noise_but_sign_estimator_does():
    rng = np.random.default_rng(12)
    n = 800
    # Electrode 0 has no effect at all; electrode 1's derivative equals one stderr.
    wf, lockin = _linear_device_run(np.array([0.0, 0.0]), n, rng)
    stderr = estimate_gradients(lockin, wf).stderr.mean(axis=0)
    wf, lockin = _linear_device_run(np.array([0.0, stderr[1]]), n, rng)
    proj = estimate_gradients(lockin, wf).gradient
    sign = estimate_gradients(lockin, wf, estimator="sign").gradient
    se_mean = stderr / np.sqrt(n)

    # Zero derivative: projection averages to zero; |R| averages to sqrt(pi/2) stderr.
    assert abs(proj[:, 0].mean()) < 4 * se_mean[0]
    assert np.abs(sign[:, 0]).mean() == pytest.approx(np.sqrt(np.pi / 2) * stderr[0], rel=0.1)
    assert np.abs(sign[:, 0]).mean() > 20 * se_mean[0]
    # Derivative of one stderr: projection is unbiased, sign x R reads about 21% high.
    assert abs(proj[:, 1].mean() - stderr[1]) < 4 * se_mean[1]
    assert sign[:, 1].mean() - stderr[1] > 4 * se_mean[1]
    assert sign[:, 1].mean() / stderr[1] == pytest.approx(1.21, abs=0.1)


def test_projection_ignores_capacitive_quadrature_current():
    rng = np.random.default_rng(13)
    derivatives = np.array([40.0, -25.0])
    # C dV/dt with C omega = 30 nA/V: a 90-degree current comparable to the derivative.
    wf, lockin = _linear_device_run(derivatives, 20, rng, capacitance=30 / (2 * np.pi * 100))
    proj = estimate_gradients(lockin, wf)
    sign = estimate_gradients(lockin, wf, estimator="sign")
    z = (proj.gradient - derivatives) / proj.stderr
    assert np.abs(z).max() < 4.5
    # sign x R reads hypot(D, quadrature): biased by many stderr on the capacitive electrode.
    assert (sign.gradient[:, 0].mean() - derivatives[0]) / proj.stderr[0, 0] > 10


def test_cases_without_a_tone_give_nan_and_repeats_average():
    freqs = np.array([50.0, 70.0])
    segments = [
        Segment(dc=np.array([0.1, 0.2]), amplitudes=np.array([0.02, 0.02]), case=0),
        Segment(dc=np.array([0.3, 0.4]), amplitudes=np.zeros(2), case=1),
        Segment(dc=np.array([0.1, 0.2]), amplitudes=np.array([0.02, 0.0]), case=0),
    ]
    wf = synthesize_waveform(segments, freqs, 2000.0, 0.1)
    signal = wf.voltages @ np.array([10.0, -5.0]) + 1.0
    lockin = demodulate(signal, freqs, 2000.0, windows=wf.windows)
    est = estimate_gradients(lockin, wf)
    assert np.allclose(est.gradient[0], [10.0, -5.0])
    assert np.isnan(est.gradient[1]).all()
    assert np.allclose(est.current, [1.0 + 0.1 * 10 - 0.2 * 5, 1.0 + 0.3 * 10 - 0.4 * 5])
    # Segments alone (as rebuilt from event documents) give the same answer.
    from_segments = estimate_gradients(lockin, segments)
    assert np.array_equal(from_segments.gradient, est.gradient, equal_nan=True)
    with pytest.raises(ValueError, match="perturb 1 electrodes"):
        estimate_gradients(lockin, segments[2:3] * 3)


def test_estimate_gradients_validates():
    rng = np.random.default_rng(1)
    wf, lockin, _ = _measure("parallel", rng)
    with pytest.raises(ValueError, match="estimator must be one of"):
        estimate_gradients(lockin, wf, estimator="magnitude")
    shuffled = demodulate(np.zeros(wf.voltages.shape[0]), lockin.frequencies[::-1], FS)
    with pytest.raises(ValueError, match="do not match the waveform's tones"):
        estimate_gradients(shuffled, wf)
    with pytest.raises(ValueError, match="1 windows but the waveform has 6 segments"):
        estimate_gradients(demodulate(np.zeros(100), lockin.frequencies, FS), wf)
    wrong = PhaseCalibration.identity(lockin.frequencies[:3])
    with pytest.raises(ValueError, match="calibration frequencies"):
        estimate_gradients(lockin, wf, wrong)
