"""Figures drawn from runs as stored in Tiled, so a report needs nothing but the run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .results import devices_of as _devices
from .results import has_stream, last_evaluation, last_evaluation_values, read_fields
from .results import stream_of as _stream


def _label(run: Any, device: str) -> str:
    """Task, method and short uid (and device, for side-by-side runs): ``XOR hge 7fb2f05f``."""
    start = run.metadata["start"]
    label = start.get("gate") or start.get("task", {}).get("name", start["plan_name"])
    method = start.get("method")
    label = " ".join(part for part in (label, method, start["uid"][:8]) if part)
    several = len(_devices(run)) > 1 or "side_by_side" in start
    return f"{label} ({device})" if several else label


def _panels(runs: Sequence[Any]) -> list[tuple[Any, str]]:
    """One (run, device) pair per trained device, in order."""
    return [(run, device) for run in runs for device in _devices(run)]


def evaluation_trace(run: Any, device: str | None = None) -> dict[str, np.ndarray]:
    """Return the last unperturbed evaluation of a training run, ramps removed (as in the paper).

    Parameters
    ----------
    run : Any
        The run as stored in Tiled.
    device : str, optional
        Which device, for runs that trained several (default: the first).

    Returns
    -------
    dict of str to numpy.ndarray
        ``time_s`` and ``current_na`` of the concatenated analysis windows, ``case`` index
        per sample, the ``targets``, ``threshold_na``, ``accuracy`` and ``margin_na`` of that
        evaluation.
    """
    name = device or _devices(run)[0]
    return _trace(run, name, last_evaluation(run, name, _TRACE_KEYS))


_TRACE_KEYS = ("targets", "threshold_na", "accuracy", "margin_na")
_LEVEL_KEYS = ("inputs", "input_zero_v", "input_one_v")


def _trace(run: Any, device: str, evaluation: dict[str, Any]) -> dict[str, np.ndarray]:
    """:func:`evaluation_trace` from the last evaluation's ``_TRACE_KEYS`` values."""
    raw = _stream(run, "eval_raw", device)
    config = raw.metadata["configuration"][device]["data"]
    rate = float(config[f"{device}_sample_rate"])
    length = round(float(config[f"{device}_window_s"]) * rate)
    fields = [f"{device}_output", f"{device}_window_start", f"{device}_segment_case"]
    last = read_fields(raw, fields, last=True)
    output = last[f"{device}_output"]
    starts = last[f"{device}_window_start"].astype(int)
    cases = last[f"{device}_segment_case"].astype(int)
    current = np.concatenate([output[s : s + length] for s in starts])
    return {
        "time_s": np.arange(current.size) / rate,
        "current_na": current,
        "case": np.repeat(cases, length),
        "targets": evaluation["targets"],
        "threshold_na": float(evaluation["threshold_na"]),
        "accuracy": float(evaluation["accuracy"]),
        "margin_na": float(evaluation["margin_na"]),
    }


def loss_curve(run: Any, device: str | None = None) -> dict[str, np.ndarray]:
    """Loss per iteration or best loss per generation (genetic runs): the ``primary`` stream.

    ``device`` picks one of the devices of a run that trained several (default: the first).
    Besides ``iteration``, ``loss`` and ``device_s``, ``attempt`` numbers the random start
    each step belongs to (all 0 for genetic runs, which do not restart).
    """
    name = device or _devices(run)[0]
    if run.metadata["start"]["plan_name"] != "train_genetic":
        keys = ("iteration", "loss", "device_seconds", "attempt")
        columns = read_fields(_stream(run, "primary", name), [f"train_{key}" for key in keys])
        return {
            "iteration": columns["train_iteration"],
            "loss": columns["train_loss"],
            "device_s": columns["train_device_seconds"],
            "attempt": columns["train_attempt"],
        }
    keys = ("generation", "best_loss", "device_seconds")
    columns = read_fields(_stream(run, "primary", name), [f"generation_{key}" for key in keys])
    return {
        "iteration": columns["generation_generation"],
        "loss": columns["generation_best_loss"],
        "device_s": columns["generation_device_seconds"],
        "attempt": np.zeros_like(columns["generation_generation"]),
    }


