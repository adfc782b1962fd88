"""Setup profiles: one YAML file describes one setup, simulated or hardware, and is validated.

A profile names the electrodes in channel order with their roles and voltage limits, the
output channel, the current amplifier, the sample clock and the trigger routing. Everything a
device needs to stay safe comes from here, so a profile is checked completely before any
device is built from it: unknown keys, duplicate keys, limits that do not contain 0 V or leave
the DAQ's range, and a readout that would alias are all refused with one line per problem
naming the field. :func:`load_profile` also makes every check that building a DNPU from the
profile makes without hardware (:func:`dnpu_problems`: seven electrodes, an input, room for
the default tones), so a profile it accepts builds; only the channel names and trigger terminal
wait for the hardware.

Decision on aliasing: the amplifier bandwidth must not exceed the AI Nyquist frequency
(``readout_oversampling * sample_rate / 2``). This is an error, not a warning: the amplifier is
the only anti-alias filter in front of the ADC, and an interferer folded onto a perturbation
tone biases a gradient without any visible sign. Raising ``readout_oversampling`` costs
nothing but AI rate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._profile_reading import FIELD_LINES, ProfileReadError, describe_error, read_profile_yaml
from ._tones import (
    DEFAULT_AMPLITUDE_V,
    DEFAULT_MIN_FREQUENCY_HZ,
    DEFAULT_TONE_ORDER,
    DEFAULT_WINDOW_S,
    TONE_SLEW_SHARE,
    default_tone_plan,
    slew_limited_frequency_hz,
)

__all__ = [
    "DAQ_LIMIT_V",
    "DEFAULT_AMPLITUDE_V",
    "DEFAULT_MIN_FREQUENCY_HZ",
    "DEFAULT_TONE_ORDER",
    "DEFAULT_WINDOW_S",
    "TONE_SLEW_SHARE",
    "Amplifier",
    "ElectrodeConfig",
    "OutputConfig",
    "ProfileError",
    "SetupProfile",
    "SimConfig",
    "TriggerConfig",
    "default_sim_profile",
    "default_tone_plan",
    "dnpu_problems",
    "load_profile",
    "slew_limited_frequency_hz",
]

#: Output range of the DAQ's analog outputs, volts; no electrode limit may lie beyond it.
DAQ_LIMIT_V = 10.0
#: Voltage electrodes of a DNPU; a profile lists exactly this many.
N_ELECTRODES = 7
#: Fastest AO sample rate, S/s. NI's fastest DAQmx analog outputs update at a few MS/s
#: (X Series: 3.3 MS/s on one channel); the example setup's NI 9264 does 25 kS/s per channel.
#: At this rate one HGE stream (about 0.55 s) of seven electrodes takes 120 MB.
MAX_SAMPLE_RATE = 4e6
#: Fastest AI sample rate (``readout_oversampling * sample_rate``), S/s: NI's fastest DAQmx
#: analog inputs (NI 9775: 20 MS/s). One HGE stream's readout then takes 90 MB.
MAX_AI_SAMPLE_RATE = 20e6
#: Most AI samples averaged into one AO sample.
MAX_READOUT_OVERSAMPLING = 1000
#: Fastest slew limit, V/s: a step across the DAQ's whole range in one sample at the
#: fastest rate; a larger limit limits nothing.
MAX_SLEW_V_PER_S = 2 * DAQ_LIMIT_V * MAX_SAMPLE_RATE
#: Largest transimpedance gain, V/A (the most sensitive femtoampere amplifiers: 1e13 V/A).
MAX_GAIN_V_PER_A = 1e13
#: Largest seed of a simulated setup: seeds are recorded in the runs' documents as integers,
#: and 32 bits name plenty of virtual devices.
MAX_SEED = 2**32 - 1


def _not_a_boolean(value: Any) -> Any:
    """Refuse a boolean where a number is meant.

    YAML reads ``true`` as a boolean, which pydantic would take as 1.0.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


