"""A soft signal whose data key states its units and its numpy dtype."""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Signal


class Measured(Signal):
    """A soft signal described with ``units`` and, for arrays, ``dtype_numpy``.

    Without ``dtype_numpy`` Tiled stores every array as float64, so integer arrays (sample
    indices, case numbers, labels) would come back as floats; without ``units`` a reader of
    the stored run could not tell nA from volts.
    """

    def __init__(self, *args: Any, units: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.units = units

    def describe(self) -> dict[str, dict[str, Any]]:
        """Return the data key of :meth:`ophyd.Signal.describe`, with units and numpy dtype."""
        description = super().describe()
        key = description[self.name]
        value = self._readback
        if isinstance(value, np.ndarray) and "dtype_numpy" not in key:
            key["dtype_numpy"] = value.dtype.str
        if self.units:
            key["units"] = self.units
        return description


class MeasuredReadOnly(Measured):
    """A :class:`Measured` signal that only its device writes (``put(value, force=True)``).

    A user's ``put`` or ``set`` raises :class:`ophyd.utils.errors.ReadOnlyError`: the value
    is what the device measured or applied, not a setting.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metadata.update(write_access=False)
