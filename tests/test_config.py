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
from dnpu_bluesky.cli import main
from dnpu_bluesky.config import (
    Amplifier,
    ElectrodeConfig,
    OutputConfig,
    ProfileError,
    SetupProfile,
    SimConfig,
    TriggerConfig,
    default_sim_profile,
    default_tone_plan,
    load_profile,
)
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.devices.build import make_backend
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
    ("electrodes.6.max_v", True, "electrodes.6.max_v:", "expected a number, got true"),
    ("max_slew_v_per_s", True, "max_slew_v_per_s:", "expected a number, got true"),
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
    # Bounded by what the hardware can do: a typo must not allocate terabytes at the first run.
    ("sample_rate", 1e12, "sample_rate:", "less than or equal to 4000000: the fastest DAQmx"),
    ("readout_oversampling", 10**11, "readout_oversampling:", "less than or equal to 1000"),
    ("max_slew_v_per_s", 1e300, "max_slew_v_per_s:", "less than or equal to 80000000"),
    ("amplifier.gain_v_per_a", 1e20, "amplifier.gain_v_per_a:", "or equal to 10000000000000"),
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
    ("sample", 7, "sample:", "valid string (got 7)"),  # sample: 007 in YAML is a number
    ("sample", True, "sample:", "valid string"),
    ("sample", ["B7"], "sample:", "valid string"),
    ("sample", "  ", "sample:", "must not be empty"),
]


@pytest.mark.parametrize(
    ("path", "value", "prefix", "text"),
    BAD_FIELDS,
    ids=lambda v: "dropped" if v is _DROP else str(v),  # the same on every xdist worker
)
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


# -- check-profile makes the checks building the device makes ------------------------------


def _sim() -> dict[str, Any]:
    return yaml.safe_load((SETUPS / "sim.yaml").read_text())


def _unvalidated(data: dict[str, Any]) -> SetupProfile:
    """The profile as ``model_copy(update=...)`` or ``model_construct`` make it: unchecked."""
    parts = {
        "electrodes": tuple(ElectrodeConfig.model_construct(**e) for e in data["electrodes"]),
        "output": OutputConfig.model_construct(**data["output"]),
        "amplifier": Amplifier.model_construct(**data["amplifier"]),
    }
    if data.get("trigger") is not None:
        parts["trigger"] = TriggerConfig.model_construct(**data["trigger"])
    if data.get("sim") is not None:
        parts["sim"] = SimConfig.model_construct(**data["sim"])
    return SetupProfile.model_construct(**{**data, **parts})