def input_levels_text(run: Any, device: str) -> str:
    """Describe the input levels (logical 0/1) of the last evaluation.

    The text reads like ``inputs (0/1, V): e4 -0.39/+0.28, e5 +0.41/-0.22``, or is "" for a
    run that does not record them.
    """
    evaluation = _stream(run, "evaluation", device)
    if not _records_levels(evaluation):
        return ""
    return _levels_text(last_evaluation_values(evaluation, _LEVEL_KEYS))


def _records_levels(evaluation: Any) -> bool:
    return "evaluation_inputs" in evaluation.metadata["data_keys"]


def _levels_text(evaluation: dict[str, Any]) -> str:
    names = str(evaluation["inputs"]).split(",")
    levels = zip(names, evaluation["input_zero_v"], evaluation["input_one_v"], strict=True)
    pairs = [f"{name} {zero:+.2f}/{one:+.2f}" for name, zero, one in levels]
    return "inputs (0/1, V): " + ", ".join(pairs)


def _draw_trace(axes: Axes, run: Any, device: str) -> None:
    # One lookup of the evaluation stream and one read of its last event serve the trace
    # and the title.
    stream = _stream(run, "evaluation", device)
    levels_recorded = _records_levels(stream)
    evaluation = last_evaluation_values(
        stream, _TRACE_KEYS + (_LEVEL_KEYS if levels_recorded else ())
    )
    trace = _trace(run, device, evaluation)
    targets = trace["targets"]
    for case, target in enumerate(targets):
        mask = trace["case"] == case
        axes.plot(
            trace["time_s"][mask],
            trace["current_na"][mask],
            color="tab:red" if target else "tab:blue",
            lw=0.8,
        )
    axes.axhline(trace["threshold_na"], color="0.4", ls="--", lw=0.8)
    accuracy, margin = trace["accuracy"], trace["margin_na"]
    title = f"{_label(run, device)}  acc {accuracy:.0%}  margin {margin:.1f} nA"
    levels = _levels_text(evaluation) if levels_recorded else ""
    axes.set_title(f"{title}\n{levels}" if levels else title, fontsize=8)
    axes.set_xlabel("time (s, ramps removed)")
    axes.set_ylabel("I (nA)")


