"""How soon the demo's runs are readable from Tiled, and what storage adds to the demo's wall.

Part of ``python -m benchmarks.storage`` (see there); on its own:
``python -m benchmarks.demo_pace`` prints one ``RESULT {json}`` line.

``dnpu-bluesky demo`` (six Boolean gates trained with HGE on the virtual DNPU, seed 0, the
default storage: embedded Tiled server and background writer) runs in a fresh interpreter, as
a user starts it, on a data directory whose catalog exists already (an installed session).
Inside that interpreter the storage's writer is wrapped: at each run's stop document a
thread waits (``writer.flush(run=uid)``) until the writer's worker reports the run in Tiled,
that is until ``TiledWriter`` has written the stop document, which it writes after every
event of the run. Figures:

* ``visible_after_stop_s``: for each run, seconds from its stop document to that report
  (``_p95``: the 95th percentile over the runs, linear interpolation; target <= 1.0).
* ``demo_wall_over_train_wall``: the demo process's wall time (start to exit, figures
  included) over its training wall time: the sum over its runs of the time ``RE(plan)``
  took, the table's ``wall s`` column (target <= 1.5).
* ``requests_after_stop``: per run, the requests the embedded server answered (lines of its
  ``access.log``) between the stop document and the report: what Tiled still had to take in.
* Afterwards every run is read back from Tiled: ``runs_complete`` counts those with their
  stop document and as many ``primary`` events as were emitted.

``measure(..., device_pace=True)`` runs the same demo with the virtual DNPU taking as long as
a device would (``SimulatedBackend(realtime=True)``: each acquisition lasts its device
seconds), the pace of a measured device; ``python -m benchmarks.demo_pace`` reports both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"visible_after_stop_s_p95": 1.0, "demo_wall_over_train_wall": 1.5}


class _StopClock:
    """Time each run from its stop document until the storage's writer reports it in Tiled.

    A RunEngine callback, subscribed after the writer.

    Parameters
    ----------
    writer : BackgroundWriter
        The storage's writer.
    access_log : pathlib.Path
        The embedded server's access log (one line per request).
    """

    def __init__(self, writer: Any, access_log: Path) -> None:
        self._writer = writer
        self._access_log = access_log
        self.runs: dict[str, dict[str, Any]] = {}
        self._threads: list[threading.Thread] = []
        self._primary: dict[str, str] = {}  # descriptor uid -> run uid

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.runs[doc["uid"]] = {"start": doc["time"], "events": 0}
        elif name == "descriptor" and doc["name"] == "primary":
            self._primary[doc["uid"]] = doc["run_start"]
        elif name == "event" and doc["descriptor"] in self._primary:
            self.runs[self._primary[doc["descriptor"]]]["events"] += 1
        elif name == "stop":
            stopped = time.perf_counter()
            run = self.runs[doc["run_start"]]
            run["stop"] = doc["time"]
            run["requests_at_stop"] = self._requests()
            thread = threading.Thread(target=self._wait, args=(doc["run_start"], stopped))
            thread.start()
            self._threads.append(thread)

    def _wait(self, uid: str, stopped: float) -> None:
        self._writer.flush(timeout=600, run=uid)
        run = self.runs[uid]
        run["visible_after_stop_s"] = time.perf_counter() - stopped
        run["requests_after_stop"] = self._requests() - run.pop("requests_at_stop")

    def _requests(self) -> int:
        return served_requests(self._access_log)

    def join(self) -> None:
        """Wait for every run's report."""
        for thread in self._threads:
            thread.join()


def served_requests(access_log: Path) -> int:
    """Count the requests an embedded server has answered so far: its access log's lines.

    Parameters
    ----------
    access_log : pathlib.Path
        The server's ``access.log`` (in its directory).

    Returns
    -------
    int
        The number of lines.
    """
    with access_log.open("rb") as log:
        return sum(1 for _ in log)