def _refused_alike(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    """The problems load_profile reports; build_dnpu must refuse with the very same lines."""
    with pytest.raises(ProfileError) as loaded:
        load_profile(_write(tmp_path, data))
    with pytest.raises(ProfileError) as built:
        build_dnpu(_unvalidated(data))
    assert built.value.problems == loaded.value.problems
    return loaded.value.problems


def _drop_inputs(data: dict[str, Any]) -> None:
    data["electrodes"] = [e for e in data["electrodes"] if e["role"] != "input"]


def _all_controls(data: dict[str, Any]) -> None:
    for electrode in data["electrodes"]:
        electrode["role"] = "control"


SEVEN = "a DNPU has 7 voltage electrodes: list all 7 in channel order"
NO_INPUT = "electrodes: at least one electrode must have role 'input'"
REFUSED_LIKE_BUILD = [
    # (change to sim.yaml, expected problem lines: each the start of one line, in order)
    (lambda d: d["electrodes"].pop(), [f"electrodes: 6 listed; {SEVEN}"]),
    (_drop_inputs, [f"electrodes: 5 listed; {SEVEN}", NO_INPUT]),
    (_all_controls, [NO_INPUT]),
    (
        lambda d: d.update(max_slew_v_per_s=10),
        [
            "max_slew_v_per_s: 10 V/s lets a 20 mV tone reach only 71.62 Hz, but the "
            "perturbation tones of the 5 controls need up to 270 Hz (from 150 Hz up): "
            "raise max_slew_v_per_s to at least 38 V/s"
        ],
    ),
    (
        lambda d: d["amplifier"].update(bandwidth_hz=100),
        [
            "amplifier.bandwidth_hz: 100 Hz is too narrow: the perturbation tones of the 5 "
            "controls need up to 270 Hz (from 150 Hz up); the amplifier's bandwidth must be at "
            "least 270 Hz"
        ],
    ),
    (
        lambda d: (d.update(max_slew_v_per_s=10), d["amplifier"].update(bandwidth_hz=100)),
        ["amplifier.bandwidth_hz: 100 Hz is too narrow", "max_slew_v_per_s: 10 V/s"],
    ),
    (
        lambda d: d.update(sample_rate=500, amplifier={**d["amplifier"], "bandwidth_hz": 250}),
        ["sample_rate: 500 S/s cannot carry the perturbation tones of the 5 controls"],
    ),
    (
        lambda d: [e.update(min_v=0.6, max_v=-1.2) for e in d["electrodes"][:2]],
        [
            f"electrodes.{i}.max_v: must be greater than min_v (max_v -1.2 <= min_v 0.6); "
            "min_v and max_v look swapped"
            for i in range(2)
        ],
    ),
    (
        lambda d: d["electrodes"][3].update(min_v=0.2, max_v=0.1),
        ["electrodes.3.max_v: must be greater than min_v (max_v 0.1 <= min_v 0.2)"],
    ),
]


@pytest.mark.parametrize(("change", "expected"), REFUSED_LIKE_BUILD)
def test_check_profile_refuses_what_build_refuses(
    tmp_path: Path, change: Any, expected: list[str]
) -> None:
    data = _sim()
    change(data)
    problems = _refused_alike(tmp_path, data)
    assert len(problems) == len(expected), problems
    for line, start in zip(problems, expected, strict=True):
        assert line.startswith(start), problems


def test_swapped_limits_fixed_by_swapping(tmp_path: Path) -> None:
    data = _sim()
    data["electrodes"][0].update(min_v=0.6, max_v=-1.2)
    assert len(_refused_alike(tmp_path, data)) == 1
    data["electrodes"][0].update(min_v=-1.2, max_v=0.6)
    assert load_profile(_write(tmp_path, data)) == default_sim_profile()


def test_the_fixes_the_messages_name_are_enough(tmp_path: Path) -> None:
    data = _sim()
    data["max_slew_v_per_s"] = 38
    data["amplifier"]["bandwidth_hz"] = 270
    profile = load_profile(_write(tmp_path, data))
    assert build_dnpu(profile).frequencies().max() == 270.0
    data["max_slew_v_per_s"] = 37
    assert _refused_alike(tmp_path, data)[0].startswith("max_slew_v_per_s: 37 V/s")


def test_hardware_profile_is_refused_before_the_backend_opens(tmp_path: Path) -> None:
    data = _example()
    data["max_slew_v_per_s"] = 10
    # No driver here: build_dnpu would fail with HardwareUnavailableError had it opened one.
    problems = _refused_alike(tmp_path, data)
    assert len(problems) == 1 and problems[0].startswith("max_slew_v_per_s: 10 V/s"), problems


@pytest.mark.parametrize("name", ["sim.yaml", "cdaq-example.yaml"])
def test_built_device_plays_the_checked_tone_plan(name: str) -> None:
    profile = load_profile(SETUPS / name)
    plan = default_tone_plan(profile)
    dnpu = build_dnpu(_unvalidated(profile.to_dict()), backend=make_backend(default_sim_profile()))
    assert dnpu.plan_tones() == plan
    np.testing.assert_array_equal(
        dnpu.frequencies()[list(profile.indices("control"))], plan.frequencies
    )


def test_cli_check_profile_names_what_waits_for_the_hardware(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-profile", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"{EXAMPLE}: valid setup 'cdaq-77K-chip3' (nidaqmx, 7 electrodes, inputs [3, 4])"
    )
    assert out[1].startswith("  full scale +-1000 nA (AI range +-10 V at 1e+07 V/A)")
    assert "channel names and the trigger terminal" in out[2]
    assert "checked when the NI-DAQmx backend opens them" in out[2]
    assert out[3] == "  sample 'chip3 device B2': the profile's sessions record it with every run"
    assert load_profile(EXAMPLE).sample == "chip3 device B2"
    assert main(["check-profile", str(SETUPS / "sim.yaml")]) == 0
    # Nothing waits for hardware, and the sample is optional.
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert load_profile(SETUPS / "sim.yaml").sample is None
    data = _sim()
    data["sim"]["surrogate"] = "device.pt"
    (tmp_path / "device.pt").write_bytes(b"weights")
    assert main(["check-profile", str(_write(tmp_path, data))]) == 0
    assert "surrogate model's electrode count" in capsys.readouterr().out
    data["max_slew_v_per_s"] = 10
    assert main(["check-profile", str(_write(tmp_path, data))]) == 2
    assert "raise max_slew_v_per_s to at least 38 V/s" in capsys.readouterr().err


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


def test_deep_nesting_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 300 + "]" * 300 + "\n")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    (problem,) = caught.value.problems
    assert problem.startswith("not valid YAML: nested more than 20 levels deep at line 1"), problem


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "comments.yaml"
    with path.open("w") as file:  # 200 MB of comments took a minute to parse
        file.write(("# " + "x" * 1021 + "\n") * 200_000)
    with pytest.raises(ProfileError, match="larger than 1 MiB; a setup profile is a few kB"):
        load_profile(path)


def test_aliases_nested_in_themselves_are_reported_briefly(tmp_path: Path) -> None:
    text, previous = "a: &a [x, x, x, x, x, x, x, x, x]\n", "a"
    for name in "bcdefghij":  # 9**10 leaves, if anything walked them all
        text += f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
        previous = name
    path = tmp_path / "laughs.yaml"
    path.write_text(text + f"name: *{previous}\nsample: *{previous}\n")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert any(p.startswith("name: Input should be a valid string") for p in caught.value.problems)
    assert all(len(p) < 200 for p in caught.value.problems)


def test_the_ai_rate_is_bounded(tmp_path: Path) -> None:
    data = _example()
    data.update(sample_rate=1e6, readout_oversampling=40)
    with pytest.raises(ProfileError) as caught:
        load_profile(_write(tmp_path, data))
    assert caught.value.problems == [
        "readout_oversampling: 40 * sample_rate 1e+06 S/s is 4e+07 S/s of AI, above the fastest "
        "DAQmx input (2e+07 S/s)"
    ]


def test_sim_seed_is_bounded(tmp_path: Path) -> None:
    data = yaml.safe_load((SETUPS / "sim.yaml").read_text())
    data["sim"]["seed"] = 2**64
    with pytest.raises(ProfileError, match=r"sim\.seed: .* 4294967295: seeds are 32-bit"):
        load_profile(_write(tmp_path, data))


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
    from dnpu_bluesky.sim import SimulatedBackend, VirtualDNPU

    data = default_sim_profile(seed=2).to_dict()
    data["amplifier"] = {"gain_v_per_a": 2.0e7, "bandwidth_hz": 2000.0, "inverting": inverting}
    profile = SetupProfile.model_validate(data)
    daq = make_backend(profile)
    assert isinstance(daq, SimulatedBackend) and isinstance(daq, DAQBackend)
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
