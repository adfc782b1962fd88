"""``dnpu-bluesky demo`` and ``dnpu-bluesky train``: train, store, report the results."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import (
    Interrupted,
    RunFailed,
    UsageError,
    gates_of,
    label,
    open_storage,
    print_figures,
    run_plan,
    seed_of,
    write_figures,
)
from ._devices import built, check_device, profiles_of, virtual_device_seed
from ._past import device_seed, load_past_training


def train_and_store(
    args: argparse.Namespace,
    tasks: Sequence[Any],
    method: str,
    storage: Any,
    devices: Sequence[tuple[Any, Any]],
    *,
    seeds: Sequence[int],
    plan_options: dict[str, Any],
    past: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Train each task in its own run, stored in Tiled; returns result rows and figure paths.

    The rows are reported (table, ``--json``) as soon as training ends, before the figures,
    which wait for the runs to reach Tiled; on Ctrl-C, those of the runs already finished,
    before the interruption is passed on.

    Parameters
    ----------
    args : argparse.Namespace
        ``quiet``, ``json`` and ``figures``; for the gradient methods also ``screen_budget``,
        ``max_iterations``, ``lr`` and ``optimizer`` (each None for the plan's default).
    tasks : list of Task
        One run each.
    method : str
        ``"hge"``, ``"fd"``, ``"spsa"`` or ``"ga"``.
    storage : Storage
        The open storage.
    devices : list of tuple
        The ``(dnpu, profile)`` pairs of :func:`~dnpu_bluesky.cli._devices.built`, trained
        side by side.
    seeds : list of int
        The training seed of each task.
    plan_options : dict
        Keyword arguments of every method's plan: what to train for and the inputs' freedom;
        when continuing, :func:`dnpu_bluesky.continuation.continuation_options` (but the task
        and the seed).
    past : dict, optional
        The past run continued (:func:`dnpu_bluesky.continuation.past_training`): the device
        must have its controls where the run had them.

    Returns
    -------
    rows : list of dict
        One per task and device.
    figures : list of Path
        The ``--figures`` written.
    """
    from .._errors import StorageError
    from ..callbacks import TrainingProgress
    from ..plans import train, train_genetic
    from ..session import make_run_engine

    several = len(devices) > 1
    dnpus = [dnpu for dnpu, _ in devices]
    profile_of = {dnpu.name: profile for dnpu, profile in devices}
    trained = dnpus if several else dnpus[0]
    options = dict(plan_options)  # for the gradient methods
    if getattr(args, "screen_budget", None) is not None:
        options.update(screen_budget_s=args.screen_budget)
    if args.max_iterations is not None:
        options.update(max_iterations=args.max_iterations)
    for name in ("lr", "optimizer"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    rows: list[dict[str, Any]] = []
    try:
        if past is not None:
            check_device(dnpus[0], past)
        engine = make_run_engine(storage, interactive=False, returns_result=True)
        if not args.quiet:
            engine.subscribe(TrainingProgress())
        for task, seed in zip(tasks, seeds, strict=True):
            if method == "ga":
                plan = train_genetic(trained, task, seed=seed, **plan_options)
            else:
                plan = train(trained, task, method=method, seed=seed, **options)
            started = time.perf_counter()
            try:
                outcome = run_plan(engine, plan)
            except (Interrupted, RunFailed):
                if rows:
                    _report(args, rows)
                raise
            except StorageError as exc:  # the spool disk is full: the run was stopped
                _report(args, rows)
                raise StorageError(
                    f"{exc}; the run stopped with exit status 'fail' (every electrode parked "
                    "at 0 V)"
                ) from None
            wall = time.perf_counter() - started
            results = outcome.plan_result if several else [outcome.plan_result]
            # Side by side, each device has its run; they open in the order of the devices.
            uids = outcome.run_start_uids
            for result, uid in zip(results, uids, strict=True):
                row = {
                    "task": "sphere" if task.name == "sphere" else "boolean",
                    "gate": getattr(task, "gate", None),
                    "method": method,
                    "seed": seed,
                    "accuracy": result.accuracy,
                    "margin_nA": result.margin_na,
                    "iterations": result.iterations,
                    "device_s": result.device_s,
                    "wall_s": wall,
                    "run_uid": uid,
                    "device": result.device,
                    "device_seed": virtual_device_seed(profile_of[result.device]),
                    "clipped_samples": result.clipped_samples,
                    "inputs": result.inputs,
                    "input_levels": result.input_levels,
                }
                if result.test_accuracy is not None:
                    row["test_accuracy"] = result.test_accuracy
                rows.append(row)
    finally:  # parked now, not after the storage has flushed
        for dnpu in dnpus:
            dnpu.backend.close()
    _report(args, rows)
    return rows, _draw_figures(args, storage, rows)


def _plan_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return what every method trains for, and the inputs' freedom.

    That is ``--margin`` and ``--target-accuracy``; ``--inputs`` (screened by default), and
    levels trained unless ``--input-range`` fixes them.
    """
    options: dict[str, Any] = {}
    if args.margin is not None:
        options.update(target_margin_na=args.margin)
    if getattr(args, "target_accuracy", None) is not None:
        options.update(target_accuracy=args.target_accuracy)
    options.update(learn_levels=args.input_range is None)
    if args.inputs is not None:
        options.update(inputs=args.inputs)
    return options


def _report(args: argparse.Namespace, rows: Sequence[dict[str, Any]]) -> None:
    """Print the results table, and write the ``--json`` file."""
    print_table(rows)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps({"results": list(rows)}, indent=2))
        print(f"results: {args.json}")
    sys.stdout.flush()  # before the seconds the figures take


def _draw_figures(
    args: argparse.Namespace, storage: Any, rows: Sequence[dict[str, Any]]
) -> list[Path]:
    """Draw the ``--figures`` of the runs of ``rows``; [] without ``--figures``.

    The runs are read back from Tiled (each read waits for the writer).
    """
    from ..storage import load_run

    if not args.figures:
        return []
    uids = list(dict.fromkeys(row["run_uid"] for row in rows))
    print(f"Drawing the figures from Tiled into {args.figures}", file=sys.stderr)
    return write_figures([load_run(storage.client, uid) for uid in uids], Path(args.figures))


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """Print the results table: one row per gate (or task) trained, and per device.

    Parameters
    ----------
    rows : list of dict
        The rows of :func:`train_and_store`.
    """
    several = len({row.get("device") for row in rows}) > 1
    device = f"{'device':<8}" if several else ""
    header = (
        f"{'gate/task':<10}{device}{'method':<7}{'accuracy':>9}{'margin nA':>11}{'iters':>7}"
        f"{'device s':>10}{'wall s':>8}  {'run':<10}inputs: logical 0/1 V"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        name = row["gate"] or row["task"]
        device = f"{row['device']:<8}" if several else ""
        print(
            f"{name:<10}{device}{row['method']:<7}{row['accuracy']:>9.0%}{row['margin_nA']:>11.2f}"
            f"{row['iterations']:>7d}{row['device_s']:>10.1f}{row['wall_s']:>8.1f}"
            f"  {row['run_uid'][:8]:<10}{_levels_text(row)}"
        )
        if "test_accuracy" in row:
            print(f"{'':<10}test accuracy {row['test_accuracy']:.1%}")


def _levels_text(row: dict[str, Any]) -> str:
    """``e0 -1.14/+0.58  e2 +0.25/-1.02``: each input electrode with its logical 0 and 1."""
    names = (row.get("inputs") or "").split(",")
    levels = row.get("input_levels") or []
    if not names[0] or len(levels) != len(names):
        return ""
    return "  ".join(
        f"{name} {low:+.2f}/{high:+.2f}" for name, (low, high) in zip(names, levels, strict=True)
    )


def cmd_train(args: argparse.Namespace) -> int:
    """``dnpu-bluesky train``; see the parser for the options.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    int
        Exit status: 1 if a gate was not solved.
    """
    if args.method == "ga" and (args.lr is not None or args.optimizer is not None):
        raise UsageError("--lr and --optimizer are for the gradient methods, not --method ga")
    if args.source:
        return _continue(args)
    # Every argument is checked before the storage (seconds to start) is opened.
    kind = args.task or "boolean"
    seed = seed_of(args)
    # First: a --model file sets the default input levels.
    profiles, model_input_range = profiles_of(args, seed, sphere=kind == "sphere")
    tasks = _train_tasks(args, kind, seed, model_input_range)
    seeds = [seed + index for index in range(len(tasks))]
    with built(profiles) as devices, open_storage(args, writes=True) as storage:
        rows, figures = train_and_store(
            args,
            tasks,
            args.method,
            storage,
            devices,
            seeds=seeds,
            plan_options=_plan_options(args),
        )
    print_figures(figures)
    if kind == "sphere":  # no pass mark: the accuracies above are the result
        return 0
    return _gates_status(rows, args.margin)


def _continue(args: argparse.Namespace) -> int:
    """``train --from UID``: the past run's task on its inputs, from its final controls."""
    from ..continuation import continuation_options

    _check_continuation(args)
    with open_storage(args, writes=True) as storage:  # the past run picks the virtual device
        past = load_past_training(storage, args.source, args.device)
        seed = device_seed(args, past)
        margin = _continued_margin(args, past)
        target = "" if margin is None else f", for its {margin:g} nA margin"
        print(
            f"Continuing run {past['uid'][:8]} ({label(past['task'])}, accuracy "
            f"{past['accuracy']:.0%}, margin {past['margin_na']:.2f} nA) from its "
            f"final controls{target}; restarts draw from seed {past['training_seed'] + 1}."
        )
        options = continuation_options(past)
        task, training_seed = options.pop("task"), options.pop("seed")
        sphere = task.name == "sphere"
        with built(profiles_of(args, seed, sphere=sphere)[0]) as devices:
            rows, figures = train_and_store(
                args,
                [task],
                args.method,
                storage,
                devices,
                seeds=[training_seed],
                plan_options=options,
                past=past,
            )
    print_figures(figures)
    if sphere:  # no pass mark: the accuracies above are the result
        return 0
    return _gates_status(rows, margin)


def _check_continuation(args: argparse.Namespace) -> None:
    """``train --from``: the past run fixes the task; one device; a gradient method."""
    given = [
        flag
        for flag, value in (
            ("--task", args.task),
            ("--gates", args.gates),
            ("--batch-size", args.batch_size),
            ("--input-range", args.input_range),
            ("--inputs", args.inputs),
            ("--target-accuracy", args.target_accuracy),
        )
        if value is not None
    ]
    if given:
        raise UsageError(f"--from continues that run's own task; drop {', '.join(given)}")
    if args.method == "ga":
        raise UsageError("--from needs a gradient method; the genetic algorithm starts afresh")
    if args.devices > 1 or len(args.setup or []) > 1:
        raise UsageError("--from continues one device's training; give one device")


def _continued_margin(args: argparse.Namespace, past: dict[str, Any]) -> float | None:
    """Return the margin ``train --from`` trains for and counts in its exit status.

    It is the past run's.

    None when the past run trained for the default margin without asking for one (its loss
    not centred on a margin): then, as for ``train`` without ``--margin``, the exit status
    counts accuracy only. A ``--margin`` other than the past run's is refused: its task's
    loss is centred on its own margin.
    """
    from ..continuation import asked_margin

    if past["task"].name == "sphere":
        if args.margin is not None:
            raise UsageError("--margin is for gates; the sphere task trains for accuracy")
        return None
    target, asked = past["target_margin_na"], asked_margin(past)
    if args.margin is not None and args.margin != target:
        own = f"{target:g} nA" if asked is not None else f"{target:g} nA, the default"
        raise UsageError(f"--from keeps run {past['uid'][:8]}'s own margin ({own}); drop --margin")
    return target if asked is not None or args.margin is not None else None


def _train_tasks(
    args: argparse.Namespace,
    kind: str,
    seed: int,
    model_input_range: tuple[float, float] | None,
) -> list[Any]:
    """Return the tasks ``train`` was asked for (without ``--from``), arguments checked."""
    from ..tasks import SphereClassification

    if args.device is not None:
        raise UsageError("--device chooses the device of a --from run")
    _check_margin(args.margin, kind)
    if kind == "boolean":
        if args.batch_size is not None:
            raise UsageError("--batch-size is for the sphere task; a gate has four cases")
        if args.target_accuracy is not None:
            raise UsageError("--target-accuracy is for the sphere task; a gate is trained to 100%")
        return _gate_tasks(gates_of("XOR" if args.gates is None else args.gates), args)
    if args.gates is not None:
        raise UsageError("--gates is for the boolean task")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise UsageError(f"--target-accuracy must be in (0, 1], got {args.target_accuracy:g}")
    levels = _input_range(args.input_range, model_input_range)
    options = {} if levels is None else {"input_range_v": levels}
    return [SphereClassification(seed=seed, batch_size=args.batch_size, **options)]


def _input_range(
    text: str | None, model_input_range: tuple[float, float] | None = None
) -> tuple[float, float] | None:
    """Return ``--input-range LOW,HIGH`` as volts.

    Without it, the range every input electrode of a ``--model`` surrogate covers, else None
    for the tasks' defaults.
    """
    if text is None:
        return model_input_range
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError:
        raise UsageError(
            f"--input-range takes LOW,HIGH in volts, e.g. --input-range=-0.5,0.3; got {text!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UsageError(f"--input-range takes finite volts, got {text!r}")
    if not low < high:
        raise UsageError(f"--input-range: LOW must be below HIGH, got {text!r}")
    return low, high


def _gate_tasks(gates: Sequence[str], args: argparse.Namespace) -> list[Any]:
    from ..tasks import BooleanGate

    # Trained levels start at random; only fixed ones (--input-range) make the task's levels.
    levels = _input_range(args.input_range)
    options: dict[str, Any] = {}
    if levels is not None:
        options.update(input_low_v=levels[0], input_high_v=levels[1])
    if args.margin is not None:  # the corrsig loss's sigmoid centred on the margin asked for
        options.update(loss_params={"offset_na": args.margin})
    return [BooleanGate(gate=gate, **options) for gate in gates]


def _check_margin(margin: float | None, kind: str) -> None:
    if margin is None:
        return
    if not (math.isfinite(margin) and margin > 0):
        raise UsageError(f"--margin must be positive (nA), got {margin:g}")
    if kind == "sphere":
        raise UsageError("--margin is for gates; the sphere task trains for accuracy")


def _solved(row: dict[str, Any], margin: float | None) -> bool:
    """Tell whether every case was classified right within the AI range.

    And separated by ``margin``, if one was asked for.
    """
    in_range = not row["clipped_samples"]
    return row["accuracy"] == 1.0 and in_range and (margin is None or row["margin_nA"] >= margin)


def _gates_status(rows: Sequence[dict[str, Any]], margin: float | None) -> int:
    """Exit status 1, naming them, if any gate was not solved (at ``margin``, if given)."""
    missed = [row for row in rows if not _solved(row, margin)]
    if missed:
        at = f" with a {margin:g} nA margin" if margin is not None else ""
        print(
            f"{len(missed)} of {len(rows)} not solved{at}: "
            + ", ".join(f"{row['gate']} ({_missed_note(row)})" for row in missed),
            file=sys.stderr,
        )
    return 1 if missed else 0


def _missed_note(row: dict[str, Any]) -> str:
    clipped = ", output clipped" if row["clipped_samples"] else ""
    return f"{row['run_uid'][:8]}{clipped}"


def cmd_demo(args: argparse.Namespace) -> int:
    """``dnpu-bluesky demo``: every Boolean gate with HGE.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    int
        Exit status: 1 if a gate was not solved.
    """
    from ..tasks import GATES

    seed = seed_of(args)
    if args.setup:
        where = "the setup" + ("s " if len(args.setup) > 1 else " ") + ", ".join(args.setup)
    elif args.devices > 1:
        last = seed + args.devices - 1
        where = f"{args.devices} virtual DNPUs side by side (seeds {seed}..{last})"
    else:
        where = f"the virtual DNPU (seed {seed})"
    print(f"Training all Boolean gates on {where} with HGE.")
    _check_margin(args.margin, "boolean")
    profiles, _ = profiles_of(args, seed)  # first: a --model file sets the default levels
    tasks = _gate_tasks(GATES, args)
    seeds = [seed + index for index in range(len(tasks))]
    with built(profiles) as devices, open_storage(args, writes=True) as storage:
        rows, figures = train_and_store(
            args, tasks, "hge", storage, devices, seeds=seeds, plan_options=_plan_options(args)
        )
    print_figures(figures)
    solved = sum(_solved(row, args.margin) for row in rows)
    what = "gate trainings" if len(rows) > len(GATES) else "gates"
    print(f"{solved}/{len(rows)} {what} solved; every run is in Tiled (dnpu-bluesky runs).")
    return _gates_status(rows, args.margin)
