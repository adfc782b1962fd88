"""Checks every electrode stream passes before it may reach a DAQ.

The rules are the device's, not the plan's: a stream starts and ends at 0 V, stays inside each
electrode's limits and never changes faster than the maximum slew rate. A stream that breaks a
rule is refused whole; nothing is clipped silently.
"""

from __future__ import annotations

import numpy as np

#: Voltages closer to zero than this count as 0 V (well below one 16-bit DAC step on +-10 V).
ZERO_TOLERANCE_V = 1e-6


class UnsafeWaveformError(ValueError):
    """A stream would break a hardware safety rule; nothing was written."""


def check_waveform(
    ao_volts: np.ndarray,
    sample_rate: float,
    *,
    limits: np.ndarray | None = None,
    max_slew_v_per_s: float | None = None,
    channel_names: list[str] | None = None,
) -> None:
    """Refuse a multichannel stream that breaks a safety rule.

    Parameters
    ----------
    ao_volts : numpy.ndarray
        Stream of shape ``(n_samples, n_channels)`` in volts.
    sample_rate : float
        Samples per second of the stream.
    limits : numpy.ndarray, optional
        ``(n_channels, 2)`` array of ``[min, max]`` volts per channel, or None.
    max_slew_v_per_s : float, optional
        Largest allowed change between consecutive samples, in V/s.
    channel_names : list of str, optional
        Names used in error messages (default ``ao0``, ``ao1``, ...).

    Raises
    ------
    UnsafeWaveformError
        Naming the first rule broken and the channel and sample.
    """
    volts = np.asarray(ao_volts, dtype=float)
    if volts.ndim != 2 or volts.shape[0] < 2:
        raise UnsafeWaveformError(
            f"stream must have shape (n_samples >= 2, n_channels), got {volts.shape}"
        )
    n_channels = volts.shape[1]
    names = channel_names or [f"ao{i}" for i in range(n_channels)]
    if not np.all(np.isfinite(volts)):
        sample, channel = np.argwhere(~np.isfinite(volts))[0]
        raise UnsafeWaveformError(f"{names[channel]}: non-finite value at sample {sample}")
    for label, row in (("start", volts[0]), ("end", volts[-1])):
        bad = np.flatnonzero(np.abs(row) > ZERO_TOLERANCE_V)
        if bad.size:
            channel = bad[0]
            raise UnsafeWaveformError(
                f"{names[channel]}: stream must {label} at 0 V, got {row[channel]:+.6f} V"
            )
    if limits is not None:
        limits = np.asarray(limits, dtype=float)
        if limits.shape != (n_channels, 2):
            raise UnsafeWaveformError(
                f"limits must have shape ({n_channels}, 2), got {limits.shape}"
            )
        low = volts < limits[:, 0]
        high = volts > limits[:, 1]
        if np.any(low | high):
            sample, channel = np.argwhere(low | high)[0]
            raise UnsafeWaveformError(
                f"{names[channel]}: {volts[sample, channel]:+.4f} V at sample {sample} is "
                f"outside the limits [{limits[channel, 0]:+.3f}, {limits[channel, 1]:+.3f}] V"
            )
    if max_slew_v_per_s is not None:
        slew = np.abs(np.diff(volts, axis=0)) * sample_rate
        # One DAC step of rounding on top of the bound is not a violation.
        excess = slew > max_slew_v_per_s * (1 + 1e-9) + ZERO_TOLERANCE_V * sample_rate
        if np.any(excess):
            sample, channel = np.argwhere(excess)[0]
            raise UnsafeWaveformError(
                f"{names[channel]}: slew {slew[sample, channel]:.1f} V/s between samples "
                f"{sample} and {sample + 1} exceeds the maximum {max_slew_v_per_s:.1f} V/s"
            )
