"""Several DNPUs trained side by side (one ``train`` call) against one after another (issue 6).

Run ``python -m benchmarks.side_by_side`` (1, 2 and 4 devices, about 2 minutes) or
``--quick`` (1 and 2 devices, under 60 s). Ends with one line ``RESULT {json}``.

Setting: virtual DNPUs (seeds 0, 1, ...) on their own simulated DAQs with ``realtime=True``,
so every acquisition takes as long as the hardware would. Each device runs the same fixed
number of HGE training steps on XOR (no stopping: ``target_margin_na`` out of reach, one
attempt), plus the final evaluation. Two ways, measured in one process, alternating:

* ``sequential``: one ``train`` run per device, one after the other;
* ``side_by_side``: one ``train`` call given the list of devices (a run per device, their
  measurements triggered together).

Figures: wall seconds of each, device seconds summed over the devices, ``speedup`` =
sequential wall / side-by-side wall, and ``efficiency`` = speedup / number of devices (1 is
perfect overlap). The device seconds of both ways must agree: the same measurements are made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

from bluesky import RunEngine

from dnpu_bluesky.config import default_sim_profile
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.plans import train
from dnpu_bluesky.sim import SimulatedBackend, VirtualDNPU
from dnpu_bluesky.tasks import BooleanGate


def _devices(count: int) -> list[Any]:
    return [
        build_dnpu(
            default_sim_profile(seed=k),
            name=f"dnpu_{k}",
            backend=SimulatedBackend(VirtualDNPU(seed=k), seed=k, realtime=True),
        )
        for k in range(count)
    ]


def _train(devices: list[Any], steps: int) -> Any:
    return train(
        devices,
        BooleanGate("XOR"),
        max_iterations=steps,
        max_attempts=1,
        target_margin_na=1e9,  # never reached: exactly `steps` steps
    )


def measure(count: int, steps: int) -> dict[str, Any]:
    """Wall and device seconds of ``count`` devices, sequential and side by side."""
    engine = RunEngine({}, call_returns_result=True)
    row: dict[str, Any] = {"devices": count}
    for way in ("sequential", "side_by_side"):
        devices = _devices(count)
        started = time.perf_counter()
        if way == "sequential":
            results = [engine(_train([d], steps)).plan_result[0] for d in devices]
        else:
            results = engine(_train(devices, steps)).plan_result
        row[f"{way}_wall_s"] = time.perf_counter() - started
        row[f"{way}_device_s"] = sum(r.device_s for r in results)
        row[f"{way}_measurements"] = sum(r.measurements for r in results)
        for device in devices:
            device.backend.close()
    row["speedup"] = row["sequential_wall_s"] / row["side_by_side_wall_s"]
    row["efficiency"] = row["speedup"] / count
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 2 devices, 4 steps")
    args = parser.parse_args(argv)
    counts, steps = ((1, 2), 4) if args.quick else ((1, 2, 4), 8)
    rows = [measure(count, steps) for count in counts]
    print(
        f"Side by side: XOR, {steps} HGE steps + evaluation per device, realtime simulated "
        f"DAQs; {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'devices':>8}{'sequential s':>14}{'side by side s':>16}{'device s':>10}"
        f"{'speedup':>9}{'efficiency':>12}"
    )
    for row in rows:
        print(
            f"{row['devices']:>8}{row['sequential_wall_s']:>14.1f}"
            f"{row['side_by_side_wall_s']:>16.1f}{row['side_by_side_device_s']:>10.1f}"
            f"{row['speedup']:>9.2f}{row['efficiency']:>12.2f}"
        )
    result = {
        "speedup": {str(r["devices"]): round(r["speedup"], 2) for r in rows},
        "efficiency": {str(r["devices"]): round(r["efficiency"], 2) for r in rows},
        "device_s_equal": all(
            abs(r["sequential_device_s"] - r["side_by_side_device_s"]) < 1e-6 for r in rows
        ),
        "steps": steps,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
