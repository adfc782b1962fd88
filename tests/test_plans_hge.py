"""HGE plans through a real RunEngine into a real Tiled server, read back from Tiled."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from bluesky import plan_stubs as bps
from bluesky.utils import RunEngineInterrupted
from ophyd.utils.errors import LimitError

from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.hge import FrequencyPlanError
from dnpu_bluesky.plans import (
    calibrate_phase,
    configure_hge,
    hge_gradient,
    iv_sweep,
    noise_spectrum,
    validate_gradients,
)
from dnpu_bluesky.storage import load_run

GATE_CASES = [[0.0, 0.0], [0.0, 0.25], [0.25, 0.0], [0.25, 0.25]]


@pytest.fixture
def dnpu():
    device = build_dnpu()
    device.e0.setpoint.put(-0.3)
    device.e1.setpoint.put(0.2)
    yield device
    device.backend.close()


def _stop_doc(documents):
    return [doc for name, doc in documents if name == "stop"][-1]


def test_hge_gradient_run_lands_in_tiled_and_matches_the_model(stored_RE, storage, dnpu):
    result = stored_RE(hge_gradient(dnpu, input_cases=GATE_CASES, md={"tags": ["unit"]}))
    estimate = result.plan_result
    (uid,) = result.run_start_uids
    run = load_run(storage.client, uid)
    assert set(run) >= {"hge_raw", "primary"}
    raw = run["hge_raw"]["dnpu_output"].read()
    assert raw.shape == (1, dnpu.last_waveform.voltages.shape[0])
    gradient = run.primary["dnpu_hge_gradient"].read()
    assert gradient.shape == (1, 4, 5)
    measured = run.primary.read()  # the usual read, dimensions named
    assert measured["dnpu_hge_gradient"].dims == ("time", "case", "tone")
    assert measured["dnpu_hge_x"].dims == ("time", "segment", "tone")
    assert measured["dnpu_hge_case_currents"].dims == ("time", "case")
    np.testing.assert_allclose(gradient[0], estimate.gradient)
    assert run.metadata["start"]["plan_name"] == "hge_gradient"
    assert run.metadata["stop"]["exit_status"] == "success"
    # The estimate agrees with the model's exact Jacobian within a few standard errors.
    points = dnpu.operating_points()
    truth = dnpu.backend.model.jacobian(points)[:, dnpu.indices("control")]
    z = (estimate.gradient - truth) / estimate.stderr
    assert np.max(np.abs(z)) < 6, z
    assert np.all(np.abs(truth) > 0)


def test_sequential_and_parallel_agree(RE, dnpu):
    parallel = RE(hge_gradient(dnpu, mode="parallel")).plan_result
    sequential = RE(hge_gradient(dnpu, mode="sequential")).plan_result
    combined = np.hypot(parallel.stderr, sequential.stderr)
    assert np.max(np.abs(parallel.gradient - sequential.gradient) / combined) < 6


def test_out_of_range_setpoint_fails_before_any_voltage(RE, dnpu):
    with pytest.raises(LimitError):
        RE(bps.mv(dnpu.e0.setpoint, 3.0))
    assert dnpu.total_device_seconds == 0.0


def test_bad_frequency_plan_fails_before_any_voltage(RE, dnpu, documents):
    with pytest.raises(FrequencyPlanError, match="band"):
        RE(configure_hge(dnpu, window_s=0.01, band_hz=150.0))
    assert dnpu.total_device_seconds == 0.0
    assert not [name for name, _ in documents if name == "start"]


def test_abort_leaves_electrodes_at_zero_and_abort_in_tiled(stored_RE, storage, dnpu, documents):
    seen = []

    def pause_on_second_raw_event(name, doc):
        if name == "event" and "dnpu_output" in doc["data"]:
            seen.append(doc)
            if len(seen) == 2:
                # As an operator's Ctrl-C would: from another thread, while the plan runs.
                threading.Thread(target=stored_RE.request_pause).start()

    stored_RE.subscribe(pause_on_second_raw_event)
    with pytest.raises(RunEngineInterrupted):
        stored_RE(hge_gradient(dnpu, repeats=5))
    stored_RE.abort(reason="operator abort in test")
    stop = _stop_doc(documents)
    assert stop["exit_status"] == "abort"
    assert np.all(dnpu.backend.dc_volts == 0)
    assert np.all(dnpu.last_waveform.voltages[-1] == 0)
    run = load_run(storage.client, stop["run_start"])
    assert run.metadata["stop"]["exit_status"] == "abort"


def test_callback_failure_surfaces_as_error(RE, dnpu):
    dnpu.phase_lag_rad.put([0.0] * 3)  # wrong length: the calibration cannot be applied
    with pytest.raises(Exception, match="lock-in settings"):
        RE(hge_gradient(dnpu))
    assert np.all(dnpu.backend.dc_volts == 0)


def test_validate_gradients_against_fd_and_truth(stored_RE, storage, dnpu):
    result = stored_RE(validate_gradients(dnpu, n_points=3, compare_sequential=True))
    summary = result.plan_result
    assert summary["cosine_hge_true_median"] > 0.99
    assert summary["cosine_hge_fd_median"] > 0.95
    run = load_run(storage.client, result.run_start_uids[0])
    validation = run["validation"]
    assert validation["dnpu_validation_hge"].read().shape == (3, 5)
    assert validation["dnpu_validation_true_gradient"].read().shape == (3, 5)
    assert run["fd_raw"]["dnpu_current"].read().shape == (3 * 2 * 5,)


def test_validate_gradients_stores_its_summary_in_the_run(stored_RE, storage, dnpu):
    result = stored_RE(validate_gradients(dnpu, n_points=2, compare_sequential=False))
    # Read back as docs/hardware.md shows.
    summary = load_run(storage.client, result.run_start_uids[0])["validation_summary"].read()
    stored = {key: summary[f"{dnpu.name}_validation_{key}"].item() for key in result.plan_result}
    assert stored == pytest.approx(result.plan_result)
    assert set(stored) == {
        "cosine_hge_fd_median",
        "r2_hge_vs_fd",
        "cosine_hge_true_median",
        "r2_hge_vs_true",
    }


def test_calibrate_phase_recovers_the_amplifier_lag(RE, dnpu):
    calibration = RE(calibrate_phase(dnpu, n_points=4)).plan_result
    bandwidth = dnpu.backend.electronics.bandwidth_hz
    expected = -np.arctan(calibration.frequencies / bandwidth)
    np.testing.assert_allclose(calibration.lag_rad, expected, atol=np.deg2rad(3))
    tones = dnpu.frequencies() > 0
    np.testing.assert_allclose(np.asarray(dnpu.phase_lag_rad.get())[tones], calibration.lag_rad)


def test_iv_sweep_and_noise_spectrum(stored_RE, storage, dnpu):
    sweep = stored_RE(iv_sweep(dnpu, dnpu.e2, -0.5, 0.5, 5))
    run = load_run(storage.client, sweep.run_start_uids[0])
    currents = run["primary"]["dnpu_current"].read()
    voltages = np.linspace(-0.5, 0.5, 5)
    expected = [dnpu.backend.model.current(np.r_[-0.3, 0.2, v, 0, 0, 0, 0]) for v in voltages]
    np.testing.assert_allclose(currents, expected, atol=0.5)
    noise = stored_RE(noise_spectrum(dnpu, duration_s=1.0))
    run = load_run(storage.client, noise.run_start_uids[0])
    frequency = run["spectrum"]["dnpu_noise_frequency"].read()[0]
    psd = run["spectrum"]["dnpu_noise_psd"].read()[0]
    band = (frequency > 500) & (frequency < 1000)
    electronics = dnpu.backend.electronics
    response = (
        np.abs(electronics.transfer(frequency[band], 10_000.0) / electronics.gain_v_per_na) ** 2
    )
    expected_psd = electronics.noise_psd(frequency[band]) * response
    assert np.median(psd[band] / expected_psd) == pytest.approx(1.0, rel=0.3)


def test_characterisation_plans_leave_the_settings_as_they_were(RE, dnpu):
    dnpu.mode.put("sequential")
    dnpu.e2.setpoint.put(0.1)
    window, cases = dnpu.window_s.get(), [[0.0, 0.0], [0.3, 0.3]]
    dnpu.input_cases.put(cases)
    RE(iv_sweep(dnpu, dnpu.e2, -0.5, 0.5, 3))
    # 0.15 s is off the 150 Hz tone's grid: no matter, without tones.
    RE(noise_spectrum(dnpu, duration_s=0.15, segment_s=0.05))
    with pytest.raises(RuntimeError, match="broke"):
        RE(iv_sweep(dnpu, dnpu.e2, -0.5, 0.5, 3), _broken_after_one_event())
    with pytest.raises(RuntimeError, match="broke"):
        RE(noise_spectrum(dnpu, duration_s=0.2), _broken_after_one_event())
    assert dnpu.mode.get() == "sequential"
    assert dnpu.e2.setpoint.get() == 0.1
    assert dnpu.window_s.get() == window
    assert np.asarray(dnpu.input_cases.get()).tolist() == cases


def _broken_after_one_event():
    def callback(name, doc):
        if name == "event":
            raise RuntimeError("broke")

    return {"event": callback}


def test_the_best_effort_table_survives_a_sweep_after_runs_without_a_primary_stream(
    RE, dnpu, monkeypatch
):
    """The IPython profile's table: after calibrate_phase (no primary stream) it raised on
    the next iv_sweep's primary stream (KeyError 'dnpu_e2_setpoint', suppressed by bluesky)."""
    from bluesky.callbacks.best_effort import BestEffortCallback

    monkeypatch.setenv("BLUESKY_DEBUG_CALLBACKS", "1")  # a callback's error fails the plan
    table = BestEffortCallback()
    table.disable_plots()
    RE.subscribe(table)
    RE(calibrate_phase(dnpu))
    outcome = RE(iv_sweep(dnpu, dnpu.e2, -0.5, 0.5, 3))
    assert outcome.exit_status == "success"
