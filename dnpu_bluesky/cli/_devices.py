"""The devices a command measures: setup profiles, virtual DNPUs, surrogate models."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._common import UsageError

#: Input electrodes of the virtual DNPU for the 3-input sphere task (the best triple found by
#: benchmarks/training.py; the gates use e3 and e4).
SPHERE_INPUTS = (1, 2, 4)


def setups_of(args: argparse.Namespace) -> list[str]:
    """Return the setup profiles asked for: each ``--setup``, else ``DNPU_SETUP`` for one device.

    Parameters
    ----------
    args : argparse.Namespace
        With ``setup`` (a list, one path, or None) and ``devices``.

    Returns
    -------
    list of str
        The paths; [] for virtual DNPUs.
    """
    given = args.setup or []
    given = [given] if isinstance(given, str) else list(given)
    if not given and args.devices == 1 and os.environ.get("DNPU_SETUP"):
        return [os.environ["DNPU_SETUP"]]
    return given


def profiles_of(
    args: argparse.Namespace, seed: int, sphere: bool = False
) -> tuple[list[Any], tuple[float, float] | None]:
    """Return one setup profile per device, each simulating ``--model`` if given.

    The devices are each setup (:func:`setups_of`), or ``--devices`` virtual DNPUs of seeds
    ``seed``, ``seed + 1``, ...

    Parameters
    ----------
    args : argparse.Namespace
        With ``setup``, ``devices`` and ``model``.
    seed : int
        Seed of the first virtual DNPU.
    sphere : bool
        The virtual DNPUs take the sphere task's inputs (:data:`SPHERE_INPUTS`), not the
        gates'.

    Returns
    -------
    profiles : list of SetupProfile
        One per device.
    model_input_range : tuple of float or None
        The range every input electrode of a ``--model`` surrogate covers on the built-in
        setup (the inputs' default levels); None otherwise.

    Raises
    ------
    UsageError
        A bad combination of options, or a surrogate file that cannot be used.
    """
    from ..config import default_sim_profile, load_profile

    count = args.devices
    if count < 1:
        raise UsageError(f"--devices must be at least 1, got {count}")
    setups = setups_of(args)
    inputs = SPHERE_INPUTS if sphere else (3, 4)
    model_input_range = None
    if setups:
        if count > 1:
            raise UsageError("--devices is for virtual DNPUs; give one --setup per device instead")
        profiles = [load_profile(path) for path in setups]
        _check_no_shared_channels(setups, profiles)
    else:
        profiles = [default_sim_profile(seed=seed + k, inputs=inputs) for k in range(count)]
    if args.model:
        if not Path(args.model).is_file():
            raise UsageError(f"--model: no such file: {args.model}")
        if any(profile.backend != "sim" for profile in profiles):
            raise UsageError("--model replaces the simulated device; it needs a sim setup")
        surrogate = str(Path(args.model).resolve())
        if not setups:  # the built-in setup takes the electrode ranges of the file
            limits = _surrogate_ranges(surrogate)
            profiles = [
                default_sim_profile(seed=seed + k, inputs=inputs, limits=limits)
                for k in range(count)
            ]
            input_limits = profiles[0].limits_v[list(profiles[0].indices("input"))]
            model_input_range = (
                float(input_limits[:, 0].max()),
                float(input_limits[:, 1].min()),
            )
        profiles = [
            profile.model_copy(
                update={"sim": profile.sim.model_copy(update={"surrogate": surrogate})}
            )
            for profile in profiles
        ]
    return profiles, model_input_range


def _surrogate_ranges(path: str) -> list[list[float]]:
    """Return the electrode ranges a brains-py surrogate file was trained on, one each."""
    from ..sim import load_brainspy_surrogate

    try:
        model = load_brainspy_surrogate(path)
    except OSError as exc:  # a file that cannot be read to its end (e.g. [Errno 22])
        raise UsageError(f"--model {path}: cannot read it ({exc.strerror or exc})") from None
    if model.n_electrodes != 7:
        raise UsageError(
            f"--model {path}: the surrogate has {model.n_electrodes} electrodes; "
            "a DNPU here has 7 voltage electrodes"
        )
    ranges = [[float(low), float(high)] for low, high in model.voltage_ranges]
    for index, (low, high) in enumerate(ranges):
        if not low < 0 < high:
            raise UsageError(
                f"--model {path}: electrode e{index} was trained on {low:g} .. {high:g} V, "
                "which leaves out 0 V, where every stream starts and ends; give a --setup "
                "whose limits the surrogate covers"
            )
    return ranges


def _check_no_shared_channels(paths: Sequence[str], profiles: Sequence[Any]) -> None:
    """Refuse setups side by side that name the same DAQ channel.

    One channel cannot drive (or read) two devices, and DAQmx would only say so once the run
    is open.
    """
    owner: dict[str, int] = {}
    for index, profile in enumerate(profiles):
        if profile.backend != "nidaqmx":
            continue  # every virtual DNPU has a simulated DAQ of its own
        channels = [electrode.channel for electrode in profile.electrodes]
        for channel in [*channels, profile.output.channel]:
            first = owner.setdefault(channel.lower(), index)  # DAQmx names ignore case
            if first != index:
                raise UsageError(
                    f"--setup {paths[index]} uses DAQ channel {channel}, as does --setup "
                    f"{paths[first]}: each device side by side needs channels of its own"
                )


@contextlib.contextmanager
def built(profiles: Sequence[Any]) -> Iterator[list[tuple[Any, Any]]]:
    """Build a DNPU for each profile; close their backends (every electrode at 0 V) at the end.

    They are built before the storage opens, so that a missing driver or a wrong channel is
    reported at once, not after seconds of starting storage.

    Parameters
    ----------
    profiles : list of SetupProfile
        One per device.

    Yields
    ------
    list of tuple
        ``(dnpu, profile)`` pairs, named ``dnpu`` (or ``dnpu1``, ``dnpu2``, ... for several).
    """
    from ..devices import build_dnpu

    several = len(profiles) > 1
    devices: list[tuple[Any, Any]] = []
    try:
        for k, profile in enumerate(profiles):
            dnpu = build_dnpu(profile, name=f"dnpu{k + 1}" if several else "dnpu")
            devices.append((dnpu, profile))
        yield devices
    finally:
        for dnpu, _ in devices:
            dnpu.backend.close()


def virtual_device_seed(profile: Any) -> int | None:
    """Return the seed of the built-in virtual DNPU a profile simulates.

    Parameters
    ----------
    profile : SetupProfile
        The device's profile.

    Returns
    -------
    int or None
        The seed; None for hardware and surrogate models.
    """
    if profile.backend != "sim" or profile.sim.surrogate is not None:
        return None
    return profile.sim.seed


def check_device(dnpu: Any, past: dict[str, Any]) -> None:
    """Refuse a device whose controls are not where a past run had them.

    When it is another device than the run measured, a note says so on stderr.

    See :func:`dnpu_bluesky.continuation.check_same_device`.

    Parameters
    ----------
    dnpu : DNPU
        The device to measure.
    past : dict
        From :func:`dnpu_bluesky.continuation.past_training`.

    Raises
    ------
    ValueError
        The controls are on other electrodes or channels.
    """
    from ..continuation import check_same_device

    if not check_same_device(dnpu, past):
        print(
            f"note: run {past['uid'][:8]} was measured on another device than this one",
            file=sys.stderr,
        )
