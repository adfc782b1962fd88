"""How much faster than real time a DNPU on a brains-py surrogate is simulated (issue 15).

Run ``python -m benchmarks.surrogate_speed [--model PATH] [--repeats N]`` (a few seconds).
The run prints a table and ends with one line ``RESULT {json}``; ``docs/benchmarks.md``
explains the figures. Other benchmarks call :func:`surrogate_speedup`.

Setting: a DNPU built as ``dnpu-bluesky train --model PATH`` builds it (the built-in
simulated setup with the surrogate's electrode ranges, inputs on e3 and e4, 10 kS/s, the
default electronics), with a tone of the default amplitude on each of the 7 electrodes
(planned like the default tones, up to the slew-limited band) and the 4 input cases of a
Boolean gate one tone amplitude inside the ends of the input range: the stream of one HGE
training step in parallel mode (4 windows of 0.1 s with their settling and ramps, about
0.55 s), with tones on the inputs as well (the network is evaluated on every sample
whatever the number of tones).

Figures:

* ``speedup`` (``surrogate_speedup``): device seconds of that stream over the wall seconds
  of the backend's ``play_and_record`` (safety check, network, electronics and noise),
  median of ``repeats`` calls after two warm-up calls.
* ``wall_min_s``, ``cpu_s``: the fastest of those calls and the CPU seconds per call (all
  threads together), figures that suffer less from other processes on the same cores.
* ``model_s``, ``electronics_s``: the median wall seconds of the network alone
  (``model.current`` on the stream) and of the readout chain alone, to show where the time
  goes.

Without ``--model`` the measured device of the shared test data is used
(``../shared/devices/measured-dnpu-b.pt`` beside the repository, or the file named by
``DNPU_MEASURED_SURROGATE``); where it is absent the run says so and reports no figures.
The machine's load is printed with the figures: other processes on the same cores slow
every figure down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dnpu_bluesky.config import (
    DEFAULT_AMPLITUDE_V,
    DEFAULT_MIN_FREQUENCY_HZ,
    DEFAULT_TONE_ORDER,
    DEFAULT_WINDOW_S,
    default_sim_profile,
    slew_limited_frequency_hz,
)
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.devices.build import make_backend
from dnpu_bluesky.hge import plan_frequencies
from dnpu_bluesky.sim import load_brainspy_surrogate

#: Environment variable naming the measured device's surrogate file.
MODEL_ENV = "DNPU_MEASURED_SURROGATE"
_SHARED_MODEL = Path(__file__).resolve().parents[2] / "shared" / "devices" / "measured-dnpu-b.pt"
WARM_UP = 2
N_TONES = 7


def default_model_path() -> Path:
    """Where the measured device's surrogate is looked for when no path is given.

    Returns
    -------
    pathlib.Path
        ``$DNPU_MEASURED_SURROGATE`` if set, else ``../shared/devices/measured-dnpu-b.pt``
        beside the repository (the file may not exist).
    """
    return Path(os.environ.get(MODEL_ENV) or _SHARED_MODEL)


def surrogate_speedup(model_path: str | None, repeats: int = 5) -> dict[str, Any]:
    """Time one HGE training step's stream on a DNPU simulated on a surrogate.

    Parameters
    ----------
    model_path : str or None
        A brains-py surrogate file; None for :func:`default_model_path`.
    repeats : int
        Timed calls of ``play_and_record`` (after two warm-up calls); the median counts.

    Returns
    -------
    dict
        ``device_s`` (seconds of the stream on the instrument), ``wall_s`` (median wall
        seconds of ``play_and_record``), ``speedup`` (their ratio), ``wall_min_s`` (the
        fastest call), ``cpu_s`` (CPU seconds per call, all threads), ``model_s`` and
        ``electronics_s`` (median wall seconds of the network and of the readout alone),
        ``n_samples``, ``model`` (the file) and ``layer_sizes``.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        ``repeats`` is below 1, or the file is not a 7-electrode surrogate that the built-in
        setup can use.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    path = Path(model_path) if model_path is not None else default_model_path()
    if not path.is_file():
        raise FileNotFoundError(f"no surrogate file at {path} (give --model or {MODEL_ENV})")
    model = load_brainspy_surrogate(path)
    profile = default_sim_profile(limits=np.asarray(model.voltage_ranges).tolist())
    profile = profile.model_copy(
        update={"sim": profile.sim.model_copy(update={"surrogate": str(path.resolve())})}
    )
    dnpu = build_dnpu(profile, backend=make_backend(profile))
    band_hz = min(
        profile.amplifier.bandwidth_hz,
        slew_limited_frequency_hz(profile.max_slew_v_per_s, DEFAULT_AMPLITUDE_V),
    )
    tones = plan_frequencies(
        N_TONES,
        DEFAULT_WINDOW_S,
        profile.sample_rate,
        band_hz=band_hz,
        order=DEFAULT_TONE_ORDER,
        min_frequency_hz=DEFAULT_MIN_FREQUENCY_HZ,
    )
    for electrode, frequency in zip(dnpu.electrodes, tones.frequencies, strict=True):
        electrode.frequency.put(float(frequency))
        electrode.amplitude.put(DEFAULT_AMPLITUDE_V)
    inputs = profile.limits_v[list(profile.indices("input"))]
    # The input electrodes carry a tone too, so their levels keep one amplitude inside.
    low = float(inputs[:, 0].max()) + DEFAULT_AMPLITUDE_V
    high = float(inputs[:, 1].min()) - DEFAULT_AMPLITUDE_V
    dnpu.input_cases.put([[low, low], [low, high], [high, low], [high, high]])
    dnpu.mode.put("parallel")
    waveform = dnpu.build_waveform()
    volts, rate = waveform.voltages, waveform.sample_rate
    backend = dnpu.backend
    device_s = backend.play_and_record(volts, rate).device_seconds
    wall_s, fastest_s, cpu_s = _timed(lambda: backend.play_and_record(volts, rate), repeats)
    current = backend.model.current(volts)
    model_s = _median_wall(lambda: backend.model.current(volts), repeats)
    rng = np.random.default_rng(0)
    state: dict[str, Any] = {}
    electronics_s = _median_wall(
        lambda: backend.electronics.output_volts(current, volts, rate, rng, state=state),
        repeats,
    )
    dnpu.park()
    return {
        "device_s": float(device_s),
        "wall_s": wall_s,
        "speedup": float(device_s / wall_s),
        "wall_min_s": fastest_s,
        "cpu_s": cpu_s,
        "model_s": model_s,
        "electronics_s": electronics_s,
        "n_samples": int(volts.shape[0]),
        "model": str(path),
        "layer_sizes": backend.model.describe()["layer_sizes"],
    }


