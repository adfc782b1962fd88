"""The nidaqmx test double against the INSTALLED nidaqmx package, so the two cannot drift.

Every name the fake offers is registered in ``fake_nidaqmx.SURFACE`` under the dotted path of
its real counterpart. Here each one must exist in the installed package with the same kind
(property or callable) and compatible parameters; every call the backend makes in a full
scenario must bind to the real signature; and the scenario must use the whole surface, so the
list is exactly what the backend needs.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import nidaqmx
import nidaqmx.constants
import nidaqmx.errors
import nidaqmx.system
import numpy as np
import pytest
from fake_nidaqmx import FAKE_CLASSES, MODULE_ATTRIBUTES, SURFACE, FakeNidaqmx
from nidaqmx.error_codes import DAQmxErrors

from dnpu_bluesky.config import load_profile
from dnpu_bluesky.devices.ni_daqmx import HardwareUnavailableError, NIDAQmxBackend

EXAMPLE = Path(__file__).resolve().parents[1] / "profiles" / "setups" / "cdaq-example.yaml"


# Output state files in the test's directory, the SIGTERM handler restored after.
pytestmark = pytest.mark.usefixtures("ni_state_dir")


def _resolve(path: str) -> Any:
    """The object at a dotted path into the installed package (attributes read statically)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = inspect.getattr_static(obj, name)
        return obj
    raise ImportError(path)


def _fake_members() -> dict[str, Any]:
    """Real path -> fake member (property or function) over every public name of the fakes."""
    members: dict[str, Any] = {}
    for cls in (*FAKE_CLASSES, FakeNidaqmx):
        for name, member in vars(cls).items():
            if name.startswith("_") and name not in ("__enter__", "__exit__"):
                continue
            if cls is FakeNidaqmx and name in ("constants", "errors"):
                continue
            function = member.fget if isinstance(member, property) else member
            path = getattr(function, "real_path", None)
            assert path is not None, f"{cls.__name__}.{name} is public but not in SURFACE"
            members[path] = member
    return members


def _parameters(function: Any) -> list[inspect.Parameter]:
    params = list(inspect.signature(function).parameters.values())
    return params[1:] if params and params[0].name == "self" else params


def _run_backend_scenario(fake: FakeNidaqmx) -> None:
    """Everything the backend does: verify, acquire, hold, fail on each side and recover."""
    profile = load_profile(EXAMPLE)
    daq = NIDAQmxBackend(profile, nidaqmx_module=fake)
    n = 400
    ramp = np.concatenate([np.linspace(0, 0.1, n // 2), np.linspace(0.1, 0, n // 2)])
    stream = np.zeros((n, 7))
    stream[:, 0] = ramp
    daq.play_and_record(stream, profile.sample_rate)
    daq.set_dc(np.full(7, 0.05))
    fake.rig.ao_stalls_at = n // 3
    fake.rig.errors["nidaqmx.task.Task.read"] = nidaqmx.errors.DaqReadError(
        "overflow", DAQmxErrors.SAMPLES_NO_LONGER_AVAILABLE.value, 0
    )
    with pytest.raises(nidaqmx.errors.DaqReadError):
        daq.play_and_record(stream, profile.sample_rate)
    fake.rig.errors["nidaqmx.task.Task.wait_until_done"] = nidaqmx.errors.DaqError(
        "AO underflow", DAQmxErrors.UNKNOWN.value
    )
    with pytest.raises(nidaqmx.errors.DaqError):
        daq.play_and_record(stream, profile.sample_rate)
    daq.close()


def test_every_public_fake_name_is_registered() -> None:
    assert set(_fake_members()) == set(SURFACE)


@pytest.mark.parametrize("path", sorted(SURFACE))
def test_fake_name_exists_in_nidaqmx_with_the_same_kind(path: str) -> None:
    real = _resolve(path)
    member = _fake_members()[path]
    if isinstance(member, property):
        assert isinstance(real, property), f"{path} is not a property in nidaqmx"
        return
    function = real.__func__ if isinstance(real, staticmethod | classmethod) else real
    assert callable(function), f"{path} is not callable in nidaqmx"
    real_params = _parameters(function)
    fake_params = _parameters(member)
    real_by_name = {p.name: p for p in real_params}
    positional = [p.name for p in fake_params if p.kind is p.POSITIONAL_OR_KEYWORD]
    real_positional = [p.name for p in real_params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == real_positional[: len(positional)], (
        f"{path}: positional parameters {positional} differ from nidaqmx's {real_positional}"
    )
    for param in fake_params:
        assert param.name in real_by_name, f"{path}: nidaqmx has no parameter {param.name!r}"
        assert real_by_name[param.name].kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    fake_names = {p.name for p in fake_params}
    for param in real_params:
        if param.name not in fake_names and param.kind not in (
            param.VAR_POSITIONAL,
            param.VAR_KEYWORD,
        ):
            assert param.default is not param.empty, (
                f"{path}: nidaqmx requires {param.name!r}, which the fake does not take"
            )


def test_module_attributes_are_the_real_ones() -> None:
    fake = FakeNidaqmx()
    for name, path in MODULE_ATTRIBUTES.items():
        assert getattr(nidaqmx, name) is _resolve(path), name
        assert hasattr(fake, name)
    # Constants and exceptions are not imitated: the fake hands out the real modules.
    assert fake.constants is nidaqmx.constants
    assert fake.errors is nidaqmx.errors


def test_every_backend_call_binds_to_the_real_signature_and_uses_the_whole_surface() -> None:
    fake = FakeNidaqmx()
    _run_backend_scenario(fake)
    calls = fake.rig.calls
    for call in calls:
        real = _resolve(call.path)
        if isinstance(real, property):
            assert call.args == () and call.kwargs == {}
            continue
        function = real.__func__ if isinstance(real, staticmethod | classmethod) else real
        signature = inspect.signature(function)
        has_self = next(iter(signature.parameters), None) == "self"
        args = (object(), *call.args) if has_self else call.args
        try:
            signature.bind(*args, **call.kwargs)
        except TypeError as exc:
            pytest.fail(f"{call.path}{call.args, call.kwargs} does not fit nidaqmx: {exc}")
    assert {call.path for call in calls} == set(SURFACE), "surface entries the backend never uses"


def test_driver_missing_errors_are_not_daq_errors() -> None:
    # Why the backend catches DaqNotFoundError explicitly: `except DaqError` would miss it.
    assert not issubclass(nidaqmx.errors.DaqNotFoundError, nidaqmx.errors.DaqError)
    assert not issubclass(nidaqmx.errors.DaqNotSupportedError, nidaqmx.errors.DaqError)


def _driver_installed() -> bool:
    try:
        nidaqmx.system.System.local().driver_version  # noqa: B018 - the probe is the point
    except (nidaqmx.errors.DaqNotFoundError, nidaqmx.errors.DaqNotSupportedError):
        return False
    return True


@pytest.mark.skipif(_driver_installed(), reason="an NI-DAQmx driver is installed here")
def test_real_package_without_driver() -> None:
    with pytest.raises(nidaqmx.errors.DaqNotFoundError):
        nidaqmx.Task()
    with pytest.raises(HardwareUnavailableError, match="NI-DAQmx driver not found"):
        NIDAQmxBackend(load_profile(EXAMPLE))
