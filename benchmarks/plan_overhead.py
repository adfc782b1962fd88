"""Plan overhead: ``hge_gradient`` through a RunEngine and Tiled against bare numpy (issue 3).

Run ``python -m benchmarks.plan_overhead`` (6 rounds, about 5 minutes) or
``python -m benchmarks.plan_overhead --quick`` (3 rounds, under 60 s); ``--profile`` adds a
cProfile of the RunEngine thread and of the Tiled server thread. The run prints a table and
ends with one line ``RESULT {json}``; ``docs/benchmarks.md`` explains every figure.

Setting: the built-in virtual DNPU (``build_dnpu()``: controls e0, e1, e2, e5, e6 with the
default 20 mV tones, inputs e3, e4), parallel mode, the four input cases of a Boolean gate
(``CASES``), T = 0.1 s windows at 10 kS/s. One HGE step (one measurement) plays one stream
of the four cases (0.495 device seconds, 4951 samples) and demodulates it.

Configurations, all on the same DNPU (the same ``SimulatedBackend``), in one process:

* ``bare``: the numpy path in a loop, no RunEngine: ``DNPU.build_waveform``,
  ``backend.play_and_record``, ``amplifier.to_nanoamps``, ``demodulate``,
  ``estimate_gradients``.
* ``runengine``: ``RE(hge_gradient(dnpu, input_cases=CASES, repeats=N))`` on a RunEngine from
  ``session.make_run_engine`` (non-interactive), nothing subscribed.
* ``tiled``: the same RunEngine with ``storage.writer`` subscribed; the storage is
  ``open_storage(StorageConfig(directory=<temporary directory>))``: embedded server, default
  writer and batch size. A background writer returns before the documents are in Tiled, so
  after each of its runs the benchmark waits in ``storage.flush()`` and times that wait
  separately (``drain``); no backlog spills into the next measurement.
* ``tiled_<writer>`` (full run only, when ``StorageConfig`` offers a ``writer`` choice): each
  other writer, through a second client of the same embedded server (one server per
  process), into its own container.

Per round, each configuration does one run of N HGE steps (``hge_gradient(repeats=N)``) and
one-step runs (the bare path: a loop of N steps, then single steps). The configurations run in
a new random order every round, after a warm-up that is not counted, so that slow drifts of a
shared, noisy machine hit all of them alike. (The quick run warms up only the configurations
without Tiled: a first Tiled run is no slower than later ones, and that saves seconds.)
Figures are medians over rounds; overheads and ratios are paired (configuration against bare
*in the same round*).

Figures (``RESULT`` keys without prefix are the ``tiled`` configuration's):

* ``overhead_ms_per_step``: wall ms per HGE step in runs of N steps, minus bare: what the
  caller of ``RE(...)`` waits for. ``overhead_fraction_of_window``: the same over T (0.1 s).
* ``..._single_run``: the same for runs of one step (one run per measurement).
* ``..._with_drain``: including the wait until a background writer has the run in Tiled.
* ``fixed_ms_per_run``, ``marginal_ms_per_step`` (and ``..._with_drain``):
  ``t(N) = fixed + N * marginal`` solved per round from the N-step and one-step runs
  (overhead over bare); noisy in the quick run (N = 10, large drains).
* ``device_seconds_per_step``: device time of one HGE step (the played stream).
* ``cpu_ms_per_step``: CPU time per step by thread of this process and of its child processes
  (``/proc``, Linux), and ``http_requests_per_run``: requests the embedded server handled.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import json
import os
import platform
import pstats
import re
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette

from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.devices.dnpu import DNPU
from dnpu_bluesky.hge import PhaseCalibration, demodulate, estimate_gradients
from dnpu_bluesky.plans import hge_gradient
from dnpu_bluesky.session import make_run_engine
from dnpu_bluesky.storage import Storage, StorageConfig, open_storage

#: A Boolean gate's four input cases on inputs e3, e4 (volts, at their limits).
CASES = [[-0.7, -0.7], [-0.7, 0.3], [0.3, -0.7], [0.3, 0.3]]
SHAPES = ("run", "single")  # a run of N steps, runs of one step


@dataclass(frozen=True)
class Config:
    """Sizes of one run of the benchmark."""

    quick: bool
    rounds: int
    repeats: int  # N: HGE steps in the multi-step run of each round
    single_runs: int  # one-step runs per configuration and round
    other_writers: bool  # also measure the writers StorageConfig does not default to
    warm_up_storage: bool  # a first, uncounted run also for the configurations with Tiled
    seed: int = 0


QUICK = Config(
    quick=True, rounds=3, repeats=10, single_runs=1, other_writers=False, warm_up_storage=False
)
FULL = Config(
    quick=False, rounds=6, repeats=40, single_runs=2, other_writers=True, warm_up_storage=True
)


# -- where the time goes: CPU per thread, HTTP requests ----------------------------------------

THREAD_GROUPS = (
    ("MainThread", "main thread (bare loop; RE.__call__ waits)"),
    ("bluesky-run-engine", "RunEngine loop (plan, documents, callbacks, writer call)"),
    ("dnpu-tiled-writer", "background writer (TiledWriter, HTTP client)"),
    ("(run)", "Tiled server (uvicorn, FastAPI, SQLAlchemy)"),
    ("_connection_worker_thread", "Tiled catalog (aiosqlite)"),
    ("AnyIO worker", "Tiled storage workers (DuckDB, Zarr)"),
    ("asyncio_", "Tiled storage workers (DuckDB, Zarr)"),
    ("zarr_io", "Tiled storage workers (DuckDB, Zarr)"),
)
EXITED = "exited threads (per-trigger acquisition: simulator, publish)"
PROCESS = "process total"
CHILDREN = "child processes (writer process: TiledWriter, HTTP client)"


def _thread_group(name: str) -> str:
    for pattern, group in THREAD_GROUPS:
        if pattern in name:
            return group
    return "other threads"


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of every live thread, summed by group; {} if no /proc."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    groups: dict[str, float] = defaultdict(float)
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return {}
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat") as file:
                stat = file.read()
        except OSError:  # the thread exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        groups[_thread_group(names.get(int(task), "?"))] += seconds
    return dict(groups)


class RequestCounter:
    """Counts the HTTP requests the embedded Tiled server handles, by method.

    Counted inside the server (``Starlette.__call__``, outermost app only), so requests of a
    writer in another process count too.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = Starlette.__call__
        counts, lock = self.counts, self._lock

        async def call(app: Starlette, scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") == "http" and "app" not in scope:
                with lock:
                    counts[scope.get("method", "?")] += 1
            await original(app, scope, receive, send)

        Starlette.__call__ = call  # type: ignore[method-assign]
        try:
            yield
        finally:
            Starlette.__call__ = original  # type: ignore[method-assign]

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


def child_cpu() -> float:
    """CPU seconds of this process's child processes (e.g. a writer process); 0 if no /proc."""
    me, ticks, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0.0
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0.0
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class Meter:
    """CPU seconds per thread group and HTTP requests of blocks of work, per (config, shape)."""

    def __init__(self, requests: RequestCounter) -> None:
        self.counter = requests
        self.cpu: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.requests: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.steps: Counter[tuple[str, str]] = Counter()
        self.runs: Counter[tuple[str, str]] = Counter()

    @contextlib.contextmanager
    def measure(self, key: tuple[str, str], runs: int, steps: int) -> Iterator[None]:
        before, process_before = thread_cpu(), time.process_time()
        children_before, requests_before = child_cpu(), self.counter.snapshot()
        yield
        after, process = thread_cpu(), time.process_time() - process_before
        self.cpu[key][CHILDREN] += max(0.0, child_cpu() - children_before)
        live = 0.0
        for group, seconds in after.items():
            delta = seconds - before.get(group, 0.0)
            self.cpu[key][group] += delta
            live += delta
        self.cpu[key][EXITED] += max(0.0, process - live)
        self.cpu[key][PROCESS] += process
        self.requests[key].update(self.counter.snapshot() - requests_before)
        self.runs[key] += runs
        self.steps[key] += steps


# -- the configurations ----------------------------------------------------------------------


def calibration_of(dnpu: DNPU) -> tuple[np.ndarray, PhaseCalibration]:
    """The tone frequencies and the device's phase calibration, as the lock-in reads them."""
    frequencies = dnpu.frequencies()
    tones = np.flatnonzero(frequencies > 0)
    calibration = PhaseCalibration(
        frequencies=frequencies[tones],
        lag_rad=np.asarray(dnpu.phase_lag_rad.get(), float)[tones],
        gain=np.asarray(dnpu.phase_gain.get(), float)[tones],
    )
    return frequencies[tones], calibration


def bare_steps(dnpu: DNPU, n: int) -> float:
    """``n`` HGE steps without a RunEngine; returns the device seconds they took."""
    tones, calibration = calibration_of(dnpu)
    device_s = 0.0
    for _ in range(n):
        waveform = dnpu.build_waveform()
        acquisition = dnpu.backend.play_and_record(waveform.voltages, waveform.sample_rate)
        current = dnpu.amplifier.to_nanoamps(acquisition.ai_volts)
        lockin = demodulate(current, tones, waveform.sample_rate, windows=waveform.windows)
        estimate = estimate_gradients(lockin, waveform, calibration)
        device_s += acquisition.device_seconds
    if not np.all(np.isfinite(estimate.gradient)):
        raise RuntimeError("bare path produced a non-finite gradient")
    return device_s


@dataclass
class Timing:
    """What one configuration measured in one round (seconds)."""

    run_s: float  # the run of N steps
    drain_run_s: float  # waiting for the writer after it
    single_s: list[float]  # each one-step run
    drain_single_s: list[float]


class Runner:
    """One configuration: runs and times its block of work."""

    def __init__(
        self, name: str, dnpu: DNPU, engine: Any = None, storage: Storage | None = None
    ) -> None:
        self.name = name
        self.dnpu = dnpu
        self.engine = engine
        self.storage = storage
        self.runs = 0  # RunEngine runs made (with this storage subscribed, if any)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The storage writer is subscribed only while this configuration runs."""
        if self.storage is None:
            yield
            return
        token = self.engine.subscribe(self.storage.writer)
        try:
            yield
        finally:
            self.engine.unsubscribe(token)

    def once(self, repeats: int) -> tuple[float, float]:
        """One run (or bare loop) of ``repeats`` steps: (wall s, drain s)."""
        start = time.perf_counter()
        if self.engine is None:
            bare_steps(self.dnpu, repeats)
            return time.perf_counter() - start, 0.0
        result = self.engine(hge_gradient(self.dnpu, input_cases=CASES, repeats=repeats))
        wall = time.perf_counter() - start
        if not np.all(np.isfinite(result.plan_result.gradient)):
            raise RuntimeError(f"{self.name}: non-finite gradient")
        self.runs += 1
        start = time.perf_counter()
        if self.storage is not None:
            self.storage.flush()  # waits for a background writer; a no-op for a direct one
        return wall, time.perf_counter() - start

    def block(self, config: Config, meter: Meter) -> Timing:
        with self.active():
            with meter.measure((self.name, "run"), 1, config.repeats):
                run_s, drain_s = self.once(config.repeats)
            with meter.measure((self.name, "single"), config.single_runs, config.single_runs):
                singles = [self.once(1) for _ in range(config.single_runs)]
        return Timing(run_s, drain_s, [s for s, _ in singles], [d for _, d in singles])


def other_writers() -> list[str]:
    """Writer choices of ``StorageConfig`` besides its default (none if it has no choice)."""
    fields = {f.name: f for f in dataclasses.fields(StorageConfig)}
    if "writer" not in fields:
        return []
    choices = []
    for writer in ("background", "thread", "direct"):
        if writer == fields["writer"].default:
            continue
        try:
            StorageConfig(writer=writer)
        except ValueError:
            continue
        choices.append(writer)
    return choices


def open_second_storage(storage: Storage, writer: str, directory: Path) -> Storage:
    """A client of the same embedded server with another writer, in its own container."""
    options: dict[str, Any] = {
        "uri": storage.uri,
        "api_key": storage.api_key,
        "container": f"runs_{writer}",
        "writer": writer,
    }
    if "spool_directory" in {f.name for f in dataclasses.fields(StorageConfig)}:
        options["spool_directory"] = directory / f"spool_{writer}"
    return open_storage(StorageConfig(**options))


# -- statistics ------------------------------------------------------------------------------


def summarise(data: dict[str, list[Timing]], config: Config, window_s: float) -> dict[str, Any]:
    """Medians over rounds of per-step times, paired overheads and ratios against bare."""

    def arrays(timings: list[Timing]) -> dict[str, np.ndarray]:
        return {
            "run": np.array([t.run_s for t in timings]) / config.repeats * 1e3,
            "run_drain": np.array([t.drain_run_s for t in timings]) / config.repeats * 1e3,
            "single": np.array([np.mean(t.single_s) for t in timings]) * 1e3,
            "single_drain": np.array([np.mean(t.drain_single_s) for t in timings]) * 1e3,
        }

    bare = arrays(data["bare"])
    n = config.repeats
    out: dict[str, Any] = {}
    for name, timings in data.items():
        a = arrays(timings)
        run_total, single_total = a["run"] + a["run_drain"], a["single"] + a["single_drain"]
        over_run, over_single = a["run"] - bare["run"], a["single"] - bare["single"]
        # t(N) = fixed + N * marginal (ms, overhead over bare), per round.
        marginal = (over_run * n - over_single) / (n - 1)
        marginal_total = ((run_total - bare["run"]) * n - (single_total - bare["single"])) / (n - 1)
        stats = {
            "ms_per_step": float(np.median(a["run"])),
            "ms_per_step_min": float(np.min(a["run"])),
            "ms_per_step_max": float(np.max(a["run"])),
            "ms_single_run": float(np.median(a["single"])),
            "ms_single_run_min": float(np.min(a["single"])),
            "ms_single_run_max": float(np.max(a["single"])),
            "drain_ms_per_step": float(np.median(a["run_drain"])),
            "drain_ms_single_run": float(np.median(a["single_drain"])),
            "overhead_ms_per_step": float(np.median(over_run)),
            "overhead_ms_single_run": float(np.median(over_single)),
            "overhead_ms_per_step_with_drain": float(np.median(run_total - bare["run"])),
            "overhead_ms_single_run_with_drain": float(np.median(single_total - bare["single"])),
            "ratio_per_step": float(np.median(a["run"] / bare["run"])),
            "ratio_single_run": float(np.median(a["single"] / bare["single"])),
            "fixed_ms_per_run": float(np.median(over_single - marginal)),
            "fixed_ms_per_run_with_drain": float(
                np.median(single_total - bare["single"] - marginal_total)
            ),
            "marginal_ms_per_step": float(np.median(marginal)),
            "marginal_ms_per_step_with_drain": float(np.median(marginal_total)),
        }
        window_ms = window_s * 1e3
        for key, fraction in (
            ("overhead_ms_per_step", "overhead_fraction_of_window"),
            ("overhead_ms_single_run", "overhead_single_run_fraction_of_window"),
            ("overhead_ms_per_step_with_drain", "overhead_with_drain_fraction_of_window"),
            ("overhead_ms_single_run_with_drain", "overhead_single_run_with_drain_fraction"),
            ("marginal_ms_per_step", "marginal_fraction_of_window"),
            ("marginal_ms_per_step_with_drain", "marginal_with_drain_fraction_of_window"),
        ):
            stats[fraction] = stats[key] / window_ms
        out[name] = stats
    return out


# -- profiles --------------------------------------------------------------------------------

#: (title, regex on "file:line(function)"): costs on the RunEngine thread (indented: within).
ENGINE_CATEGORIES = (
    ("documents: compose + validate (bundlers.save)", r"bluesky/bundlers.py:\d+\(save\)"),
    (
        "  of which descriptors (bundlers._prepare_stream)",
        r"bluesky/bundlers.py:\d+\(_prepare_stream\)",
    ),
    (
        "  JSON-schema validation (nearly all in the above)",
        r"jsonschema/validators.py:\d+\(validate\)",
    ),
    ("bluesky Plan() stack capture (format_stack)", r"traceback.py:\d+\(format_stack\)"),
    ("DNPU.trigger (build_waveform, thread start)", r"devices/dnpu.py:\d+\(trigger\)"),
    ("LockInCallback.event (demodulate, estimate)", r"callbacks/lockin.py:\d+\(event\)"),
    (
        "storage writer call (spool or TiledWriter)",
        r"dnpu_bluesky/storage/_(writer|store).py:\d+\(__call__\)",
    ),
)
#: The same for the Tiled server thread (async code: cumulative times exclude awaits).
SERVER_CATEGORIES = (
    (
        "FastAPI dependency resolution (solve_dependencies)",
        r"fastapi/dependencies/utils.py:\d+\(solve_dependencies\)",
    ),
    ("tiled request handlers (router.py)", r"tiled/server/router.py:\d+"),
)
IDLE = "'poll' of 'select.epoll'"  # the event loop waiting: idle time


def _idle(func: tuple[str, int, str]) -> bool:
    return func[0] == "~" and IDLE in func[2]


def _label(func: tuple[str, int, str]) -> str:
    path, line, name = func
    short = re.sub(r".*site-packages/", "", path)
    short = re.sub(r".*/(dnpu_bluesky|benchmarks)/", r"\1/", short)
    short = re.sub(r".*/lib/python3\.\d+/", "", short)
    return f"{short}:{line}({name})" if line else name


def _package(func: tuple[str, int, str]) -> str:
    path, _, name = func
    if path == "~":
        return "idle (epoll)" if IDLE in name else "C built-ins"
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0].removesuffix(".py")
    if "/dnpu_bluesky/" in path:
        return "dnpu_bluesky"
    if path.startswith("<"):
        return "generated code"
    return f"stdlib {Path(path).stem}"


