"""A soft signal whose data key states its units, its numpy dtype and its dimensions."""

from __future__ import annotations

from typing import Any

import numpy as np
from ophyd import Signal


class Measured(Signal):
    """A soft signal described with ``units`` and, for arrays, ``dtype_numpy`` and ``dims``.

    Without ``dtype_numpy`` Tiled stores every array as float64, so integer arrays (sample
    indices, case numbers, labels) would come back as floats; without ``units`` a reader of
    the stored run could not tell nA from volts; without ``dims`` the stored arrays' axes
    would be called ``dim_int_1``, ``dim_int_2``, ... in ``run.primary.read()``.

    Parameters
    ----------
    *args
        As for :class:`ophyd.Signal`.
    units : str
        The data key's ``units``.
    dims : tuple of str
        One name per axis of an array value (``("case",)``, ``("segment", "tone")``); given
        in the data key when the value has that many axes.
    **kwargs
        As for :class:`ophyd.Signal`.
    """

    def __init__(
        self, *args: Any, units: str = "", dims: tuple[str, ...] = (), **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.units = units
        self.dims = tuple(dims)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Describe the signal as :meth:`ophyd.Signal.describe` does, with units, dtype, dims.

        Returns
        -------
        dict
            ``{name: data_key}``.
        """
        description = super().describe()
        key = description[self.name]
        value = self._readback
        if isinstance(value, np.ndarray):
            key.setdefault("dtype_numpy", value.dtype.str)
            if self.dims and len(self.dims) == value.ndim:
                key["dims"] = list(self.dims)
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
