"""The NI-DAQmx backend against the nidaqmx test double: streams, safety, parking, errors."""

from __future__ import annotations

import atexit
import gc
import json
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nidaqmx.constants
import nidaqmx.errors
import numpy as np
import pytest
from fake_nidaqmx import FakeNidaqmx, Rig
from nidaqmx.error_codes import DAQmxErrors

from dnpu_bluesky.backend import DAQBackend
from dnpu_bluesky.config import SetupProfile, default_sim_profile, load_profile
from dnpu_bluesky.devices import _ni_outputs, ni_daqmx
from dnpu_bluesky.devices.ni_daqmx import HardwareUnavailableError, NIDAQmxBackend
from dnpu_bluesky.safety import UnsafeWaveformError

EXAMPLE = Path(__file__).resolve().parents[1] / "profiles" / "setups" / "cdaq-example.yaml"


# Output state files in the test's directory, the SIGTERM handler restored after.
pytestmark = pytest.mark.usefixtures("ni_state_dir")


READ = "nidaqmx.task.Task.read"
WAIT = "nidaqmx.task.Task.wait_until_done"
STOP = "nidaqmx.task.Task.stop"
START = "nidaqmx.task.Task.start"
GENERATED = "nidaqmx.task.OutStream.total_samp_per_chan_generated"
ADD_AO = "nidaqmx.task.collections.AOChannelCollection.add_ao_voltage_chan"


def _profile(**changes: Any) -> SetupProfile:
    data = load_profile(EXAMPLE).to_dict()
    data.pop("sim")
    data.update(changes)
    return SetupProfile.model_validate(data)


def _open(profile: SetupProfile, fake: FakeNidaqmx) -> NIDAQmxBackend:
    """A backend, with the tasks and calls of its construction (tested on their own) cleared."""
    daq = NIDAQmxBackend(profile, nidaqmx_module=fake)
    fake.rig.tasks.clear()
    fake.rig.calls.clear()
    return daq


def _channels(profile: SetupProfile) -> list[str]:
    return [e.channel for e in profile.electrodes]


def _assert_parked_within_slew(fake: FakeNidaqmx, profile: SetupProfile) -> None:
    """Every electrode at 0 V, and nothing ever generated faster than the slew limit."""
    channels = _channels(profile)
    np.testing.assert_array_equal(fake.rig.level(channels), np.zeros(7))
    assert fake.rig.max_slew(channels) <= profile.max_slew_v_per_s * (1 + 1e-9)


def _stream(
    profile: SetupProfile,
    dc: np.ndarray,
    amplitudes: np.ndarray,
    *,
    n_plateau: int = 2000,
    freq_step_hz: float = 40.0,
) -> np.ndarray:
    """An HGE-like stream: linear ramp 0 -> dc, tones on a plateau, ramp back to 0 V."""
    rate = profile.sample_rate
    slew = profile.max_slew_v_per_s
    n_ramp = int(np.ceil(np.max(np.abs(dc)) * rate / (0.5 * slew))) + 2
    up = np.linspace(0, 1, n_ramp)[:, np.newaxis] * dc
    t = np.arange(n_plateau) / rate
    freqs = freq_step_hz * np.array([5, 9, 13, 19, 23, 29, 31])[: len(dc)]
    # Tones fade in and out over 10 ms so the plateau joins the ramps smoothly.
    fade = np.clip(np.minimum(t, t[-1] - t) / 0.01, 0, 1)[:, np.newaxis]
    tones = fade * amplitudes * np.sin(2 * np.pi * freqs * t[:, np.newaxis])
    return np.vstack([up, dc + tones, up[::-1]])


@pytest.fixture
def fake() -> FakeNidaqmx:
    return FakeNidaqmx()


@pytest.fixture
def profile() -> SetupProfile:
    return load_profile(EXAMPLE)


@pytest.fixture
def backend(profile: SetupProfile, fake: FakeNidaqmx) -> Iterator[NIDAQmxBackend]:
    daq = _open(profile, fake)
    yield daq
    daq.close()


def _dc_stream(profile: SetupProfile) -> np.ndarray:
    dc = np.array([0.3, -0.5, 0.2, -0.4, 0.1, -0.8, 0.5])
    return _stream(profile, dc, np.full(7, 0.02))


def test_backend_satisfies_the_protocol(backend: NIDAQmxBackend) -> None:
    assert isinstance(backend, DAQBackend)
    assert backend.name == "nidaqmx"
    assert backend.n_channels == 7


