"""Build the DAQ backend a setup profile asks for: the virtual instrument or NI-DAQmx."""

from __future__ import annotations

import numpy as np

from ..backend import DAQBackend
from ..config import SetupProfile

__all__ = ["make_backend"]


def make_backend(profile: SetupProfile) -> DAQBackend:
    """The backend for ``profile``.

    ``backend: sim`` gives a :class:`~dnpu_bluesky.sim.SimulatedDAQ` whose device is the
    seeded :class:`~dnpu_bluesky.sim.VirtualDNPU` with the profile's electrode limits (or the
    brains-py surrogate named in ``sim.surrogate``) read through
    :class:`~dnpu_bluesky.sim.Electronics` with the profile's amplifier and AI range.
    ``backend: nidaqmx`` gives a :class:`~dnpu_bluesky.devices.ni_daqmx.NIDAQmxBackend`.

    Args:
        profile: A validated setup profile.

    Returns:
        The backend, ready to play streams.

    Raises:
        ValueError: if the simulated device does not fit the profile (electrode count, or
            limits beyond a surrogate's trained ranges).
        dnpu_bluesky.devices.ni_daqmx.HardwareUnavailableError: NI-DAQmx driver missing.
    """
    if profile.backend == "nidaqmx":
        from .ni_daqmx import NIDAQmxBackend

        return NIDAQmxBackend(profile)
    return _make_sim(profile)


def _make_sim(profile: SetupProfile) -> DAQBackend:
    from ..sim import Electronics, SimulatedDAQ, VirtualDNPU, load_brainspy_surrogate

    sim = profile.sim
    seed = sim.seed if sim is not None else 0
    limits = profile.limits_v
    if sim is not None and sim.surrogate is not None:
        model = load_brainspy_surrogate(sim.surrogate)
        _check_fits(profile, model.n_electrodes, np.asarray(model.voltage_ranges), "surrogate")
    else:
        _check_fits(profile, VirtualDNPU.n_electrodes, None, "virtual DNPU")
        model = VirtualDNPU(seed, voltage_ranges=limits)
    amplifier = profile.amplifier
    electronics = Electronics(
        gain_v_per_na=amplifier.gain_v_per_a * 1e-9,
        bandwidth_hz=amplifier.bandwidth_hz,
        inverting=amplifier.inverting,
        adc_range_v=profile.output.ai_range_v,
    )
    # The hardware backend's checks, from the same profile: limits and slew.
    return SimulatedDAQ(
        model, electronics, seed, limits=limits, max_slew_v_per_s=profile.max_slew_v_per_s
    )


def _check_fits(
    profile: SetupProfile, n_electrodes: int, ranges: np.ndarray | None, what: str
) -> None:
    if len(profile.electrodes) != n_electrodes:
        raise ValueError(
            f"profile {profile.name!r} has {len(profile.electrodes)} electrodes; "
            f"the {what} has {n_electrodes}"
        )
    if ranges is None:
        return
    for i, electrode in enumerate(profile.electrodes):
        low, high = ranges[i]
        if electrode.min_v < low or electrode.max_v > high:
            raise ValueError(
                f"electrodes.{i} ({electrode.name}): limits [{electrode.min_v:g}, "
                f"{electrode.max_v:g}] V exceed the {what}'s range [{low:g}, {high:g}] V"
            )
