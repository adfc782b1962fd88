"""The simulated DAQ backend: protocol, safety refusals, timing, reproducibility, fidelity."""

import json
import time

import numpy as np
import pytest

from dnpu_bluesky.backend import Acquisition, DAQBackend
from dnpu_bluesky.safety import UnsafeWaveformError
from dnpu_bluesky.sim import Electronics, SimulatedBackend, VirtualDNPU

FS = 10_000.0
DC = np.array([-0.4, 0.2, -0.6, 0.1, -0.3, 0.3, -0.8])


def _stream(dc=DC, plateau_s=0.2, ramp_s=0.01, dither=None, freqs=None):
    """0 V -> linear ramp -> plateau (optionally dithered) -> ramp -> 0 V."""
    n_ramp, n_plat = int(ramp_s * FS), int(plateau_s * FS)
    up = np.linspace(0, 1, n_ramp)[:, None] * dc
    plateau = np.repeat(dc[None], n_plat, axis=0)
    if dither is not None:
        t = np.arange(n_plat) / FS
        plateau = plateau + dither * np.sin(2 * np.pi * np.outer(t, freqs))
    down = np.linspace(1, 0, n_ramp)[:, None] * dc
    return np.concatenate([up, plateau, down]), n_ramp, n_plat


def test_implements_backend_protocol():
    daq = SimulatedBackend()
    assert isinstance(daq, DAQBackend)
    assert daq.name == "sim" and daq.n_channels == 7
    stream, _, _ = _stream()
    acq = daq.play_and_record(stream, FS)
    assert isinstance(acq, Acquisition)
    assert acq.ai_volts.shape == (stream.shape[0],)
    np.testing.assert_array_equal(daq.dc_volts, np.zeros(7))


def test_refuses_unsafe_streams_and_plays_nothing():
    daq = SimulatedBackend()
    stream, _, _ = _stream()
    not_zero_start = stream.copy()
    not_zero_start[0, 2] = 0.1
    with pytest.raises(UnsafeWaveformError, match="start at 0 V"):
        daq.play_and_record(not_zero_start, FS)
    not_zero_end = stream.copy()
    not_zero_end[-1, 0] = -0.05
    with pytest.raises(UnsafeWaveformError, match="end at 0 V"):
        daq.play_and_record(not_zero_end, FS)
    too_high, _, _ = _stream(dc=np.array([0, 0, 0, 0.5, 0, 0, 0]))  # electrode 3 max 0.3 V
    with pytest.raises(UnsafeWaveformError, match="electrode 3"):
        daq.play_and_record(too_high, FS)
    with pytest.raises(UnsafeWaveformError, match="shape"):
        daq.play_and_record(stream[:, :5], FS)
    assert daq.device_time_s == 0.0


def test_device_seconds_include_overhead():
    daq = SimulatedBackend(overhead_s=0.05)
    stream, _, _ = _stream()
    acq = daq.play_and_record(stream, FS)
    assert acq.device_seconds == pytest.approx(stream.shape[0] / FS + 0.05)
    daq.play_and_record(stream, FS)
    assert daq.device_time_s == pytest.approx(2 * acq.device_seconds)


def test_realtime_acquisitions_take_their_device_seconds():
    stream, _, _ = _stream(plateau_s=0.3)
    paced, free = SimulatedBackend(realtime=True), SimulatedBackend()
    timings = []
    for daq in (paced, free):
        started = time.monotonic()
        acq = daq.play_and_record(stream, FS)
        timings.append(time.monotonic() - started)
    assert timings[0] >= acq.device_seconds > timings[1]
    assert paced.describe()["realtime"] and not free.describe()["realtime"]


def test_noise_stream_reproducible_and_continuing():
    stream, _, _ = _stream()
    a, b = SimulatedBackend(seed=4), SimulatedBackend(seed=4)
    first_a, second_a = (a.play_and_record(stream, FS).ai_volts for _ in range(2))
    first_b, second_b = (b.play_and_record(stream, FS).ai_volts for _ in range(2))
    np.testing.assert_array_equal(first_a, first_b)
    np.testing.assert_array_equal(second_a, second_b)
    assert not np.array_equal(first_a, second_a)  # the noise moved on
    other = SimulatedBackend(seed=5).play_and_record(stream, FS).ai_volts
    assert not np.array_equal(first_a, other)


def test_recorded_plateau_is_the_model_current():
    quiet = Electronics(white_psd_na2_per_hz=0.0, flicker_corner_hz=0.0)
    daq = SimulatedBackend(electronics=quiet)
    stream, n_ramp, n_plat = _stream()
    acq = daq.play_and_record(stream, FS)
    plateau = acq.ai_volts[n_ramp + 100 : n_ramp + n_plat]
    expected = -quiet.gain_v_per_na * daq.model.current(DC)
    np.testing.assert_allclose(plateau, expected, atol=quiet.adc_step_v)


