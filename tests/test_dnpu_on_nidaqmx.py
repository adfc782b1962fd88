"""The DNPU device and plans on the NI-DAQmx backend, with the checked test double of nidaqmx.

Whatever the plans do, including an abort mid-run, every sample that reaches the (fake) DAQ is
inside its electrode's limits, within the slew limit, and the electrodes end at 0 V.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted
from fake_nidaqmx import FakeNidaqmx
from ophyd.utils.errors import ReadOnlyError

from dnpu_bluesky.config import load_profile
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.devices.ni_daqmx import NIDAQmxBackend
from dnpu_bluesky.plans import hge_gradient, train
from dnpu_bluesky.sim import VirtualDNPU
from dnpu_bluesky.tasks import BooleanGate

EXAMPLE = Path(__file__).resolve().parents[1] / "profiles" / "setups" / "cdaq-example.yaml"


# Output state files in the test's directory, the SIGTERM handler restored after.
pytestmark = pytest.mark.usefixtures("ni_state_dir")


@pytest.fixture
def rig_and_dnpu():
    profile = load_profile(EXAMPLE)
    fake = FakeNidaqmx()
    model = VirtualDNPU(seed=0, voltage_ranges=profile.limits_v)
    volts_per_na = profile.amplifier.gain_v_per_a * 1e-9
    sign = -1.0 if profile.amplifier.inverting else 1.0
    fake.rig.response = lambda held, t: sign * volts_per_na * model.current(held)
    backend = NIDAQmxBackend(profile, nidaqmx_module=fake)
    dnpu = build_dnpu(profile, backend=backend)
    yield fake.rig, dnpu, model, profile
    backend.close()


def _assert_everything_generated_was_safe(rig, profile):
    channels = [e.channel for e in profile.electrodes]
    samples = rig.generated_samples(channels)
    assert samples.shape[0] > 0
    limits = profile.limits_v
    assert np.all(samples >= limits[:, 0]) and np.all(samples <= limits[:, 1])
    assert rig.max_slew(channels) <= profile.max_slew_v_per_s * (1 + 1e-6)
    assert np.all(rig.level(channels) == 0)
    assert not rig.open_tasks


def test_hge_gradient_on_hardware_backend_matches_the_device(RE, rig_and_dnpu):
    rig, dnpu, model, profile = rig_and_dnpu
    dnpu.e0.setpoint.put(-0.2)
    estimate = RE(hge_gradient(dnpu)).plan_result
    truth = model.jacobian(dnpu.operating_points())[:, dnpu.indices("control")]
    assert np.max(np.abs(estimate.gradient - truth) / np.maximum(np.abs(truth), 1.0)) < 0.05
    _assert_everything_generated_was_safe(rig, profile)


def test_training_aborted_midway_leaves_only_safe_samples(RE, rig_and_dnpu, documents):
    rig, dnpu, _, profile = rig_and_dnpu
    steps = []

    def abort_after_three_steps(name, doc):
        if name == "event" and "train_loss" in doc["data"]:
            steps.append(doc)
            if len(steps) == 3:
                threading.Thread(target=RE.request_pause).start()

    RE.subscribe(abort_after_three_steps)
    with pytest.raises(RunEngineInterrupted):
        RE(train(dnpu, BooleanGate("XOR"), target_margin_na=1e6))
    RE.abort(reason="operator abort")
    assert [doc for name, doc in documents if name == "stop"][-1]["exit_status"] == "abort"
    _assert_everything_generated_was_safe(rig, profile)


def test_sample_rate_and_slew_limit_cannot_change_after_building(rig_and_dnpu):
    rig, dnpu, _, profile = rig_and_dnpu
    n_tasks = len(rig.tasks)
    with pytest.raises(ReadOnlyError):
        dnpu.sample_rate.put(profile.sample_rate / 5)  # would alias below the amplifier
    with pytest.raises(ReadOnlyError):
        dnpu.max_slew_v_per_s.put(10 * profile.max_slew_v_per_s)
    with pytest.raises(RuntimeError, match="limits are fixed when the device is built"):
        dnpu.e0.configure_limits(-3.0, 3.0, "control")
    assert dnpu.sample_rate.get() == profile.sample_rate
    assert dnpu.max_slew_v_per_s.get() == profile.max_slew_v_per_s
    assert dnpu.e0.limits == (profile.electrodes[0].min_v, profile.electrodes[0].max_v)
    # The backend keeps its own check of the rate, for a stream built some other way.
    wrong_rate = dnpu.last_waveform or dnpu.build_waveform()
    with pytest.raises(ValueError, match="differs from the setup profile's"):
        dnpu.backend.play_and_record(wrong_rate.voltages, profile.sample_rate / 5)
    assert len(rig.tasks) == n_tasks
    renamed = profile.model_copy(update={"name": "other-setup"})
    with pytest.raises(ValueError, match=r"built from another setup profile .*'other-setup'"):
        build_dnpu(renamed, backend=dnpu.backend)
