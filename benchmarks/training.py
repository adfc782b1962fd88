"""Training benchmark (issue 4): HGE against finite differences, SPSA and a genetic algorithm.

Every method trains all six Boolean gates on several seeded virtual DNPUs through the real
Bluesky plans (``train(..., method="hge"|"fd"|"spsa")`` and ``train_genetic``), with the
package defaults. For each run the benchmark records whether the final unperturbed evaluation
is 100 % accurate, the device seconds and measurements (streams) to the end of training and to
the first unperturbed full truth table at 100 % accuracy, and the wall seconds. An HGE ablation
varies one training setting at a time. The sphere classification part trains with HGE on a
profile with three input electrodes, varies the settings an experimentalist would try, and
compares what training reaches with the noise-free ceiling of the device model.

    .venv/bin/python -m benchmarks.training --quick   # 2 gates x 1 device, short GA, < 60 s
    .venv/bin/python -m benchmarks.training           # 6 gates x 3 devices, about 15 min

Prints tables and ends with one line ``RESULT {json}``; the full run saves
docs/benchmark_training.png (``--plot PATH`` elsewhere, or for ``--quick``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine
from matplotlib.figure import Figure
from scipy.optimize import minimize
from scipy.special import expit

from dnpu_bluesky.config import SetupProfile, default_sim_profile
from dnpu_bluesky.devices.build import build_dnpu
from dnpu_bluesky.plans.genetic import train_genetic
from dnpu_bluesky.plans.train import TrainResult, train
from dnpu_bluesky.sim import VirtualDNPU
from dnpu_bluesky.tasks import GATES, BooleanGate, SphereClassification, accuracy_and_threshold

METHODS: tuple[str, ...] = ("hge", "fd", "spsa", "ga")
PLOT_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmark_training.png"
DNPU_NAME = "dnpu"

#: The issue's targets. Ratios are device seconds of the peer over HGE (see ``ratio``).
TARGETS = {"fd_over_hge": 3.0, "spsa_over_hge": 1.0, "ga_over_hge": 10.0, "sphere": 0.90}


@dataclass(frozen=True)
class SphereSetting:
    """One sphere-classification configuration: the profile's inputs, the task and training."""

    label: str
    inputs: tuple[int, int, int] = (2, 3, 4)
    input_range_v: tuple[float, float] = (-0.7, 0.3)
    batch_size: int | None = None
    loss_name: str = "sigmoid"
    loss_params: dict[str, float] = field(default_factory=dict, hash=False)
    lr: float = 0.05
    patience: int = 25
    max_attempts: int = 4
    max_iterations: int = 120

    def describe(self) -> str:
        loss = self.loss_name + (
            "(" + ",".join(f"{k}={v:g}" for k, v in self.loss_params.items()) + ")"
            if self.loss_params
            else ""
        )
        return (
            f"in e{''.join(map(str, self.inputs))} {self.input_range_v[0]:+.2f}.."
            f"{self.input_range_v[1]:+.2f} V, batch {self.batch_size or 'all'}, {loss}, "
            f"lr {self.lr:g}, {self.max_attempts}x{min(self.patience, self.max_iterations)} it"
        )


_BASE = SphereSetting("default")
SPHERE_GRID: tuple[SphereSetting, ...] = (
    _BASE,
    SphereSetting("batch 16", batch_size=16),
    SphereSetting("sigmoid scale 20 nA", loss_params={"scale_na": 20.0}),
    SphereSetting("corrsig loss", loss_name="corrsig"),
    SphereSetting("lr 0.02", lr=0.02),
    SphereSetting("lr 0.1", lr=0.1),
    SphereSetting("8 attempts x 60 it", patience=60, max_attempts=8),
    SphereSetting("narrow cube -0.45..0.05 V", input_range_v=(-0.45, 0.05)),
    SphereSetting("inputs e1,e2,e4", inputs=(1, 2, 4)),
    SphereSetting("inputs e1,e2,e6 wide", inputs=(1, 2, 6), input_range_v=(-1.2, 0.6)),
    SphereSetting(
        "e1,e2,e4 + scale 20 + 8x60",
        inputs=(1, 2, 4),
        loss_params={"scale_na": 20.0},
        patience=60,
        max_attempts=8,
    ),
)

