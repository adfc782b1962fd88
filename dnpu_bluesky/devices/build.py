"""Build what a setup profile describes: its DAQ backend and the DNPU device on it.

``make_backend`` gives the backend (:class:`~dnpu_bluesky.sim.SimulatedBackend` for
``backend: sim``, :class:`~dnpu_bluesky.devices.ni_daqmx.NIDAQmxBackend` for
``backend: nidaqmx``); ``build_dnpu`` gives the DNPU with the profile's limits, roles and
default tones on it.
"""

from __future__ import annotations

import numpy as np

from ..backend import DAQBackend
from ..config import (
    DEFAULT_AMPLITUDE_V,
    SetupProfile,
    check_dnpu_profile,
    default_sim_profile,
    default_tone_plan,
)
from .dnpu import DNPU

__all__ = ["build_dnpu", "make_backend"]


def build_dnpu(
    profile: SetupProfile | None = None,
    *,
    name: str = "dnpu",
    backend: DAQBackend | None = None,
) -> DNPU:
    """Build a DNPU device wired to the profile's backend, with limits, roles and default tones.

    Parameters
    ----------
    profile
        A validated setup profile; the built-in simulated setup when None.
    name
        The ophyd name (prefix of every data key).
    backend
        An already built backend for this profile (default: :func:`make_backend`); one that
        carries another profile is refused.

    Returns
    -------
    DNPU
        The device, its electrodes limited and assigned their roles as the profile says.

    Raises
    ------
    dnpu_bluesky.config.ProfileError
        (a ValueError) for a profile a DNPU cannot be built from, before any backend is
        opened: the same lines ``load_profile`` and ``dnpu-bluesky check-profile`` give
        (:func:`dnpu_bluesky.config.dnpu_problems`).
    ValueError
        For a backend built from another profile.
    """
    profile = profile or default_sim_profile()
    check_dnpu_profile(profile)
    if backend is None:
        backend = make_backend(profile)
    elif getattr(backend, "profile", profile) != profile:  # the limits and roles must agree
        raise ValueError(
            f"the backend was built from another setup profile ({backend.profile.name!r}) "
            f"than the one given ({profile.name!r}); pass the backend's own profile"
        )
    dnpu = DNPU(name=name, backend=backend)
    for electrode, spec in zip(dnpu.electrodes, profile.electrodes, strict=True):
        electrode.configure_limits(spec.min_v, spec.max_v, spec.role, spec.channel)
    dnpu.inputs.put(",".join(dnpu.input_names))
    dnpu.amplifier.gain_v_per_a.put(profile.amplifier.gain_v_per_a)
    dnpu.amplifier.bandwidth_hz.put(profile.amplifier.bandwidth_hz)
    dnpu.amplifier.inverting.put(profile.amplifier.inverting)
    dnpu.configure_timing(profile.sample_rate, profile.max_slew_v_per_s)
    dnpu.setup_profile = profile
    # The plan the profile check made: the device's settings are the profile's.
    for signal, value in dnpu.tone_settings(default_tone_plan(profile), DEFAULT_AMPLITUDE_V):
        signal.put(value)
    return dnpu


def make_backend(profile: SetupProfile) -> DAQBackend:
    """Make the DAQ backend for ``profile``.

    ``backend: sim`` gives a :class:`~dnpu_bluesky.sim.SimulatedBackend` whose device is the
    seeded :class:`~dnpu_bluesky.sim.VirtualDNPU` with the profile's electrode limits (or the
    brains-py surrogate named in ``sim.surrogate``) read through
    :class:`~dnpu_bluesky.sim.Electronics` with the profile's amplifier and AI range.
    ``backend: nidaqmx`` gives a :class:`~dnpu_bluesky.devices.ni_daqmx.NIDAQmxBackend`.

    Parameters
    ----------
    profile
        A validated setup profile.

    Returns
    -------
    DAQBackend
        The backend, ready to play streams.

    Raises
    ------
    ValueError
        If the simulated device does not fit the profile (electrode count, or limits beyond
        a surrogate's trained ranges).
    dnpu_bluesky.devices.ni_daqmx.HardwareUnavailableError
        If the NI-DAQmx driver is missing.
    """
    if profile.backend == "nidaqmx":
        from .ni_daqmx import NIDAQmxBackend

        return NIDAQmxBackend(profile)
    return _make_simulated(profile)


def _make_simulated(profile: SetupProfile) -> DAQBackend:
    from ..sim import Electronics, SimulatedBackend, VirtualDNPU, load_brainspy_surrogate

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
    return SimulatedBackend(
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
