"""Build a ready DNPU device from a setup profile (the virtual DNPU when none is given)."""

from __future__ import annotations

from ..backend import DAQBackend
from ..config import SetupProfile, default_sim_profile
from .backends import make_backend
from .dnpu import DEFAULT_AMPLITUDE_V, DNPU, ELECTRODE_NAMES


def build_dnpu(
    profile: SetupProfile | None = None,
    *,
    name: str = "dnpu",
    backend: DAQBackend | None = None,
) -> DNPU:
    """A DNPU device wired to the profile's backend, with limits, roles and default tones.

    Args:
        profile: A validated setup profile; the built-in simulated setup when None.
        name: The ophyd name (prefix of every data key).
        backend: An already built backend for this profile (default: ``make_backend``).

    Raises:
        ValueError: if the profile does not describe exactly seven voltage electrodes.
    """
    profile = profile or default_sim_profile()
    if len(profile.electrodes) != len(ELECTRODE_NAMES):
        raise ValueError(
            f"profile {profile.name!r} has {len(profile.electrodes)} electrodes; a DNPU has "
            f"{len(ELECTRODE_NAMES)} voltage electrodes"
        )
    backend = backend if backend is not None else make_backend(profile)
    dnpu = DNPU(name=name, backend=backend)
    for electrode, spec in zip(dnpu.electrodes, profile.electrodes, strict=True):
        electrode.configure_limits(spec.min_v, spec.max_v, spec.role, spec.channel)
    dnpu.amplifier.gain_v_per_a.put(profile.amplifier.gain_v_per_a)
    dnpu.amplifier.bandwidth_hz.put(profile.amplifier.bandwidth_hz)
    dnpu.amplifier.inverting.put(profile.amplifier.inverting)
    dnpu.sample_rate.put(float(profile.sample_rate))
    dnpu.max_slew_v_per_s.put(float(profile.max_slew_v_per_s))
    dnpu.setup_profile = profile
    for signal, value in dnpu.tone_settings(dnpu.plan_tones(), DEFAULT_AMPLITUDE_V):
        signal.put(value)
    return dnpu
