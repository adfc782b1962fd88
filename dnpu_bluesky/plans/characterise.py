"""Characterisation plans: current-voltage sweeps and the output noise spectrum."""

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky import preprocessors as bpp
from scipy import signal

from ..devices.dnpu import DNPU
from ..devices.electrode import Electrode
from ..devices.records import SpectrumRecord
from ._common import start_metadata
from .stubs import Plan, within_run


def iv_sweep(
    dnpu: DNPU,
    electrode: Electrode,
    start: float,
    stop: float,
    num: int = 21,
    *,
    md: dict | None = None,
) -> Plan:
    """Sweep one electrode's DC voltage and record the output current, without tones.

    Each point plays its own 0 V-to-0 V stream; the primary stream holds the current and the
    raw output waveform at each voltage. Out-of-range voltages are refused before the run.

    Parameters
    ----------
    dnpu : DNPU
        The device.
    electrode : Electrode
        The swept electrode of ``dnpu`` (``dnpu.e2``; ``"dnpu.e2"`` in a queue item).
    start : float
        First voltage, within the electrode's limits.
    stop : float
        Last voltage, within the electrode's limits.
    num : int
        Number of points (at least 2).
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    str
        The uid of the run.

    Yields
    ------
    Msg
        The plan's messages.
    """
    if electrode not in dnpu.electrodes:
        raise ValueError(f"{electrode.name} is not an electrode of {dnpu.name}")
    low, high = electrode.limits
    for end, value in (("start", start), ("stop", stop)):
        if not low <= value <= high:
            raise ValueError(
                f"{electrode.name}: sweep {end} {value:+.3f} V is outside the limits "
                f"[{low:+.3f}, {high:+.3f}] V"
            )
    if int(num) < 2:
        raise ValueError(f"num must be at least 2, got {num}")

    def sweep() -> Plan:
        yield from bps.mv(dnpu.mode, "off")
        dnpu.build_waveform()
        metadata = start_metadata(
            dnpu,
            "iv_sweep",
            {"electrode": electrode.name, "start": start, "stop": stop, "num": num},
            md,
        )
        return (yield from bp.scan([dnpu], electrode.setpoint, start, stop, int(num), md=metadata))

    # The mode and the setpoint as they were, however the sweep ends.
    return (yield from bpp.reset_positions_wrapper(sweep()))


def noise_spectrum(
    dnpu: DNPU,
    duration_s: float = 1.0,
    *,
    segment_s: float = 0.1,
    md: dict | None = None,
) -> Plan:
    """Hold the current operating point without tones and record the output noise spectrum.

    Streams: ``primary`` (the raw waveform) and ``spectrum`` (one-sided PSD in nA^2/Hz by
    Welch's method with ``segment_s`` segments).

    Parameters
    ----------
    dnpu : DNPU
        The device.
    duration_s : float
        Length of the recorded waveform, seconds.
    segment_s : float
        Length of Welch's segments, seconds (at most ``duration_s``); the spectrum's
        resolution is ``1 / segment_s``.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    tuple of numpy.ndarray
        The frequencies (Hz) and the power spectral density (nA^2/Hz).

    Yields
    ------
    Msg
        The plan's messages.
    """
    if not duration_s > 0 or not 0 < segment_s <= duration_s:
        raise ValueError(
            f"need 0 < segment_s <= duration_s, got segment_s={segment_s}, duration_s={duration_s}"
        )
    record = SpectrumRecord(name=f"{dnpu.name}_noise")

    def inner() -> Plan:
        yield from bps.trigger_and_read([dnpu])
        waveform = dnpu.last_waveform
        trace = dnpu.output.get()[waveform.windows[0]]
        rate = waveform.sample_rate
        frequency, psd = signal.welch(
            trace, fs=rate, nperseg=int(segment_s * rate), detrend="constant"
        )
        record.record(frequency=frequency, psd=psd, dc_current=float(np.mean(trace)))
        yield from bps.trigger_and_read([record], name="spectrum")
        return frequency, psd

    def spectrum() -> Plan:
        yield from bps.mv(dnpu.mode, "off", dnpu.window_s, float(duration_s), dnpu.input_cases, [])
        dnpu.build_waveform()
        metadata = start_metadata(
            dnpu, "noise_spectrum", {"duration_s": duration_s, "segment_s": segment_s}, md
        )
        return (yield from within_run(inner(), md=metadata, stage=[dnpu]))

    # The mode, window and input cases as they were, however the recording ends.
    return (yield from bpp.reset_positions_wrapper(spectrum()))