#: HGE ablation on the gates: one setting changed from the package defaults. Each entry:
#: label, options of ``train``, options of ``BooleanGate``, input electrodes of the profile.
ABLATIONS: tuple[tuple[str, dict[str, Any], dict[str, Any], tuple[int, int]], ...] = (
    ("attempts of 60 it (patience=60)", {"patience": 60}, {}, (3, 4)),
    ("attempts of 120 it (patience=120)", {"patience": 120}, {}, (3, 4)),
    ("lr 0.02", {"lr": 0.02}, {}, (3, 4)),
    ("lr 0.1", {"lr": 0.1}, {}, (3, 4)),
    ("max_attempts 8", {"max_attempts": 8}, {}, (3, 4)),
    ("target_margin_na 1", {"target_margin_na": 1.0}, {}, (3, 4)),
    ("margin loss", {}, {"loss_name": "margin"}, (3, 4)),
    ("lr 0.1 + attempts of 60 it", {"lr": 0.1, "patience": 60}, {}, (3, 4)),
    ("input swing halved (-0.45/0.05 V)", {}, {"input_low_v": -0.45, "input_high_v": 0.05}, (3, 4)),
    ("inputs e1,e2", {}, {}, (1, 2)),
    ("inputs e0,e6 (next to the output)", {}, {}, (0, 6)),
)


@dataclass(frozen=True)
class Config:
    quick: bool
    gates: tuple[str, ...]
    device_seeds: tuple[int, ...]
    ga_generations: int
    ablation: bool
    sphere_grid: tuple[SphereSetting, ...]
    sphere_other_seeds: tuple[int, ...]
    ceiling_restarts: int


FULL = Config(
    quick=False,
    gates=GATES,
    device_seeds=(0, 1, 2),
    ga_generations=100,
    ablation=True,
    sphere_grid=SPHERE_GRID,
    sphere_other_seeds=(1, 2),
    ceiling_restarts=8,
)
QUICK = Config(
    quick=True,
    gates=("AND", "XOR"),
    device_seeds=(0,),
    ga_generations=15,
    ablation=False,
    sphere_grid=(SphereSetting("batch 16, 2x25 it", batch_size=16, max_attempts=2),),
    sphere_other_seeds=(),
    ceiling_restarts=2,
)


# -- running plans ---------------------------------------------------------------------------


class Ledger:
    """Document callback: device seconds and measurements, and when a task was first solved.

    Every stream the DNPU is read in (``*_raw``) is one measurement and carries its device
    seconds. "Solved" is the first *unperturbed* measurement of the whole training split
    (``eval_raw``: the plan's checks and final evaluation, every GA genome) at 100 % accuracy.
    """

    def __init__(self, task: Any) -> None:
        self.task = task
        self.streams: dict[str, str] = {}
        self.device_s = 0.0
        self.measurements = 0
        self.first_solved: tuple[float, int] | None = None

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "descriptor":
            self.streams[doc["uid"]] = doc["name"]
            return
        if name != "event":
            return
        data = doc["data"]
        seconds = data.get(f"{DNPU_NAME}_device_seconds")
        if seconds is None:
            return
        self.device_s += float(seconds)
        self.measurements += 1
        if self.first_solved is None and self.streams.get(doc["descriptor"]) == "eval_raw":
            outputs = np.asarray(data[f"{DNPU_NAME}_case_currents"], dtype=float)
            if self.task.evaluate(outputs).solved:
                self.first_solved = (self.device_s, self.measurements)


def run_plan(
    RE: RunEngine, make_plan: Callable[[Any], Any], profile: SetupProfile, task: Any
) -> dict[str, Any]:
    """Build a fresh device, run the plan on it and collect the figures of the run."""
    dnpu = build_dnpu(profile, name=DNPU_NAME)
    ledger = Ledger(task)
    started = time.perf_counter()
    result: TrainResult = RE(make_plan(dnpu), ledger).plan_result
    wall = time.perf_counter() - started
    if not np.isclose(ledger.device_s, result.device_s, rtol=1e-6):
        raise RuntimeError(f"ledger {ledger.device_s} s != plan {result.device_s} s")
    solved_at = ledger.first_solved
    return {
        "solved": result.solved,
        "margin_na": result.margin_na,
        "accuracy": result.accuracy,
        "test_accuracy": result.test_accuracy,
        "iterations": result.iterations,
        "attempts": result.attempts,
        "measurements": result.measurements,
        "device_s": result.device_s,
        "success_device_s": None if solved_at is None else solved_at[0],
        "success_measurements": None if solved_at is None else solved_at[1],
        "wall_s": wall,
    }


def gate_plan(method: str, task: BooleanGate, seed: int, config: Config, **options: Any):
    if method == "ga":
        return lambda dnpu: train_genetic(
            dnpu, task, generations=config.ga_generations, seed=seed, **options
        )
    return lambda dnpu: train(dnpu, task, method=method, seed=seed, **options)


def training_seed(device_seed: int, gate: str) -> int:
    """Seed of the training (random starts, SPSA directions, GA): per device and gate."""
    return 10 * device_seed + GATES.index(gate)


