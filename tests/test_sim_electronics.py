"""The simulated readout: amplifier response, noise spectrum, ADC, capacitance, drift."""

import json
import math

import numpy as np
import pytest
from scipy import signal

from dnpu_bluesky.sim import Electronics

FS = 10_000.0
QUIET = {"white_psd_na2_per_hz": 0.0, "flicker_corner_hz": 0.0}


def _phasor(x: np.ndarray, f: float, fs: float) -> complex:
    """Complex amplitude of the tone at f (whole periods assumed)."""
    t = np.arange(x.size) / fs
    return complex(2.0 * np.mean(x * np.exp(-2j * np.pi * f * t)))


def _record(el: Electronics, current: np.ndarray, volts=None, seed=0, **kw) -> np.ndarray:
    if volts is None:
        volts = np.zeros((current.size, len(el.capacitance_pf)))
    return el.output_volts(current, volts, FS, np.random.default_rng(seed), **kw)


def test_defaults_do_not_clip_realistic_currents():
    el = Electronics()
    assert el.gain_v_per_na * 300.0 < el.adc_range_v
    out = _record(Electronics(**QUIET), np.full(2000, 300.0))
    assert abs(out[-1]) == pytest.approx(el.gain_v_per_na * 300.0, abs=el.adc_step_v)


@pytest.mark.parametrize("f", [200.0, 520.0, 920.0])
@pytest.mark.parametrize("inverting", [True, False])
def test_tone_phase_lag_and_magnitude_follow_first_order_response(f, inverting):
    el = Electronics(inverting=inverting, adc_bits=24, **QUIET)
    t = np.arange(int(FS)) / FS
    out = _record(el, 10.0 * np.sin(2 * np.pi * f * t))
    # Reference: the phasor of the input sine itself (sin -> -j).
    ratio = _phasor(out, f, FS) / _phasor(np.sin(2 * np.pi * f * t), f, FS) / 10.0
    lag = math.atan(f / el.bandwidth_hz)
    expected_phase = -lag + (math.pi if inverting else 0.0)
    phase_error = np.angle(ratio * np.exp(-1j * expected_phase), deg=True)
    assert abs(phase_error) < 1.0
    assert abs(ratio) == pytest.approx(el.gain_v_per_na * math.cos(lag), rel=0.01)
    # transfer() is the exact response of what is simulated.
    exact = el.transfer(f, FS)[0]
    assert abs(ratio / exact - 1) < 2e-3


def test_noise_psd_matches_welch_estimate():
    # Over seeds, the 2-10 Hz band ratio scatters by about 6 %, the others by less.
    el = Electronics(adc_bits=24)
    n = int(40 * FS)
    out = _record(el, np.zeros(n), seed=0)
    f, pxx = signal.welch(out, fs=FS, nperseg=8192)
    current_psd = pxx[1:] / np.abs(el.transfer(f[1:], FS)) ** 2
    model_psd = el.noise_psd(f[1:])
    for lo, hi in [(2, 10), (10, 40), (40, 160), (160, 800), (800, 3000)]:
        band = (f[1:] >= lo) & (f[1:] < hi)
        ratio = current_psd[band].mean() / model_psd[band].mean()
        print(f"PSD {lo}-{hi} Hz: measured / model = {ratio:.3f}")
        assert ratio == pytest.approx(1.0, abs=0.2), (lo, hi, ratio)


def test_noise_psd_shape():
    el = Electronics(white_psd_na2_per_hz=2e-5, flicker_corner_hz=50.0)
    assert el.noise_psd(5000.0) == pytest.approx(2e-5 * (1 + 50 / 5000), rel=1e-6)
    assert el.noise_psd(50.0) == pytest.approx(4e-5, rel=1e-3)
    assert el.noise_psd(5.0) == pytest.approx(2e-5 * 11, rel=1e-3)
    white_only = Electronics(white_psd_na2_per_hz=2e-5, flicker_corner_hz=0.0)
    assert np.allclose(white_only.noise_psd([1.0, 1000.0]), 2e-5)


