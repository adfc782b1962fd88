"""Plan stubs: building blocks that do not open a run."""

from collections.abc import Generator
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import Msg

from ..callbacks.lockin import Demodulated, LockInCallback
from ..devices.dnpu import DEFAULT_AMPLITUDE_V, DEFAULT_MIN_FREQUENCY_HZ, DNPU
from ..devices.records import GradientRecord

Plan = Generator[Msg, Any, Any]


def configure_hge(
    dnpu: DNPU,
    *,
    window_s: float | None = None,
    amplitude_v: float = DEFAULT_AMPLITUDE_V,
    order: int = 3,
    spacing_bins: int = 1,
    band_hz: float | None = None,
    min_frequency_hz: float = DEFAULT_MIN_FREQUENCY_HZ,
    electrodes: str = "controls",
) -> Plan:
    """Give every control electrode (``electrodes="all"``: every electrode) its tone and amplitude.

    The plan is checked (see :meth:`DNPU.plan_tones`) before anything changes, so an
    impossible request raises ``FrequencyPlanError`` with the failed constraint named.

    Parameters
    ----------
    dnpu : DNPU
        The device.
    window_s : float, optional
        Analysis window, seconds; None keeps the device's.
    amplitude_v : float
        Tone amplitude on each electrode, volts; it caps the band so that no tone slews
        faster than the setup allows.
    order : int
        Highest intermodulation order kept off the tones.
    spacing_bins : int
        Tone spacing in units of 1/T (T the analysis window).
    band_hz : float, optional
        Highest usable frequency, Hz (default and upper bound: the amplifier bandwidth, at
        most 0.4 x the sample rate).
    min_frequency_hz : float
        Lowest tone, Hz.
    electrodes : str
        ``"controls"`` (one tone per control) or ``"all"`` (one per electrode, inputs
        included: HGE then also measures each input's slope).

    Returns
    -------
    FrequencyPlan
        The tones given.

    Yields
    ------
    Msg
        The plan's messages.
    """
    tones = dnpu.plan_tones(
        amplitude_v=amplitude_v,
        window_s=window_s,
        order=order,
        spacing_bins=spacing_bins,
        band_hz=band_hz,
        min_frequency_hz=min_frequency_hz,
        electrodes=electrodes,
    )
    args: list[Any] = [dnpu.window_s, tones.window_s]
    for signal, value in dnpu.tone_settings(tones, amplitude_v, electrodes):
        args += [signal, value]
    yield from bps.mv(*args)
    return tones


def set_input_cases(dnpu: DNPU, cases: np.ndarray | None) -> Plan:
    """Set the input cases or clear them.

    Parameters
    ----------
    dnpu : DNPU
        The device.
    cases : array_like or None
        ``(n_cases, n_inputs)`` input voltages, or None to clear them.

    Yields
    ------
    Msg
        The plan's messages.
    """
    value = [] if cases is None else np.asarray(cases, dtype=float).tolist()
    yield from bps.mv(dnpu.input_cases, value)


def measure_gradient(
    dnpu: DNPU,
    lockin: LockInCallback,
    record: GradientRecord,
    *,
    raw_stream: str = "hge_raw",
    stream: str = "hge",
) -> Plan:
    """Trigger one HGE stream, wait for its demodulation and record it.

    The lock-in callback must be subscribed to the current run (see ``subs_wrapper``).

    Parameters
    ----------
    dnpu : DNPU
        The device, staged, with its tones set.
    lockin : LockInCallback
        Demodulates the raw stream's waveform.
    record : GradientRecord
        Holds the result for the gradient stream.
    raw_stream : str
        Name of the stream of raw waveforms.
    stream : str
        Name of the stream of demodulated results.

    Returns
    -------
    Demodulated
        The demodulated measurement.

    Yields
    ------
    Msg
        The plan's messages.
    """
    yield from bps.trigger_and_read([dnpu], name=raw_stream)
    return (yield from record_gradient(lockin, record, stream))


def record_gradient(lockin: LockInCallback, record: GradientRecord, stream: str = "hge") -> Plan:
    """Take the lock-in's result for the raw event just saved and record it in ``stream``.

    Parameters
    ----------
    lockin : LockInCallback
        The callback that demodulated the raw event.
    record : GradientRecord
        The record device that holds the result, read into the stream.
    stream : str
        Name of the event stream the result goes to.

    Returns
    -------
    Demodulated
        The demodulated measurement.

    Yields
    ------
    Msg
        The plan's messages.
    """
    result: Demodulated = lockin.take()
    lockin_result = result.lockin
    record.record(
        raw_seq_num=result.seq_num,
        x=lockin_result.x,
        y=lockin_result.y,
        amplitude=lockin_result.amplitude,
        phase=lockin_result.phase,
        lockin_stderr=lockin_result.stderr,
        gradient=result.gradient.gradient,
        gradient_stderr=result.gradient.stderr,
        case_currents=result.gradient.current,
    )
    yield from bps.trigger_and_read([record], name=stream)
    return result


def new_gradient_record(dnpu: DNPU, estimator: str, name: str = "hge") -> GradientRecord:
    """Make a record device labelled with the DNPU's current tones.

    Parameters
    ----------
    dnpu : DNPU
        The device whose tones label the record.
    estimator : str
        The gradient estimator, recorded with the results.
    name : str
        The record's name after the device's, e.g. ``"<dnpu>_hge"``.

    Returns
    -------
    GradientRecord
        The record device.
    """
    record = GradientRecord(name=f"{dnpu.name}_{name}")
    tones = np.flatnonzero(dnpu.frequencies() > 0)
    record.tone_electrodes.put(",".join(dnpu.electrodes[i].attr_name for i in tones))
    record.tone_frequencies.put(dnpu.frequencies()[tones].tolist())
    record.estimator.put(estimator)
    return record


def within_run(
    body: Plan,
    *,
    md: dict[str, Any],
    stage: list[Any],
    subs: list[Any] | None = None,
) -> Plan:
    """Run ``body`` inside one run with ``stage`` staged and ``subs`` subscribed.

    Unlike ``bpp.run_wrapper`` (which returns the run uid), this returns what ``body``
    returned, so plans can hand their result to the caller.

    The run is not rewindable: a pause (Ctrl-C) resumes where it stopped instead of replaying
    the messages since the last checkpoint. The plans keep state in Python (optimizer,
    lock-in results, records), so a replay would store a measurement twice and let its repeat
    steer the training. Every stream starts and ends at 0 V, so going on is safe.

    Parameters
    ----------
    body : Plan
        The plan run inside the run.
    md : dict
        Start-document metadata.
    stage : list
        The devices staged for the run.
    subs : list, optional
        Callbacks subscribed for the run.

    Returns
    -------
    object
        What ``body`` returned.

    Yields
    ------
    Msg
        The plan's messages.
    """
    # A run without a dimensions hint leaves bluesky's BestEffortCallback in a state in which
    # the next run's primary stream raises in it (bluesky 1.15: the flag is never reset).
    hints = dict(md.get("hints", {}))
    hints.setdefault("dimensions", [(["time"], "primary")])
    md = {**md, "hints": hints}
    returned: list[Any] = []

    def capture() -> Plan:
        returned.append((yield from body))

    plan = bpp.stage_wrapper(bpp.run_wrapper(capture(), md=md), stage)
    plan = bpp.rewindable_wrapper(plan, False)
    if subs:
        plan = bpp.subs_wrapper(plan, subs)
    yield from plan
    return returned[0]