def gate_runs(RE: RunEngine, config: Config) -> list[dict[str, Any]]:
    rows = []
    for seed, gate, method in itertools.product(config.device_seeds, config.gates, METHODS):
        task = BooleanGate(gate)
        plan = gate_plan(method, task, training_seed(seed, gate), config)
        row = run_plan(RE, plan, default_sim_profile(seed=seed), task)
        rows.append({"method": method, "gate": gate, "device_seed": seed, **row})
        print(
            f"  {method:4s} {gate:4s} device {seed}: "
            f"{'solved' if row['solved'] else 'FAILED'} margin {row['margin_na']:6.1f} nA, "
            f"{row['measurements']:5d} meas, {row['device_s']:8.1f} device s, "
            f"{row['wall_s']:5.1f} wall s",
            flush=True,
        )
    return rows


#: The stricter success criterion of ``--margin-study``: separation of the classes (nA).
STRICT_MARGIN_NA = 20.0


def margin_study(RE: RunEngine, config: Config) -> dict[str, Any]:
    """HGE and the GA asked for a 20 nA separation instead of 2 nA; everything else default.

    Both use the corrsig loss with its sigmoid centred on the target (``offset_na=20``), and
    stop once a full unperturbed truth table separates the classes by 20 nA. A run counts as
    solved when its final evaluation does. Ratio: GA over HGE device seconds, median over the
    (gate, device) pairs both solved, as for the headline.
    """
    rows = []
    options = {"target_margin_na": STRICT_MARGIN_NA}
    for seed, gate, method in itertools.product(config.device_seeds, config.gates, ("hge", "ga")):
        task = BooleanGate(gate, loss_params={"offset_na": STRICT_MARGIN_NA})
        plan = gate_plan(method, task, training_seed(seed, gate), config, **options)
        row = run_plan(RE, plan, default_sim_profile(seed=seed), task)
        row["solved"] = bool(row["solved"] and row["margin_na"] >= STRICT_MARGIN_NA)
        rows.append({"method": method, "gate": gate, "device_seed": seed, **row})
        print(
            f"  {STRICT_MARGIN_NA:g} nA: {method:4s} {gate:4s} device {seed}: "
            f"{'solved' if row['solved'] else 'FAILED'} margin {row['margin_na']:6.1f} nA, "
            f"{row['measurements']:5d} meas, {row['device_s']:8.1f} device s",
            flush=True,
        )
    summary = {
        method: {
            "solved": sum(r["solved"] for r in rows if r["method"] == method),
            "runs": sum(r["method"] == method for r in rows),
            "device_s_median": median([r["device_s"] for r in rows if r["method"] == method]),
        }
        for method in ("hge", "ga")
    }
    return {"rows": rows, "summary": summary, "ga_over_hge": ratio(rows, "ga")}


def print_margin_study(study: dict[str, Any]) -> None:
    print(f"\n== margin study: HGE and GA asked for a {STRICT_MARGIN_NA:g} nA separation ==")
    for method, s in study["summary"].items():
        print(
            f"  {method:4s} solved {s['solved']}/{s['runs']}, device s median "
            f"{s['device_s_median']:.1f}"
        )
    print(f"  ga / hge, device s: {fmt_ratio(study['ga_over_hge'])}")


def ablation_runs(RE: RunEngine, config: Config) -> list[dict[str, Any]]:
    rows = []
    for label, train_options, task_options, inputs in ABLATIONS:
        for seed, gate in itertools.product(config.device_seeds, config.gates):
            task = BooleanGate(gate, **task_options)
            plan = gate_plan("hge", task, training_seed(seed, gate), config, **train_options)
            row = run_plan(RE, plan, default_sim_profile(seed=seed, inputs=inputs), task)
            rows.append({"variant": label, "gate": gate, "device_seed": seed, **row})
        print(f"  ablation done: {label}", flush=True)
    return rows


#: Margins (nA) at which the random search counts a gate as solved: the plans' default
#: ``target_margin_na`` first, then stricter ones, to show how the fraction depends on it.
RANDOM_SEARCH_MARGINS_NA: tuple[float, ...] = (2.0, 10.0, 20.0)


def random_search(
    config: Config, n_settings: int = 20_000
) -> dict[tuple[str, int], dict[float, float]]:
    """Fraction of uniformly random control settings that solve each gate (noise-free model).

    Per gate and device, one fraction per margin of :data:`RANDOM_SEARCH_MARGINS_NA`; inputs
    on e3, e4 at the gates' levels, controls uniform within their limits (as the GA's first
    generation draws them).
    """
    fractions = {}
    for seed in config.device_seeds:
        model = VirtualDNPU(seed)
        profile = default_sim_profile(seed=seed)
        controls, inputs = list(profile.indices("control")), list(profile.indices("input"))
        low, high = profile.limits_v[controls].T
        rng = np.random.default_rng(seed)
        volts = np.zeros((n_settings, 4, 7))
        volts[..., controls] = rng.uniform(low, high, (n_settings, 1, len(controls)))
        for gate in config.gates:
            task = BooleanGate(gate)
            volts[..., inputs] = task.input_voltages()[None]
            current = model.current(volts)
            targets = task.targets()
            margin = current[:, targets == 1].min(axis=1) - current[:, targets == 0].max(axis=1)
            fractions[(gate, seed)] = {
                m: float(np.mean(margin >= m)) for m in RANDOM_SEARCH_MARGINS_NA
            }
    return fractions