def _not_blank(value: str) -> str:
    """Refuse a name that is only spaces: it names nothing."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value


_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False), BeforeValidator(_not_a_boolean)]


def _at_most(bound: float) -> Any:
    """Return the type of a positive, finite number up to ``bound``; booleans refused."""
    return Annotated[
        float, Field(gt=0, le=bound, allow_inf_nan=False), BeforeValidator(_not_a_boolean)
    ]


_SampleRate = _at_most(MAX_SAMPLE_RATE)
_SlewRate = _at_most(MAX_SLEW_V_PER_S)
_Gain = _at_most(MAX_GAIN_V_PER_A)


_Volts = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_not_a_boolean)]
_Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
_Channel = Annotated[str, Field(min_length=1, pattern=r"^\S+$")]


# Most problem lines in a ProfileError's message (``problems`` holds them all).
_SHOWN_PROBLEMS = 10


class ProfileError(ValueError):
    """A setup profile could not be loaded; ``problems`` holds one readable line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        shown = self.problems[:_SHOWN_PROBLEMS]
        if len(self.problems) > _SHOWN_PROBLEMS:  # e.g. 1000 electrodes that repeat a name
            shown[-1] = f"... and {len(self.problems) - _SHOWN_PROBLEMS + 1} more problems"
        lines = "\n".join(f"  {p}" for p in shown)
        super().__init__(f"invalid setup profile {source}:\n{lines}")


class _Model(BaseModel):
    # Frozen: limits validated once cannot be widened afterwards.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ElectrodeConfig(_Model):
    """One voltage electrode: its name, DAQ output channel, role and voltage limits.

    Attributes
    ----------
    name : str
        Identifier (letters, digits, underscore), unique within the profile.
    channel : str
        Physical AO channel, e.g. ``cDAQ1Mod1/ao0``.
    role : {"input", "control"}
        ``"input"`` (data) or ``"control"`` (trained parameter).
    min_v : float
        Lowest allowed voltage; must be below 0 V and not below -10 V.
    max_v : float
        Highest allowed voltage; must be above 0 V and above ``min_v``, not above 10 V.
    """

    name: _Name
    channel: _Channel
    role: Literal["input", "control"]
    min_v: _Volts
    max_v: _Volts

    @model_validator(mode="after")
    def _check_limits(self) -> ElectrodeConfig:
        # One place for every rule on the limits, in the order a user should fix them: limits
        # the wrong way round first (the 0 V rules would only repeat that), then the DAQ's
        # range and 0 V as a safe state.
        low, high = self.min_v, self.max_v
        problems: list[str] = []
        if low >= high:
            swapped = "; min_v and max_v look swapped" if high < 0 < low else ""
            problems.append(
                f"max_v: must be greater than min_v (max_v {high:g} <= min_v {low:g}){swapped}"
            )
        else:
            if low < -DAQ_LIMIT_V:
                problems.append(
                    f"min_v: must be within the DAQ range of -{DAQ_LIMIT_V:g} V, got {low:g}"
                )
            elif low >= 0:
                problems.append(
                    f"min_v: must be below 0 V so that 0 V is a safe state, got {low:g}"
                )
            if high > DAQ_LIMIT_V:
                problems.append(
                    f"max_v: must be within the DAQ range of +{DAQ_LIMIT_V:g} V, got {high:g}"
                )
            elif high <= 0:
                problems.append(
                    f"max_v: must be above 0 V so that 0 V is a safe state, got {high:g}"
                )
        if problems:
            raise PydanticCustomError(FIELD_LINES, "{lines}", {"lines": "\n".join(problems)})
        return self


class OutputConfig(_Model):
    """The AI channel that reads the current amplifier's output voltage.

    Attributes
    ----------
    channel : str
        Physical AI channel, e.g. ``cDAQ1Mod3/ai0``.
    ai_range_v : float
        Symmetric input range in volts (``-ai_range_v .. +ai_range_v``).
    terminal_config : {"default", "rse", "nrse", "diff", "pseudo_diff"}
        ``default``, ``rse``, ``nrse``, ``diff`` or ``pseudo_diff``.
    """

    channel: _Channel
    ai_range_v: Annotated[float, Field(gt=0, le=DAQ_LIMIT_V, allow_inf_nan=False)]
    terminal_config: Literal["default", "rse", "nrse", "diff", "pseudo_diff"] = "default"


