"""What an interactive session (IPython profile, CLI, queue server) sets up, in one place.

Configuration comes from the environment so that the same startup files serve a laptop with
the virtual DNPU and an instrument PC:

- ``DNPU_SETUP``: path of a setup profile (YAML); the built-in virtual DNPU when unset.
- ``DNPU_SEED``: seed of the virtual DNPU (default 0).
- ``DNPU_TILED_URI`` / ``DNPU_TILED_API_KEY``: a remote Tiled server; embedded when unset.
- ``DNPU_DATA_DIR``: directory of the embedded Tiled server's storage.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from bluesky import RunEngine
from bluesky.utils import DefaultDuringTask, ProgressBarBase, default_progress_bar

from ._console_log import set_up_console_log
from .config import SetupProfile, default_sim_profile, load_profile
from .storage import Storage, StorageConfig


def setup_profile_from_env() -> SetupProfile:
    """The setup named by ``DNPU_SETUP``, or the virtual DNPU seeded by ``DNPU_SEED``."""
    path = os.environ.get("DNPU_SETUP")
    if path:
        return load_profile(path)
    return default_sim_profile(seed=int(os.environ.get("DNPU_SEED", "0")))


def storage_config_from_env() -> StorageConfig:
    """Embedded Tiled (in ``DNPU_DATA_DIR`` or the user data dir) or ``DNPU_TILED_URI``."""
    directory = os.environ.get("DNPU_DATA_DIR")
    return StorageConfig(
        directory=Path(directory) if directory else None,
        uri=os.environ.get("DNPU_TILED_URI") or None,
        api_key=os.environ.get("DNPU_TILED_API_KEY") or None,
    )


def make_run_engine(
    storage: Storage | None = None, *, interactive: bool = True, returns_result: bool = False
) -> RunEngine:
    """A RunEngine writing every document to ``storage``.

    Args:
        storage: Where documents go; None for no storage (tests, dry runs).
        interactive: Add a best-effort table, progress bars for long moves and for
            training runs, a live loss plot when matplotlib has an interactive backend, and
            a printout of each gradient validation's summary; a failed plan then shows its
            traceback once (bluesky's logged "Run aborted" copy is left out).
        returns_result: ``RE(plan)`` returns a ``RunEngineResult`` (with the plan's return
            value) instead of the run uids.
    """
    engine = RunEngine({}, call_returns_result=returns_result, during_task=_WakefulDuringTask())
    if storage is not None:
        engine.subscribe(storage.writer)
    if interactive:
        from bluesky.callbacks.best_effort import BestEffortCallback
        from bluesky.utils import ProgressBarManager

        from .callbacks import TrainingProgress

        table = BestEffortCallback()
        table.disable_plots()
        engine.subscribe(_ExceptTraining(table))
        engine.subscribe(TrainingProgress(plot=_interactive_matplotlib()))
        engine.subscribe(_PrintValidationSummary())
        engine.waiting_hook = ProgressBarManager(_progress_bar_of_other_devices)
        set_up_console_log()
    return engine


class _ExceptTraining:
    """A callback that sees every run but training runs, whose progress bar says more than
    the best-effort table (whose "New stream" lines would break the bar)."""

    def __init__(self, callback: Any) -> None:
        self._callback = callback
        self._skipping = False

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._skipping = doc.get("plan_name") in ("train", "train_genetic")
        if not self._skipping:
            self._callback(name, doc)


def _progress_bar_of_other_devices(statuses: Any) -> ProgressBarBase:
    """bluesky's progress bar for what the RunEngine waits on, leaving out DNPU acquisitions:
    they cannot report progress (bluesky would print "No progress bar available" for each)
    and a training run has its own bar."""
    from .devices import DNPU

    others = [s for s in statuses if not isinstance(getattr(s, "device", None), DNPU)]
    return default_progress_bar(others) if others else ProgressBarBase()


class _PrintValidationSummary:
    """Print the one event of a ``validation_summary`` stream: the best-effort table shows
    the "primary" stream only, and this is a gradient validation's verdict."""

    def __init__(self) -> None:
        self._descriptors: set[str] = set()

    def __call__(self, name: str, doc: dict) -> None:
        if name == "descriptor" and doc.get("name") == "validation_summary":
            self._descriptors.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self._descriptors:
            print("Validation summary:")
            for key, value in doc["data"].items():
                print(f"  {key} = {value:.4f}")


class _WakefulDuringTask(DefaultDuringTask):
    """Bluesky's wait for a running plan, except that the main thread wakes every 0.1 s.

    Python runs signal handlers in the main thread only. The kernel may deliver a Ctrl-C to
    any thread (the RunEngine's event loop, a writer); the main thread, blocked in
    ``Event.wait()``, then sees it only when the plan has ended, and the run is not paused.
    Measured on a training run before this: about one Ctrl-C in six was lost so. Qt and
    notebook backends keep bluesky's own wait, which already wakes for signals.
    """

    def block(self, blocking_event: threading.Event) -> None:
        if _matplotlib_waits_itself():
            super().block(blocking_event)
            return
        while not blocking_event.wait(0.1):
            pass


def _matplotlib_waits_itself() -> bool:
    """True when matplotlib is in use with a backend for which bluesky runs its own wait."""
    if "matplotlib" not in sys.modules:
        return False
    backend = sys.modules["matplotlib"].get_backend().lower()
    return any(name in backend for name in ("qt", "ipympl", "nbagg"))


def _interactive_matplotlib() -> bool:
    """True when matplotlib draws where a figure can update during a run (a GUI window, or
    ipympl's widget in Jupyter), so a live plot is useful; False for file backends and for
    Jupyter's inline backend, which shows a figure only once the cell has finished."""
    import matplotlib
    from matplotlib.backends import BackendFilter, backend_registry

    backend = matplotlib.get_backend().lower()
    # ipympl's widget: "widget" or "ipympl" (the names %matplotlib takes) or its module name.
    if backend == "widget" or "ipympl" in backend:
        return True
    return backend in backend_registry.list_builtin(BackendFilter.INTERACTIVE)
