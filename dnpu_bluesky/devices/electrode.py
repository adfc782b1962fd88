"""One voltage electrode of a DNPU: a limited DC setpoint, a role and its perturbation tone."""

from __future__ import annotations

from typing import Any

from bluesky.protocols import Location
from ophyd import Component as Cpt
from ophyd import Device, Signal, SignalRO
from ophyd.status import StatusBase
from ophyd.utils.errors import LimitError

from .measured import Measured, MeasuredReadOnly

ROLES = ("input", "control")


class SetpointSignal(Measured):
    """A DC setpoint in volts that refuses values outside its electrode's limits.

    Setting the signal changes the operating point of the next stream; it never drives the
    electrode by itself, so a refused value has applied no voltage.
    """

    def check_value(self, value: float) -> None:
        """Raise :class:`ophyd.utils.errors.LimitError` for a value outside the limits."""
        super().check_value(value)
        low, high = self.limits
        try:
            volts = float(value)
        except (TypeError, ValueError) as exc:
            raise LimitError(
                f"{self.name}: setpoint must be a number of volts, got {value!r}"
            ) from exc
        if not low <= volts <= high:
            raise LimitError(
                f"{self.name}: {volts:+.4f} V is outside the electrode limits "
                f"[{low:+.3f}, {high:+.3f}] V; nothing was applied"
            )

    def set(self, value: float, **kwargs: Any) -> Any:
        """Check the limits at once (so the caller gets the LimitError), then set."""
        self.check_value(value)
        return super().set(value, **kwargs)

    @property
    def limits(self) -> tuple[float, float]:
        """``(min_v, max_v)`` of the electrode that owns this setpoint."""
        return (self.parent.min_v.get(), self.parent.max_v.get())

    @property
    def low_limit(self) -> float:
        """The electrode's ``min_v``."""
        return self.limits[0]

    @property
    def high_limit(self) -> float:
        """The electrode's ``max_v``."""
        return self.limits[1]


class InputElectrodeError(ValueError):
    """An input electrode was asked to move: the input cases give its voltage."""


class Electrode(Device):
    """A voltage electrode: DC setpoint, fixed limits and role, and its HGE tone.

    An electrode is a bluesky ``Movable``: ``set`` (and so ``mv``, ``scan``, ``rel_scan`` and
    ``list_scan``) changes its DC setpoint, the level the DNPU's next stream holds it at.
    Setting applies no voltage: every stream starts and ends at 0 V and the electrodes rest at
    0 V between streams. A value outside the
    limits, or any value for an input electrode (whose voltage the input cases give), is
    refused with nothing changed. ``position`` is the setpoint; ``readback`` is the DC level
    the last stream held the electrode at (0 V before the first), read with every measurement
    and the field a table or plot of a scan over the electrode shows.

    The limits and role are set once when the device is built from a setup profile and are
    read-only afterwards, so a plan cannot widen them.
    """

    readback = Cpt(MeasuredReadOnly, value=0.0, kind="hinted", units="V")
    # Hinted for a scan that moves the setpoint signal itself, whose dimension it then is.
    setpoint = Cpt(SetpointSignal, value=0.0, kind="hinted", units="V")
    min_v = Cpt(SignalRO, value=-1.0, kind="config")
    max_v = Cpt(SignalRO, value=1.0, kind="config")
    role = Cpt(SignalRO, value="control", kind="config")
    channel = Cpt(SignalRO, value="", kind="config")
    frequency = Cpt(Signal, value=0.0, kind="config")
    amplitude = Cpt(Signal, value=0.0, kind="config")

    _limits_fixed = False

    def configure_limits(self, min_v: float, max_v: float, role: str, channel: str = "") -> None:
        """Fix the electrode's limits, role and DAQ channel (called once by ``build_dnpu``).

        Parameters
        ----------
        min_v, max_v
            The limits in volts; they must contain 0 V.
        role
            ``"input"`` or ``"control"``.
        channel
            The DAQ output channel.

        Raises
        ------
        RuntimeError
            If they were fixed already; build a new device for other limits.
        ValueError
            For an unknown role or limits that do not contain 0 V.
        """
        if self._limits_fixed:
            raise RuntimeError(
                f"{self.name}: the limits are fixed when the device is built (from its setup "
                "profile); build a new device for other limits"
            )
        if role not in ROLES:
            raise ValueError(f"{self.name}: role must be one of {ROLES}, got {role!r}")
        if not min_v <= 0.0 <= max_v:
            raise ValueError(f"{self.name}: limits [{min_v}, {max_v}] V must contain 0 V")
        self.min_v._readback = float(min_v)
        self.max_v._readback = float(max_v)
        self.role._readback = role
        self.channel._readback = channel
        self._limits_fixed = True

    @property
    def limits(self) -> tuple[float, float]:
        """``(min_v, max_v)`` in volts."""
        return self.setpoint.limits

    @property
    def hints(self) -> dict[str, list[str]]:
        """The field a table or plot of a scan over the electrode shows: its readback."""
        return {"fields": [self.readback.name]}

    @property
    def is_input(self) -> bool:
        """Whether the electrode takes the input cases' voltages (its DNPU's ``inputs``)."""
        names = getattr(self.parent, "input_names", None)
        if names is None:
            return self.role.get() == "input"
        return self.attr_name in names

    def check_value(self, value: float) -> None:
        """Refuse a value ``set`` would refuse, changing nothing.

        Parameters
        ----------
        value
            The DC setpoint in volts.

        Raises
        ------
        InputElectrodeError
            (a ValueError) for an input electrode.
        ophyd.utils.errors.LimitError
            (a ValueError) for a value outside the limits or not a number.
        """
        if self.is_input:
            raise InputElectrodeError(
                f"{self.name}: {self.attr_name} is an input electrode, whose voltage the input "
                "cases give; nothing was applied. Make it a control to move it (e.g. "
                "bps.mv(dnpu.inputs, ...) naming other inputs)"
            )
        self.setpoint.check_value(value)

    def set(self, value: float, **kwargs: Any) -> StatusBase:
        """Move the DC setpoint to ``value`` volts (applied by the next stream).

        Parameters
        ----------
        value
            The DC setpoint in volts.
        **kwargs
            Passed to the setpoint's ``set`` (``timeout``, ``settle_time``).

        Returns
        -------
        ophyd.status.StatusBase
            Done once the setpoint holds ``value``.

        Raises
        ------
        InputElectrodeError
            (a ValueError) for an input electrode, before anything changes.
        ophyd.utils.errors.LimitError
            (a ValueError) for a value outside the limits, before anything changes.
        """
        self.check_value(value)
        return self.setpoint.set(value, **kwargs)

    @property
    def position(self) -> float:
        """The DC setpoint in volts: where ``set`` last moved the electrode."""
        return float(self.setpoint.get())

    def locate(self) -> Location[float]:
        """Where the electrode was asked to be and where the last stream held it.

        Returns
        -------
        bluesky.protocols.Location
            ``setpoint``: the DC setpoint; ``readback``: the DC level of the last stream.
        """
        return {"setpoint": self.position, "readback": float(self.readback.get())}