class Amplifier(_Model):
    """The transimpedance amplifier between the device output and the AI channel.

    Attributes
    ----------
    gain_v_per_a : float
        Transimpedance gain in V/A (1e8 V/A = 0.1 V/nA).
    bandwidth_hz : float
        -3 dB bandwidth in Hz.
    inverting : bool
        True if the output voltage has the opposite sign of the current.
    """

    gain_v_per_a: _Gain
    bandwidth_hz: _Positive
    inverting: bool = False


class TriggerConfig(_Model):
    """Trigger routing that starts the AI acquisition together with the AO generation.

    Attributes
    ----------
    start_trigger_source : str
        Fully qualified terminal of the AO start trigger, e.g.
        ``/cDAQ1/ao/StartTrigger`` (cDAQ: the chassis, not the module) or
        ``/Dev1/ao/StartTrigger`` (PCIe/PXI).
    """

    start_trigger_source: Annotated[str, Field(pattern=r"^/\S+$")]


class SimConfig(_Model):
    """Settings of the simulated setup.

    Attributes
    ----------
    seed : int
        Seed of the virtual device and of the noise.
    surrogate : str or None
        Path of a brains-py surrogate model file, or None for the built-in device.
    """

    seed: Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)] = 0
    surrogate: str | None = None


class SetupProfile(_Model):
    """One validated setup: electrodes, output, amplifier, clocks and backend.

    Build one with :func:`load_profile` (YAML) or :func:`default_sim_profile`.

    Attributes
    ----------
    name : str
        Name of the setup, recorded with every run.
    backend : {"sim", "nidaqmx"}
        ``"sim"`` or ``"nidaqmx"``.
    sample_rate : float
        AO (write) sample rate in S/s.
    readout_oversampling : int
        AI samples per AO sample; AI runs at
        ``readout_oversampling * sample_rate`` and is averaged back to ``sample_rate``.
    max_slew_v_per_s : float
        No electrode may change faster than this.
    electrodes : tuple of ElectrodeConfig
        The voltage electrodes in channel order.
    output : OutputConfig
        The AI channel.
    amplifier : Amplifier
        The current amplifier.
    trigger : TriggerConfig or None
        AO-to-AI start trigger routing; required for ``nidaqmx``.
    sim : SimConfig or None
        Simulation settings; only for ``sim`` (defaults apply when omitted).
    sample : str or None
        The sample on the setup (chip, device), recorded with every run of a session
        that uses the profile; optional.
    """

    name: Annotated[str, Field(min_length=1)]
    backend: Literal["sim", "nidaqmx"]
    sample_rate: _SampleRate
    readout_oversampling: Annotated[int, Field(ge=1, le=MAX_READOUT_OVERSAMPLING, strict=True)] = 1
    max_slew_v_per_s: _SlewRate
    electrodes: Annotated[tuple[ElectrodeConfig, ...], Field(min_length=1)]
    output: OutputConfig
    amplifier: Amplifier
    trigger: TriggerConfig | None = None
    sim: SimConfig | None = None
    sample: Annotated[str, AfterValidator(_not_blank)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_sim_settings(cls, data: Any) -> Any:
        # A sim profile records its (default) seed even when the file leaves it out.
        if isinstance(data, dict) and data.get("backend") == "sim" and "sim" not in data:
            return {**data, "sim": {}}
        return data

    @model_validator(mode="after")
    def _check_setup(self) -> SetupProfile:
        problems: list[str] = []
        first_name: dict[str, int] = {}
        first_channel: dict[str, int] = {}
        for i, electrode in enumerate(self.electrodes):
            j = first_name.setdefault(electrode.name, i)
            if j != i:
                problems.append(f"electrodes.{i}.name: {electrode.name!r} repeats electrodes.{j}")
            j = first_channel.setdefault(electrode.channel, i)
            if j != i:
                problems.append(
                    f"electrodes.{i}.channel: {electrode.channel!r} repeats electrodes.{j}"
                )
        if not any(e.role == "control" for e in self.electrodes):
            problems.append("electrodes: at least one electrode must have role 'control'")
        if self.ai_sample_rate > MAX_AI_SAMPLE_RATE:
            problems.append(
                f"readout_oversampling: {self.readout_oversampling} * sample_rate "
                f"{self.sample_rate:g} S/s is {self.ai_sample_rate:g} S/s of AI, above the "
                f"fastest DAQmx input ({MAX_AI_SAMPLE_RATE:g} S/s)"
            )
        nyquist = self.ai_sample_rate / 2
        if self.amplifier.bandwidth_hz > nyquist:
            needed = math.ceil(2 * self.amplifier.bandwidth_hz / self.sample_rate)
            problems.append(
                f"amplifier.bandwidth_hz: {self.amplifier.bandwidth_hz:g} Hz is above the AI "
                f"Nyquist frequency {nyquist:g} Hz (readout_oversampling * sample_rate / 2); "
                f"set readout_oversampling >= {needed} or lower the bandwidth"
            )
        if self.backend == "nidaqmx":
            if self.trigger is None:
                problems.append("trigger: required for backend 'nidaqmx'")
            if self.sim is not None:
                problems.append("sim: only allowed with backend 'sim'")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def ai_sample_rate(self) -> float:
        """AI sample rate in S/s (``readout_oversampling * sample_rate``)."""
        return self.readout_oversampling * self.sample_rate

    @property
    def electrode_names(self) -> tuple[str, ...]:
        """Electrode names in channel order."""
        return tuple(e.name for e in self.electrodes)

    @property
    def limits_v(self) -> np.ndarray:
        """``(n_electrodes, 2)`` array of ``[min_v, max_v]`` in channel order."""
        return np.array([[e.min_v, e.max_v] for e in self.electrodes], dtype=float)

    def indices(self, role: Literal["input", "control"]) -> tuple[int, ...]:
        """Return the positions (in channel order) of the electrodes with the given role.

        Parameters
        ----------
        role : {"input", "control"}
            The role.

        Returns
        -------
        tuple of int
            The positions, ascending.
        """
        return tuple(i for i, e in enumerate(self.electrodes) if e.role == role)

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as plain JSON-serialisable data, for provenance in start documents."""
        return self.model_dump(mode="json")


def dnpu_problems(profile: SetupProfile) -> list[str]:
    """List what keeps a valid profile from being built into a DNPU; one line per problem.

    These are the checks :func:`~dnpu_bluesky.devices.build_dnpu` makes before it opens the
    backend: seven electrodes, at least one input electrode, and room for the default tones
    (:func:`default_tone_plan`). None touches hardware; channel names and trigger terminals
    are checked only when the NI-DAQmx backend opens them.

    Parameters
    ----------
    profile : SetupProfile
        A validated setup profile.

    Returns
    -------
    list of str
        One line per problem, naming the profile field; empty if there is none.
    """
    from .hge.frequencies import FrequencyPlanError

    problems = []
    if len(profile.electrodes) != N_ELECTRODES:
        problems.append(
            f"electrodes: {len(profile.electrodes)} listed; a DNPU has {N_ELECTRODES} voltage "
            f"electrodes: list all {N_ELECTRODES} in channel order"
        )
    if not profile.indices("input"):
        problems.append(
            "electrodes: at least one electrode must have role 'input' (a task's data is "
            "applied there); all are 'control'"
        )
    try:
        default_tone_plan(profile)
    except FrequencyPlanError as exc:
        problems += str(exc).splitlines()
    return problems


def check_dnpu_profile(profile: SetupProfile, source: str | None = None) -> None:
    """Check that a DNPU can be built from ``profile``: every rule, then :func:`dnpu_problems`.

    The rules are checked again because a profile made with ``model_copy(update=...)`` or
    ``model_construct`` skipped them. :func:`~dnpu_bluesky.devices.build_dnpu` calls this;
    :func:`load_profile`, whose profile was just validated, asks :func:`dnpu_problems` alone,
    so both refuse a profile with the same lines.

    Parameters
    ----------
    profile : SetupProfile
        The profile.
    source : str, optional
        Where the profile came from, for the message (default: its name).

    Raises
    ------
    ProfileError
        One line per problem, naming the profile field to change.
    """
    source = source if source is not None else repr(profile.name)
    # No serializer warnings: an unchecked value is what the validation below is for.
    checked = _validate(profile.model_dump(warnings=False), source)
    problems = dnpu_problems(checked)
    if problems:
        raise ProfileError(source, problems)


def _validate(data: Any, source: str) -> SetupProfile:
    if not isinstance(data, dict):
        raise ProfileError(
            source, [f"<profile>: must be a mapping of keys, got {type(data).__name__}"]
        )
    try:
        return SetupProfile.model_validate(data)
    except ValidationError as exc:
        problems = [line for error in exc.errors() for line in describe_error(error)]
        raise ProfileError(source, problems) from None


def load_profile(path: str | os.PathLike[str]) -> SetupProfile:
    """Read a YAML setup profile and validate it.

    A relative ``sim.surrogate`` path is taken relative to the profile's folder and must exist.

    Parameters
    ----------
    path : str or os.PathLike[str]
        The YAML file.

    Returns
    -------
    SetupProfile
        The validated profile.

    Raises
    ------
    ProfileError
        If the file is missing, is not YAML, has duplicate or unknown keys,
        breaks any rule, or could not be built into a DNPU (:func:`dnpu_problems`); the
        message has one line per problem naming the field.
    """
    file = Path(path)
    source = str(file)
    try:
        data = read_profile_yaml(file)
    except FileNotFoundError:
        raise ProfileError(source, ["file not found"]) from None
    except ProfileReadError as exc:
        raise ProfileError(source, [str(exc)]) from None
    profile = _validate(data, source)
    problems = dnpu_problems(profile)
    if problems:
        raise ProfileError(source, problems)
    if profile.sim is not None and profile.sim.surrogate is not None:
        surrogate = Path(profile.sim.surrogate).expanduser()
        if not surrogate.is_absolute():
            surrogate = file.parent / surrogate
        if not surrogate.is_file():
            raise ProfileError(source, [f"sim.surrogate: file not found: {surrogate}"])
        sim = profile.sim.model_copy(update={"surrogate": str(surrogate.resolve())})
        profile = profile.model_copy(update={"sim": sim})
    return profile


def default_sim_profile(
    seed: int = 0,
    inputs: Sequence[int] = (3, 4),
    limits: Sequence[Sequence[float]] | None = None,
) -> SetupProfile:
    """Return the built-in simulated setup: seven electrodes, inputs on e3 and e4.

    Controls span -1.2 .. 0.6 V and inputs the tighter -0.7 .. 0.3 V, as typical DNPU
    settings. The readout matches :class:`dnpu_bluesky.sim.Electronics`' defaults: an
    inverting 1e7 V/A amplifier (300 nA give 3 V on a +-10 V ADC) with 2 kHz bandwidth,
    sampled at 10 kS/s without oversampling (the simulation reads one sample per AO sample).

    Parameters
    ----------
    seed : int
        Seed of the virtual device and of its noise.
    inputs : sequence of int
        Positions of the input electrodes (the rest are controls); three for the
        sphere task, e.g. ``(1, 2, 4)``.
    limits : sequence of sequence of float, optional
        ``[min_v, max_v]`` of each of the seven electrodes instead of the ranges
        above, e.g. a surrogate model's ``voltage_ranges``.

    Returns
    -------
    SetupProfile
        The validated profile (backend ``"sim"``).
    """
    if limits is None:
        limits = [(-0.7, 0.3) if i in inputs else (-1.2, 0.6) for i in range(7)]
    if len(limits) != 7:
        raise ValueError(f"limits must give [min_v, max_v] for 7 electrodes, got {len(limits)}")
    electrodes = []
    for i, (low, high) in enumerate(limits):
        electrodes.append(
            {
                "name": f"e{i}",
                "channel": f"sim/ao{i}",
                "role": "input" if i in inputs else "control",
                "min_v": float(low),
                "max_v": float(high),
            }
        )
    return _validate(
        {
            "name": "sim-default",
            "backend": "sim",
            "sample_rate": 10_000.0,
            "readout_oversampling": 1,
            "max_slew_v_per_s": 200.0,
            "electrodes": electrodes,
            "output": {"channel": "sim/ai0", "ai_range_v": 10.0},
            "amplifier": {"gain_v_per_a": 1.0e7, "bandwidth_hz": 2000.0, "inverting": True},
            "sim": {"seed": seed, "surrogate": None},
        },
        "<default_sim_profile>",
    )
