"""Progress of training runs for people watching: a progress bar and a live loss plot."""

from __future__ import annotations

from typing import Any

from event_model import DocumentRouter
from tqdm.auto import tqdm

#: The fields shown for a training step, by the record that holds them: the ``primary``
#: stream of ``train`` (iterations) and of ``train_genetic`` (generations).
_STEP_FIELDS = (
    ("train_loss", "train_margin_na", "train_device_seconds"),
    ("generation_best_loss", "generation_best_margin_na", "generation_device_seconds"),
)


class TrainingProgress(DocumentRouter):
    """A tqdm bar per training run (loss, margin, device seconds) and an optional live plot.

    Parameters
    ----------
    plot : bool
        Draw the loss against the step in a matplotlib window as it arrives. Only
        useful with an interactive matplotlib backend (the IPython profile enables it
        when one is available).
    """

    def __init__(self, *, plot: bool = False) -> None:
        super().__init__()
        self.plot = plot
        self._bars: dict[str, Any] = {}  # run uid -> bar (side by side: a run per device)
        self._streams: dict[str, tuple[str, tuple[str, ...]]] = {}  # descriptor -> run, fields
        self._line: Any = None
        self._line_run = ""
        self._xy: tuple[list[float], list[float]] = ([], [])

    def start(self, doc: dict) -> None:
        """Open a bar for a training run (``train``, ``train_genetic``); ignore other runs.

        Parameters
        ----------
        doc : dict
            A start document.
        """
        args = doc.get("plan_args", {})
        if doc.get("plan_name") == "train":
            total = int(args.get("max_iterations", 0)) * int(args.get("max_attempts", 1))
        elif doc.get("plan_name") == "train_genetic":
            total = int(args.get("generations", 0))
        else:
            return
        label = doc.get("gate") or doc.get("task", {}).get("name", "")
        if "side_by_side" in doc:
            label = f"{label} {doc['detectors'][0]}"
        bar = tqdm(total=total or None, desc=f"{label} {doc.get('method', '')}", leave=True)
        self._bars[doc["uid"]] = bar
        if self.plot and self._line is None:  # one plot: the first device's loss
            self._line_run = doc["uid"]
            self._xy = ([], [])
            self._open_plot(label)

    def descriptor(self, doc: dict) -> None:
        """Note a training run's ``primary`` stream and the fields its steps show.

        Parameters
        ----------
        doc : dict
            An event descriptor.
        """
        if doc["run_start"] not in self._bars or doc["name"] != "primary":
            return
        for fields in _STEP_FIELDS:
            if fields[0] in doc["data_keys"]:
                self._streams[doc["uid"]] = (doc["run_start"], fields)

    def event(self, doc: dict) -> None:
        """Advance the run's bar (and the loss plot) by one training step.

        Parameters
        ----------
        doc : dict
            An event; only those of a training run's ``primary`` stream count.
        """
        found = self._streams.get(doc["descriptor"])
        if found is None:
            return
        run, fields = found
        loss, margin, seconds = (doc["data"][key] for key in fields)
        bar = self._bars[run]
        bar.set_postfix(loss=f"{loss:.3f}", margin_nA=f"{margin:.2f}", device_s=f"{seconds:.1f}")
        bar.update(1)
        if self._line is not None and run == self._line_run:
            self._xy[0].append(len(self._xy[0]) + 1)
            self._xy[1].append(loss)
            self._line.set_data(*self._xy)
            axes = self._line.axes
            axes.relim()
            axes.autoscale_view()
            axes.figure.canvas.draw_idle()

    def stop(self, doc: dict) -> None:
        """Close the run's bar: full when it ended early with success (solved).

        Parameters
        ----------
        doc : dict
            A stop document.
        """
        bar = self._bars.pop(doc["run_start"], None)
        if bar is not None:
            if doc.get("exit_status") == "success" and bar.n:
                # Done early (solved): a full bar, not "7/480" read as an aborted run.
                bar.total = bar.n
                bar.refresh()
            bar.close()
        if doc["run_start"] == self._line_run:
            self._line = None
            self._line_run = ""

    def _open_plot(self, label: str) -> None:
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(num=f"loss {label}", clear=True)
        (self._line,) = axes.plot([], [], marker=".")
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        figure.show()
