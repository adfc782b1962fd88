"""The ophyd DNPU on the virtual device: readings, limits, safety, configuration."""

from __future__ import annotations

import numpy as np
import pytest
from ophyd.utils.errors import LimitError, ReadOnlyError

from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.safety import UnsafeWaveformError


@pytest.fixture
def dnpu():
    device = build_dnpu()
    yield device
    device.backend.close()


def test_setpoint_outside_limits_is_refused_before_any_voltage(dnpu):
    high = dnpu.e0.limits[1]
    with pytest.raises(LimitError, match="outside the electrode limits"):
        dnpu.e0.setpoint.set(high + 0.1).wait(1)
    assert dnpu.e0.setpoint.get() == 0.0
    assert dnpu.total_device_seconds == 0.0


def test_limits_and_roles_are_read_only(dnpu):
    with pytest.raises(ReadOnlyError, match="readonly"):
        dnpu.e0.max_v.put(5.0)
    assert dnpu.indices("input").tolist() == [3, 4]
    assert dnpu.indices("control").tolist() == [0, 1, 2, 5, 6]


def test_default_tones_on_controls_only(dnpu):
    frequencies = dnpu.frequencies()
    assert np.all(frequencies[dnpu.indices("control")] > 0)
    assert np.all(frequencies[dnpu.indices("input")] == 0)
    assert len(set(frequencies[frequencies > 0])) == dnpu.indices("control").size


def test_trigger_reads_waveform_with_declared_shape(dnpu):
    dnpu.input_cases.put([[0.0, 0.0], [0.0, 0.2], [0.2, 0.0], [0.2, 0.2]])
    dnpu.trigger().wait(10)
    reading = dnpu.read()
    description = dnpu.describe()
    output = reading["dnpu_output"]["value"]
    assert description["dnpu_output"]["shape"] == [output.size]
    assert output.size == dnpu.last_waveform.voltages.shape[0]
    assert reading["dnpu_case_currents"]["value"].shape == (4,)
    assert description["dnpu_segment_amplitudes"]["shape"] == [4, 7]
    # The stream started and ended at 0 V and the device time is the stream's duration.
    assert np.all(dnpu.last_waveform.voltages[[0, -1]] == 0)
    assert reading["dnpu_device_seconds"]["value"] == pytest.approx(
        dnpu.last_waveform.duration_s, rel=0.01
    )


def test_configuration_carries_the_measurement_setup(dnpu):
    config = dnpu.read_configuration()
    for key in (
        "dnpu_e0_frequency",
        "dnpu_e0_amplitude",
        "dnpu_e0_min_v",
        "dnpu_sample_rate",
        "dnpu_window_s",
        "dnpu_amplifier_gain_v_per_a",
        "dnpu_backend_info",
        "dnpu_phase_lag_rad",
    ):
        assert key in config, key
    assert '"seed"' in config["dnpu_backend_info"]["value"]


def test_stream_leaving_limits_through_tone_amplitude_is_refused(dnpu):
    high = dnpu.e0.limits[1]
    dnpu.e0.setpoint.put(high)  # allowed: the DC point itself is inside
    with pytest.raises(UnsafeWaveformError, match="outside the limits"):
        dnpu.trigger()
    assert dnpu.total_device_seconds == 0.0


def test_tones_the_lock_in_cannot_resolve_are_refused_before_any_voltage(dnpu):
    bandwidth = dnpu.amplifier.bandwidth_hz.get()
    dnpu.e0.frequency.put(1.5 * bandwidth)  # below Nyquist, above the amplifier
    with pytest.raises(ValueError, match=r"e0 3000 Hz is above the amplifier bandwidth 2000 Hz"):
        dnpu.trigger()
    dnpu.e0.frequency.put(dnpu.e1.frequency.get())
    with pytest.raises(
        ValueError,
        match=r"tones 160, 160, 180, 220, 270 Hz on e0, e1, e2, e5, e6: tones 0 and 1 are both",
    ):
        dnpu.trigger()
    dnpu.e0.frequency.put(2 * dnpu.e1.frequency.get())
    with pytest.raises(ValueError, match="a harmonic of"):
        dnpu.trigger()
    with pytest.raises(ValueError, match="above the amplifier bandwidth"):
        dnpu.plan_tones(band_hz=1.5 * bandwidth)
    assert dnpu.total_device_seconds == 0.0
    dnpu.mode.put("sequential")  # one tone at a time: a shared frequency is fine there
    dnpu.e0.frequency.put(dnpu.e1.frequency.get())
    dnpu.trigger().wait(10)
    assert dnpu.total_device_seconds > 0


def test_bad_input_cases_are_refused(dnpu):
    dnpu.input_cases.put([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="input_cases must have shape"):
        dnpu.build_waveform()


def test_stop_parks_every_electrode_at_zero(dnpu):
    dnpu.backend.set_dc(np.full(7, 0.1))
    dnpu.stop()
    assert np.all(dnpu.backend.dc_volts == 0)


def _measure_gate_cases(dnpu, controls) -> None:
    for electrode, value in zip(dnpu.indices("control"), controls, strict=True):
        dnpu.electrodes[electrode].setpoint.set(value).wait(1)
    dnpu.trigger().wait(10)


def test_clipped_windows_are_counted_and_logged_once_per_staging(
    clipping_dnpu, clipping_controls, caplog
):
    dnpu = clipping_dnpu
    dnpu.input_cases.put([[-0.7, -0.7], [-0.7, 0.3], [0.3, -0.7], [0.3, 0.3]])
    dnpu.mode.put("off")
    with caplog.at_level("WARNING", logger="dnpu_bluesky.devices.dnpu"):
        dnpu.stage()
        _measure_gate_cases(dnpu, [0.0] * 5)  # about -13 nA: inside the +-50 nA range
        assert dnpu.read()["dnpu_clipped_samples"]["value"] == 0 and not caplog.records
        _measure_gate_cases(dnpu, clipping_controls)
        windows = int(dnpu.last_waveform.analysis_mask.sum())
        # Every window sample clipped, the ramps and settling between them are not counted.
        assert dnpu.read()["dnpu_clipped_samples"]["value"] == windows
        _measure_gate_cases(dnpu, clipping_controls)
        assert len(caplog.records) == 1
        assert f"in {windows} of {windows} measured samples" in caplog.records[0].message
        dnpu.unstage()
        dnpu.stage()
        _measure_gate_cases(dnpu, clipping_controls)
        dnpu.unstage()
    assert len(caplog.records) == 2