def gates_figure(runs: Sequence[Any]) -> Figure:
    """Plot the output current of each trained gate (and device) over its input cases.

    Red marks target 1, blue target 0.
    """
    panels = _panels(runs)
    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    figure = Figure(figsize=(4 * columns, 2.8 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, (run, device) in zip(axes.flat, panels, strict=False):
        _draw_trace(ax, run, device)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    figure.tight_layout()
    return figure


def loss_figure(runs: Sequence[Any]) -> Figure:
    """Plot the loss against device seconds for each run (and each device of a run).

    A dotted line in the run's colour marks where an attempt was abandoned for a new start,
    and faint points are the steps that screened the input electrodes.
    """
    figure = Figure(figsize=(8.5, 4))
    axes = figure.subplots()
    restarted = screened = False
    for run, device in _panels(runs):
        curve = loss_curve(run, device)
        screening = curve["attempt"] < 0
        trained = ~screening
        # Markers: a run solved at its first step has one point and no line to draw.
        (line,) = axes.plot(
            curve["device_s"][trained],
            curve["loss"][trained],
            label=_label(run, device),
            lw=1,
            marker=".",
            ms=4,
        )
        if screening.any():  # steps of many candidates, interleaved: points, not a line
            screened = True
            axes.plot(
                curve["device_s"][screening],
                curve["loss"][screening],
                ls="",
                marker=".",
                ms=4,
                alpha=0.6,
                color=line.get_color(),
            )
        # A new start makes the loss jump; the line says it is not a fault.
        attempts = curve["attempt"][trained]
        for index in np.flatnonzero(np.diff(attempts)) + 1:
            axes.axvline(curve["device_s"][trained][index], color=line.get_color(), ls=":", lw=0.8)
            restarted = True
    if screened:
        axes.plot([], [], color="0.4", ls="", marker=".", alpha=0.6, label="screening inputs")
    if restarted:
        axes.plot([], [], color="0.4", ls=":", lw=0.8, label="new start")
    axes.set_xlabel("device time (s)")
    axes.set_ylabel("loss")
    axes.set_yscale("symlog", linthresh=0.1)
    # Beside the axes: inside, it hides the curves of side-by-side runs.
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    figure.tight_layout()
    return figure


def _is_sphere(run: Any) -> bool:
    return run.metadata["start"].get("task", {}).get("name") == "sphere"


def _task_points(
    raw: Any, device: str, inputs: list[str], evaluation: dict[str, Any], task_range: Any
) -> np.ndarray:
    """Return the task's own points behind the last evaluation.

    These are the input voltages the device was given (its segments' DC levels) mapped back
    through the evaluation's input levels onto the task's input range, so that the sphere is
    a sphere whatever levels were trained.
    """
    last = read_fields(raw, [f"{device}_segment_dc", f"{device}_segment_case"], last=True)
    dc = last[f"{device}_segment_dc"]
    cases = last[f"{device}_segment_case"].astype(int)
    columns = [int(name.removeprefix("e")) for name in inputs]
    volts = np.array([dc[cases == case][0, columns] for case in np.unique(cases)])
    zero = np.asarray(evaluation["input_zero_v"], dtype=float)
    one = np.asarray(evaluation["input_one_v"], dtype=float)
    low, high = (float(v) for v in task_range)
    return low + (high - low) * (volts - zero) / (one - zero)


def sphere_outputs(run: Any, device: str | None = None) -> dict[str, Any]:
    """Return a sphere-classification run's final unperturbed outputs against the input points.

    The points are those of the task, found from what the device was given (the DC levels of
    the ``eval_raw`` and ``eval_test_raw`` streams' last events, through the evaluation's
    input levels), so nothing is recomputed from the task's seed.

    Parameters
    ----------
    run : Any
        The run as stored in Tiled.
    device : str, optional
        Which device, for runs that trained several (default: the first).

    Returns
    -------
    dict of str to Any
        Per split (``"train"``, ``"test"``): ``points_v`` ``(n, 3)``, ``distance_v`` from the
        sphere's centre, ``current_na``, ``targets`` (1 inside) and ``accuracy``; besides,
        ``threshold_na`` (chosen on the training split, used for both), ``radius_v`` and
        ``center_v`` of the sphere, and ``inputs``, the input electrodes' names.
    """
    name = device or _devices(run)[0]
    task = run.metadata["start"]["task"]
    result: dict[str, Any] = {
        "radius_v": float(task["radius_v"]),
        "center_v": float(task["center_v"]),
    }
    has_levels = "evaluation_inputs" in _stream(run, "evaluation", name)
    for split, suffix in (("train", ""), ("test", "_test")):
        raw = _stream(run, f"eval{suffix}_raw", name)
        keys = ("outputs", "targets", "accuracy", "threshold_na")
        if has_levels:
            keys += ("inputs", "input_zero_v", "input_one_v")
        evaluation = last_evaluation(run, name, keys, f"evaluation{suffix}")
        if has_levels:
            inputs = str(evaluation["inputs"]).split(",")
            points = _task_points(raw, name, inputs, evaluation, task["input_range_v"])
        else:
            config = raw.metadata["configuration"][name]["data"]
            points = np.asarray(config[f"{name}_input_cases"], dtype=float)
            inputs = [
                key.removeprefix(f"{name}_").removesuffix("_role")
                for key, role in config.items()
                if key.endswith("_role") and role == "input"
            ]
        result[split] = {
            "points_v": points,
            "distance_v": np.linalg.norm(points - result["center_v"], axis=1),
            "current_na": np.asarray(evaluation["outputs"], dtype=float),
            "targets": np.asarray(evaluation["targets"]).astype(int),
            "accuracy": float(evaluation["accuracy"]),
        }
        if split == "train":  # the test split is classified at this same threshold
            result["threshold_na"] = float(evaluation["threshold_na"])
            result["inputs"] = inputs
    return result


def _draw_sphere(radial: Axes, cloud: Axes, run: Any, device: str) -> None:
    data = sphere_outputs(run, device)
    train, test = data["train"], data["test"]
    for split, marker, size, name in ((train, "o", 10, "train"), (test, "D", 22, "test")):
        for target, colour, side in ((1, "tab:red", "inside"), (0, "tab:blue", "outside")):
            mask = split["targets"] == target
            radial.scatter(
                split["distance_v"][mask],
                split["current_na"][mask],
                s=size,
                marker=marker,
                color=colour,
                alpha=0.45 if split is train else 0.95,
                edgecolors="none" if split is train else "k",
                linewidths=0.4,
                label=f"{name}, {side}",
            )
    radial.axhline(data["threshold_na"], color="0.4", ls="--", lw=0.8, label="threshold")
    radial.axvline(data["radius_v"], color="0.4", ls=":", lw=0.8, label="radius")
    radial.legend(fontsize=7, loc="best")
    radial.set_xlabel("distance from the sphere's centre (V)")
    radial.set_ylabel("I (nA)")
    radial.set_title(
        f"{_label(run, device)}  train {train['accuracy']:.0%}  test {test['accuracy']:.0%}",
        fontsize=9,
    )
    points = test["points_v"]
    shown = cloud.scatter(
        points[:, 0],
        points[:, 1],
        points[:, 2],
        c=test["current_na"],
        cmap="viridis",
        marker="o",
        s=18,
        edgecolors=np.where(test["targets"][:, None] == 1, "tab:red", "none").ravel(),
    )
    cloud.set_title("test points, colour: I (nA); red edge: inside", fontsize=9)
    cloud.figure.colorbar(shown, ax=cloud, shrink=0.6, pad=0.15, label="I (nA)")
    cloud.set_xlabel(f"{data['inputs'][0]} (V)", fontsize=8)
    cloud.set_ylabel(f"{data['inputs'][1]} (V)", fontsize=8)
    cloud.set_zlabel(f"{data['inputs'][2]} (V)", fontsize=8)


def sphere_figure(runs: Sequence[Any]) -> Figure:
    """Plot each sphere run's outputs against the sphere, as in the HGE paper's Fig. 4b-c.

    For each sphere run (and device): output current against the distance of each point
    from the sphere's centre (red: inside, blue: outside; dots train, diamonds test; dashed:
    the threshold, dotted: the radius), and the test points in input space coloured by the
    current (red edge: inside).
    """
    panels = _panels(runs)
    figure = Figure(figsize=(10, 3.8 * len(panels)))
    for row, (run, device) in enumerate(panels):
        radial = figure.add_subplot(len(panels), 2, 2 * row + 1)
        cloud = figure.add_subplot(len(panels), 2, 2 * row + 2, projection="3d")
        _draw_sphere(radial, cloud, run, device)
    figure.tight_layout()
    return figure


def save_figures(runs: Sequence[Any], directory: Path) -> list[Path]:
    """Write the figures of ``runs`` as PNG files; returns their paths.

    Gate runs give ``gates_outputs.png`` (output traces) and ``gates_loss.png``; sphere runs
    give ``sphere_outputs.png`` (:func:`sphere_figure`) and ``sphere_loss.png``. Runs of
    ``evaluate_controls`` have no loss curve, and runs stopped before their final evaluation
    (aborted, failed) no outputs: [] if no run has anything to draw.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    groups = (
        ("gates", [r for r in runs if not _is_sphere(r)], gates_figure),
        ("sphere", [r for r in runs if _is_sphere(r)], sphere_figure),
    )
    for stem, group, outputs_figure in groups:
        if not group:
            continue
        # A genetic run measures every genome in eval_raw; "evaluation" is the final one.
        evaluated = [r for r in group if has_stream(r, "evaluation")]
        trained = [r for r in group if (steps := _steps_stream(r)) and has_stream(r, steps)]
        for suffix, make, drawn in (
            ("outputs", outputs_figure, evaluated),
            ("loss", loss_figure, trained),
        ):
            if drawn:
                path = directory / f"{stem}_{suffix}.png"
                make(drawn).savefig(path, dpi=120)
                paths.append(path)
    return paths


def _steps_stream(run: Any) -> str:
    """Name the stream of a run's training steps; evaluate_controls runs have none.

    Parameters
    ----------
    run : BlueskyRun
        A run as stored in Tiled.

    Returns
    -------
    str
        ``"primary"`` for training runs, else ``""``.
    """
    plan = run.metadata["start"]["plan_name"]
    return "primary" if plan in ("train", "train_genetic") else ""