def _timed(call: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """Median and fastest wall seconds of ``call``, and its mean CPU seconds (all threads)."""
    for _ in range(WARM_UP):
        call()
    times = []
    cpu_start = time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    cpu_s = (time.process_time() - cpu_start) / repeats
    return float(np.median(times)), float(np.min(times)), cpu_s


def _median_wall(call: Callable[[], Any], repeats: int) -> float:
    return _timed(call, repeats)[0]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; print a table and a final ``RESULT`` line.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    dict
        What the ``RESULT`` line holds.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="surrogate file (default: the shared measured device)")
    parser.add_argument("--repeats", type=int, default=21, help="timed calls (median counts)")
    args = parser.parse_args(argv)
    try:
        row = surrogate_speedup(args.model, repeats=args.repeats)
    except FileNotFoundError as exc:
        print(f"surrogate_speed: skipped: {exc}")
        result: dict[str, Any] = {"skipped": str(exc)}
        print("RESULT " + json.dumps(result))
        return result
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Surrogate speed: {Path(row['model']).name} "
        f"({'-'.join(map(str, row['layer_sizes']))}), {row['n_samples']} samples, "
        f"{N_TONES} tones, 4 input cases; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {load:.2f}"
    )
    print(f"  device seconds                    {row['device_s']:.4f} s")
    print(
        f"  play_and_record                   {row['wall_s'] * 1e3:.2f} ms median, "
        f"{row['wall_min_s'] * 1e3:.2f} ms fastest, {row['cpu_s'] * 1e3:.2f} ms CPU"
    )
    print(f"    network alone                   {row['model_s'] * 1e3:.2f} ms")
    print(f"    electronics and noise alone     {row['electronics_s'] * 1e3:.2f} ms")
    print(f"  speedup over real time            {row['speedup']:.0f}x")
    result = {
        "surrogate_speedup": round(row["speedup"], 1),
        "device_s": row["device_s"],
        "wall_s": row["wall_s"],
        "wall_min_s": row["wall_min_s"],
        "cpu_s": row["cpu_s"],
        "model_s": row["model_s"],
        "electronics_s": row["electronics_s"],
        "n_samples": row["n_samples"],
        "repeats": args.repeats,
        "load": round(load, 2),
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