def test_lock_in_on_dithered_stream_recovers_the_jacobian():
    """End to end: dither every electrode, demodulate, calibrate, compare with the model."""
    daq = SimulatedBackend(seed=11)
    freqs = np.array([200.0, 280.0, 360.0, 440.0, 520.0, 600.0, 760.0])  # 40 Hz grid, 0.5 s
    amp = 0.02
    stream, n_ramp, n_plat = _stream(plateau_s=0.5, dither=amp, freqs=freqs)
    ai = daq.play_and_record(stream, FS).ai_volts[n_ramp : n_ramp + n_plat]
    t = np.arange(n_plat) / FS
    estimate = np.empty(7)
    for j, f in enumerate(freqs):
        phasor = 2 * np.mean((ai - ai.mean()) * np.exp(-2j * np.pi * f * t))
        # A dither sin() has phasor -j; project on the calibrated amplifier response.
        estimate[j] = (phasor / (-1j * amp * daq.electronics.transfer(f, FS)[0])).real
    exact = daq.model.jacobian(DC)
    # Cramer-Rao: sqrt(S / (a^2 T)) ~ 0.3 nA/V here; curvature under the dither adds ~1 %.
    np.testing.assert_allclose(estimate, exact, rtol=0.02, atol=1.5)


def test_set_dc_and_close():
    daq = SimulatedBackend()
    daq.set_dc(DC)
    np.testing.assert_array_equal(daq.dc_volts, DC)
    with pytest.raises(UnsafeWaveformError, match="electrode 4"):
        daq.set_dc(np.array([0, 0, 0, 0, 0.9, 0, 0]))
    daq.close()
    daq.close()
    np.testing.assert_array_equal(daq.dc_volts, np.zeros(7))
    stream, _, _ = _stream()
    with pytest.raises(RuntimeError, match="closed"):
        daq.play_and_record(stream, FS)


def test_describe_is_json_and_names_everything():
    daq = SimulatedBackend(VirtualDNPU(3), Electronics(drift_na_per_s=0.1), seed=9, overhead_s=0.01)
    d = json.loads(json.dumps(daq.describe()))
    assert d["seed"] == 9 and d["overhead_s"] == 0.01
    assert d["model"]["seed"] == 3 and d["model"]["parameter_hash"]
    assert Electronics(**d["electronics"]) == daq.electronics


def test_mismatched_electronics_rejected():
    with pytest.raises(ValueError, match="capacitances"):
        SimulatedBackend(electronics=Electronics(capacitance_pf=(0.1, 0.2)))


def test_adc_clipping_is_flagged_sample_by_sample():
    quiet = Electronics(white_psd_na2_per_hz=0.0, flicker_corner_hz=0.0)
    plateau_v = quiet.gain_v_per_na * abs(VirtualDNPU().current(DC))
    narrow = Electronics(white_psd_na2_per_hz=0.0, flicker_corner_hz=0.0, adc_range_v=plateau_v / 2)
    stream, n_ramp, n_plat = _stream()
    acq = SimulatedBackend(electronics=narrow).play_and_record(stream, FS)
    plateau = slice(n_ramp + 100, n_ramp + n_plat)
    assert acq.clipped[plateau].all() and not acq.clipped[: n_ramp // 4].any()
    np.testing.assert_allclose(np.abs(acq.ai_volts[plateau]), plateau_v / 2, rtol=1e-3)
    assert not SimulatedBackend(electronics=quiet).play_and_record(stream, FS).clipped.any()


def test_a_profiles_simulated_daq_checks_slew_and_limits_as_the_hardware_does():
    from dnpu_bluesky.config import default_sim_profile
    from dnpu_bluesky.devices.build import make_backend

    profile = default_sim_profile()
    daq = make_backend(profile)
    rate = 10_000.0
    # A 0.6 V step in one sample: 6,000 V/s against the profile's limit.
    step = np.zeros((40, 7))
    step[10:30, 0] = 0.6
    with pytest.raises(UnsafeWaveformError, match="V/s"):
        daq.play_and_record(step, rate)
    # The same voltage, ramped within the limit, plays.
    ramp = np.zeros((400, 7))
    up = np.linspace(0.0, 0.5, 100)
    ramp[:100, 0], ramp[100:300, 0], ramp[300:, 0] = up, 0.5, up[::-1]
    assert daq.play_and_record(ramp, rate).device_seconds > 0
    # The profile's limits hold too: e3 may go to +0.3 V only.
    beyond = ramp.copy()
    beyond[:, 3] = beyond[:, 0]
    with pytest.raises(UnsafeWaveformError, match="outside the limits"):
        daq.play_and_record(beyond, rate)
    daq.close()


def test_a_dnpus_timing_is_fixed_once():
    from dnpu_bluesky.devices import build_dnpu

    dnpu = build_dnpu()
    with pytest.raises(RuntimeError, match="fixed when the device is built"):
        dnpu.configure_timing(10_000.0, 1e9)
    assert dnpu.max_slew_v_per_s.get() == 200.0
    dnpu.backend.close()
