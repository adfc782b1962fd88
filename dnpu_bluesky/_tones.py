"""The default perturbation tones of a new DNPU, and the profile fields that limit them.

Internal to :mod:`dnpu_bluesky.config`, which re-exports these names: the profile checks and
the device plan the same tones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SetupProfile
    from .hge.frequencies import FrequencyPlan

# The tones a freshly built DNPU puts on its controls (see :func:`default_tone_plan`); the
# device's own defaults (``dnpu_bluesky.devices.dnpu``) are these same numbers.
#: Default analysis window, seconds.
DEFAULT_WINDOW_S = 0.1
#: Lowest default tone: above the 1/f corner of a typical setup, so tones see white noise.
DEFAULT_MIN_FREQUENCY_HZ = 150.0
#: Default tone amplitude on each control electrode, volts (METHOD.md: 5 to 30 mV).
DEFAULT_AMPLITUDE_V = 0.02
#: Highest intermodulation order the default tones are kept clear of.
DEFAULT_TONE_ORDER = 3
#: Share of the slew limit a tone may use (a sine of amplitude a at f slews 2 pi f a).
TONE_SLEW_SHARE = 0.9


def slew_limited_frequency_hz(max_slew_v_per_s: float, amplitude_v: float) -> float:
    """Return the fastest tone of amplitude ``amplitude_v`` within the slew limit's share.

    Parameters
    ----------
    max_slew_v_per_s : float
        The setup's slew limit, V/s.
    amplitude_v : float
        Tone amplitude, volts.

    Returns
    -------
    float
        The frequency in Hz at which the tone uses :data:`TONE_SLEW_SHARE` of the limit.
    """
    return TONE_SLEW_SHARE * max_slew_v_per_s / (2 * math.pi * amplitude_v)


def default_tone_plan(profile: SetupProfile) -> FrequencyPlan:
    """Return the tones :func:`~dnpu_bluesky.devices.build_dnpu` puts on the profile's controls.

    One tone of :data:`DEFAULT_AMPLITUDE_V` per control electrode, in a
    :data:`DEFAULT_WINDOW_S` window, from :data:`DEFAULT_MIN_FREQUENCY_HZ` up to the lowest of
    the amplifier bandwidth, the slew limit's fastest tone and 0.4 x ``sample_rate``.

    Parameters
    ----------
    profile : SetupProfile
        The setup profile.

    Returns
    -------
    FrequencyPlan
        The tones, one per control electrode.

    Raises
    ------
    dnpu_bluesky.hge.FrequencyPlanError
        One line per profile field that keeps the tones
        from fitting (``amplifier.bandwidth_hz``, ``max_slew_v_per_s`` or ``sample_rate``),
        saying which value would do.
    """
    # Imported here: check-profile stays fast when nothing needs the signal core.
    from .hge.frequencies import FrequencyPlanError, plan_frequencies

    n_controls = len(profile.indices("control"))
    slew_hz = slew_limited_frequency_hz(profile.max_slew_v_per_s, DEFAULT_AMPLITUDE_V)
    bandwidth_hz = profile.amplifier.bandwidth_hz

    def plan(band_hz: float | None) -> FrequencyPlan:
        return plan_frequencies(
            n_controls,
            DEFAULT_WINDOW_S,
            profile.sample_rate,
            band_hz=band_hz,
            order=DEFAULT_TONE_ORDER,
            min_frequency_hz=DEFAULT_MIN_FREQUENCY_HZ,
        )

    try:
        return plan(min(bandwidth_hz, slew_hz))
    except FrequencyPlanError:
        pass
    # The tones are chosen lowest first, so a band that is too narrow only cuts the plan the
    # sample rate alone allows: its highest tone is what the other limits must reach.
    tones = f"the perturbation tones of the {n_controls} controls"
    try:
        top_hz = max(plan(None).frequencies)
    except FrequencyPlanError as exc:
        raise FrequencyPlanError(
            f"sample_rate: {profile.sample_rate:g} S/s cannot carry {tones}: {exc}"
        ) from None
    need = f"{tones} need up to {top_hz:g} Hz (from {DEFAULT_MIN_FREQUENCY_HZ:g} Hz up)"
    problems = []
    if bandwidth_hz < top_hz:
        problems.append(
            f"amplifier.bandwidth_hz: {bandwidth_hz:g} Hz is too narrow: {need}; "
            f"the amplifier's bandwidth must be at least {top_hz:g} Hz"
        )
    if slew_hz < top_hz:
        slew_needed = math.ceil(top_hz * 2 * math.pi * DEFAULT_AMPLITUDE_V / TONE_SLEW_SHARE)
        problems.append(
            f"max_slew_v_per_s: {profile.max_slew_v_per_s:g} V/s lets a "
            f"{DEFAULT_AMPLITUDE_V * 1e3:g} mV tone reach only {slew_hz:.4g} Hz, but {need}: "
            f"raise max_slew_v_per_s to at least {slew_needed:g} V/s"
        )
    raise FrequencyPlanError("\n".join(problems))
