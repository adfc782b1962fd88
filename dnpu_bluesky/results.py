"""What a stored training run found, read back from Tiled: its devices, streams and setting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any


def devices_of(run: Any) -> list[str]:
    """Names of the devices a run measured.

    Parameters
    ----------
    run : BlueskyRun
        A run as stored in Tiled.

    Returns
    -------
    list of str
        The start document's ``detectors``: one device (runs stored by earlier versions that
        trained devices side by side in one run: several).
    """
    return list(run.metadata["start"]["detectors"])


#: Names the ``primary`` stream of training runs had in runs stored by earlier versions.
_EARLIER_PRIMARY = ("train", "generation")


def stream_of(run: Any, base: str, device: str) -> Any:
    """Look up a device's stream of a run.

    Parameters
    ----------
    run : BlueskyRun
        A run as stored in Tiled.
    base : str
        The stream's name, e.g. ``"primary"`` or ``"evaluation"``.
    device : str
        The device (runs stored by earlier versions that trained several devices in one run
        named its streams ``<base>_<device>``).

    Returns
    -------
    BlueskyEventStream
        The stream (for ``"primary"``: also the ``train`` or ``generation`` stream of runs
        stored before training steps went to ``primary``).
    """
    names = _stream_names(run, base, device)
    for name in names[:-1]:
        try:
            return run[name]
        except KeyError:
            pass
    return run[names[-1]]


def _stream_names(run: Any, base: str, device: str) -> list[str]:
    """Return the names the stream may have, the current one first."""
    suffix = run.metadata["start"].get("stream_suffixes", {}).get(device, "")
    earlier = _EARLIER_PRIMARY if base == "primary" else ()
    return [name + suffix for name in (base, *earlier)]


def has_stream(run: Any, base: str) -> bool:
    """Whether each device of the run has the stream ``base``.

    Parameters
    ----------
    run : BlueskyRun
        A run as stored in Tiled.
    base : str
        The stream's name without a device's suffix, e.g. ``"evaluation"``.

    Returns
    -------
    bool
        False when a device lacks it (a run aborted, failed or stopped early may not have its
        ``evaluation``).
    """
    return all(
        any(name in run for name in _stream_names(run, base, device)) for device in devices_of(run)
    )


def trained_setting(run: Any, device: str | None = None) -> dict[str, Any]:
    """Return a run's final controls and how they scored, from its last unperturbed evaluation.

    Parameters
    ----------
    run : BlueskyRun
        A ``train``, ``train_genetic`` or ``evaluate_controls`` run as stored in Tiled.
    device : str, optional
        Which device, for runs that trained several (default: the first).

    Returns
    -------
    dict of str to Any
        ``controls`` (volts, one per control electrode), ``threshold_na``, ``accuracy``,
        ``margin_na`` and ``solved`` of that evaluation; ``test_accuracy`` for tasks with
        held-out data (else None); the run's ``task`` description (the start document's
        ``task``), e.g. to rebuild it with :func:`dnpu_bluesky.tasks.task_from_description`;
        and ``control_electrodes``, the electrodes the controls were on, in order, each with
        its DAQ channel if it has one (``"e0 (cDAQ1Mod1/ao0)"``); ``inputs`` (``"e0,e2"``)
        and ``input_levels`` (each input's logical-0 and logical-1 volts), None for runs that
        do not record them, and ``learned_levels``, whether the run trained the levels.

    Raises
    ------
    KeyError
        The run did not measure ``device``, or has no unperturbed evaluation (not a training
        run); the message lists the devices or streams it has.
    """
    name = _checked_device(run, device)
    if _stream_names(run, "evaluation", name)[0] not in run:
        start = run.metadata["start"]
        raise KeyError(
            f"run {start['uid'][:8]} ({start.get('plan_name', 'unknown plan')}) has no "
            f"unperturbed evaluation of {name}: not a training run, or stopped before its "
            f"final evaluation; its streams: {', '.join(sorted(run)) or 'none'}"
        )
    keys = ("controls", "threshold_na", "accuracy", "margin_na", "solved")
    stream = stream_of(run, "evaluation", name)
    has_inputs = "evaluation_inputs" in stream.metadata["data_keys"]
    if has_inputs:
        keys += ("inputs", "input_zero_v", "input_one_v")
    last = last_evaluation(run, name, keys)
    inputs = str(last["inputs"]) if has_inputs else None
    return {
        "controls": [float(v) for v in last["controls"]],
        "threshold_na": float(last["threshold_na"]),
        "accuracy": float(last["accuracy"]),
        "margin_na": float(last["margin_na"]),
        "solved": bool(last["solved"]),
        "test_accuracy": held_out_accuracy(run, name),
        "task": run.metadata["start"]["task"],
        "control_electrodes": _control_electrodes(run, name, inputs),
        "inputs": inputs,
        "input_levels": (
            [
                [float(zero), float(one)]
                for zero, one in zip(last["input_zero_v"], last["input_one_v"], strict=True)
            ]
            if has_inputs
            else None
        ),
        "learned_levels": bool(run.metadata["start"].get("plan_args", {}).get("learn_levels")),
    }


def _control_electrodes(run: Any, device: str, inputs: str | None) -> list[str]:
    """Return the control electrodes of ``device`` in the run.

    These are every electrode but ``inputs`` (the evaluation's input electrodes), or, for runs
    that do not record them, those built as controls; with channels from the measured
    stream's configuration.
    """
    config = stream_of(run, "eval_raw", device).metadata["configuration"][device]["data"]
    prefix, suffix = f"{device}_", "_role"
    roles = {
        key[len(prefix) : -len(suffix)]: role
        for key, role in config.items()
        if key.startswith(prefix) and key.endswith(suffix)
    }
    if inputs is not None:
        names = sorted(name for name in roles if name not in inputs.split(","))
    else:
        names = sorted(name for name, role in roles.items() if role == "control")
    return [electrode_label(name, config.get(f"{prefix}{name}_channel", "")) for name in names]


def electrode_label(name: str, channel: str) -> str:
    """Label an electrode by its name, with its DAQ channel if it has one.

    For example ``"e0 (cDAQ1Mod1/ao0)"``.
    """
    return f"{name} ({channel})" if channel else name


def held_out_accuracy(run: Any, device: str) -> float | None:
    """Return the accuracy on the held-out points of ``device``'s last ``evaluation_test``.

    It takes one small read; None for a task without held-out data.
    """
    if _stream_names(run, "evaluation_test", device)[0] not in run:
        return None
    return float(last_evaluation(run, device, ("accuracy",), "evaluation_test")["accuracy"])


def _checked_device(run: Any, device: str | None) -> str:
    """``device``, or the run's first device; refused if the run did not measure it."""
    devices = devices_of(run)
    if device is None:
        return devices[0]
    if device not in devices:
        uid = run.metadata["start"]["uid"][:8]
        raise KeyError(f"run {uid} has no device {device!r}; its devices: {', '.join(devices)}")
    return device


def final_scores(run: Any) -> dict[str, tuple[float, float]] | None:
    """Accuracy and margin (nA) of a run's last unperturbed evaluation, per device.

    Cheaper than :func:`trained_setting` (one small read per device), e.g. to list many runs.

    Returns
    -------
    dict of str to tuple of (float, float) or None
        ``{device: (accuracy, margin_na)}``, or None for a run without an ``evaluation``
        stream (not a training run, or one stopped before its final evaluation).
    """
    scores = {}
    for name in devices_of(run):
        try:
            evaluation = stream_of(run, "evaluation", name)
        except KeyError:
            return None
        last = last_evaluation_values(evaluation, ("accuracy", "margin_na"))
        scores[name] = (float(last["accuracy"]), float(last["margin_na"]))
    return scores


def last_evaluation(
    run: Any, device: str, keys: tuple[str, ...], stream: str = "evaluation"
) -> dict[str, Any]:
    """Read the last unperturbed evaluation of a device (see :func:`read_fields`).

    Parameters
    ----------
    run : BlueskyRun
        A run as stored in Tiled.
    device : str
        The device's name.
    keys : tuple of str
        Which values: ``key`` reads the field ``evaluation_<key>``.
    stream : str
        ``"evaluation"`` (the training cases) or ``"evaluation_test"`` (held-out cases).

    Returns
    -------
    dict
        Each key's value in the stream's last event.
    """
    return last_evaluation_values(stream_of(run, stream, device), keys)


def last_evaluation_values(stream: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """Read values of the last event of an evaluation stream already looked up.

    Parameters
    ----------
    stream : BlueskyEventStream
        An ``evaluation`` (or ``evaluation_test``) stream of a run as stored in Tiled.
    keys : tuple of str
        Which values: ``key`` reads the field ``evaluation_<key>``.

    Returns
    -------
    dict
        Each key's value in the stream's last event.
    """
    fields = [f"evaluation_{key}" for key in keys]
    values = read_fields(stream, fields, last=True)
    return {key: values[field] for key, field in zip(keys, fields, strict=True)}


def read_fields(stream: Any, fields: Sequence[str], *, last: bool = False) -> dict[str, Any]:
    """Read fields of a stream: its scalar fields in one table read, then each array field.

    Parameters
    ----------
    stream : BlueskyEventStream
        A stream of a run as stored in Tiled.
    fields : list of str
        The fields (data keys) to read.
    last : bool
        Read only each field's value in the stream's last event.

    Returns
    -------
    dict of str to Any
        Each field's values, one per event (a numpy array), or with ``last`` its value in the
        last event.
    """
    pick = (lambda values: values[-1]) if last else (lambda values: values)
    with _no_progress_bar(stream):
        values = _read_parts(stream, fields, last=last)
        if values is None:  # stored in another layout: the stream finds its fields itself
            dataset = stream.read(variables=list(fields))
            values = {field: pick(dataset[field].values) for field in fields}
    return values


def _read_parts(stream: Any, fields: Sequence[str], *, last: bool) -> dict[str, Any] | None:
    """Read fields from the parts TiledWriter stores a stream in; None if it has none such.

    Scalar fields are columns of the stream's ``internal`` table, other fields array nodes.
    The parts are listed in one request, not looked up one by one.
    """
    if not hasattr(type(stream), "base"):  # not a composite node (a databroker v2 view)
        return None
    data_keys = stream.metadata["data_keys"]
    scalars = [field for field in fields if not data_keys[field]["shape"]]
    parts = dict(stream.base.items())
    values: dict[str, Any] = {}
    try:
        if scalars:
            table = parts["internal"].read(scalars)
            values = {field: table[field].to_numpy() for field in scalars}
            if last:
                values = {field: column[-1] for field, column in values.items()}
        for field in fields:
            if field not in values:
                array = parts[field]
                values[field] = array[-1] if last else array.read()
    except KeyError:  # small arrays kept in the table, as other writers may do
        return None
    return values


@contextlib.contextmanager
def _no_progress_bar(node: Any) -> Iterator[None]:
    """Hide tiled's "Fetching data..." bar while the block runs.

    An interactive session shows it for reads of several chunks: for a few scalars it is
    noise.
    """
    context = getattr(node, "context", None)
    shown = getattr(context, "show_progress", None)
    if shown is None:
        yield
        return
    context.show_progress = False
    try:
        yield
    finally:
        context.show_progress = shown