def test_quantisation_step_and_exact_codes():
    el = Electronics(**QUIET)
    assert el.adc_step_v == pytest.approx(20.0 / 2**16)
    levels = np.repeat([12.3456, -47.891, 0.004], 1000)
    out = _record(el, levels)
    codes = out / el.adc_step_v
    assert np.allclose(codes, np.rint(codes), atol=1e-9)
    # After settling, each plateau sits on the code nearest to the ideal voltage.
    for k, level in enumerate([12.3456, -47.891, 0.004]):
        ideal = -el.gain_v_per_na * level
        assert out[1000 * k + 999] == pytest.approx(
            np.rint(ideal / el.adc_step_v) * el.adc_step_v, abs=1e-12
        )
    coarse = Electronics(adc_bits=8, **QUIET)
    assert np.unique(_record(coarse, np.linspace(-50, 50, 4000))).size <= 2**8


def test_clipping_at_adc_range():
    el = Electronics(**QUIET)
    out = _record(el, np.concatenate([np.full(500, 2000.0), np.full(500, -2000.0)]))
    assert out[400] == -el.adc_range_v
    assert out[900] == pytest.approx(el.adc_range_v - el.adc_step_v)
    assert np.all(np.abs(out) <= el.adc_range_v)


def test_capacitive_current_leads_voltage_by_90_degrees():
    cap = (0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0)
    el = Electronics(inverting=False, adc_bits=24, capacitance_pf=cap, **QUIET)
    f, amp = 200.0, 0.1
    t = np.arange(int(FS)) / FS
    volts = np.zeros((t.size, 7))
    volts[:, 2] = amp * np.sin(2 * np.pi * f * t)
    out = _record(el, np.zeros(t.size), volts)
    ratio = _phasor(out, f, FS) / _phasor(volts[:, 2], f, FS)
    # I = C dV/dt: 10 pF * 2 pi f * 1 V = 12.57 pA/V = 0.01257 nA/V, at +90 deg.
    expected = 1j * 2 * np.pi * f * 10.0 * 1e-3 * el.transfer(f, FS)[0]
    assert abs(ratio / expected - 1) < 0.01


def test_ramp_through_capacitance_gives_constant_current():
    cap = (0.0, 50.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    el = Electronics(inverting=False, adc_bits=24, capacitance_pf=cap, **QUIET)
    volts = np.zeros((2000, 7))
    volts[:, 1] = np.arange(2000) / FS * 20.0  # 20 V/s
    out = _record(el, np.zeros(2000), volts)
    # 50 pF * 20 V/s = 1000 pA = 1 nA
    assert np.median(out[100:-100]) == pytest.approx(el.gain_v_per_na * 1.0, rel=1e-3)


def test_drift_is_linear_in_device_time():
    el = Electronics(inverting=False, adc_bits=24, drift_na_per_s=0.5, **QUIET)
    out = _record(el, np.zeros(int(FS)), t0_s=100.0)
    t = np.arange(out.size) / FS
    slope, offset = np.polyfit(t[100:], out[100:] / el.gain_v_per_na, 1)
    assert slope == pytest.approx(0.5, rel=1e-3)
    assert offset == pytest.approx(50.0, rel=1e-3)


def test_seeds_reproducible_and_distinct():
    el = Electronics()
    current = np.linspace(0, 50, 3000)
    a = _record(el, current, seed=7)
    b = _record(el, current, seed=7)
    c = _record(el, current, seed=8)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_state_carries_slow_noise_across_calls():
    el = Electronics(white_psd_na2_per_hz=1e-5, flicker_corner_hz=100.0)
    rng = np.random.default_rng(0)
    zeros_i, zeros_v = np.zeros(200), np.zeros((200, 7))

    def pair_means(shared: bool) -> np.ndarray:
        state = {} if shared else None
        first = el.output_volts(zeros_i, zeros_v, FS, rng, state=state).mean()
        second = el.output_volts(zeros_i, zeros_v, FS, rng, state=state).mean()
        return np.array([first, second])

    shared = np.array([pair_means(True) for _ in range(150)])
    fresh = np.array([pair_means(False) for _ in range(150)])
    assert np.corrcoef(shared.T)[0, 1] > 0.6
    assert abs(np.corrcoef(fresh.T)[0, 1]) < 0.3


def test_to_dict_round_trip_and_validation():
    el = Electronics(capacitance_pf=[0.1] * 7, drift_na_per_s=0.01)
    d = json.loads(json.dumps(el.to_dict()))
    assert Electronics(**d) == el
    with pytest.raises(ValueError, match="gain"):
        Electronics(gain_v_per_na=0.0)
    with pytest.raises(ValueError, match="capacitance"):
        el.output_volts(np.zeros(10), np.zeros((10, 3)), FS, np.random.default_rng())
