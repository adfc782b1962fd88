"""One voltage electrode of a DNPU: a limited DC setpoint, a role and its perturbation tone."""

from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Signal, SignalRO
from ophyd.utils.errors import LimitError

from .measured import Measured

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
        return self.limits[0]

    @property
    def high_limit(self) -> float:
        return self.limits[1]


class Electrode(Device):
    """A voltage electrode: DC setpoint, fixed limits and role, and its HGE tone.

    The limits and role are set once when the device is built from a setup profile and are
    read-only afterwards, so a plan cannot widen them.
    """

    setpoint = Cpt(SetpointSignal, value=0.0, kind="hinted", units="V")
    min_v = Cpt(SignalRO, value=-1.0, kind="config")
    max_v = Cpt(SignalRO, value=1.0, kind="config")
    role = Cpt(SignalRO, value="control", kind="config")
    channel = Cpt(SignalRO, value="", kind="config")
    frequency = Cpt(Signal, value=0.0, kind="config")
    amplitude = Cpt(Signal, value=0.0, kind="config")

    _limits_fixed = False

    def configure_limits(self, min_v: float, max_v: float, role: str, channel: str = "") -> None:
        """Fix the electrode's limits, role and DAQ channel (called once by the factory).

        Raises:
            RuntimeError: if they were fixed already; build a new device for other limits.
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