@contextlib.contextmanager
def profiled_thread(loop: Any) -> Iterator[cProfile.Profile]:
    """cProfile of the thread running the asyncio ``loop`` (enabled from inside it)."""
    profiler = cProfile.Profile()
    done = threading.Event()

    def toggle(on: bool) -> None:
        profiler.enable() if on else profiler.disable()
        done.set()

    loop.call_soon_threadsafe(toggle, True)
    done.wait()
    done.clear()
    try:
        yield profiler
    finally:
        loop.call_soon_threadsafe(toggle, False)
        done.wait()


def digest(profiler: cProfile.Profile, categories=(), top: int = 10) -> dict[str, Any]:
    """Shares of profiled time: named categories, per package (own time), top functions."""
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = max(1e-9, sum(v[2] for v in entries.values()))
    busy = max(1e-9, total - sum(v[2] for f, v in entries.items() if _idle(f)))
    shares = {}
    for title, pattern in categories:
        cumulative = 0.0
        for func, (_, _, _, cumtime, callers) in entries.items():
            # Outermost calls only: skip a function called by another matching function
            # (recursion into itself is already folded into its cumulative time).
            if re.search(pattern, _label(func)) and not any(
                c != func and re.search(pattern, _label(c)) for c in callers
            ):
                cumulative += cumtime
        shares[title] = cumulative / busy
    packages: Counter[str] = Counter()
    for func, value in entries.items():
        packages[_package(func)] += value[2]
    ranked = sorted(((f, v) for f, v in entries.items() if not _idle(f)), key=lambda kv: -kv[1][2])
    return {
        "profiled_s": total,
        "busy_s": busy,
        "categories": shares,
        "packages": {p: s / busy for p, s in packages.most_common(11) if p != "idle (epoll)"},
        "top": [(_label(f), v[2] / busy, v[3] / busy) for f, v in ranked[:top]],
    }


def server_loop(storage: Storage) -> Any:
    """The embedded Tiled server's event loop (private attributes; None if not found)."""
    try:
        return storage._server._server.servers[0]._loop
    except (AttributeError, IndexError, TypeError):
        return None


def profile(runners: dict[str, Runner], config: Config) -> dict[str, dict[str, Any]]:
    """cProfile ``runengine`` (an N-step run, 10 one-step runs) and one N-step run of
    ``tiled`` (its RunEngine thread, and the server thread until the run is in Tiled)."""
    out = {}
    engine_runner = runners["runengine"]
    with profiled_thread(engine_runner.engine.loop) as profiler:
        engine_runner.once(config.repeats)
    out[f"runengine, a {config.repeats}-step run: RunEngine thread"] = digest(
        profiler, ENGINE_CATEGORIES
    )
    with profiled_thread(engine_runner.engine.loop) as profiler:
        for _ in range(10):
            engine_runner.once(1)
    out["runengine, 10 one-step runs: RunEngine thread"] = digest(profiler, ENGINE_CATEGORIES)
    tiled = runners["tiled"]
    loop = server_loop(tiled.storage)
    with tiled.active(), contextlib.ExitStack() as stack:
        server = stack.enter_context(profiled_thread(loop)) if loop is not None else None
        with profiled_thread(tiled.engine.loop) as profiler:
            tiled.engine(hge_gradient(tiled.dnpu, input_cases=CASES, repeats=config.repeats))
        tiled.runs += 1
        tiled.storage.flush()
    out[f"tiled, a {config.repeats}-step run: RunEngine thread"] = digest(
        profiler, ENGINE_CATEGORIES
    )
    if server is not None:
        out[f"tiled, a {config.repeats}-step run: Tiled server thread (run + drain)"] = digest(
            server, SERVER_CATEGORIES
        )
    return out