# -- sphere classification -------------------------------------------------------------------


def sphere_profile(device_seed: int, inputs: tuple[int, ...]) -> SetupProfile:
    """The default simulated setup with ``inputs`` as input electrodes and the rest controls.

    The electrode limits are left as they are (so the virtual device is the same one as in
    ``default_sim_profile(seed)``); only the roles change.
    """
    data = default_sim_profile(seed=device_seed).to_dict()
    data["name"] = f"sim-sphere-e{''.join(map(str, inputs))}"
    for index, electrode in enumerate(data["electrodes"]):
        electrode["role"] = "input" if index in inputs else "control"
    return SetupProfile.model_validate(data)


def sphere_task(setting: SphereSetting) -> SphereClassification:
    return SphereClassification(
        input_range_v=setting.input_range_v,
        batch_size=setting.batch_size,
        loss_name=setting.loss_name,
        loss_params=setting.loss_params,
    )


def sphere_run(RE: RunEngine, setting: SphereSetting, device_seed: int) -> dict[str, Any]:
    task = sphere_task(setting)

    def plan(dnpu):
        return train(
            dnpu,
            task,
            method="hge",
            lr=setting.lr,
            patience=setting.patience,
            max_attempts=setting.max_attempts,
            max_iterations=setting.max_iterations,
            seed=device_seed,
        )

    row = run_plan(RE, plan, sphere_profile(device_seed, setting.inputs), task)
    labels = {"setting": setting.label, "describe": setting.describe(), "device_seed": device_seed}
    return labels | row


def model_ceiling(
    model: VirtualDNPU,
    inputs: tuple[int, ...],
    task: SphereClassification,
    restarts: int,
    seed: int = 1,
    tau_na: float = 3.0,
) -> tuple[float, float]:
    """Best train accuracy (and its test accuracy) of the noise-free model over its controls.

    L-BFGS-B on a logistic loss with a free threshold and the exact Jacobian, from
    ``restarts`` random starts; polarity fixed as the task's (inside = higher current).
    """
    controls = [i for i in range(7) if i not in inputs]
    volts = {s: np.zeros((task.targets(s).size, 7)) for s in ("train", "test")}
    for split, v in volts.items():
        v[:, list(inputs)] = task.input_voltages(split)
    labels = task.targets("train")
    sign = np.where(labels == 1, 1.0, -1.0)
    low, high = model.voltage_ranges[controls].T
    rng = np.random.default_rng(seed)
    best = (0.0, 0.0)
    train_v = volts["train"]
    for _ in range(restarts):

        def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
            train_v[:, controls] = p[:-1]
            current = model.current(train_v)
            jac = model.jacobian(train_v)[:, controls]
            z = -sign * (current - p[-1]) / tau_na
            d_z = expit(z) * (-sign / tau_na) / labels.size
            return float(np.logaddexp(0.0, z).mean()), np.append(d_z @ jac, -d_z.sum())

        start = rng.uniform(low, high)
        train_v[:, controls] = start
        p0 = np.append(start, np.median(model.current(train_v)))
        bounds = [*zip(low, high, strict=True), (None, None)]
        fit = minimize(objective, p0, jac=True, method="L-BFGS-B", bounds=bounds)
        scores = []
        for split in ("train", "test"):
            volts[split][:, controls] = fit.x[:-1]
            current = model.current(volts[split])
            if split == "train":
                accuracy, threshold = accuracy_and_threshold(current, labels)
                scores.append(accuracy)
            else:
                scores.append(float(np.mean((current > threshold) == task.targets("test"))))
        if scores[0] > best[0]:
            best = (scores[0], scores[1])
    return best