def _instrumented_demo(directory: str, figures: str, report: str, device_pace: str) -> None:
    """``dnpu-bluesky demo`` with its storage's writer timed (runs in the child process)."""
    import dnpu_bluesky.cli
    import dnpu_bluesky.cli._train
    import dnpu_bluesky.session
    from dnpu_bluesky.sim.daq import SimulatedBackend

    if device_pace == "1":
        made = SimulatedBackend.__init__

        def at_device_pace(self: Any, *args: Any, **kwargs: Any) -> None:
            made(self, *args, **{**kwargs, "realtime": True})

        SimulatedBackend.__init__ = at_device_pace  # type: ignore[method-assign]

    make_run_engine = dnpu_bluesky.session.make_run_engine
    clocks: list[_StopClock] = []

    def timed_run_engine(storage: Any, **kwargs: Any) -> Any:
        engine = make_run_engine(storage, **kwargs)  # the writer is subscribed first
        clocks.append(_StopClock(storage.writer, Path(directory) / "access.log"))
        engine.subscribe(clocks[-1])
        return engine

    run_plan = dnpu_bluesky.cli._train.run_plan
    trained: list[float] = []

    def timed_run(engine: Any, plan: Any) -> Any:
        started = time.perf_counter()
        try:
            return run_plan(engine, plan)
        finally:
            trained.append(time.perf_counter() - started)

    dnpu_bluesky.session.make_run_engine = timed_run_engine
    dnpu_bluesky.cli._train.run_plan = timed_run
    status = dnpu_bluesky.cli.main(
        ["demo", "--quiet", "--data-dir", directory, "--figures", figures]
    )
    for clock in clocks:
        clock.join()
    runs = {uid: run for clock in clocks for uid, run in clock.runs.items()}
    Path(report).write_text(json.dumps({"status": status, "runs": runs, "trained": trained}))


_CHILD = "import sys, benchmarks.demo_pace as d; d._instrumented_demo(*sys.argv[1:])"


def measure(workdir: Path, device_pace: bool = False) -> dict[str, Any]:
    """Run the timed demo once in a fresh interpreter; its figures.

    Parameters
    ----------
    workdir : pathlib.Path
        A scratch directory (the demo's data directory and figures go there).
    device_pace : bool
        Let the virtual DNPU take as long as a device would.

    Returns
    -------
    dict
        ``visible_after_stop_s`` (per run), its ``_p95`` and ``_max``, ``demo_wall_s``,
        ``train_wall_s``, ``demo_wall_over_train_wall``, ``requests_after_stop`` (per run)
        and ``runs_complete``.
    """
    from dnpu_bluesky.storage import StorageConfig, load_run, open_storage

    workdir = workdir / ("device_pace" if device_pace else "demo_pace")
    workdir.mkdir(parents=True, exist_ok=True)
    directory = workdir / "demo_data"
    with open_storage(StorageConfig(directory=directory)):
        pass  # the catalog exists, as after installing
    report = workdir / "demo_pace.json"
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable, "-c", _CHILD, str(directory), str(workdir / "figures"), str(report),
            "1" if device_pace else "0",
        ],
        check=True, stdout=subprocess.DEVNULL, timeout=1800,
    )  # fmt: skip
    demo_wall = time.perf_counter() - started
    reported = json.loads(report.read_text())
    runs = reported["runs"]
    visible = [run["visible_after_stop_s"] for run in runs.values()]
    train_wall = sum(reported["trained"])
    complete = 0
    with open_storage(StorageConfig(directory=directory)) as storage:
        for uid, emitted in runs.items():
            run = load_run(storage.client, uid)
            stored = int(run.primary["train_loss"].read().shape[0])
            complete += bool(run.metadata.get("stop")) and stored == emitted["events"]
    return {
        "visible_after_stop_s": [round(v, 2) for v in visible],
        "visible_after_stop_s_p95": round(float(np.percentile(visible, 95)), 2),
        "visible_after_stop_s_max": round(max(visible), 2),
        "demo_wall_s": round(demo_wall, 1),
        "train_wall_s": round(train_wall, 1),
        "demo_wall_over_train_wall": round(demo_wall / train_wall, 2),
        "requests_after_stop": [run["requests_after_stop"] for run in runs.values()],
        "runs": len(runs),
        "runs_complete": complete,
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="dnpu_demo_pace_") as tmp:
        result = measure(Path(tmp))
        device = measure(Path(tmp), device_pace=True)
    print("RESULT " + json.dumps({**result, "device_pace": device, "targets": TARGETS}))
