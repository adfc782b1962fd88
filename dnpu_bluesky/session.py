"""What an interactive session (IPython profile, CLI, queue server) sets up, in one place.

Configuration comes from the environment so that the same startup files serve a laptop with
the virtual DNPU and an instrument PC:

- ``DNPU_SETUP``: path of a setup profile (YAML); the built-in virtual DNPU when unset.
- ``DNPU_SEED``: seed of the virtual DNPU (default 0).
- ``DNPU_TILED_URI`` / ``DNPU_TILED_API_KEY``: a remote Tiled server; embedded when unset.
- ``DNPU_DATA_DIR``: directory of the embedded Tiled server's storage.
- ``DNPU_METADATA_DIR``: where ``RE.md`` persists (see :func:`persistent_metadata_from_env`).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bluesky import RunEngine
from bluesky.utils import DefaultDuringTask, PersistentDict, ProgressBarBase, default_progress_bar

from ._console_log import set_up_console_log
from .config import SetupProfile, default_sim_profile, load_profile
from .storage import BackgroundWriter, Storage, StorageConfig, embedded_directory

if TYPE_CHECKING:
    from bluesky.callbacks.best_effort import BestEffortCallback


def setup_profile_from_env() -> SetupProfile:
    """Return the setup named by ``DNPU_SETUP``, or the virtual DNPU seeded by ``DNPU_SEED``."""
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


def persistent_metadata_from_env(config: StorageConfig) -> PersistentDict:
    """Return ``RE.md`` kept on disk, so ``scan_id`` and ``sample`` carry over to the next session.

    Bluesky's :class:`~bluesky.utils.PersistentDict` in ``DNPU_METADATA_DIR`` when set, else
    in the ``md`` folder of the embedded Tiled server's directory (so each run store counts its
    own ``scan_id``), or of ``platformdirs.user_data_path("dnpu-bluesky")`` for a remote server.
    One process at a time should use a folder: each keeps its own copy and writes it back on
    exit.

    Parameters
    ----------
    config : StorageConfig
        The storage of the session (where its runs go).

    Returns
    -------
    PersistentDict
        A mapping to give a RunEngine as its ``md``.
    """
    directory = os.environ.get("DNPU_METADATA_DIR")
    if directory:
        folder = Path(directory).expanduser()
    elif (storage_directory := embedded_directory(config)) is not None:
        folder = storage_directory / "md"
    else:
        import platformdirs

        folder = platformdirs.user_data_path("dnpu-bluesky") / "md"
    folder.mkdir(parents=True, exist_ok=True)
    return PersistentDict(str(folder))


def make_best_effort_callback() -> BestEffortCallback:
    """Make Bluesky's best-effort table, with live plots where a figure can update during a run.

    Plots are on for a GUI matplotlib backend (or ipympl) and off for file backends, Jupyter's
    inline backend and in the Bluesky queue server's worker; ``bec.enable_plots()`` and
    ``bec.disable_plots()`` switch them.

    Returns
    -------
    BestEffortCallback
        The callback, to give :func:`make_run_engine` as ``best_effort``.
    """
    from bluesky.callbacks.best_effort import BestEffortCallback

    bec = BestEffortCallback()
    if not _live_plots():
        bec.disable_plots()
    return bec


def make_run_engine(
    storage: Storage | None = None,
    *,
    interactive: bool = True,
    returns_result: bool = False,
    md: MutableMapping[str, Any] | None = None,
    best_effort: BestEffortCallback | None = None,
) -> RunEngine:
    """Make a RunEngine writing every document to ``storage``.

    Parameters
    ----------
    storage : Storage or None
        Where documents go; None for no storage (tests, dry runs). Its background writer's
        worker is started at once, so that the first run does not wait for it.
    interactive : bool
        Add a best-effort table, progress bars for long moves and for training runs, a live
        loss plot when matplotlib has an interactive backend, and a printout of each gradient
        validation's summary; a failed plan then shows its traceback once (bluesky's logged
        "Run aborted" copy is left out).
    returns_result : bool
        ``RE(plan)`` returns a ``RunEngineResult`` (with the plan's return value) instead of
        the run uids.
    md : MutableMapping or None
        The RunEngine's metadata (``RE.md``), e.g. :func:`persistent_metadata_from_env`; a new
        empty dict when None.
    best_effort : BestEffortCallback or None
        The best-effort callback of an interactive engine; one from
        :func:`make_best_effort_callback` when None. It sees every run but training runs,
        which have their own progress bar.

    Returns
    -------
    RunEngine
        The engine, subscribed as above.
    """
    engine = RunEngine(
        {} if md is None else md,
        call_returns_result=returns_result,
        during_task=_WakefulDuringTask(),
    )
    if storage is not None:
        engine.subscribe(storage.writer)
        if isinstance(storage.writer, BackgroundWriter):
            # Its worker takes a second or two to start. Started now (not waited for), it
            # is ready by the first run, which then reaches Tiled as soon as later ones do.
            storage.writer.wait_ready(timeout=0)
    if interactive:
        from bluesky.utils import ProgressBarManager

        from .callbacks import TrainingProgress

        table = make_best_effort_callback() if best_effort is None else best_effort
        engine.subscribe(_ExceptTraining(table))
        engine.subscribe(TrainingProgress(plot=_live_plots()))
        engine.subscribe(_PrintValidationSummary())
        engine.waiting_hook = ProgressBarManager(_progress_bar_of_other_devices)
        set_up_console_log()
    return engine


def annotate_plans_for_queue_server(namespace: dict[str, Any]) -> None:
    """In the Bluesky queue server's worker, let the queue server check device and gate names.

    Each of the package's plans in ``namespace`` that
    :func:`~dnpu_bluesky.plans.queue.queue_parameters` lists is replaced by the same plan
    with bluesky-queueserver's parameter annotations, so that a queue item naming no device,
    an unknown electrode (of the DNPUs in ``namespace``) or an unknown gate is refused when it
    is submitted. Elsewhere (IPython, scripts) nothing changes.

    Parameters
    ----------
    namespace : dict
        The startup code's namespace (``globals()`` of a profile's startup file).
    """
    if not _in_queue_server_worker():
        return
    from bluesky_queueserver import parameter_annotation_decorator

    from . import plans
    from .devices import DNPU
    from .plans.queue import queue_parameters

    dnpus = [obj for obj in namespace.values() if isinstance(obj, DNPU)]
    electrodes = {electrode.attr_name for dnpu in dnpus for electrode in dnpu.electrodes}
    for name, parameters in queue_parameters(electrodes).items():
        plan = namespace.get(name)
        if plan is not None and plan is getattr(plans, name, None):
            namespace[name] = parameter_annotation_decorator({"parameters": parameters})(plan)


class _ExceptTraining:
    """A callback that sees every run but training runs.

    A training run's progress bar says more than the best-effort table (whose "New stream"
    lines would break the bar).
    """

    def __init__(self, callback: Any) -> None:
        self._callback = callback
        self._skipping = False

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._skipping = doc.get("plan_name") in ("train", "train_genetic")
        if not self._skipping:
            self._callback(name, doc)


def _progress_bar_of_other_devices(statuses: Any) -> ProgressBarBase:
    """Make bluesky's progress bar for what the RunEngine waits on, leaving out DNPU acquisitions.

    They cannot report progress (bluesky would print "No progress bar available" for each)
    and a training run has its own bar.
    """
    from .devices import DNPU

    others = [s for s in statuses if not isinstance(getattr(s, "device", None), DNPU)]
    return default_progress_bar(others) if others else ProgressBarBase()


class _PrintValidationSummary:
    """Print the one event of a ``validation_summary`` stream.

    The best-effort table shows the "primary" stream only, and this is a gradient
    validation's verdict.
    """

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
    """Tell whether matplotlib is in use with a backend for which bluesky runs its own wait."""
    if "matplotlib" not in sys.modules:
        return False
    backend = sys.modules["matplotlib"].get_backend().lower()
    return any(name in backend for name in ("qt", "ipympl", "nbagg"))


def _live_plots() -> bool:
    """Tell whether plots drawn during a run can be seen.

    They can with an interactive matplotlib backend, outside the queue server's worker (which
    has no one watching its figures).
    """
    return _interactive_matplotlib() and not _in_queue_server_worker()


def _in_queue_server_worker() -> bool:
    """Tell whether this is the Bluesky queue server's RE worker (which imported the server)."""
    if "bluesky_queueserver" not in sys.modules:
        return False
    from bluesky_queueserver import is_re_worker_active

    return bool(is_re_worker_active())


def _interactive_matplotlib() -> bool:
    """Tell whether matplotlib draws where a figure can update during a run.

    True for a GUI window, or ipympl's widget in Jupyter, so a live plot is useful; False for
    file backends and for Jupyter's inline backend, which shows a figure only once the cell has
    finished.
    """
    import matplotlib
    from matplotlib.backends import BackendFilter, backend_registry

    backend = matplotlib.get_backend().lower()
    # ipympl's widget: "widget" or "ipympl" (the names %matplotlib takes) or its module name.
    if backend == "widget" or "ipympl" in backend:
        return True
    return backend in backend_registry.list_builtin(BackendFilter.INTERACTIVE)
