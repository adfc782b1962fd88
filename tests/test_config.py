"""Setup profiles: the examples load, every bad field is refused naming it, sim profile works."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nidaqmx.errors
import nidaqmx.system
import numpy as np
import pydantic
import pytest
import yaml

from dnpu_bluesky.backend import DAQBackend
from dnpu_bluesky.config import (
    ProfileError,
    SetupProfile,
    default_sim_profile,
    load_profile,
)
from dnpu_bluesky.devices.backends import make_backend
from dnpu_bluesky.devices.ni_daqmx import HardwareUnavailableError

SETUPS = Path(__file__).resolve().parents[1] / "profiles" / "setups"
EXAMPLE = SETUPS / "cdaq-example.yaml"


def _driver_installed() -> bool:
    try:
        nidaqmx.system.System.local().driver_version  # noqa: B018 - the probe is the point
    except (nidaqmx.errors.DaqNotFoundError, nidaqmx.errors.DaqNotSupportedError):
        return False
    return True


def _example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def _write(tmp_path: Path, data: Any, name: str = "setup.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_example_profiles_load() -> None:
    cdaq = load_profile(EXAMPLE)
    assert cdaq.backend == "nidaqmx"
    assert cdaq.electrode_names == ("e0", "e1", "e2", "e3", "e4", "e5", "e6")
    assert cdaq.indices("input") == (3, 4)
    assert cdaq.indices("control") == (0, 1, 2, 5, 6)
    assert cdaq.trigger is not None
    assert cdaq.trigger.start_trigger_source == "/cDAQ1/ao/StartTrigger"
    assert cdaq.ai_sample_rate == 40_000.0
    assert cdaq.limits_v.shape == (7, 2)
    assert cdaq.limits_v[3].tolist() == [-0.7, 0.3]
    sim = load_profile(SETUPS / "sim.yaml")
    assert sim == default_sim_profile()


def test_default_sim_profile_is_valid_and_seeded() -> None:
    profile = default_sim_profile(seed=5)
    assert profile.backend == "sim"
    assert profile.sim is not None and profile.sim.seed == 5
    assert len(profile.electrodes) == 7
    for electrode in profile.electrodes:
        assert electrode.min_v < 0 < electrode.max_v
    # Round trip through plain data: the provenance record rebuilds the same profile.
    data = json.loads(json.dumps(profile.to_dict()))
    assert SetupProfile.model_validate(data) == profile


def test_sim_block_defaults_when_left_out(tmp_path: Path) -> None:
    data = yaml.safe_load((SETUPS / "sim.yaml").read_text())
    del data["sim"]
    profile = load_profile(_write(tmp_path, data))
    assert profile.sim is not None and profile.sim.seed == 0 and profile.sim.surrogate is None


def test_profile_is_frozen() -> None:
    profile = default_sim_profile()
    with pytest.raises(pydantic.ValidationError):
        profile.max_slew_v_per_s = 1e6
    with pytest.raises(pydantic.ValidationError):
        profile.electrodes[0].max_v = 5.0


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_DROP = object()

BAD_FIELDS = [
    # (path to change, new value, expected start of the problem line, expected text)
    ("electrodes.2.max_v", -1.3, "electrodes.2.max_v:", "must be greater than min_v"),
    ("electrodes.0.min_v", 0.1, "electrodes.0.min_v:", "below 0 V"),
    ("electrodes.1.max_v", 12.0, "electrodes.1.max_v:", "DAQ range"),
    ("electrodes.1.min_v", -11.0, "electrodes.1.min_v:", "DAQ range"),
    ("electrodes.6.max_v", 0.0, "electrodes.6.max_v:", "above 0 V"),
    ("electrodes.3.role", "gate", "electrodes.3.role:", "'input' or 'control'"),
    ("electrodes.4.name", "e1", "electrodes.4.name:", "repeats electrodes.1"),
    ("electrodes.5.channel", "cDAQ1Mod1/ao0", "electrodes.5.channel:", "repeats electrodes.0"),
    ("electrodes.2.name", "e 2", "electrodes.2.name:", "pattern"),
    ("electrodes.0.gain", 2.0, "electrodes.0.gain:", "unknown key"),
    ("electrodes", [], "electrodes:", "at least 1"),
    ("sample_rate", 0, "sample_rate:", "greater than 0"),
    ("sample_rate", float("nan"), "sample_rate:", "finite"),
    ("readout_oversampling", 2.5, "readout_oversampling:", "integer"),
    ("readout_oversampling", 0, "readout_oversampling:", "greater than or equal to 1"),
    ("max_slew_v_per_s", -20, "max_slew_v_per_s:", "greater than 0"),
    ("amplifier.gain_v_per_a", 0, "amplifier.gain_v_per_a:", "greater than 0"),
    ("amplifier.bandwidth_hz", -1, "amplifier.bandwidth_hz:", "greater than 0"),
    ("amplifier.bandwidth_hz", 30_000, "amplifier.bandwidth_hz:", "readout_oversampling >= 6"),
    ("output.ai_range_v", 20, "output.ai_range_v:", "less than or equal to 10"),
    ("output.terminal_config", "single", "output.terminal_config:", "'diff'"),
    ("output", _DROP, "output:", "missing required key"),
    ("backend", "nidaq", "backend:", "'sim' or 'nidaqmx'"),
    ("trigger", _DROP, "trigger:", "required for backend 'nidaqmx'"),
    ("trigger.start_trigger_source", "cDAQ1/ao/StartTrigger", "trigger.start_trigger_source:", ""),
    ("sim", {"seed": 1}, "sim:", "only allowed with backend 'sim'"),
    ("sample_rte", 10, "sample_rte:", "unknown key"),
    ("name", "", "name:", "at least 1 character"),
]


@pytest.mark.parametrize(("path", "value", "prefix", "text"), BAD_FIELDS, ids=lambda v: str(v))
def test_bad_field_is_refused_naming_it(
    tmp_path: Path, path: str, value: Any, prefix: str, text: str
) -> None:
    data = _example()
    if value is _DROP:
        del data[path]
    else:
        _set(data, path, value)
    with pytest.raises(ProfileError) as caught:
        load_profile(_write(tmp_path, data))
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(prefix), problems
    assert text in problems[0], problems
    assert problems[0] in str(caught.value)


def test_all_roles_input_is_refused(tmp_path: Path) -> None:
    data = _example()
    for electrode in data["electrodes"]:
        electrode["role"] = "input"
    with pytest.raises(ProfileError, match="at least one electrode must have role 'control'"):
        load_profile(_write(tmp_path, data))


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    data = _example()
    data["electrodes"][2]["max_v"] = -1.5
    data["amplifier"]["gain_v_per_a"] = -1
    data["extra"] = True
    with pytest.raises(ProfileError) as caught:
        load_profile(_write(tmp_path, data))
    heads = sorted(p.split(":")[0] for p in caught.value.problems)
    assert heads == ["amplifier.gain_v_per_a", "electrodes.2.max_v", "extra"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="file not found"):
        load_profile(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nelectrodes: [\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="must be a mapping"):
        load_profile(_write(tmp_path, ["a", "b"]))


def test_duplicate_key_is_refused_not_overwritten(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        "max_slew_v_per_s: 200", "max_slew_v_per_s: 200\nmax_slew_v_per_s: 5000"
    )
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match="duplicate key 'max_slew_v_per_s'"):
        load_profile(path)


def test_relative_surrogate_path_is_taken_from_the_profile_folder(tmp_path: Path) -> None:
    data = yaml.safe_load((SETUPS / "sim.yaml").read_text())
    data["sim"]["surrogate"] = "models/device.pt"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "device.pt").write_bytes(b"weights")
    profile = load_profile(_write(tmp_path, data))
    assert profile.sim is not None
    assert Path(profile.sim.surrogate) == (tmp_path / "models" / "device.pt").resolve()
    data["sim"]["surrogate"] = "models/missing.pt"
    with pytest.raises(ProfileError, match=r"sim\.surrogate: file not found"):
        load_profile(_write(tmp_path, data))


# -- make_backend ------------------------------------------------------------------------


def _hold_stream(profile: SetupProfile, point: np.ndarray, n_hold: int = 3000) -> np.ndarray:
    """Ramp 0 -> point within the slew limit, hold, ramp back to 0 V."""
    n_ramp = int(np.ceil(np.max(np.abs(point)) * profile.sample_rate / profile.max_slew_v_per_s))
    up = np.linspace(0, 1, n_ramp + 2)[:, np.newaxis] * point
    return np.vstack([up, np.tile(point, (n_hold, 1)), up[::-1]])


@pytest.mark.parametrize("inverting", [True, False])
def test_sim_backend_reads_the_model_through_the_profile_amplifier(inverting: bool) -> None:
    from dnpu_bluesky.sim import SimulatedDAQ, VirtualDNPU

    data = default_sim_profile(seed=2).to_dict()
    data["amplifier"] = {"gain_v_per_a": 2.0e7, "bandwidth_hz": 2000.0, "inverting": inverting}
    profile = SetupProfile.model_validate(data)
    daq = make_backend(profile)
    assert isinstance(daq, SimulatedDAQ) and isinstance(daq, DAQBackend)
    assert isinstance(daq.model, VirtualDNPU) and daq.model.seed == 2
    np.testing.assert_array_equal(daq.model.voltage_ranges, profile.limits_v)
    json.dumps(daq.describe())
    point = np.array([0.3, -0.5, 0.2, -0.4, 0.1, -0.8, 0.5])
    stream = _hold_stream(profile, point)
    volts = daq.play_and_record(stream, profile.sample_rate).ai_volts
    n_ramp = (len(stream) - 3000) // 2
    plateau = volts[n_ramp + 500 : n_ramp + 3000].mean()
    sign = -1.0 if inverting else 1.0
    measured_na = sign * plateau / (2.0e7 * 1e-9)  # V / (V/nA)
    expected_na = float(daq.model.current(point))
    assert abs(expected_na) > 5.0  # a point that carries current, so the check means something
    assert measured_na == pytest.approx(expected_na, abs=0.5)
    daq.close()


def test_sim_seed_selects_the_device() -> None:
    point = np.array([0.3, -0.5, 0.2, -0.4, 0.1, -0.8, 0.5])
    a = make_backend(default_sim_profile(seed=0)).model.current(point)
    b = make_backend(default_sim_profile(seed=1)).model.current(point)
    assert a != b


def test_sim_backend_needs_seven_electrodes() -> None:
    data = default_sim_profile().to_dict()
    data["electrodes"] = data["electrodes"][:6]
    with pytest.raises(ValueError, match="6 electrodes; the virtual DNPU has 7"):
        make_backend(SetupProfile.model_validate(data))


def test_sim_backend_with_a_brainspy_surrogate(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from dnpu_bluesky.sim import SurrogateModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    state = {f"raw_model.{k}": v.double() for k, v in net.state_dict().items()}

    def save(ranges: list[list[float]]) -> None:
        info = {
            "electrode_info": {
                "activation_electrodes": {"voltage_ranges": np.array(ranges)},
                "output_electrodes": {"amplification": [28.5]},
            }
        }
        torch.save({"model_state_dict": state, "info": info}, tmp_path / "device.pt")

    data = yaml.safe_load((SETUPS / "sim.yaml").read_text())
    data["sim"]["surrogate"] = "device.pt"
    path = _write(tmp_path, data)
    save([[-1.5, 1.0]] * 7)
    daq = make_backend(load_profile(path))
    assert isinstance(daq.model, SurrogateModel)
    save([[-1.5, 1.0]] * 6 + [[-1.0, 0.5]])  # e6 trained only down to -1.0 V
    with pytest.raises(ValueError, match=r"electrodes\.6 \(e6\).*exceed the surrogate's range"):
        make_backend(load_profile(path))


@pytest.mark.skipif(_driver_installed(), reason="an NI-DAQmx driver is installed here")
def test_nidaqmx_profile_without_driver_fails_clearly() -> None:
    with pytest.raises(HardwareUnavailableError, match="use the sim backend"):
        make_backend(load_profile(EXAMPLE))
