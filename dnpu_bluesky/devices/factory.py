"""Build a ready DNPU device from a setup profile (the virtual DNPU when none is given)."""

from __future__ import annotations

from ..backend import DAQBackend
from ..config import (
    DEFAULT_AMPLITUDE_V,
    SetupProfile,
    check_dnpu_profile,
    default_sim_profile,
    default_tone_plan,
)
from .backends import make_backend
from .dnpu import DNPU


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
        backend: An already built backend for this profile (default: ``make_backend``);
            one that carries another profile is refused (ValueError).

    Raises:
        dnpu_bluesky.config.ProfileError: (a ValueError) for a profile a DNPU cannot be built
            from, before any backend is opened: the same lines ``load_profile`` and
            ``dnpu-bluesky check-profile`` give (:func:`dnpu_bluesky.config.dnpu_problems`).
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