def shape_ceilings(n_points: int = 200_000) -> dict[str, float]:
    """Best accuracy on the half-volume sphere of shapes a response could threshold into."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (n_points, 3))
    inside = np.linalg.norm(x, axis=1) < (3.0 / np.pi) ** (1.0 / 3.0)
    shapes = {
        "half-space (monotonic response)": x[:, 0],
        "slab (peaked in one direction)": np.abs(x[:, 0]),
        "tube (peaked in two directions)": np.hypot(x[:, 0], x[:, 1]),
    }
    best = {}
    for name, value in shapes.items():
        thresholds = np.quantile(value, np.linspace(0.02, 0.98, 97))
        best[name] = max(
            max(np.mean((value < t) == inside), np.mean((value > t) == inside)) for t in thresholds
        )
    return best


def sphere_study(RE: RunEngine, config: Config) -> dict[str, Any]:
    grid = []
    for setting in config.sphere_grid:
        row = sphere_run(RE, setting, 0)
        grid.append(row)
        print(
            f"  sphere {setting.label:28s} train {row['accuracy']:.3f} test "
            f"{row['test_accuracy']:.3f}, {row['iterations']} it, {row['device_s']:7.0f} "
            f"device s, {row['wall_s']:5.1f} wall s",
            flush=True,
        )
    # Chosen by training accuracy (ties: fewer device seconds), never by test accuracy.
    best = max(grid, key=lambda r: (r["accuracy"], -r["device_s"]))
    setting = next(s for s in config.sphere_grid if s.label == best["setting"])
    others = [sphere_run(RE, setting, seed) for seed in config.sphere_other_seeds]
    # Noise-free ceilings of the model, device 0: the grid's input choices, then all triples.
    model = VirtualDNPU(0)
    ceilings = {}
    for s in config.sphere_grid:
        key = (s.inputs, s.input_range_v)
        if key not in ceilings:
            ceilings[key] = model_ceiling(model, s.inputs, sphere_task(s), config.ceiling_restarts)
    scan = {}
    if not config.quick:
        for inputs in itertools.combinations(range(7), 3):
            wide = not any(i in (3, 4) for i in inputs)
            for input_range in [(-0.7, 0.3)] + ([(-1.2, 0.6)] if wide else []):
                task = SphereClassification(input_range_v=input_range)
                scan[(inputs, input_range)] = model_ceiling(model, inputs, task, 4)
    return {
        "grid": grid,
        "best": best,
        "best_setting": setting,
        "best_other_seeds": others,
        "ceilings": ceilings,
        "scan": scan,
        "shapes": shape_ceilings(),
    }


# -- analysis --------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def ratio(rows: list[dict[str, Any]], peer: str, key: str = "device_s") -> dict[str, Any]:
    """Peer over HGE, over the (gate, device) pairs that both solved.

    ``median_of_ratios`` (the headline): median over those pairs of peer[key] / hge[key].
    ``ratio_of_medians``: median of peer[key] over the pairs / median of hge[key] over them.
    ``ratio_of_totals``: all runs, solved or not, summed (what the whole campaign cost).
    """
    by = {(r["method"], r["gate"], r["device_seed"]): r for r in rows}
    pairs = [
        (by[(peer, g, s)], by[("hge", g, s)])
        for (m, g, s) in by
        if m == peer and by[(m, g, s)]["solved"] and by[("hge", g, s)]["solved"]
    ]
    ratios = [p[key] / h[key] for p, h in pairs]
    total = sum(r["device_s"] for r in rows if r["method"] == peer)
    total_hge = sum(r["device_s"] for r in rows if r["method"] == "hge")
    return {
        "pairs": len(pairs),
        "median_of_ratios": median(ratios),
        "min": float(np.min(ratios)) if ratios else float("nan"),
        "max": float(np.max(ratios)) if ratios else float("nan"),
        "ratio_of_medians": median([p[key] for p, _ in pairs]) / median([h[key] for _, h in pairs])
        if pairs
        else float("nan"),
        "ratio_of_totals": total / total_hge,
    }


def summarise(rows: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        solved = [r for r in mine if r["solved"]]
        summary[method] = {
            "runs": len(mine),
            "solved": len(solved),
            "success_rate": len(solved) / len(mine),
            "per_gate": {g: sum(r["solved"] for r in mine if r["gate"] == g) for g in config.gates},
            "device_s_median": median([r["device_s"] for r in mine]),
            "device_s_median_solved": median([r["device_s"] for r in solved]),
            "device_s_total": float(sum(r["device_s"] for r in mine)),
            "success_device_s_median": median([r["success_device_s"] for r in solved]),
            "measurements_median": median([r["measurements"] for r in mine]),
            "success_measurements_median": median([r["success_measurements"] for r in solved]),
            "wall_s_median": median([r["wall_s"] for r in mine]),
            "wall_s_total": float(sum(r["wall_s"] for r in mine)),
            "device_s_per_measurement": float(
                sum(r["device_s"] for r in mine) / sum(r["measurements"] for r in mine)
            ),
        }
    solved_by_any = {
        (r["gate"], r["device_seed"]) for r in rows if r["solved"] and r["method"] != "hge"
    }
    solved_by_hge = {
        (r["gate"], r["device_seed"]) for r in rows if r["solved"] and r["method"] == "hge"
    }
    summary["hge_misses"] = sorted(solved_by_any - solved_by_hge)
    summary["unsolved_by_all"] = sorted(
        {(r["gate"], r["device_seed"]) for r in rows} - solved_by_any - solved_by_hge
    )
    summary["ratios"] = {peer: ratio(rows, peer) for peer in ("fd", "spsa", "ga")}
    summary["ratios_to_success"] = {
        peer: ratio(rows, peer, "success_device_s") for peer in ("fd", "spsa", "ga")
    }
    return summary


# -- output ----------------------------------------------------------------------------------


def plot(rows: list[dict[str, Any]], config: Config, path: Path) -> None:
    fig = Figure(figsize=(9.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    colours = {"hge": "C0", "fd": "C1", "spsa": "C2", "ga": "C3"}
    width = 0.8 / len(METHODS)
    seeds = list(config.device_seeds)
    for m_index, method in enumerate(METHODS):
        for g_index, gate in enumerate(config.gates):
            for s_index, seed in enumerate(seeds):
                row = next(
                    r
                    for r in rows
                    if r["method"] == method and r["gate"] == gate and r["device_seed"] == seed
                )
                x = (
                    g_index
                    - 0.4
                    + (m_index + 0.5) * width
                    + (s_index - (len(seeds) - 1) / 2) * width / (len(seeds) + 1)
                )
                ax.scatter(
                    x,
                    row["device_s"],
                    marker="o" if row["solved"] else "x",
                    s=30,
                    color=colours[method],
                    linewidths=1.2,
                    label=method.upper() if g_index == 0 and s_index == 0 else None,
                )
    ax.scatter([], [], marker="o", color="grey", label="solved")
    ax.scatter([], [], marker="x", color="grey", label="not solved")
    ax.set_yscale("log")
    ax.set_xticks(range(len(config.gates)), config.gates)
    for g_index in range(1, len(config.gates)):
        ax.axvline(g_index - 0.5, color="0.85", linewidth=0.8)
    ax.set_ylabel("device seconds to the end of training")
    ax.set_title(
        f"Training the Boolean gates on virtual DNPUs (devices {seeds}; one point per device)"
    )
    ax.legend(ncols=6, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(axis="y", which="major", color="0.9")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def fmt_ratio(r: dict[str, Any]) -> str:
    return (
        f"{r['median_of_ratios']:7.2f}x (range {r['min']:.2f}-{r['max']:.2f}, "
        f"{r['pairs']} pairs; ratio of medians {r['ratio_of_medians']:.2f}x, "
        f"of totals {r['ratio_of_totals']:.2f}x)"
    )


def print_gates(rows: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> None:
    print("\n== Boolean gates: per method ==")
    header = (
        f"{'method':6s} {'solved':>7s} "
        + " ".join(f"{g:>5s}" for g in config.gates)
        + f" {'dev s med':>9s} {'(solved)':>9s} {'to succ':>8s} {'meas':>6s} {'to succ':>7s}"
        + f" {'dev s/meas':>10s} {'dev s tot':>9s} {'wall med':>8s} {'wall tot':>8s}"
    )
    print(header)
    n = len(config.device_seeds)
    for method in METHODS:
        s = summary[method]
        print(
            f"{method:6s} {s['solved']:3d}/{s['runs']:<3d} "
            + " ".join(f"{s['per_gate'][g]:>3d}/{n}" for g in config.gates)
            + f" {s['device_s_median']:9.1f} {s['device_s_median_solved']:9.1f}"
            f" {s['success_device_s_median']:8.1f} {s['measurements_median']:6.0f}"
            f" {s['success_measurements_median']:7.0f} {s['device_s_per_measurement']:10.3f}"
            f" {s['device_s_total']:9.0f} {s['wall_s_median']:8.2f} {s['wall_s_total']:8.1f}"
        )
    print("\n== device seconds per run (gate x device; * = not solved) ==")
    print(f"{'gate':5s} {'dev':>3s} " + " ".join(f"{m:>10s}" for m in METHODS))
    for gate, seed in itertools.product(config.gates, config.device_seeds):
        cells = []
        for method in METHODS:
            row = next(
                r
                for r in rows
                if r["method"] == method and r["gate"] == gate and r["device_seed"] == seed
            )
            cells.append(f"{row['device_s']:9.1f}{' ' if row['solved'] else '*'}")
        print(f"{gate:5s} {seed:3d} " + " ".join(cells))
    print("\n== device-time ratios, peer / HGE (median over pairs solved by both) ==")
    for peer in ("fd", "spsa", "ga"):
        print(f"  {peer:4s} to the end of training: {fmt_ratio(summary['ratios'][peer])}")
        to_success = fmt_ratio(summary["ratios_to_success"][peer])
        print(f"  {peer:4s} to first success:       {to_success}")
    misses = summary["hge_misses"]
    print(
        "  pairs solved by a peer but not by HGE: "
        + (", ".join(f"{g}/dev{s}" for g, s in misses) if misses else "none")
    )
    nobody = summary["unsolved_by_all"]
    print(
        "  pairs solved by no method: "
        + (", ".join(f"{g}/dev{s}" for g, s in nobody) if nobody else "none")
    )


def print_random_search(
    fractions: dict[tuple[str, int], dict[float, float]], config: Config
) -> None:
    for margin in RANDOM_SEARCH_MARGINS_NA:
        print(
            "\n== random search: fraction of uniform random control settings solving the gate"
            f" by >= {margin:g} nA (noise-free model); in brackets P(one of 26 random genomes"
            " does) =="
        )
        print(f"{'dev':>3s} " + " ".join(f"{g:>14s}" for g in config.gates))
        for seed in config.device_seeds:
            cells = []
            for gate in config.gates:
                p = fractions[(gate, seed)][margin]
                cells.append(f"{p:6.3f} ({1 - (1 - p) ** 26:4.2f})")
            print(f"{seed:3d} " + " ".join(f"{c:>14s}" for c in cells))


def print_ablation(rows: list[dict[str, Any]], main: list[dict[str, Any]]) -> list[dict]:
    print("\n== HGE ablation (one setting changed; same devices, gates and seeds) ==")
    variants = [("package defaults", [r for r in main if r["method"] == "hge"])]
    for label, *_ in ABLATIONS:
        variants.append((label, [r for r in rows if r["variant"] == label]))
    print(
        f"{'variant':36s} {'solved':>7s} {'dev s med':>9s} {'(solved)':>9s} {'dev s tot':>9s}"
        f" {'meas med':>8s}"
    )
    table = []
    for label, mine in variants:
        solved = [r for r in mine if r["solved"]]
        entry = {
            "variant": label,
            "solved": len(solved),
            "runs": len(mine),
            "device_s_median": median([r["device_s"] for r in mine]),
            "device_s_median_solved": median([r["device_s"] for r in solved]),
            "device_s_total": float(sum(r["device_s"] for r in mine)),
            "measurements_median": median([r["measurements"] for r in mine]),
            "unsolved": [f"{r['gate']}/dev{r['device_seed']}" for r in mine if not r["solved"]],
        }
        table.append(entry)
        print(
            f"{label:36s} {entry['solved']:3d}/{entry['runs']:<3d} "
            f"{entry['device_s_median']:9.1f} {entry['device_s_median_solved']:9.1f} "
            f"{entry['device_s_total']:9.0f} {entry['measurements_median']:8.0f}  "
            f"unsolved: {', '.join(entry['unsolved']) or '-'}"
        )
    return table


def print_sphere(study: dict[str, Any]) -> None:
    print("\n== Sphere classification with HGE (device 0; 90 train / 30 test points) ==")
    print(f"{'setting':30s} {'train':>6s} {'test':>6s} {'it':>4s} {'dev s':>7s} {'wall':>6s}  what")
    for row in study["grid"]:
        print(
            f"{row['setting']:30s} {row['accuracy']:6.3f} {row['test_accuracy']:6.3f} "
            f"{row['iterations']:4d} {row['device_s']:7.0f} {row['wall_s']:6.1f}  "
            f"{row['describe']}"
        )
    best = study["best"]
    print(
        f"  chosen by train accuracy: {best['setting']!r}: test accuracy "
        f"{best['test_accuracy']:.3f} (train {best['accuracy']:.3f}), "
        f"{best['device_s']:.0f} device s"
    )
    for row in study["best_other_seeds"]:
        print(
            f"  same setting on device {row['device_seed']}: train {row['accuracy']:.3f}, "
            f"test {row['test_accuracy']:.3f}, {row['device_s']:.0f} device s"
        )
    print("  noise-free model ceiling, device 0 (L-BFGS-B, exact Jacobian; train / test):")
    for (inputs, input_range), (train_acc, test_acc) in study["ceilings"].items():
        print(
            f"    inputs e{''.join(map(str, inputs))} {input_range[0]:+.2f}..{input_range[1]:+.2f}"
            f" V: {train_acc:.3f} / {test_acc:.3f}"
        )
    if study["scan"]:
        ranked = sorted(study["scan"].items(), key=lambda kv: -kv[1][0])
        (inputs, input_range), (train_acc, test_acc) = ranked[0]
        values = [v[0] for v in study["scan"].values()]
        print(
            f"    all {len(values)} input triples x ranges: train ceiling median "
            f"{np.median(values):.3f}, best {train_acc:.3f} (test {test_acc:.3f}) with e"
            f"{''.join(map(str, inputs))} {input_range[0]:+.2f}..{input_range[1]:+.2f} V"
        )
    print("  geometric reference (best threshold on the half-volume sphere in a cube):")
    for name, value in study["shapes"].items():
        print(f"    {name:34s} {value:.3f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 gates x 1 device, short GA")
    parser.add_argument(
        "--margin-study",
        action="store_true",
        help=f"only: HGE and GA asked for a {STRICT_MARGIN_NA:g} nA separation (~3-5 min)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"where to save the figure (full run: {PLOT_PATH.relative_to(PLOT_PATH.parents[1])};"
        " --quick: not saved unless given, so it cannot overwrite the full run's figure)",
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    plot_path = args.plot if args.plot is not None else (None if config.quick else PLOT_PATH)
    started = time.perf_counter()
    RE = RunEngine({}, call_returns_result=True)
    if args.margin_study:
        study = margin_study(RE, config)
        print_margin_study(study)
        result = {
            "strict_margin_na": STRICT_MARGIN_NA,
            "hge_solved": study["summary"]["hge"]["solved"],
            "ga_solved": study["summary"]["ga"]["solved"],
            "runs": study["summary"]["hge"]["runs"],
            "hge_device_s_median": study["summary"]["hge"]["device_s_median"],
            "ga_over_hge": study["ga_over_hge"]["median_of_ratios"],
            "wall_s": time.perf_counter() - started,
        }
        print("RESULT " + json.dumps(result))
        return result

    print(
        f"Training benchmark ({'quick' if config.quick else 'full'}): gates "
        f"{list(config.gates)}, devices {list(config.device_seeds)} (default_sim_profile(seed)),"
        f" methods {list(METHODS)}; {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        "  package defaults: train(lr=0.05 Adam, max_iterations=120, max_attempts=4, "
        f"patience=25, target_margin_na=2, fd_step_v=0.01, spsa_step_v=0.02); "
        f"train_genetic(population=26, generations={config.ga_generations})"
    )
    rows = gate_runs(RE, config)
    summary = summarise(rows, config)
    ablation = ablation_runs(RE, config) if config.ablation else []
    lucky = random_search(config)
    study = sphere_study(RE, config)
    if plot_path is not None:
        plot(rows, config, plot_path)
    elapsed = time.perf_counter() - started

    print_gates(rows, summary, config)
    print_random_search(lucky, config)
    ablation_table = print_ablation(ablation, rows) if config.ablation else []
    print_sphere(study)

    ratios = summary["ratios"]
    hge = summary["hge"]
    sphere_test = float(study["best"]["test_accuracy"])
    met = {
        "hge_solves_all_solved": not summary["hge_misses"],
        "fd_over_hge_ge_3": ratios["fd"]["median_of_ratios"] >= TARGETS["fd_over_hge"],
        "spsa_over_hge_gt_1": ratios["spsa"]["median_of_ratios"] > TARGETS["spsa_over_hge"],
        "ga_over_hge_ge_10": ratios["ga"]["median_of_ratios"] >= TARGETS["ga_over_hge"],
        "sphere_ge_0.9": sphere_test >= TARGETS["sphere"],
    }
    print("\n== targets ==")
    for key, value in met.items():
        print(f"  {key:24s} {'met' if value else 'NOT met'}")
    print(f"\nfigure: {plot_path or 'not saved (--quick; pass --plot PATH)'}")
    print(f"wall time of the whole benchmark: {elapsed:.1f} s")

    result = {
        "hge_success_rate": hge["success_rate"],
        "hge_device_s_median": hge["device_s_median"],
        "fd_over_hge": ratios["fd"]["median_of_ratios"],
        "spsa_over_hge": ratios["spsa"]["median_of_ratios"],
        "ga_over_hge": ratios["ga"]["median_of_ratios"],
        "sphere_test_accuracy": sphere_test,
        "quick": config.quick,
        "ratio_definition": "median over (gate, device) pairs solved by both methods of "
        "device_s(peer) / device_s(hge), device seconds to the end of training",
        "gates": list(config.gates),
        "device_seeds": list(config.device_seeds),
        "success_rate": {m: summary[m]["success_rate"] for m in METHODS},
        "device_s_median": {m: summary[m]["device_s_median"] for m in METHODS},
        "device_s_total": {m: summary[m]["device_s_total"] for m in METHODS},
        "ratio_of_medians": {p: ratios[p]["ratio_of_medians"] for p in ratios},
        "ratio_of_totals": {p: ratios[p]["ratio_of_totals"] for p in ratios},
        "ratio_to_success": {
            p: summary["ratios_to_success"][p]["median_of_ratios"] for p in ratios
        },
        "hge_misses": [f"{g}/dev{s}" for g, s in summary["hge_misses"]],
        "random_settings_solving": {
            f"{g}/dev{s}": {f"{m:g}nA": p for m, p in by_margin.items()}
            for (g, s), by_margin in lucky.items()
        },
        "ablation": [
            {k: e[k] for k in ("variant", "solved", "runs", "device_s_median", "device_s_total")}
            for e in ablation_table
        ],
        "sphere_setting": study["best"]["describe"],
        "sphere_train_accuracy": study["best"]["accuracy"],
        "sphere_device_s": study["best"]["device_s"],
        "sphere_other_devices_test": [r["test_accuracy"] for r in study["best_other_seeds"]],
        "sphere_model_ceiling_best": max(
            [v[0] for v in study["scan"].values()] or [v[0] for v in study["ceilings"].values()]
        ),
        "wall_s": elapsed,
        "targets_met": met,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
