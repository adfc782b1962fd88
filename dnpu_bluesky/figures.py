"""Figures drawn from runs as stored in Tiled, so a report needs nothing but the run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _devices(run: Any) -> list[str]:
    return list(run.metadata["start"]["detectors"])


def _stream(run: Any, base: str, device: str) -> Any:
    """A device's stream: runs training several devices name them ``<base>_<device>``."""
    suffixes = run.metadata["start"].get("stream_suffixes", {})
    return run[base + suffixes.get(device, "")]


def _label(run: Any, device: str) -> str:
    start = run.metadata["start"]
    label = start.get("gate") or start.get("task", {}).get("name", start["plan_name"])
    return f"{label} ({device})" if len(_devices(run)) > 1 else label


def _panels(runs: Sequence[Any]) -> list[tuple[Any, str]]:
    """One (run, device) pair per trained device, in order."""
    return [(run, device) for run in runs for device in _devices(run)]


def evaluation_trace(run: Any, device: str | None = None) -> dict[str, np.ndarray]:
    """The last unperturbed evaluation of a training run, ramps removed (as in the paper).

    Args:
        run: The run as stored in Tiled.
        device: Which device, for runs that trained several (default: the first).

    Returns:
        ``time_s`` and ``current_na`` of the concatenated analysis windows, ``case`` index
        per sample, the ``targets`` and the ``threshold_na`` of that evaluation.
    """
    name = device or _devices(run)[0]
    raw = _stream(run, "eval_raw", name)
    config = raw.metadata["configuration"][name]["data"]
    rate = float(config[f"{name}_sample_rate"])
    length = round(float(config[f"{name}_window_s"]) * rate)
    output = raw[f"{name}_output"].read()[-1]
    starts = raw[f"{name}_window_start"].read()[-1].astype(int)
    cases = raw[f"{name}_segment_case"].read()[-1].astype(int)
    current = np.concatenate([output[s : s + length] for s in starts])
    evaluation = _stream(run, "evaluation", name)
    return {
        "time_s": np.arange(current.size) / rate,
        "current_na": current,
        "case": np.repeat(cases, length),
        "targets": evaluation["evaluation_targets"].read()[-1],
        "threshold_na": float(evaluation["evaluation_threshold_na"].read()[-1]),
    }


def loss_curve(run: Any, device: str | None = None) -> dict[str, np.ndarray]:
    """Loss per iteration (``train`` stream) or best loss per generation (genetic runs).

    ``device`` picks one of the devices of a run that trained several (default: the first).
    """
    name = device or _devices(run)[0]
    if run.metadata["start"]["plan_name"] != "train_genetic":
        stream = _stream(run, "train", name)
        return {
            "iteration": stream["train_iteration"].read(),
            "loss": stream["train_loss"].read(),
            "device_s": stream["train_device_seconds"].read(),
        }
    stream = _stream(run, "generation", name)
    return {
        "iteration": stream["generation_generation"].read(),
        "loss": stream["generation_best_loss"].read(),
        "device_s": stream["generation_device_seconds"].read(),
    }


def _draw_trace(axes: Axes, run: Any, device: str) -> None:
    trace = evaluation_trace(run, device)
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
    evaluation = _stream(run, "evaluation", device)
    accuracy = float(evaluation["evaluation_accuracy"].read()[-1])
    margin = float(evaluation["evaluation_margin_na"].read()[-1])
    axes.set_title(f"{_label(run, device)}  acc {accuracy:.0%}  margin {margin:.1f} nA", fontsize=9)
    axes.set_xlabel("time (s, ramps removed)")
    axes.set_ylabel("I (nA)")


def gates_figure(runs: Sequence[Any]) -> Figure:
    """Output current of each trained gate (and device) over its input cases (red: target 1,
    blue: 0)."""
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
    """Loss against device seconds for each run (and each device of a run)."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for run, device in _panels(runs):
        curve = loss_curve(run, device)
        axes.plot(curve["device_s"], curve["loss"], label=_label(run, device), lw=1)
    axes.set_xlabel("device time (s)")
    axes.set_ylabel("loss")
    axes.set_yscale("symlog", linthresh=0.1)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def save_figures(runs: Sequence[Any], directory: Path, stem: str = "gates") -> list[Path]:
    """Write the traces and loss figures of ``runs`` as PNG files; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, make in (("outputs", gates_figure), ("loss", loss_figure)):
        figure = make(runs)
        path = directory / f"{stem}_{suffix}.png"
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths
