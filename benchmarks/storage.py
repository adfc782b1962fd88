"""Storage cost on the RunEngine, and losses in a Tiled outage (issue 6).

Run ``python -m benchmarks.storage`` (200 steps per case, about 3-4 minutes) or
``python -m benchmarks.storage --quick`` (40 steps, about 60 s). The run prints a table and
ends with one line ``RESULT {json}``; ``docs/benchmarks.md`` explains every figure.

Setting: a training-like run of HGE steps. Each step measures 4 input cases; each case is
one event in the ``hge_raw`` stream with a 10k-sample float64 current waveform (an ophyd
``SynSignal`` whose trigger takes 25 ms, so one step is one 0.1 s device window) plus 3
scalars; then one event in the ``train`` stream (loss, step, a 5-vector of controls). Storage
is isolated: no physics, the same plan and devices in every case.

Cases:

* ``none``: no storage subscribed (the reference).
* ``background``: the defaults, ``open_storage(StorageConfig(directory=...))``: the embedded
  Tiled server (its own process) and the background writer (spool + worker process).
* ``direct``: ``StorageConfig(writer="direct")``: bluesky-tiled-plugins' TiledWriter called
  inside the RunEngine's callback (the default ``batch_size`` for both), on a second embedded
  server.
* ``outage``: the background writer through a TCP proxy that is switched off for a quarter of
  the run (connections cut, port refused) and on again; the tiled client's own retries are
  limited to one attempt so that the outage reaches the writer.

Figures:

* ``overhead_fraction``: RunEngine-side cost of the default storage per step, mean step time
  with it minus mean step time with no storage, divided by the 0.1 s device window (target
  <= 0.05), with every document verified in Tiled afterwards. ``none`` and ``background``
  run side by side in alternating runs of 10 steps (ABBA order), so that load from elsewhere
  hits both alike; the quartiles of the per-round differences are reported too.
* ``docs_lost_after_outage``: events emitted minus events found in Tiled after the outage
  run was flushed, plus 1 if its stop document is missing (target 0).
* ``reopen_s_median`` and ``reopen_speedup``: seconds to start the embedded server on an
  existing catalog as ``storage`` does it (without tiled's ``catalog init`` command when the
  catalog is stamped current), and how many times longer SimpleTiledServer alone takes,
  alternating starts in fresh interpreters.
* ``peak_rss_mb``: peak resident memory of the benchmark process (RunEngine, writer,
  clients; not the server or worker processes), ``ru_maxrss``.
* ``visible_after_stop_s_p95`` (target <= 1.0) and ``demo_wall_over_train_wall`` (target
  <= 1.5), at the demo's pace: ``dnpu-bluesky demo`` itself, timed run by run from each stop
  document until the writer reports the run in Tiled (:mod:`benchmarks.demo_pace`), with
  ``requests_after_stop``, the server's requests in that time per run. ``device_pace``: the
  same demo with the virtual DNPU taking as long as a device would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from benchmarks import demo_pace
from benchmarks.outage_proxy import OutageProxy

WINDOW_S = 0.1
N_CASES = 4
N_SAMPLES = 10_000
N_CONTROLS = 5
STEPS_PER_ROUND = 10
TARGETS = {"overhead_fraction": 0.05, "docs_lost_after_outage": 0, **demo_pace.TARGETS}


def _devices(seed: int) -> dict[str, Any]:
    from ophyd import Signal
    from ophyd.sim import SynSignal

    rng = np.random.default_rng(seed)
    t = np.arange(N_SAMPLES) / 10_000.0
    tones = sum(np.sin(2 * np.pi * f * t) for f in (150.0, 250.0, 350.0, 450.0, 550.0))
    case = Signal(name="case", value=0)
    current = SynSignal(
        func=lambda: (1.0 + case.get()) * tones + rng.normal(0.0, 0.01, N_SAMPLES),
        name="current",
        exposure_time=WINDOW_S / N_CASES,
    )
    output = SynSignal(func=lambda: float(rng.normal()), name="output_na")
    settle = SynSignal(func=lambda: 0.01, name="settle_s")
    loss = Signal(name="loss", value=0.0)
    step = Signal(name="step", value=0)
    controls = Signal(name="controls", value=np.zeros(N_CONTROLS))
    return {
        "case": case,
        "current": current,
        "output": output,
        "settle": settle,
        "loss": loss,
        "step": step,
        "controls": controls,
        "rng": rng,
    }


def _plan(dev: dict[str, Any], n_steps: int, step_times: list[float], on_step=None):
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    @bpp.run_decorator(md={"plan_name": "storage_benchmark", "n_steps": n_steps})
    def plan():
        for k in range(n_steps):
            if on_step is not None:
                on_step(k)
            started = time.perf_counter()
            for case in range(N_CASES):
                yield from bps.mv(dev["case"], case)
                yield from bps.trigger_and_read(
                    [dev["current"], dev["case"], dev["output"], dev["settle"]], name="hge_raw"
                )
            yield from bps.mv(
                dev["loss"],
                float(dev["rng"].random()),
                dev["step"],
                k,
                dev["controls"],
                dev["rng"].normal(size=N_CONTROLS),
            )
            yield from bps.trigger_and_read(
                [dev["loss"], dev["step"], dev["controls"]], name="train"
            )
            step_times.append(time.perf_counter() - started)

    return plan()


def _open_case(
    name: str, n_steps: int, shared_uri: str, api_key: str, workdir: Path
) -> dict[str, Any]:
    """The storage (and proxy, outage schedule) of a case, opened before any case runs."""
    from dnpu_bluesky.storage import StorageConfig, open_storage

    case: dict[str, Any] = {"name": name, "storage": None, "proxy": None, "on_step": None}
    spool = workdir / f"spool_{name}"
    container = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    if name == "background":
        case["storage"] = open_storage(
            StorageConfig(directory=workdir / "tiled_default", spool_directory=spool)
        )
    elif name == "direct":
        case["storage"] = open_storage(
            StorageConfig(uri=shared_uri, api_key=api_key, container=container, writer="direct")
        )
    elif name == "outage":
        import tiled.client.utils

        # Let the outage reach our writer (in this process and in its worker process).
        tiled.client.utils.TILED_RETRY_ATTEMPTS = 1
        os.environ["TILED_RETRY_ATTEMPTS"] = "1"
        target = urlsplit(shared_uri)
        proxy = case["proxy"] = OutageProxy((target.hostname, target.port))
        proxy.start()
        uri = target._replace(netloc=f"{target.hostname}:{proxy.port}").geturl()
        case["storage"] = open_storage(
            StorageConfig(
                uri=uri,
                api_key=api_key,
                container=container,
                spool_directory=spool,
                retry_max_interval_s=2.0,
            )
        )
        down, up = n_steps // 4, n_steps // 2

        def on_step(k: int) -> None:
            if k == down:
                proxy.stop()
            elif k == up:
                proxy.start()

        case["on_step"] = on_step
    return case


def _run_case(case: dict[str, Any], n_steps: int, seed: int) -> dict[str, Any]:
    from bluesky import RunEngine

    from dnpu_bluesky.storage import load_run

    name, storage, on_step = case["name"], case["storage"], case["on_step"]
    case_started = time.perf_counter()
    dev = _devices(seed)
    engine = RunEngine({})
    if storage is not None:
        if hasattr(storage.writer, "wait_ready"):  # measure the steady state, not the start
            storage.writer.wait_ready(120)
        engine.subscribe(storage.writer)
    step_times: list[float] = []
    events = {"hge_raw": 0, "train": 0}

    def count(doc_name: str, doc: dict[str, Any]) -> None:
        if doc_name == "descriptor":
            count.streams[doc["uid"]] = doc["name"]
        elif doc_name == "event":
            events[count.streams[doc["descriptor"]]] += 1

    count.streams = {}
    engine.subscribe(count)
    started = time.perf_counter()
    (uid,) = engine(_plan(dev, n_steps, step_times, on_step))
    run_wall = time.perf_counter() - started
    row: dict[str, Any] = {
        "case": name,
        "step_times": step_times,
        "step_ms_mean": 1e3 * float(np.mean(step_times)),
        "step_ms_p95": 1e3 * float(np.percentile(step_times, 95)),
        "step_ms_max": 1e3 * float(np.max(step_times)),
        "run_wall_s": run_wall,
    }
    if storage is not None:
        started = time.perf_counter()
        try:
            storage.flush(timeout=300)
        except Exception as err:  # reported in the row, the run continues
            row["flush_error"] = repr(err)
        row["flush_s"] = time.perf_counter() - started
        row["errors"] = len(storage.errors)
        run = load_run(storage.client, uid)
        stored = {
            stream: (int(run[stream]["step"].read().shape[0]) if stream == "train" else 0)
            for stream in events
        }
        stored["hge_raw"] = int(run["hge_raw"]["current"].read().shape[0])
        has_stop = run.metadata.get("stop") is not None
        row["events_emitted"] = sum(events.values())
        row["events_stored"] = sum(stored.values())
        row["docs_lost"] = row["events_emitted"] - row["events_stored"] + (0 if has_stop else 1)
    row["rss_mb_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["step_ms_median"] = 1e3 * float(np.median(step_times))
    row["case_wall_s"] = time.perf_counter() - case_started
    print(f"  {name}: {row['case_wall_s']:.1f} s", file=sys.stderr, flush=True)
    return row


def _merge(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for a case measured in several runs: step statistics over all their steps."""
    steps = np.concatenate([run["step_times"] for run in runs])
    row: dict[str, Any] = {
        "case": name,
        "step_ms_mean": 1e3 * float(np.mean(steps)),
        "step_ms_p95": 1e3 * float(np.percentile(steps, 95)),
        "step_ms_max": 1e3 * float(np.max(steps)),
        "step_ms_median": 1e3 * float(np.median(steps)),
    }
    for key in ("events_emitted", "events_stored", "docs_lost", "errors"):
        if key in runs[0]:
            row[key] = sum(run[key] for run in runs)
    if "flush_s" in runs[0]:
        row["flush_s"] = max(run["flush_s"] for run in runs)
    return row


_REOPEN_SCRIPT = """
import sys, time
from pathlib import Path
from tiled.server import SimpleTiledServer
from dnpu_bluesky.storage._patches import no_catalog_init_if_current
directory = Path(sys.argv[1])
started = time.perf_counter()
if sys.argv[2] == "skip_init":
    with no_catalog_init_if_current(directory):
        server = SimpleTiledServer(directory)
else:
    server = SimpleTiledServer(directory)
print(time.perf_counter() - started)
server.close()
"""


def _reopen_times(directory: Path, rounds: int) -> dict[str, Any]:
    """Seconds to start the embedded server on an existing catalog, as ``storage`` does it
    (skipping tiled's init command when the catalog is current) and as SimpleTiledServer
    alone does it; each start in a fresh interpreter, the two ways alternating (ABBA)."""
    times: dict[str, list[float]] = {"skip_init": [], "tiled_init": []}
    for k in range(2 * rounds):
        way = ("skip_init", "tiled_init")[(k + k // 2) % 2]
        done = subprocess.run(
            [sys.executable, "-c", _REOPEN_SCRIPT, str(directory), way],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        times[way].append(float(done.stdout.strip().splitlines()[-1]))
    summary: dict[str, Any] = {f"{way}_s": [round(t, 2) for t in ts] for way, ts in times.items()}
    for way, ts in times.items():
        summary[f"{way}_s_median"] = round(float(np.median(ts)), 2)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the storage benchmark and print its table and ``RESULT`` line.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    dict
        The ``RESULT`` figures.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 steps instead of 200")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_steps = args.steps or (40 if args.quick else 200)

    from dnpu_bluesky.storage import StorageConfig, open_storage

    # Short alternating runs: a burst of load from elsewhere hits both cases alike.
    rounds = max(2, n_steps // STEPS_PER_ROUND)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dnpu_storage_bench_") as tmp:
        workdir = Path(tmp)
        shared = open_storage(StorageConfig(directory=workdir / "tiled_shared"))
        cases: dict[str, dict[str, Any]] = {}
        try:
            print(f"  server up: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            for name in ("none", "background", "direct", "outage"):
                cases[name] = _open_case(name, n_steps, shared.uri, shared.api_key, workdir)
            print(f"  storages open: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            # none and background alternate, ABBA, in rounds of n_steps / rounds steps each.
            runs: dict[str, list[dict[str, Any]]] = {"none": [], "background": []}
            for k in range(rounds):
                order = ("none", "background") if k % 2 == 0 else ("background", "none")
                for name in order:
                    runs[name].append(_run_case(cases[name], n_steps // rounds, args.seed))
            rows = [_merge(name, runs[name]) for name in ("none", "background")]
            rows += [_run_case(cases[name], n_steps, args.seed) for name in ("direct", "outage")]
            differences = [
                b["step_ms_mean"] - a["step_ms_mean"]
                for a, b in zip(runs["none"], runs["background"], strict=True)
            ]
        finally:
            for case in cases.values():
                if case["storage"] is not None:
                    case["storage"].close()
                if case["proxy"] is not None:
                    case["proxy"].stop()
            shared.close()
        reopen = _reopen_times(workdir / "tiled_shared", rounds=2 if args.quick else 4)
        print("  the demo, timed...", file=sys.stderr, flush=True)
        pace = demo_pace.measure(workdir)
        print("  the demo at a device's pace, timed...", file=sys.stderr, flush=True)
        device = demo_pace.measure(workdir, device_pace=True)

    by_case = {row["case"]: row for row in rows}
    reference = by_case["none"]["step_ms_mean"]
    for row in rows:
        row["overhead_fraction"] = (row["step_ms_mean"] - reference) / (1e3 * WINDOW_S)

    print(
        f"Storage benchmark: {n_steps} steps x {N_CASES} cases, {N_SAMPLES}-sample waveforms, "
        f"{WINDOW_S} s device window per step; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; none/background in {rounds} ABBA rounds"
    )
    header = (
        f"{'case':<11}{'step mean':>10}{'p95':>8}{'max':>8}{'overhead':>10}"
        f"{'flush s':>9}{'stored':>11}{'lost':>6}{'errors':>8}"
    )
    print(header)
    for row in rows:
        stored = f"{row.get('events_stored', '-')}/{row.get('events_emitted', '-')}"
        print(
            f"{row['case']:<11}{row['step_ms_mean']:>8.1f}ms{row['step_ms_p95']:>6.1f}ms"
            f"{row['step_ms_max']:>6.0f}ms{row['overhead_fraction']:>10.4f}"
            f"{row.get('flush_s', float('nan')):>9.2f}{stored:>11}{row.get('docs_lost', '-'):>6}"
            f"{row.get('errors', '-'):>8}"
        )
        if "flush_error" in row:
            print(f"  flush error: {row['flush_error']}")
    print(
        f"reopening the embedded server's catalog: {reopen['skip_init_s_median']:.2f} s, "
        f"{reopen['tiled_init_s_median']:.2f} s with tiled's init command (medians of "
        f"{len(reopen['skip_init_s'])} alternating starts)"
    )
    print(
        f"the demo ({pace['runs']} runs, {pace['runs_complete']} complete in Tiled): stop -> in "
        f"Tiled {', '.join(f'{v:.2f}' for v in pace['visible_after_stop_s'])} s (p95 "
        f"{pace['visible_after_stop_s_p95']:.2f} s); wall {pace['demo_wall_s']:.1f} s, "
        f"training {pace['train_wall_s']:.1f} s: {pace['demo_wall_over_train_wall']:.2f}x"
        f"; at a device's pace: stop -> in Tiled p95 {device['visible_after_stop_s_p95']:.2f} s, "
        f"wall {device['demo_wall_s']:.1f} s, training {device['train_wall_s']:.1f} s: "
        f"{device['demo_wall_over_train_wall']:.2f}x"
    )
    result = {
        "overhead_fraction": round(by_case["background"]["overhead_fraction"], 4),
        "docs_lost_after_outage": by_case["outage"]["docs_lost"],
        "visible_after_stop_s_p95": pace["visible_after_stop_s_p95"],
        "demo_wall_over_train_wall": pace["demo_wall_over_train_wall"],
        "visible_after_stop_s": pace["visible_after_stop_s"],
        "demo_wall_s": pace["demo_wall_s"],
        "demo_train_wall_s": pace["train_wall_s"],
        "demo_runs_complete": f"{pace['runs_complete']}/{pace['runs']}",
        "requests_after_stop": pace["requests_after_stop"],
        "device_pace": {
            key: device[key]
            for key in (
                "visible_after_stop_s_p95",
                "demo_wall_over_train_wall",
                "visible_after_stop_s",
                "requests_after_stop",
                "demo_wall_s",
                "train_wall_s",
            )
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "direct_overhead_fraction": round(by_case["direct"]["overhead_fraction"], 4),
        "outage_overhead_fraction": round(by_case["outage"]["overhead_fraction"], 4),
        "background_docs_lost": by_case["background"]["docs_lost"],
        "overhead_fraction_round_quartiles": [
            round(float(q) / (1e3 * WINDOW_S), 4) for q in np.percentile(differences, [25, 50, 75])
        ],
        "outage_errors_reported": by_case["outage"]["errors"],
        "reopen_s_median": reopen["skip_init_s_median"],
        "reopen_speedup": round(reopen["tiled_init_s_median"] / reopen["skip_init_s_median"], 2),
        "n_steps": n_steps,
        "targets": TARGETS,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