def test_written_stream_equals_the_staged_waveform(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    stream = _dc_stream(profile)
    backend.play_and_record(stream, profile.sample_rate)
    ao, ai = fake.rig.tasks
    assert ao.kind == "ao" and ai.kind == "ai"
    np.testing.assert_array_equal(ao.written, stream)
    assert ao.physical_channels == _channels(profile)
    assert [c["name"] for c in ao.channels] == list(profile.electrode_names)
    # The driver-side channel range is each electrode's own limits.
    assert [(c["min_val"], c["max_val"]) for c in ao.channels] == [
        (e.min_v, e.max_v) for e in profile.electrodes
    ]
    assert ao.rate == profile.sample_rate and ao.samps_per_chan == len(stream)
    assert ai.physical_channels == [profile.output.channel]
    assert ai.rate == profile.sample_rate * profile.readout_oversampling
    assert ai.samps_per_chan == len(stream) * profile.readout_oversampling
    assert ai.channels[0]["terminal_config"] is nidaqmx.constants.TerminalConfiguration.DIFF
    assert (ai.channels[0]["min_val"], ai.channels[0]["max_val"]) == (-10.0, 10.0)
    assert not fake.rig.open_tasks
    np.testing.assert_array_equal(fake.rig.level(_channels(profile)), np.zeros(7))


def test_single_electrode_stream_is_written_one_dimensional(fake: FakeNidaqmx) -> None:
    one = _profile(electrodes=[load_profile(EXAMPLE).electrodes[0].model_dump()])
    daq = _open(one, fake)
    stream = _stream(one, np.array([0.4]), np.array([0.02]))
    acquisition = daq.play_and_record(stream, one.sample_rate)
    np.testing.assert_array_equal(fake.rig.tasks[0].written, stream)
    np.testing.assert_allclose(acquisition.ai_volts, 0.5 * stream[:, 0])
    daq.close()


@pytest.mark.parametrize("oversampling", [1, 3, 4])
def test_oversampled_readout_is_averaged_per_ao_sample(
    fake: FakeNidaqmx, oversampling: int
) -> None:
    profile = _profile(
        readout_oversampling=oversampling,
        amplifier={"gain_v_per_a": 1e7, "bandwidth_hz": 1000.0, "inverting": False},
    )
    ai_rate = profile.sample_rate * oversampling
    # Each AI sample within an AO sample's block is offset by 1 mV times its position.
    fake.rig.response = lambda held, t: held[:, 0] + 1e-3 * (np.round(t * ai_rate) % oversampling)
    daq = _open(profile, fake)
    stream = _dc_stream(profile)
    acquisition = daq.play_and_record(stream, profile.sample_rate)
    expected = stream[:, 0] + 1e-3 * (oversampling - 1) / 2
    np.testing.assert_allclose(acquisition.ai_volts, expected, atol=1e-12)
    assert acquisition.ai_volts.shape == (len(stream),)
    daq.close()


def test_device_seconds_cover_the_stream(backend: NIDAQmxBackend, profile: SetupProfile) -> None:
    stream = _dc_stream(profile)
    acquisition = backend.play_and_record(stream, profile.sample_rate)
    duration = len(stream) / profile.sample_rate
    assert duration <= acquisition.device_seconds < duration + 1.0


def test_ai_is_armed_on_the_ao_start_trigger(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    stream = _dc_stream(profile)
    acquisition = backend.play_and_record(stream, profile.sample_rate)
    ai = fake.rig.tasks[1]
    assert ai.trigger_source == "/cDAQ1/ao/StartTrigger"
    # The fake only lets the AO start trigger fire an AI task that was armed before it.
    assert ai.triggered
    np.testing.assert_allclose(acquisition.ai_volts, 0.5 * stream.sum(axis=1), atol=1e-12)


def test_pcie_trigger_terminal_from_the_profile() -> None:
    fake = FakeNidaqmx(Rig(ao_start_trigger="/Dev1/ao/StartTrigger"))
    electrodes = [
        {**e.model_dump(), "channel": f"Dev1/ao{i}"}
        for i, e in enumerate(load_profile(EXAMPLE).electrodes)
    ]
    pcie = _profile(
        electrodes=electrodes,
        output={"channel": "Dev1/ai0", "ai_range_v": 5.0},
        trigger={"start_trigger_source": "/Dev1/ao/StartTrigger"},
    )
    daq = _open(pcie, fake)
    stream = _dc_stream(pcie)
    acquisition = daq.play_and_record(stream, pcie.sample_rate)
    assert fake.rig.tasks[1].triggered
    assert fake.rig.tasks[1].channels[0]["terminal_config"] is (
        nidaqmx.constants.TerminalConfiguration.DEFAULT
    )
    np.testing.assert_allclose(acquisition.ai_volts, 0.5 * stream.sum(axis=1), atol=1e-12)
    daq.close()


def test_miswired_trigger_fails_closes_tasks_and_parks(fake: FakeNidaqmx) -> None:
    wrong = _profile(trigger={"start_trigger_source": "/cDAQ2/ao/StartTrigger"})
    daq = _open(wrong, fake)
    with pytest.raises(nidaqmx.errors.DaqReadError):
        daq.play_and_record(_dc_stream(wrong), wrong.sample_rate)
    assert not fake.rig.tasks[1].triggered
    assert not fake.rig.open_tasks
    np.testing.assert_array_equal(fake.rig.level(_channels(wrong)), np.zeros(7))
    daq.close()


UNSAFE = {
    # kind: (electrode index, sample ("middle", 0 or -1), new value or increment, message)
    "above max_v": (0, "middle", 0.61, "outside the limits"),
    "below min_v": (3, "middle", -0.71, "outside the limits"),
    "too fast": (1, "middle", "+0.05", "slew"),  # 0.05 V in one 100 us sample: 500 V/s
    "starts away from 0 V": (2, 0, 0.001, "start at 0 V"),
    "ends away from 0 V": (4, -1, -0.001, "end at 0 V"),
    "not finite": (5, "middle", np.nan, "non-finite"),
}


@pytest.mark.parametrize("kind", list(UNSAFE))
def test_unsafe_stream_is_refused_before_any_task(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile, kind: str
) -> None:
    channel, sample, value, message = UNSAFE[kind]
    bad = _dc_stream(profile)
    row = len(bad) // 2 if sample == "middle" else sample
    if isinstance(value, str):
        bad[row, channel] += float(value)
    else:
        bad[row, channel] = value
    with pytest.raises(UnsafeWaveformError, match=message):
        backend.play_and_record(bad, profile.sample_rate)
    assert fake.rig.tasks == []
    assert fake.rig.calls == []


def test_stream_of_wrong_shape_or_rate_is_refused(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    with pytest.raises(ValueError, match="shape"):
        backend.play_and_record(np.zeros((100, 6)), profile.sample_rate)
    with pytest.raises(ValueError, match="sample_rate"):
        backend.play_and_record(np.zeros((100, 7)), 0.0)
    assert fake.rig.tasks == []


def test_output_error_stops_and_ramps_down_from_where_it_stopped(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    stream = _dc_stream(profile)
    stalled_at = len(stream) // 2
    fake.rig.ao_stalls_at = stalled_at
    fake.rig.errors[WAIT] = nidaqmx.errors.DaqError("AO underflow", DAQmxErrors.UNKNOWN.value)
    with pytest.raises(nidaqmx.errors.DaqError, match="AO underflow"):
        backend.play_and_record(stream, profile.sample_rate)
    assert not fake.rig.open_tasks
    channels = _channels(profile)
    np.testing.assert_array_equal(fake.rig.level(channels), np.zeros(7))
    # History: the stream up to where it stopped, then a ramp down from exactly there.
    (_, _, played), (_, _, park) = fake.rig.history
    np.testing.assert_array_equal(played, stream[:stalled_at])
    assert np.max(np.abs(park[0] - stream[stalled_at - 1])) * profile.sample_rate <= (
        profile.max_slew_v_per_s * (1 + 1e-9)
    )
    assert fake.rig.max_slew(channels) <= profile.max_slew_v_per_s * (1 + 1e-9)


def test_input_error_lets_the_stream_run_out_to_zero(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    stream = _dc_stream(profile)
    fake.rig.ao_stalls_at = len(stream) // 2  # where the generation is when the read fails
    fake.rig.errors[READ] = nidaqmx.errors.DaqReadError(
        "Onboard device memory overflow", DAQmxErrors.SAMPLES_NO_LONGER_AVAILABLE.value, 12
    )
    # Were the output stopped, not even its position could be read: a mid-span guess.
    fake.rig.errors[GENERATED] = nidaqmx.errors.DaqError("query failed", -1)
    with pytest.raises(nidaqmx.errors.DaqReadError, match="overflow"):
        backend.play_and_record(stream, profile.sample_rate)
    assert STOP not in {c.path for c in fake.rig.calls}
    ((_, _, played),) = fake.rig.history  # the whole stream, ending at 0 V; no parking ramp
    np.testing.assert_array_equal(played, stream)
    _assert_parked_within_slew(fake, profile)
    assert not fake.rig.open_tasks


def test_unknown_stop_position_parks_from_mid_span(
    backend: NIDAQmxBackend,
    fake: FakeNidaqmx,
    profile: SetupProfile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = _dc_stream(profile)
    fake.rig.ao_stalls_at = len(stream) // 2
    fake.rig.errors[WAIT] = nidaqmx.errors.DaqError("device removed", DAQmxErrors.UNKNOWN.value)
    fake.rig.errors[GENERATED] = nidaqmx.errors.DaqError(
        "device removed", DAQmxErrors.UNKNOWN.value
    )
    with caplog.at_level(logging.WARNING, logger="dnpu_bluesky.devices.ni_daqmx"):
        with pytest.raises(nidaqmx.errors.DaqError, match="device removed"):
            backend.play_and_record(stream, profile.sample_rate)
    assert "mid-span" in caplog.text
    assert not fake.rig.open_tasks
    np.testing.assert_array_equal(fake.rig.level(_channels(profile)), np.zeros(7))
    middle = (np.minimum(stream.min(axis=0), 0) + np.maximum(stream.max(axis=0), 0)) / 2
    park = fake.rig.history[-1][2]
    step = np.abs(middle) / len(park) * 1.01
    assert np.all(np.abs(park[0] - middle) <= step + 1e-12)


def test_failed_parking_is_reported_on_the_original_error(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    stream = _dc_stream(profile)
    fake.rig.ao_stalls_at = 100
    fake.rig.errors[WAIT] = nidaqmx.errors.DaqError("stream failed", DAQmxErrors.UNKNOWN.value)
    # Once the stream is stopped, the parking ramp's wait fails too.
    fake.rig.actions[STOP] = lambda: fake.rig.errors.update(
        {WAIT: nidaqmx.errors.DaqError("park failed", DAQmxErrors.UNKNOWN.value)}
    )
    with pytest.raises(nidaqmx.errors.DaqError, match="stream failed") as caught:
        backend.play_and_record(stream, profile.sample_rate)
    assert any("park failed" in note for note in caught.value.__notes__)
    assert not fake.rig.open_tasks


def test_set_dc_ramps_within_the_slew_limit(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    channels = _channels(profile)
    target = np.array([0.6, -1.2, 0.0, 0.3, -0.7, 0.25, -0.1])
    backend.set_dc(target)
    np.testing.assert_array_equal(fake.rig.level(channels), target)
    _, _, ramp = fake.rig.history[-1]
    # Linear: every step the same size per channel, and the largest at the slew limit.
    steps = np.diff(np.vstack([np.zeros(7), ramp]), axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(target / len(ramp), steps.shape), atol=1e-12)
    assert fake.rig.max_slew(channels) <= profile.max_slew_v_per_s * (1 + 1e-9)
    assert len(ramp) == int(np.ceil(1.2 * profile.sample_rate / profile.max_slew_v_per_s))
    backend.set_dc(np.zeros(7))
    _assert_parked_within_slew(fake, profile)
    assert not fake.rig.open_tasks


@pytest.mark.parametrize(
    ("volts", "match"),
    [
        ([0.61, 0, 0, 0, 0, 0, 0], "e0"),
        ([0, 0, 0, -0.71, 0, 0, 0], "e3"),
        ([0, 0, 0, 0, 0, 0, np.inf], "e6"),
    ],
)
def test_set_dc_refuses_values_outside_the_limits(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, volts: list[float], match: str
) -> None:
    with pytest.raises(UnsafeWaveformError, match=match):
        backend.set_dc(np.array(volts))
    with pytest.raises(ValueError, match="7 voltages"):
        backend.set_dc(np.zeros(6))
    assert fake.rig.tasks == []


def test_stream_after_set_dc_first_ramps_to_zero(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    channels = _channels(profile)
    backend.set_dc(np.array([0.5, 0, 0, 0, 0, 0, 0]))
    stream = _dc_stream(profile)
    acquisition = backend.play_and_record(stream, profile.sample_rate)
    rates_and_lengths = [(r, len(s)) for r, _, s in fake.rig.history]
    ramp_n = int(np.ceil(0.5 * profile.sample_rate / profile.max_slew_v_per_s))
    assert rates_and_lengths == [
        (profile.sample_rate, ramp_n),
        (profile.sample_rate, ramp_n),
        (profile.sample_rate, len(stream)),
    ]
    assert fake.rig.max_slew(channels) <= profile.max_slew_v_per_s * (1 + 1e-9)
    assert acquisition.device_seconds >= (ramp_n + len(stream)) / profile.sample_rate


def test_close_parks_at_zero_and_is_idempotent(profile: SetupProfile, fake: FakeNidaqmx) -> None:
    daq = _open(profile, fake)
    daq.set_dc(np.array([0.2, -0.3, 0.1, 0.0, 0.0, 0.4, -1.0]))
    daq.close()
    _assert_parked_within_slew(fake, profile)
    n_tasks = len(fake.rig.tasks)
    daq.close()
    daq.set_dc(np.zeros(7))  # already there: a closed backend accepts the no-op park
    assert len(fake.rig.tasks) == n_tasks
    with pytest.raises(RuntimeError, match="closed"):
        daq.play_and_record(_dc_stream(profile), profile.sample_rate)
    with pytest.raises(RuntimeError, match="closed"):
        daq.set_dc(np.full(7, 0.1))


def test_a_full_disk_refuses_new_levels_but_never_the_park_at_zero(
    profile: SetupProfile,
    fake: FakeNidaqmx,
    ni_state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daq = _open(profile, fake)
    daq.set_dc(np.array([0.2, -0.3, 0.1, 0.0, 0.0, 0.4, -1.0]))
    (state,) = ni_state_dir.rglob("*.json")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    n_tasks = len(fake.rig.tasks)
    with pytest.raises(HardwareUnavailableError, match="No space left"):
        daq.set_dc(np.full(7, 0.1))  # away from 0 V: not without a record
    assert all(t.generated == 0 for t in fake.rig.tasks[n_tasks:])
    with caplog.at_level(logging.ERROR, logger=ni_daqmx.__name__):
        daq.close()
    _assert_parked_within_slew(fake, profile)
    assert "No space left" in caplog.text
    assert not state.exists()  # parked: the old record went with the levels
    assert list(ni_state_dir.rglob("*.tmp")) == []


def test_atexit_hook_parks_the_electrodes(
    profile: SetupProfile, fake: FakeNidaqmx, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks: list[Any] = []
    monkeypatch.setattr(atexit, "register", hooks.append)
    monkeypatch.setattr(atexit, "unregister", hooks.remove)
    daq = NIDAQmxBackend(profile, nidaqmx_module=fake)
    assert len(hooks) == 1
    daq.set_dc(np.array([0.3, 0, 0, 0, 0, 0, -0.6]))
    exit_hook = hooks[0]
    exit_hook()  # what the interpreter runs at exit
    channels = _channels(profile)
    _assert_parked_within_slew(fake, profile)
    assert hooks == []  # closing unregistered it
    # A backend dropped without close() is still parked: the hook keeps it.
    other = NIDAQmxBackend(profile, nidaqmx_module=fake)
    other.set_dc(np.array([0.3, 0, 0, 0, 0, 0, -0.6]))
    del other
    gc.collect()
    hooks[-1]()
    np.testing.assert_array_equal(fake.rig.level(channels), np.zeros(7))


def test_missing_driver_gives_one_clear_error(profile: SetupProfile) -> None:
    fake = FakeNidaqmx()
    fake.rig.driver_installed = False
    with pytest.raises(HardwareUnavailableError, match="NI-DAQmx driver not found") as caught:
        NIDAQmxBackend(profile, nidaqmx_module=fake)
    assert "sim backend" in str(caught.value)
    assert isinstance(caught.value.__cause__, nidaqmx.errors.DaqNotFoundError)


def test_driver_lost_after_start_is_reported_the_same_way(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    fake.rig.driver_installed = False
    with pytest.raises(HardwareUnavailableError, match="NI-DAQmx driver not found"):
        backend.play_and_record(_dc_stream(profile), profile.sample_rate)
    fake.rig.driver_installed = True


def test_describe_is_json_and_names_the_setup(backend: NIDAQmxBackend) -> None:
    info = json.loads(json.dumps(backend.describe()))
    assert info["name"] == "nidaqmx"
    assert info["driver_version"] == "2025.1.0"
    assert info["profile"]["name"] == "cdaq-77K-chip3"
    assert info["full_scale_current_na"] == pytest.approx(1000.0)  # 10 V at 1e7 V/A


def test_sim_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="not 'nidaqmx'"):
        NIDAQmxBackend(default_sim_profile(), nidaqmx_module=FakeNidaqmx())


def test_plan_style_failure_midway_leaves_every_written_sample_safe(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    """A training loop: several steps with moving controls, the driver fails in the third,
    the plan's cleanup parks the device. Everything ever generated stays safe."""
    rng = np.random.default_rng(3)
    channels = _channels(profile)
    limits = profile.limits_v
    dc = np.zeros(7)
    failed_step = None
    for step in range(5):
        dc = np.clip(dc + rng.normal(0, 0.1, 7), limits[:, 0] + 0.05, limits[:, 1] - 0.05)
        stream = _stream(profile, dc, np.full(7, 0.02), n_plateau=800)
        if step == 2:
            fake.rig.ao_stalls_at = int(rng.integers(1, len(stream)))
            fake.rig.errors[READ] = nidaqmx.errors.DaqReadError(
                "overflow", DAQmxErrors.SAMPLES_NO_LONGER_AVAILABLE.value, 0
            )
        try:
            backend.play_and_record(stream, profile.sample_rate)
        except nidaqmx.errors.DaqError:
            failed_step = step
            backend.set_dc(np.zeros(7))  # what the device's stop()/unstage() does
            break
    assert failed_step == 2
    generated = fake.rig.generated_samples(channels)
    assert np.all(generated >= limits[:, 0]) and np.all(generated <= limits[:, 1])
    assert fake.rig.max_slew(channels) <= profile.max_slew_v_per_s * (1 + 1e-9)
    np.testing.assert_array_equal(generated[-1], np.zeros(7))
    assert not fake.rig.open_tasks


# -- the end of a session: SIGTERM, multiprocessing children, interrupts while parking ---------

HELD = np.array([0.5, -1.0, 0.3, 0.2, -0.6, 0.4, -0.9])

_SIGTERM_SCRIPT = """
import os, signal, sys, time
import numpy as np
from fake_nidaqmx import FakeNidaqmx
from dnpu_bluesky.config import load_profile
from dnpu_bluesky.devices.ni_daqmx import NIDAQmxBackend
profile = load_profile({example!r})
fake = FakeNidaqmx()
daq = NIDAQmxBackend(profile, nidaqmx_module=fake)
if {during_a_ramp!r}:  # SIGTERM while the main thread ramps, inside a backend call
    fake.rig.actions["nidaqmx.task.Task.wait_until_done"] = lambda: os.kill(os.getpid(), 15)
daq.set_dc(np.array({held!r}))
print("holding", flush=True)
time.sleep(30)
"""


def _session_holding(state_dir: Path, *, sigterm_during_the_ramp: bool) -> subprocess.Popen:
    """A Python process that ramps to HELD on a fake NI rig, says "holding", then waits."""
    script = _SIGTERM_SCRIPT.format(
        example=str(EXAMPLE), held=HELD.tolist(), during_a_ramp=sigterm_during_the_ramp
    )
    tests = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)]),
        "DNPU_STATE_DIR": str(state_dir),
    }
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )


def test_sigterm_parks_the_electrodes_then_ends_the_process(
    ni_state_dir: Path, profile: SetupProfile, fake: FakeNidaqmx
) -> None:
    session = _session_holding(ni_state_dir, sigterm_during_the_ramp=False)
    assert session.stdout.readline() == "holding\n"
    (state,) = ni_state_dir.rglob("*.json")  # the held levels, on disk
    # Another session on the same outputs meanwhile is refused, naming the holder.
    with pytest.raises(HardwareUnavailableError, match=f"in use by process {session.pid};"):
        NIDAQmxBackend(profile, nidaqmx_module=fake)
    session.send_signal(signal.SIGTERM)  # `kill PID`
    assert session.wait(120) == -signal.SIGTERM  # ended as SIGTERM ends a process
    assert not state.exists()  # removed only once a ramp brought every electrode to 0 V


def test_sigterm_during_a_ramp_ends_the_process_once_the_ramp_is_done(
    ni_state_dir: Path,
) -> None:
    # Not an exception inside the ramp (IPython would catch a SystemExit and go on holding):
    # the ramp ends, then the signal parks and ends the process.
    session = _session_holding(ni_state_dir, sigterm_during_the_ramp=True)
    out, _ = session.communicate(timeout=120)
    assert session.returncode == -signal.SIGTERM
    assert "holding" not in out
    assert list(ni_state_dir.rglob("*.json")) == []  # parked: nothing left held


def test_sigterm_handler_only_where_none_was_set_and_only_while_open(
    profile: SetupProfile, fake: FakeNidaqmx
) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    daq = _open(profile, fake)
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    daq.close()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the last one closed
    own = lambda signum, frame: None  # noqa: E731  a process's own handler decides
    signal.signal(signal.SIGTERM, own)
    _open(profile, fake).close()
    assert signal.getsignal(signal.SIGTERM) is own


def _forked_exit_code(target: Callable[[str], None], report: Path) -> int | None:
    """Run ``target(report)`` in a forked child (as multiprocessing starts the queue server's
    worker) and return its exit code."""
    child = multiprocessing.get_context("fork").Process(target=target, args=(str(report),))
    child.start()
    child.join(60)
    return child.exitcode


def _child_holding_a_voltage(report: str) -> None:
    profile = load_profile(EXAMPLE)
    fake = FakeNidaqmx()
    daq = NIDAQmxBackend(profile, nidaqmx_module=fake)
    daq.set_dc(np.full(7, 0.2))
    # Runs at the child's exit after the backend's own finalizer (higher priority).
    multiprocessing.util.Finalize(
        None,
        lambda: Path(report).write_text(json.dumps(fake.rig.level(_channels(profile)).tolist())),
        exitpriority=0,
    )


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_multiprocessing_child_parks_at_exit(tmp_path: Path) -> None:
    # A child (the queue server's RE worker, say) ends with os._exit: no atexit hooks.
    report = tmp_path / "levels.json"
    assert _forked_exit_code(_child_holding_a_voltage, report) == 0
    assert json.loads(report.read_text()) == [0.0] * 7


def test_exit_hook_does_nothing_in_a_forked_copy_of_the_process(
    profile: SetupProfile, fake: FakeNidaqmx, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks: list[Any] = []
    monkeypatch.setattr(atexit, "register", hooks.append)
    daq = _open(profile, fake)
    daq.set_dc(HELD)
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    hooks[0]()  # the parent's hook, run by a child at its exit: the parent still drives them
    np.testing.assert_array_equal(fake.rig.level(_channels(profile)), HELD)
    monkeypatch.undo()
    daq.close()


def test_second_interrupt_while_stopping_never_assumes_zero(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    n = 2000
    stream = np.zeros((n, 7))
    stream[:, 1] = -0.9 * np.sin(np.pi * np.arange(n) / (n - 1))
    fake.rig.ao_stalls_at = n // 2
    fake.rig.errors[READ] = KeyboardInterrupt()  # Ctrl-C during the stream
    fake.rig.errors[STOP] = KeyboardInterrupt()  # and again while the driver stops it
    with pytest.raises(KeyboardInterrupt):
        backend.play_and_record(stream, profile.sample_rate)
    np.testing.assert_array_equal(fake.rig.level(_channels(profile)), np.zeros(7))
    assert not fake.rig.open_tasks


@pytest.fixture
def ctrl_c_handled() -> Iterator[None]:
    """Python's own Ctrl-C handler for the test: a shell that starts pytest in the background
    passes SIGINT on as ignored, and these tests send the signal itself."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_handled")
def test_ctrl_c_while_stopping_a_failed_stream_parks_from_where_it_stopped(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    stream = _dc_stream(profile)
    fake.rig.ao_stalls_at = len(stream) // 2
    fake.rig.errors[WAIT] = nidaqmx.errors.DaqError("AO underflow", DAQmxErrors.UNKNOWN.value)
    fake.rig.actions[STOP] = lambda: signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        backend.play_and_record(stream, profile.sample_rate)
    _assert_parked_within_slew(fake, profile)


def test_interrupted_close_stays_open_and_the_next_close_parks(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    backend.set_dc(HELD)
    fake.rig.ao_stalls_at = 10
    fake.rig.errors[WAIT] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        backend.close()
    fake.rig.ao_stalls_at = None
    channels = _channels(profile)
    assert np.all(fake.rig.level(channels) != 0)
    backend.close()  # what the exit hook, still registered, does
    _assert_parked_within_slew(fake, profile)


@pytest.mark.usefixtures("ctrl_c_handled")
def test_ctrl_c_during_the_park_ramp_waits_for_its_end(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    backend.set_dc(HELD)
    fake.rig.ao_stalls_at = 10  # the ramp is on its way when the signal arrives
    fake.rig.actions[WAIT] = lambda: signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        backend.close()
    _assert_parked_within_slew(fake, profile)
    n_tasks = len(fake.rig.tasks)
    backend.close()  # closed once parked, even though the interrupt came after
    assert len(fake.rig.tasks) == n_tasks


# -- 0 V at start: the levels an earlier session left --------------------------------------


def _killed_holding_a_voltage(report: str) -> None:
    profile = load_profile(EXAMPLE)
    fake = FakeNidaqmx()
    NIDAQmxBackend(profile, nidaqmx_module=fake).set_dc(HELD)
    generated = [(rate, names, samples.tolist()) for rate, names, samples in fake.rig.history]
    Path(report).write_text(json.dumps(generated))
    os._exit(9)  # killed: no exit hook, no finalizer parks; the kernel drops its lock


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_levels_a_killed_session_held_are_refused_by_the_next(
    profile: SetupProfile,
    fake: FakeNidaqmx,
    ni_state_dir: Path,
    tmp_path: Path,
) -> None:
    report = tmp_path / "levels.json"
    assert _forked_exit_code(_killed_holding_a_voltage, report) == 9
    (state,) = ni_state_dir.rglob("*.json")
    assert state.name == "cdaq1mod1.json"
    channels = _channels(profile)
    for rate, names, samples in json.loads(report.read_text()):  # the dead session's pins
        fake.rig.history.append((rate, tuple(names), np.array(samples)))
        fake.rig.levels.update(zip(names, samples[-1], strict=True))
    np.testing.assert_array_equal(fake.rig.level(channels), HELD)
    n_tasks = len(fake.rig.tasks)
    # The pins may hold HELD, or 0 V after a reset: a ramp from the wrong one would be a step.
    with pytest.raises(HardwareUnavailableError, match=r"held cDAQ1Mod1/ao0 \+0\.500 V") as e:
        NIDAQmxBackend(profile, nidaqmx_module=fake)
    assert str(state) in str(e.value) and "\n" not in str(e.value)
    assert all(t.generated == 0 for t in fake.rig.tasks[n_tasks:])  # nothing generated
    state.unlink()  # what the message asks for, once the outputs were brought to 0 V
    later = NIDAQmxBackend(profile, nidaqmx_module=fake)
    later.play_and_record(_dc_stream(profile), profile.sample_rate)
    assert not state.exists()  # present only while a level is held or a stream runs
    later.close()


def test_a_second_backend_on_the_same_outputs_is_refused_while_the_first_is_open(
    profile: SetupProfile, fake: FakeNidaqmx
) -> None:
    first = _open(profile, fake)
    first.set_dc(HELD)
    # It would start from 0 V while the first holds HELD, and the first would then ramp
    # from HELD while the pins were elsewhere: refused, naming who holds them.
    with pytest.raises(
        HardwareUnavailableError,
        match="in use by another backend of this process",
    ):
        NIDAQmxBackend(profile, nidaqmx_module=fake)
    np.testing.assert_array_equal(fake.rig.level(_channels(profile)), HELD)
    first.close()
    NIDAQmxBackend(profile, nidaqmx_module=fake).close()  # released with the first's close


def test_outputs_named_in_another_case_are_the_same_outputs(
    profile: SetupProfile, fake: FakeNidaqmx
) -> None:
    first = _open(profile, fake)
    electrodes = [e.model_copy(update={"channel": e.channel.lower()}) for e in profile.electrodes]
    lower_case = profile.model_copy(update={"electrodes": tuple(electrodes[:4])})
    with pytest.raises(HardwareUnavailableError, match=r"cdaq1mod1 \(AO\): in use"):
        NIDAQmxBackend(lower_case, nidaqmx_module=fake)
    first.close()


def test_without_flock_one_process_still_keeps_one_backend_per_device(
    profile: SetupProfile, fake: FakeNidaqmx, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ni_outputs, "fcntl", None)  # Windows
    first = _open(profile, fake)
    with pytest.raises(HardwareUnavailableError, match="another backend of this process"):
        NIDAQmxBackend(profile, nidaqmx_module=fake)
    first.close()
    NIDAQmxBackend(profile, nidaqmx_module=fake).close()


def _sleep(report: str) -> None:
    time.sleep(3)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_does_not_keep_the_outputs_locked(
    profile: SetupProfile, fake: FakeNidaqmx
) -> None:
    first = _open(profile, fake)
    child = multiprocessing.get_context("fork").Process(target=_sleep, args=("",))
    child.start()  # inherits the lock file's descriptor, not the lock
    try:
        first.close()
        NIDAQmxBackend(profile, nidaqmx_module=fake).close()
    finally:
        child.join(30)


def test_ctrl_c_while_a_failed_read_waits_for_the_stream_stays_a_ctrl_c(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    stream = _dc_stream(profile)
    fake.rig.ao_stalls_at = len(stream) // 2
    fake.rig.errors[READ] = nidaqmx.errors.DaqReadError(
        "Onboard device memory overflow", DAQmxErrors.SAMPLES_NO_LONGER_AVAILABLE.value, 12
    )
    fake.rig.errors[WAIT] = KeyboardInterrupt()  # while waiting for the stream to run out
    with pytest.raises(KeyboardInterrupt):  # not a device failure with a note
        backend.play_and_record(stream, profile.sample_rate)
    _assert_parked_within_slew(fake, profile)


def test_ctrl_c_just_after_a_ramp_ends_keeps_the_levels_it_reached(
    backend: NIDAQmxBackend,
    fake: FakeNidaqmx,
    profile: SetupProfile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The ramp ran to its end; the interrupt comes before it is recorded as held.
    record = backend._held

    def interrupted_once(levels: np.ndarray) -> None:
        monkeypatch.setattr(backend, "_held", record)
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "_held", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        backend.set_dc(HELD)
    np.testing.assert_array_equal(fake.rig.level(_channels(profile)), HELD)
    backend.play_and_record(_dc_stream(profile), profile.sample_rate)  # ramps from HELD
    backend.close()
    _assert_parked_within_slew(fake, profile)


def test_a_stream_is_copied_before_it_is_checked(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    stream = _dc_stream(profile)
    played = stream.copy()
    # The caller's buffer refilled after the call began (another thread): not what plays.
    fake.rig.actions[ADD_AO] = lambda: stream.fill(0.3)
    backend.play_and_record(stream, profile.sample_rate)
    np.testing.assert_array_equal(
        fake.rig.generated_samples(_channels(profile))[-len(played) :], played
    )
    _assert_parked_within_slew(fake, profile)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_cannot_drive_or_park_its_parents_outputs(
    backend: NIDAQmxBackend,
    fake: FakeNidaqmx,
    profile: SetupProfile,
    tmp_path: Path,
    ni_state_dir: Path,
) -> None:
    backend.set_dc(HELD)
    report = tmp_path / "child.json"

    def child(path: str) -> None:
        backend.close()  # a no-op in the child
        try:
            backend.set_dc(np.zeros(7))
        except RuntimeError as err:
            Path(path).write_text(
                json.dumps([str(err), fake.rig.level(_channels(profile)).tolist()])
            )

    assert _forked_exit_code(child, report) == 0
    message, levels = json.loads(report.read_text())
    assert "belongs to process" in message and levels == HELD.tolist()
    assert len(list(ni_state_dir.rglob("*.json"))) == 1  # nor removed the parent's record


def test_the_running_record_is_on_disk_before_the_output_starts(
    backend: NIDAQmxBackend,
    fake: FakeNidaqmx,
    profile: SetupProfile,
    ni_state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced: set[int] = set()  # inodes of the files flushed to disk
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.add(os.fstat(fd).st_ino), real_fsync(fd)))
    state = ni_state_dir / "nidaqmx" / "cdaq1mod1.json"
    on_disk_at_ao_start: list[bool] = []

    def at_ao_start() -> None:  # the AI task starts first (armed), then the AO task
        on_disk_at_ao_start.append(state.exists() and state.stat().st_ino in synced)

    fake.rig.actions[START] = lambda: fake.rig.actions.__setitem__(START, at_ao_start)
    backend.play_and_record(_dc_stream(profile), profile.sample_rate)
    assert on_disk_at_ao_start == [True]


def test_a_shared_state_directory_keeps_the_lock_usable_by_the_group(
    profile: SetupProfile, fake: FakeNidaqmx, ni_state_dir: Path
) -> None:
    previous = os.umask(0o002)  # as hardware.md asks of every account sharing the DAQ
    try:
        NIDAQmxBackend(profile, nidaqmx_module=fake).close()
    finally:
        os.umask(previous)
    (lock,) = ni_state_dir.rglob("*.lock")
    assert lock.stat().st_mode & 0o777 == 0o664


def test_a_session_that_died_mid_stream_is_refused_at_start(
    profile: SetupProfile, fake: FakeNidaqmx, ni_state_dir: Path
) -> None:
    daq = _open(profile, fake)
    on_disk: list[str] = []
    # What the state file says while the stream runs, as a killed session would leave it.
    fake.rig.actions[READ] = lambda: on_disk.extend(
        p.read_text() for p in ni_state_dir.rglob("*.json")
    )
    daq.play_and_record(_dc_stream(profile), profile.sample_rate)
    daq.close()
    state = ni_state_dir / "nidaqmx" / "cdaq1mod1.json"
    state.write_text(on_disk[0])
    n_tasks = len(fake.rig.tasks)
    with pytest.raises(HardwareUnavailableError, match="a generation was running") as e:
        NIDAQmxBackend(profile, nidaqmx_module=fake)
    assert str(state) in str(e.value) and "\n" not in str(e.value)
    assert all(t.generated == 0 for t in fake.rig.tasks[n_tasks:])
    state.unlink()  # what the message asks for, once the outputs were checked
    NIDAQmxBackend(profile, nidaqmx_module=fake).close()


# -- sample rate and AI range --------------------------------------------------------------


def test_rate_other_than_the_profiles_is_refused(
    backend: NIDAQmxBackend, fake: FakeNidaqmx, profile: SetupProfile
) -> None:
    with pytest.raises(ValueError, match="differs from the setup profile's 10000 S/s"):
        backend.play_and_record(_dc_stream(profile), 2000.0)
    assert fake.rig.tasks == []


def test_coerced_sample_clock_is_refused_before_anything_starts(
    profile: SetupProfile, fake: FakeNidaqmx
) -> None:
    fake.rig.coerce_rate = lambda rate: rate * (1 + 1e-4)
    with pytest.raises(ValueError, match="AO sample clock: the device runs the sample clock"):
        NIDAQmxBackend(profile, nidaqmx_module=fake)
    fake.rig.coerce_rate = float
    daq = _open(profile, fake)
    # Only the AI clock (4 x 10 kS/s) is off: the stream is refused before it starts.
    fake.rig.coerce_rate = lambda rate: rate if rate < 20_000 else 39_999.0
    with pytest.raises(ValueError, match="39999 S/s, not the requested 40000 S/s"):
        daq.play_and_record(_dc_stream(profile), profile.sample_rate)
    assert not any(t.started for t in fake.rig.tasks) and not fake.rig.open_tasks
    daq.close()


def test_clipping_is_flagged_per_ao_sample_from_the_raw_ai_samples(fake: FakeNidaqmx) -> None:
    profile = _profile(readout_oversampling=4)
    full_scale = profile.output.ai_range_v
    ai_rate = profile.sample_rate * 4
    # From AO sample 100 on, the first of each AO sample's four AI samples reaches the range:
    # its average (a quarter of full scale) hides it, the raw samples do not.
    fake.rig.response = lambda held, t: np.where(
        (np.round(t * ai_rate) % 4 == 0) & (t * profile.sample_rate >= 100), 2 * full_scale, 0.0
    )
    daq = _open(profile, fake)
    stream = _dc_stream(profile)
    acquisition = daq.play_and_record(stream, profile.sample_rate)
    expected = np.arange(len(stream)) >= 100
    np.testing.assert_array_equal(acquisition.clipped, expected)
    assert acquisition.ai_volts.max() <= 0.25 * full_scale + 1e-12
    fake.rig.response = lambda held, t: 0.5 * held.sum(axis=1)
    assert not daq.play_and_record(stream, profile.sample_rate).clipped.any()
    daq.close()


# -- the setup is checked when the backend is built -----------------------------------------


def test_construction_verifies_both_tasks_without_generating(
    profile: SetupProfile, fake: FakeNidaqmx
) -> None:
    NIDAQmxBackend(profile, nidaqmx_module=fake).close()
    ao, ai = fake.rig.tasks
    assert ao.physical_channels == _channels(profile) and ai.physical_channels == ["cDAQ1Mod3/ai0"]
    assert ai.trigger_source == profile.trigger.start_trigger_source
    verified = [c.args for c in fake.rig.calls if c.path == "nidaqmx.task.Task.control"]
    assert verified == [(nidaqmx.constants.TaskMode.TASK_VERIFY,)] * 2
    assert fake.rig.history == [] and not fake.rig.open_tasks


def test_wrong_channel_name_fails_at_construction_in_one_line(
    profile: SetupProfile, fake: FakeNidaqmx
) -> None:
    fake.rig.errors[ADD_AO] = _invalid_device()
    with pytest.raises(HardwareUnavailableError) as caught:
        NIDAQmxBackend(profile, nidaqmx_module=fake)
    message = str(caught.value)
    assert "\n" not in message
    assert "AO channel cDAQ1Mod1/ao0 (e0)" in message
    assert "Device identifier is invalid" in message
    assert "Suggested Device(s): cDAQ9189-1D2A3BMod1" in message
    assert not fake.rig.open_tasks


def _invalid_device() -> nidaqmx.errors.DaqError:
    return nidaqmx.errors.DaqError(
        "Device identifier is invalid.\nDevice Specified: cDAQ1Mod1\n"
        "Suggested Device(s): cDAQ9189-1D2A3BMod1\n\nChannel Name: ao0",
        DAQmxErrors.INVALID_DEVICE_ID.value,
    )