# -- main ------------------------------------------------------------------------------------


def print_report(
    config: Config,
    summary: dict[str, Any],
    meter: Meter,
    profiles: dict[str, Any],
    info: dict[str, Any],
) -> None:
    bare = summary["bare"]
    print(
        f"Plan overhead benchmark ({'quick' if config.quick else 'full'}): {config.rounds} "
        f"rounds; per round and configuration one run of N = {config.repeats} HGE steps and "
        f"{config.single_runs} run(s) of one step; {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {info['load']}"
    )
    print(
        f"{len(CASES)} input cases, parallel mode, T = {info['window_s']:g} s: "
        f"{info['device_s']:.4f} device s per HGE step; bare numpy "
        f"{bare['ms_per_step']:.2f} ms per step (wall)"
    )
    print(
        f"Tiled: embedded server in a temporary directory (opened in {info['open_s']:.1f} s), "
        f"default writer {info['writer']!r}, batch_size {info['batch_size']}"
    )
    print()
    print("wall ms per HGE step, median over rounds (min-max); overhead = minus bare, same round")
    header = (
        f"{'configuration':<14}{'N-step run':>11}  {'(min-max)':<15}{'overhead':>9}"
        f"{'x bare':>8}{'of T':>8}  |{'1-step run':>11}{'overhead':>10}{'of T':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, s in summary.items():
        spread = f"({s['ms_per_step_min']:.1f}-{s['ms_per_step_max']:.1f})"
        print(
            f"{name:<14}{s['ms_per_step']:>11.1f}  {spread:<15}"
            f"{s['overhead_ms_per_step']:>9.1f}{s['ratio_per_step']:>8.1f}"
            f"{s['overhead_fraction_of_window']:>8.1%}  |{s['ms_single_run']:>11.1f}"
            f"{s['overhead_ms_single_run']:>10.1f}"
            f"{s['overhead_single_run_fraction_of_window']:>8.1%}"
        )
    print()
    print("until the run is in Tiled (drain = wait in storage.flush() after RE returned), ms:")
    for name, s in summary.items():
        if name.startswith("tiled"):
            print(
                f"  {name:<14} drain {s['drain_ms_per_step']:7.1f} per step (N-step), "
                f"{s['drain_ms_single_run']:7.1f} (1-step); overhead with drain "
                f"{s['overhead_ms_per_step_with_drain']:7.1f} per step "
                f"({s['overhead_with_drain_fraction_of_window']:.0%} of T), "
                f"{s['overhead_ms_single_run_with_drain']:7.1f} (1-step)"
            )
    print()
    print("t(N) = fixed + N * marginal, overhead over bare, ms (median over rounds):")
    for name, s in summary.items():
        if name != "bare":
            print(
                f"  {name:<14} fixed per run {s['fixed_ms_per_run']:8.1f}, marginal per step "
                f"{s['marginal_ms_per_step']:6.1f}; with drain: fixed "
                f"{s['fixed_ms_per_run_with_drain']:8.1f}, marginal "
                f"{s['marginal_ms_per_step_with_drain']:6.1f}"
            )
    print()
    print("CPU ms per HGE step by thread (N-step run | 1-step run) and HTTP requests per run:")
    for name in summary:
        run, single = (name, "run"), (name, "single")
        groups = sorted(
            {g for g in (*meter.cpu[run], *meter.cpu[single]) if g != PROCESS},
            key=lambda g: -meter.cpu[run][g],
        )

        def per_step(key: tuple[str, str], group: str) -> float:
            return meter.cpu[key][group] / max(1, meter.steps[key]) * 1e3

        requests = [sum(meter.requests[k].values()) / max(1, meter.runs[k]) for k in (run, single)]
        print(
            f"  {name}: this process {per_step(run, PROCESS):.1f} | "
            f"{per_step(single, PROCESS):.1f}"
            + (
                f"; HTTP requests per run {requests[0]:.0f} | {requests[1]:.0f}"
                if any(requests)
                else ""
            )
        )
        for group in groups:
            if max(per_step(run, group), per_step(single, group)) >= 1.0:
                print(f"    {per_step(run, group):8.1f} | {per_step(single, group):8.1f}  {group}")
    for title, p in profiles.items():
        print()
        print(
            f"cProfile, {title}: {p['busy_s']:.2f} s busy of {p['profiled_s']:.2f} s profiled "
            "(cProfile slows Python code; shares are of busy time)"
        )
        for name, share in p["categories"].items():
            print(f"  {share:6.1%}  {name}")
        print(
            "  own time by package (share of profiled time): "
            + ", ".join(f"{package} {share:.0%}" for package, share in p["packages"].items())
        )
        print("  top functions by own time (own, cumulative):")
        for label, own, cumulative in p["top"]:
            print(f"    {own:6.1%} {cumulative:6.1%}  {label}")
    print()
    print(f"runs stored in Tiled: {info['stored']} (expected {info['expected']})")
    print(f"device seconds per HGE step in the RunEngine runs: {info['device_s_engine']:.4f}")
    print(f"storage closed in {info['close_s']:.1f} s")
    print(f"wall time of the whole benchmark: {info['wall_s']:.1f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 short rounds instead of 6")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the RunEngine and Tiled server threads"
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    started = time.perf_counter()
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())

    dnpu = build_dnpu()
    dnpu.input_cases.put(CASES)
    window_s = float(dnpu.window_s.get())
    engine = make_run_engine(None, interactive=False, returns_result=True)
    rng = np.random.default_rng(config.seed)

    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="overhead-")))
        opened = time.perf_counter()
        storage = open_storage(StorageConfig(directory=directory / "tiled"))
        stack.callback(storage.close)
        open_s = time.perf_counter() - opened
        counter = RequestCounter()
        stack.enter_context(counter.installed())
        meter = Meter(counter)
        runners = {
            "bare": Runner("bare", dnpu),
            "runengine": Runner("runengine", dnpu, engine),
            "tiled": Runner("tiled", dnpu, engine, storage),
        }
        for writer in other_writers() if config.other_writers else []:
            second = open_second_storage(storage, writer, directory)
            stack.callback(second.close)  # closed before the embedded server (LIFO)
            runners[f"tiled_{writer}"] = Runner(f"tiled_{writer}", dnpu, engine, second)

        for runner in runners.values():  # warm-up: lazy imports, first descriptors
            if runner.storage is None or config.warm_up_storage:
                with runner.active():
                    runner.once(1)
        device_before = dnpu.total_device_seconds
        data: dict[str, list[Timing]] = {name: [] for name in runners}
        order = list(runners)
        for _ in range(config.rounds):
            for index in rng.permutation(len(order)):
                name = order[int(index)]
                data[name].append(runners[name].block(config, meter))
        engine_steps = sum(
            meter.steps[(name, shape)] for name in runners if name != "bare" for shape in SHAPES
        )
        device_s_engine = (dnpu.total_device_seconds - device_before) / max(1, engine_steps)
        device_s = bare_steps(dnpu, 1)
        profiles = profile(runners, config) if args.profile else {}
        stored = {n: len(r.storage.client) for n, r in runners.items() if r.storage}
        expected = {n: r.runs for n, r in runners.items() if r.storage}
        writer = getattr(storage.config, "writer", "direct")
        batch_size = storage.config.batch_size
        closing = time.perf_counter()
    close_s = time.perf_counter() - closing
    summary = summarise(data, config, window_s)
    info = {
        "load": load,
        "window_s": window_s,
        "device_s": device_s,
        "device_s_engine": device_s_engine,
        "open_s": open_s,
        "close_s": close_s,
        "writer": writer,
        "batch_size": batch_size,
        "stored": stored,
        "expected": expected,
        "wall_s": time.perf_counter() - started,
    }
    print_report(config, summary, meter, profiles, info)

    tiled, engine_only = summary["tiled"], summary["runengine"]
    result: dict[str, Any] = {
        "overhead_ms_per_step": tiled["overhead_ms_per_step"],
        "overhead_fraction_of_window": tiled["overhead_fraction_of_window"],
        "overhead_ms_per_step_with_drain": tiled["overhead_ms_per_step_with_drain"],
        "overhead_with_drain_fraction_of_window": tiled["overhead_with_drain_fraction_of_window"],
        "overhead_ms_single_run": tiled["overhead_ms_single_run"],
        "overhead_ms_single_run_with_drain": tiled["overhead_ms_single_run_with_drain"],
        "fixed_ms_per_run": tiled["fixed_ms_per_run"],
        "fixed_ms_per_run_with_drain": tiled["fixed_ms_per_run_with_drain"],
        "marginal_ms_per_step": tiled["marginal_ms_per_step"],
        "marginal_ms_per_step_with_drain": tiled["marginal_ms_per_step_with_drain"],
        "ratio_to_bare": tiled["ratio_per_step"],
        "runengine_overhead_ms_per_step": engine_only["overhead_ms_per_step"],
        "runengine_overhead_fraction_of_window": engine_only["overhead_fraction_of_window"],
        "runengine_overhead_ms_single_run": engine_only["overhead_ms_single_run"],
        "runengine_ratio_to_bare": engine_only["ratio_per_step"],
        "bare_ms_per_step": summary["bare"]["ms_per_step"],
        "device_seconds_per_step": device_s,
        "window_s": window_s,
        "writer": writer,
        "batch_size": batch_size,
        "repeats": config.repeats,
        "single_runs": config.single_runs,
        "rounds": config.rounds,
        "quick": config.quick,
        "load_average": load,
        "storage_open_s": open_s,
        "storage_close_s": close_s,
        "runs_stored": stored,
        "runs_expected": expected,
        "wall_s": info["wall_s"],
    }
    for name in summary:
        if name.startswith("tiled_"):
            for key in ("overhead_ms_per_step", "overhead_fraction_of_window"):
                result[f"{name}_{key}"] = summary[name][key]
            result[f"{name}_overhead_ms_single_run"] = summary[name]["overhead_ms_single_run"]
    result["configurations"] = summary
    result["cpu_ms_per_step"] = {
        f"{name}/{shape}": {g: s / max(1, meter.steps[(name, shape)]) * 1e3 for g, s in c.items()}
        for (name, shape), c in meter.cpu.items()
    }
    result["http_requests_per_run"] = {
        f"{name}/{shape}": {m: c / max(1, meter.runs[(name, shape)]) for m, c in r.items()}
        for (name, shape), r in meter.requests.items()
    }
    if profiles:
        result["profile"] = {
            title: {k: p[k] for k in ("categories", "packages", "busy_s")}
            for title, p in profiles.items()
        }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
