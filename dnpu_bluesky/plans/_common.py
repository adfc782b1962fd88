"""What the plans share: start-document metadata, checks of their arguments, moving controls.

Internal to :mod:`dnpu_bluesky.plans`.
"""

import math
import numbers
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps

from .. import __version__
from .._provenance import software_versions
from ..devices.dnpu import DNPU
from .stubs import Plan


def start_metadata(
    dnpu: DNPU, plan_name: str, plan_args: dict[str, Any], md: dict | None
) -> dict[str, Any]:
    """Start-document metadata: plan identity, the device's full setup, package version.

    Parameters
    ----------
    dnpu : DNPU
        The device the plan measures.
    plan_name : str
        The plan's name.
    plan_args : dict
        The plan's arguments, as the start document shows them.
    md : dict, optional
        The caller's extra metadata, which wins over the rest.

    Returns
    -------
    dict
        The start document's metadata.
    """
    metadata: dict[str, Any] = {
        "plan_name": plan_name,
        "plan_args": plan_args,
        "detectors": [dnpu.name],
        "dnpu_bluesky_version": __version__,
        "software": software_versions(),
        **device_setup(dnpu),
    }
    metadata.update(md or {})
    return metadata


def device_setup(dnpu: DNPU) -> dict[str, Any]:
    """Return the device's part of the start document.

    Parameters
    ----------
    dnpu : DNPU
        The device.

    Returns
    -------
    dict
        ``dnpu_backend`` (the backend's description) and ``hge`` (its HGE settings).
    """
    return {
        "dnpu_backend": dnpu.backend.describe(),
        "hge": {
            "frequencies_hz": dnpu.frequencies().tolist(),
            "amplitudes_v": dnpu.amplitudes().tolist(),
            "window_s": float(dnpu.window_s.get()),
            "sample_rate": float(dnpu.sample_rate.get()),
            "mode": dnpu.mode.get(),
        },
    }


def check_positive(**values: float) -> None:
    """Refuse, before anything runs, a setting that is not a finite positive number.

    Parameters
    ----------
    **values : float
        The settings by name.

    Raises
    ------
    ValueError
        Naming the first setting that is not a finite positive number.
    """
    for name, value in values.items():
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse, before anything runs, a setting that is not one of its choices.

    Parameters
    ----------
    name : str
        The setting's name.
    value : str
        Its value.
    choices : tuple of str
        The values it may take.

    Raises
    ------
    ValueError
        Naming the setting, its choices and the value given.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def move_controls(dnpu: DNPU, values: np.ndarray) -> Plan:
    """Set the control electrodes, in channel order, to ``values`` volts (one ``mv``).

    Parameters
    ----------
    dnpu : DNPU
        The device.
    values : numpy.ndarray
        One voltage per control electrode.

    Yields
    ------
    Msg
        The plan's messages.
    """
    args: list[Any] = []
    for index, value in zip(dnpu.indices("control"), values, strict=True):
        args += [dnpu.electrodes[index].setpoint, float(value)]
    yield from bps.mv(*args)
