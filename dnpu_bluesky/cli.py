"""The ``dnpu-bluesky`` command: demo, train, evaluate, runs, report, check-profile."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._console_log import set_up_console_log
from .tasks.levels import DEFAULT_MIN_SWING_V, DEFAULT_SCREEN_BUDGET_S
from .tasks.optimizers import DEFAULT_LR

DEFAULT_OUTPUT = Path("demo-output")
METHODS = ("hge", "fd", "spsa", "ga")
#: Input electrodes of the virtual DNPU for the 3-input sphere task (the best triple found by
#: benchmarks/training.py; the gates use e3 and e4).
SPHERE_INPUTS = (1, 2, 4)


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


class Interrupted(Exception):
    """Ctrl-C: the run was aborted (and stored as such); exit status 130."""


def _run(engine: Any, plan: Any) -> Any:
    """Run ``plan``; on Ctrl-C, which pauses the RunEngine at the next step, abort the run.

    Aborting unstages the devices (every electrode to 0 V) and closes the run with
    ``exit_status="abort"``, so it is stored like any other.
    """
    from bluesky.utils import RunEngineInterrupted

    try:
        return engine(plan)
    except RunEngineInterrupted:
        aborted = engine.abort("interrupted from the keyboard (Ctrl-C)")
        uids = ", ".join(uid[:8] for uid in aborted.run_start_uids) or "none"
        raise Interrupted(
            f"interrupted; run {uids} aborted and stored (unstaging the devices parked "
            "every electrode at 0 V; a failure to do so is reported above)"
        ) from None


def _storage_config(args: argparse.Namespace):
    from .session import storage_config_from_env

    config = storage_config_from_env()
    if getattr(args, "data_dir", None):
        config = replace(config, directory=Path(args.data_dir))
    if getattr(args, "tiled_uri", None):
        config = replace(config, uri=args.tiled_uri)
    return config


def _open_storage(args: argparse.Namespace):
    """The storage of ``args``, announced on stderr: starting it takes seconds."""
    from .storage import open_storage

    config = _storage_config(args)
    print(f"Opening the run store in {_where(config)}", file=sys.stderr, flush=True)
    return open_storage(config)


def _profiles(args: argparse.Namespace) -> list[Any]:
    """One setup profile per device: each ``--setup``, or ``--devices`` virtual DNPUs."""
    from .config import default_sim_profile, load_profile

    count = args.devices
    if count < 1:
        raise UsageError(f"--devices must be at least 1, got {count}")
    if not args.setup and count == 1 and os.environ.get("DNPU_SETUP"):
        args.setup = [os.environ["DNPU_SETUP"]]
    if args.setup:
        if count > 1:
            raise UsageError("--devices is for virtual DNPUs; give one --setup per device instead")
        profiles = [load_profile(path) for path in args.setup]
        _check_no_shared_channels(args.setup, profiles)
    else:
        inputs = SPHERE_INPUTS if getattr(args, "task", "boolean") == "sphere" else (3, 4)
        profiles = [default_sim_profile(seed=args.seed + k, inputs=inputs) for k in range(count)]
    if args.model:
        if not Path(args.model).is_file():
            raise UsageError(f"--model: no such file: {args.model}")
        if any(profile.backend != "sim" for profile in profiles):
            raise UsageError("--model replaces the simulated device; it needs a sim setup")
        surrogate = str(Path(args.model).resolve())
        if not args.setup:  # the built-in setup takes the electrode ranges of the file
            limits = _surrogate_ranges(surrogate)
            profiles = [
                default_sim_profile(seed=args.seed + k, inputs=inputs, limits=limits)
                for k in range(count)
            ]
            input_limits = profiles[0].limits_v[list(profiles[0].indices("input"))]
            args.model_input_range = (
                float(input_limits[:, 0].max()),
                float(input_limits[:, 1].min()),
            )
        profiles = [
            profile.model_copy(
                update={"sim": profile.sim.model_copy(update={"surrogate": surrogate})}
            )
            for profile in profiles
        ]
    return profiles


def _surrogate_ranges(path: str) -> list[list[float]]:
    """The electrode ranges a brains-py surrogate file was trained on, one per electrode."""
    from .sim import load_brainspy_surrogate

    model = load_brainspy_surrogate(path)
    if model.n_electrodes != 7:
        raise UsageError(
            f"--model {path}: the surrogate has {model.n_electrodes} electrodes; "
            "a DNPU here has 7 voltage electrodes"
        )
    ranges = [[float(low), float(high)] for low, high in model.voltage_ranges]
    for index, (low, high) in enumerate(ranges):
        if not low < 0 < high:
            raise UsageError(
                f"--model {path}: electrode e{index} was trained on {low:g} .. {high:g} V, "
                "which leaves out 0 V, where every stream starts and ends; give a --setup "
                "whose limits the surrogate covers"
            )
    return ranges


def _check_no_shared_channels(paths: Sequence[str], profiles: Sequence[Any]) -> None:
    """Refuse setups side by side that name the same DAQ channel: one channel cannot drive
    (or read) two devices, and DAQmx would only say so once the run is open."""
    owner: dict[str, int] = {}
    for index, profile in enumerate(profiles):
        if profile.backend != "nidaqmx":
            continue  # every virtual DNPU has a simulated DAQ of its own
        channels = [electrode.channel for electrode in profile.electrodes]
        for channel in [*channels, profile.output.channel]:
            first = owner.setdefault(channel.lower(), index)  # DAQmx names ignore case
            if first != index:
                raise UsageError(
                    f"--setup {paths[index]} uses DAQ channel {channel}, as does --setup "
                    f"{paths[first]}: each device side by side needs channels of its own"
                )


#: Largest seed: seeds are stored in the runs' documents, which hold 64-bit integers, and a
#: seed names a device or a training run, for which 32 bits are plenty.
_MAX_SEED = 2**32 - 1


def _seed_from_env() -> int:
    text = os.environ.get("DNPU_SEED", "0")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"DNPU_SEED must be an integer, got {text!r}") from None


def _input_range(args: argparse.Namespace) -> tuple[float, float] | None:
    """``--input-range LOW,HIGH`` as volts; without it the range every input electrode of a
    ``--model`` surrogate covers, else None for the tasks' defaults."""
    text = getattr(args, "input_range", None)
    if text is None:
        if getattr(args, "model_input_range", None) is not None:
            return args.model_input_range
        return None
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError:
        raise UsageError(
            f"--input-range takes LOW,HIGH in volts, e.g. --input-range=-0.5,0.3; got {text!r}"
        ) from None
    if not low < high:
        raise UsageError(f"--input-range: LOW must be below HIGH, got {text!r}")
    return low, high


def _gate_tasks(gates: Sequence[str], args: argparse.Namespace) -> list[Any]:
    from .tasks import BooleanGate

    # Trained levels start at random; only fixed ones (--input-range) make the task's levels.
    levels = _input_range(args) if args.input_range is not None else None
    options: dict[str, Any] = {}
    if levels is not None:
        options.update(input_low_v=levels[0], input_high_v=levels[1])
    if args.margin is not None:  # the corrsig loss's sigmoid centred on the margin asked for
        options.update(loss_params={"offset_na": args.margin})
    return [BooleanGate(gate=gate, **options) for gate in gates]


def _solved(row: dict[str, Any], args: argparse.Namespace) -> bool:
    """Every case classified right within the AI range, and separated by ``--margin`` if one
    was asked for."""
    margin = getattr(args, "margin", None)
    in_range = not row["clipped_samples"]
    return row["accuracy"] == 1.0 and in_range and (margin is None or row["margin_nA"] >= margin)


def _missed_note(row: dict[str, Any]) -> str:
    clipped = ", output clipped" if row["clipped_samples"] else ""
    return f"{row['run_uid'][:8]}{clipped}"


def _check_numbers(args: argparse.Namespace) -> None:
    """The numeric options any command has, before anything starts."""
    iterations = getattr(args, "max_iterations", None)
    if iterations is not None and iterations < 1:
        raise UsageError(f"--max-iterations must be at least 1, got {iterations}")
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be positive (V per step), got {lr:g}")


def _check_margin(args: argparse.Namespace) -> None:
    if args.margin is None:
        return
    if not (math.isfinite(args.margin) and args.margin > 0):
        raise UsageError(f"--margin must be positive (nA), got {args.margin:g}")
    if getattr(args, "task", "boolean") == "sphere":
        raise UsageError("--margin is for gates; the sphere task trains for accuracy")


def _gates(text: str, option: str = "--gates") -> list[str]:
    from .tasks import GATES

    gates = [g.strip().upper() for g in text.split(",") if g.strip()]
    unknown = [g for g in gates if g not in GATES]
    if unknown or not gates:
        raise UsageError(f"{option}: unknown gate(s) {unknown or text!r}; choose from {GATES}")
    return gates


@contextlib.contextmanager
def _built(profiles: Sequence[Any]) -> Iterator[list[tuple[Any, Any]]]:
    """``(dnpu, profile)`` for each profile, built before the storage opens so that a missing
    driver or a wrong channel is reported at once, not after seconds of starting storage;
    their backends are closed (every electrode parked at 0 V) at the end."""
    from .devices import build_dnpu

    several = len(profiles) > 1
    built: list[tuple[Any, Any]] = []
    try:
        for k, profile in enumerate(profiles):
            dnpu = build_dnpu(profile, name=f"dnpu{k + 1}" if several else "dnpu")
            built.append((dnpu, profile))
        yield built
    finally:
        for dnpu, _ in built:
            dnpu.backend.close()


def train_and_store(
    args: argparse.Namespace,
    tasks: Sequence[Any],
    method: str,
    storage: Any,
    devices: Sequence[tuple[Any, Any]],
    source: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Train each task in its own run, stored in Tiled; returns result rows and figure paths.

    The rows are reported (table, ``--json``) as soon as training ends, before the figures,
    which wait for the runs to reach Tiled; on Ctrl-C, those of the runs already finished,
    before the interruption is passed on.

    ``devices``: the ``(dnpu, profile)`` pairs of :func:`_built`, trained side by side.

    ``source`` (from :func:`_past_result`) continues a past run: its final controls are the
    first start, it trains for the past run's target margin, and the new run records the old
    one as ``source_run``. Its random restarts draw from the past run's training seed plus
    one, so that they do not repeat the past run's own starts.
    """
    from .callbacks import TrainingProgress
    from .plans import train, train_genetic
    from .session import make_run_engine

    several = len(devices) > 1
    dnpus = [dnpu for dnpu, _ in devices]
    profile_of = {dnpu.name: profile for dnpu, profile in devices}
    trained = dnpus if several else dnpus[0]
    stopping: dict[str, Any] = {}  # for every method
    margin = getattr(args, "margin", None) if source is None else source["target_margin_na"]
    if margin is not None:
        stopping.update(target_margin_na=margin)
    accuracy = getattr(args, "target_accuracy", None)
    if source is not None:
        accuracy = source["target_accuracy"]
    if accuracy is not None:
        stopping.update(target_accuracy=accuracy)
    freedom = _input_freedom(args, source)  # for every method
    stopping.update(freedom)
    options = dict(stopping)  # for the gradient methods
    if getattr(args, "screen_budget", None) is not None:
        options.update(screen_budget_s=args.screen_budget)
    if args.max_iterations is not None:
        options.update(max_iterations=args.max_iterations)
    for name in ("lr", "optimizer"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if source is not None:
        options.update(
            initial_controls=source["controls"],
            md={"source_run": source["uid"], "source_device": source["device"]},
        )
        if freedom.get("learn_levels") and source.get("input_levels") is not None:
            options.update(initial_levels=source["input_levels"])
    rows: list[dict[str, Any]] = []
    try:
        if source is not None:
            _check_same_device(dnpus[0], source)
        engine = make_run_engine(storage, interactive=False, returns_result=True)
        if not args.quiet:
            engine.subscribe(TrainingProgress())
        for index, task in enumerate(tasks):
            seed = args.seed + index if source is None else source["training_seed"] + 1
            if method == "ga":
                plan = train_genetic(trained, task, seed=seed, **stopping)
            else:
                plan = train(trained, task, method=method, seed=seed, **options)
            started = time.perf_counter()
            try:
                outcome = _run(engine, plan)
            except Interrupted:
                if rows:
                    _report(args, rows)
                raise
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
                    "device_seed": _virtual_device_seed(profile_of[result.device]),
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


def _input_freedom(args: argparse.Namespace, source: dict[str, Any] | None) -> dict[str, Any]:
    """``inputs`` and ``learn_levels`` for the plans: the past run's inputs and kind of levels
    when continuing; else ``--inputs`` (screened by default) and trained levels unless
    ``--input-range`` fixes them."""
    if source is not None:
        freedom: dict[str, Any] = {"learn_levels": bool(source.get("learned_levels"))}
        if source.get("inputs"):
            freedom["inputs"] = source["inputs"]
        return freedom
    freedom = {"learn_levels": getattr(args, "input_range", None) is None}
    if getattr(args, "inputs", None) is not None:
        freedom["inputs"] = args.inputs
    return freedom


def _report(args: argparse.Namespace, rows: Sequence[dict[str, Any]]) -> None:
    """The results table, and the ``--json`` file."""
    print_table(rows)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps({"results": list(rows)}, indent=2))
        print(f"results: {args.json}")
    sys.stdout.flush()  # before the seconds the figures take


def _draw_figures(args: argparse.Namespace, storage: Any, rows: Sequence[dict[str, Any]]):
    """The ``--figures`` of the runs of ``rows``, read back from Tiled (each read waits for
    the writer); [] without ``--figures``."""
    from .storage import load_run

    if not args.figures:
        return []
    uids = list(dict.fromkeys(row["run_uid"] for row in rows))
    print(f"Drawing the figures from Tiled into {args.figures}", file=sys.stderr)
    return _write_figures([load_run(storage.client, uid) for uid in uids], Path(args.figures))


def _virtual_device_seed(profile: Any) -> int | None:
    """The seed of the built-in virtual DNPU a profile simulates; None for other devices."""
    if profile.backend != "sim" or profile.sim.surrogate is not None:
        return None
    return profile.sim.seed


def _write_figures(runs: Sequence[Any], directory: Path) -> list[Path]:
    """The runs' figures drawn into ``directory``; [] if they cannot be written, said in one
    line, so that the results printed after them are not lost (the runs are in Tiled)."""
    from .figures import save_figures

    try:
        drawn = save_figures(runs, directory)
        if not drawn:
            print("nothing to draw: no training step and no evaluation stored", file=sys.stderr)
        return drawn
    except OSError as exc:
        uids = " ".join(run.metadata["start"]["uid"][:8] for run in runs)
        print(
            f"could not write the figures to {directory} ({exc.strerror or exc}); the runs are "
            f"in Tiled: dnpu-bluesky report {uids} --out DIR",
            file=sys.stderr,
        )
        return []


def _check_output_paths(args: argparse.Namespace) -> None:
    """Refuse, before anything is measured, a ``--json`` file or a ``--figures``/``--out``
    folder that cannot be written (a folder is created here if missing)."""
    json_path = getattr(args, "json", None)
    if json_path == "":
        raise UsageError("--json needs a file name")
    if json_path:
        path, folder = Path(json_path), Path(json_path).parent
        writable = os.access(path, os.W_OK) if path.exists() else os.access(folder, os.W_OK)
        if path.is_dir() or not folder.is_dir() or not writable:
            raise UsageError(f"--json {json_path}: cannot write a file there")
    for option in ("figures", "out"):
        folder = getattr(args, option, None)
        if not folder:
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--{option} {folder}: cannot create it ({exc.strerror})") from None
        if not os.access(folder, os.W_OK):
            raise UsageError(f"--{option} {folder}: cannot write there")


def _print_figures(paths: Sequence[Path]) -> None:
    if paths:
        print("figures: " + ", ".join(str(p) for p in paths))


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """The results table: one row per gate (or task) trained, and per device."""
    several = len({row.get("device") for row in rows}) > 1
    device = f"{'device':<8}" if several else ""
    header = (
        f"{'gate/task':<10}{device}{'method':<7}{'accuracy':>9}{'margin nA':>11}{'iters':>7}"
        f"{'device s':>10}{'wall s':>8}  {'run':<10}inputs: logical 0/1 V"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        label = row["gate"] or row["task"]
        device = f"{row['device']:<8}" if several else ""
        print(
            f"{label:<10}{device}{row['method']:<7}{row['accuracy']:>9.0%}{row['margin_nA']:>11.2f}"
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


def _cmd_train(args: argparse.Namespace) -> int:
    if args.method == "ga" and (args.lr is not None or args.optimizer is not None):
        raise UsageError("--lr and --optimizer are for the gradient methods, not --method ga")
    if args.source:
        _check_continuation(args)
        with _open_storage(args) as storage:  # the past run picks the virtual device
            source = _past_result(storage, args, args.source)
            args.margin = _continued_margin(args, source)
            target = "" if args.margin is None else f", for its {args.margin:g} nA margin"
            print(
                f"Continuing run {source['uid'][:8]} ({_label(source['task'])}, accuracy "
                f"{source['accuracy']:.0%}, margin {source['margin_na']:.2f} nA) from its "
                f"final controls{target}; restarts draw from seed {source['training_seed'] + 1}."
            )
            with _built(_profiles(args)) as devices:
                rows, figures = train_and_store(
                    args, [source["task"]], args.method, storage, devices, source
                )
    else:
        # Every argument is checked before the storage (seconds to start) is opened.
        profiles = _profiles(args)  # first: a --model file sets the default input levels
        tasks = _train_tasks(args)
        with _built(profiles) as devices, _open_storage(args) as storage:
            rows, figures = train_and_store(args, tasks, args.method, storage, devices)
    _print_figures(figures)
    if args.task == "sphere":  # no pass mark: the accuracies above are the result
        return 0
    return _gates_status(args, rows)


def _gates_status(args: argparse.Namespace, rows: Sequence[dict[str, Any]]) -> int:
    """Exit status 1, naming them, if any gate was not solved (at ``--margin``, if given)."""
    missed = [row for row in rows if not _solved(row, args)]
    if missed:
        margin = f" with a {args.margin:g} nA margin" if args.margin is not None else ""
        print(
            f"{len(missed)} of {len(rows)} not solved{margin}: "
            + ", ".join(f"{row['gate']} ({_missed_note(row)})" for row in missed),
            file=sys.stderr,
        )
    return 1 if missed else 0


def _continued_margin(args: argparse.Namespace, source: dict[str, Any]) -> float | None:
    """The margin ``train --from`` trains for and counts in its exit status: the past run's.

    None when the past run trained for the default margin without asking for one (its loss
    not centred on a margin): then, as for ``train`` without ``--margin``, the exit status
    counts accuracy only. A ``--margin`` other than the past run's is refused: its task's
    loss is centred on its own margin.
    """
    target = source["target_margin_na"]
    if source["task"].name == "sphere":
        if args.margin is not None:
            raise UsageError("--margin is for gates; the sphere task trains for accuracy")
        return None
    asked = "offset_na" in source["task"].loss_params or target != _DEFAULT_TARGET_MARGIN_NA
    if args.margin is not None and args.margin != target:
        own = f"{target:g} nA" if asked else f"{target:g} nA, the default"
        raise UsageError(
            f"--from keeps run {source['uid'][:8]}'s own margin ({own}); drop --margin"
        )
    return target if asked or args.margin is not None else None


def _train_tasks(args: argparse.Namespace) -> list[Any]:
    """The tasks ``train`` was asked for (without ``--from``), arguments checked."""
    from .tasks import SphereClassification

    args.task = args.task or "boolean"
    if args.device is not None:
        raise UsageError("--device chooses the device of a --from run")
    _check_margin(args)
    if args.task == "boolean":
        if args.batch_size is not None:
            raise UsageError("--batch-size is for the sphere task; a gate has four cases")
        if args.target_accuracy is not None:
            raise UsageError("--target-accuracy is for the sphere task; a gate is trained to 100%")
        return _gate_tasks(_gates("XOR" if args.gates is None else args.gates), args)
    if args.gates is not None:
        raise UsageError("--gates is for the boolean task")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise UsageError(f"--target-accuracy must be in (0, 1], got {args.target_accuracy:g}")
    levels = _input_range(args)
    options = {} if levels is None else {"input_range_v": levels}
    return [SphereClassification(seed=args.seed, batch_size=args.batch_size, **options)]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .tasks import GATES

    if args.setup:
        where = "the setup" + ("s " if len(args.setup) > 1 else " ") + ", ".join(args.setup)
    elif args.devices > 1:
        last = args.seed + args.devices - 1
        where = f"{args.devices} virtual DNPUs side by side (seeds {args.seed}..{last})"
    else:
        where = f"the virtual DNPU (seed {args.seed})"
    print(f"Training all Boolean gates on {where} with HGE.")
    _check_margin(args)
    profiles = _profiles(args)  # first: a --model file sets the default input levels
    tasks = _gate_tasks(GATES, args)
    with _built(profiles) as devices, _open_storage(args) as storage:
        rows, figures = train_and_store(args, tasks, "hge", storage, devices)
    _print_figures(figures)
    solved = sum(_solved(row, args) for row in rows)
    what = "gate trainings" if len(rows) > len(GATES) else "gates"
    print(f"{solved}/{len(rows)} {what} solved; every run is in Tiled (dnpu-bluesky runs).")
    return _gates_status(args, rows)


#: Plans whose runs end with an unperturbed evaluation of a task at their controls.
_RESULT_PLANS = ("train", "train_genetic", "evaluate_controls")
#: ``target_margin_na`` of ``train`` and ``train_genetic`` when none is asked for (the stop
#: target of ``--margin``'s help; tests check it against the plans' signatures).
_DEFAULT_TARGET_MARGIN_NA = 2.0
#: ``offset_na`` of the corrsig loss when no ``--margin`` is asked for.
_DEFAULT_LOSS_OFFSET_NA = 5.0
#: ``train``'s ``max_iterations`` and ``max_attempts``, and ``train_genetic``'s generations.
_DEFAULT_MAX_ITERATIONS = 120
_DEFAULT_MAX_ATTEMPTS = 4
_DEFAULT_GENERATIONS = 100
#: ``train``'s ``lr`` and ``optimizer``.
_DEFAULT_OPTIMIZER = "adam"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .plans import evaluate_controls
    from .results import trained_setting
    from .session import make_run_engine
    from .storage import load_run

    args.setup = [args.setup] if args.setup else None
    setup = args.setup or os.environ.get("DNPU_SETUP")
    if args.seed_given and setup:
        where = "--setup" if args.setup else "DNPU_SETUP"
        raise UsageError(
            f"--seed picks a virtual DNPU, but {where} gives the device ({setup}); give one of them"
        )
    with _open_storage(args) as storage:
        then = _past_result(storage, args, args.uid)
        task = then["task"]
        with _built(_profiles(args)) as ((dnpu, _),):
            _check_same_device(dnpu, then)
            engine = make_run_engine(storage, interactive=False, returns_result=True)
            plan = evaluate_controls(
                dnpu,
                task,
                then["controls"],
                inputs=then["inputs"],
                input_levels=then["input_levels"],
                threshold_na=then["threshold_na"] if args.fixed_threshold else None,
                md={"source_run": then["uid"], "source_device": then["device"]},
            )
            outcome = _run(engine, plan)
        (uid,) = outcome.run_start_uids
        measured = load_run(storage.client, uid)
        now = trained_setting(measured)
        held_out = then["test_accuracy"] is not None
        test = f"{'test':>7}" if held_out else ""
        print(f"{'':<5}{'run':<10}{'accuracy':>9}{test}{'margin nA':>11}{'threshold nA':>14}")
        for label, setting, run_uid in (("then", then, then["uid"]), ("now", now, uid)):
            test = f"{setting['test_accuracy']:>7.0%}" if held_out else ""
            print(
                f"{label:<5}{run_uid[:8]:<10}{setting['accuracy']:>9.0%}{test}"
                f"{setting['margin_na']:>11.2f}{setting['threshold_na']:>14.2f}"
            )
        if args.figures:
            _print_figures(_write_figures([measured], Path(args.figures)))
    if outcome.plan_result.clipped_samples:
        print(
            f"{_label(task)}: the output left the AI range at these controls, so the "
            "classification cannot be trusted; lower the amplifier gain or widen the AI range",
            file=sys.stderr,
        )
        return 1
    if now["solved"] or task.name == "sphere":
        return 0
    device = ""
    if args.setup:
        device = f" --setup {args.setup[0]}"
    elif args.seed_given:
        device = f" --seed {args.seed}"
    if args.device:
        device = f" --device {args.device}{device}"
    lost = "no longer separates" if then["solved"] else "does not separate (nor did it then)"
    print(
        f"{_label(task)} {lost}; train again from these controls with "
        f"`dnpu-bluesky train --from {then['uid'][:8]}{device}`",
        file=sys.stderr,
    )
    return 1


def _past_result(storage: Any, args: argparse.Namespace, uid: str) -> dict[str, Any]:
    """A past run's trained setting (:func:`~dnpu_bluesky.results.trained_setting`), with its
    rebuilt ``task``, its ``uid`` and its device's ``backend`` description. Unless the command
    names a device (``--setup``, ``--seed``, ``DNPU_SETUP``), it will measure on the run's own
    virtual DNPU."""
    from .results import trained_setting
    from .tasks import task_from_description

    source = _load_past_run(storage, uid)
    start = source.metadata["start"]
    if start["plan_name"] not in _RESULT_PLANS:
        raise UsageError(f"run {start['uid'][:8]} is not a training run")
    devices = start["detectors"]
    if args.device is None and len(devices) > 1:
        raise UsageError(f"run {start['uid'][:8]} trained {devices}: choose one with --device")
    if args.device is not None and args.device not in devices:
        raise UsageError(f"--device: run {start['uid'][:8]} trained {devices}, not {args.device!r}")
    setting = trained_setting(source, args.device)
    setting["task"] = task_from_description(setting["task"])
    args.task = "sphere" if setting["task"].name == "sphere" else "boolean"
    backend = start["dnpu_backend"]
    setting["backend"] = backend[args.device or devices[0]] if len(devices) > 1 else backend
    setting["uid"] = start["uid"]
    setting["device"] = args.device or devices[0]
    setting["training_seed"] = int(start.get("seed", 0))
    setting["target_margin_na"] = _target_margin(start, setting["task"])
    setting["target_accuracy"] = float(start.get("plan_args", {}).get("target_accuracy", 1.0))
    if not (args.setup or args.seed_given or os.environ.get("DNPU_SETUP")):
        args.seed = _recorded_virtual_seed(setting["backend"], start["uid"])
    return setting


def _load_past_run(storage: Any, uid: str) -> Any:
    """``load_run``, with a missing run reported with the storage it was looked for in."""
    from .storage import load_run

    try:
        return load_run(storage.client, uid)
    except KeyError:
        raise UsageError(
            f"no run with uid {uid!r} in {_where(storage.config)} "
            f"(container {storage.config.container!r})"
        ) from None


def _where(config: Any) -> str:
    """The data directory, or the Tiled server's URI without its query (an API key)."""
    from urllib.parse import urlsplit

    from .storage import default_directory

    if config.uri is None:
        return f"the data directory {config.directory or default_directory()}"
    parts = urlsplit(config.uri)
    host = parts.netloc.rpartition("@")[2]  # no user:password either
    return "Tiled at " + parts._replace(netloc=host, query="", fragment="").geturl()


def _target_margin(start: dict[str, Any], task: Any) -> float:
    """The margin (nA) a run trained for; an ``evaluate_controls`` run has none of its own,
    its task's loss is centred on the one its controls were trained for (if one was asked)."""
    plan_args = start.get("plan_args", {})
    if "target_margin_na" in plan_args:
        return float(plan_args["target_margin_na"])
    offset = getattr(task, "loss_params", {}).get("offset_na")
    return _DEFAULT_TARGET_MARGIN_NA if offset is None else float(offset)


def _check_same_device(dnpu: Any, source: dict[str, Any]) -> None:
    """Refuse a past run's controls meant for other electrodes than this device's controls
    (they are applied in order); say on stderr when the device is not the one it measured."""
    from .results import electrode_label

    inputs = (source.get("inputs") or "").split(",")
    ours = [
        electrode_label(e.attr_name, e.channel.get())
        for e in dnpu.electrodes
        if (e.attr_name not in inputs if inputs[0] else e.role.get() == "control")
    ]
    if source["control_electrodes"] != ours:
        raise UsageError(
            f"run {source['uid'][:8]} had its controls on {', '.join(source['control_electrodes'])}"
            f"; this device has them on {', '.join(ours)}: give the setup it was measured with"
        )
    if _device_identity(dnpu.backend.describe()) != _device_identity(source["backend"]):
        print(
            f"note: run {source['uid'][:8]} was measured on another device than this one",
            file=sys.stderr,
        )


def _device_identity(backend: dict[str, Any]) -> Any:
    """What tells devices apart in a backend's description: a simulated model's parameters,
    or the setup's name and channels."""
    if "model" in backend:
        return backend["model"].get("parameter_hash")
    profile = backend.get("profile", {})
    channels = [electrode.get("channel") for electrode in profile.get("electrodes", [])]
    return profile.get("name"), channels, profile.get("output", {}).get("channel")


def _label(task: Any) -> str:
    return getattr(task, "gate", None) or task.name


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


def _recorded_virtual_seed(backend: dict[str, Any], uid: str) -> int:
    """The seed of the virtual DNPU a run was measured on; hardware runs need a setup."""
    model = backend.get("model", {})
    if backend.get("name") != "sim" or model.get("kind") != "VirtualDNPU":
        raise UsageError(
            f"run {uid[:8]} was measured on {backend.get('name', 'hardware')!r}: give the "
            "device with --setup (or DNPU_SETUP), or --seed and --model for a simulation"
        )
    return int(model["seed"])


def _cmd_runs(args: argparse.Namespace) -> int:
    from .results import final_scores, held_out_accuracy

    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    with _open_storage(args) as storage:
        runs = _find_runs(storage.client, args)
        more = len(runs) > args.limit
        runs = runs[: args.limit]
        if not runs:
            print("no runs match", file=sys.stderr)
            return 0
        print(
            f"{'uid':<10}{'time':<21}{'plan':<20}{'method':<9}{'gate/task':<11}{'status':<9}"
            f"{'accuracy':>8}{'margin nA':>11}"
        )
        for run in runs:
            start = run.metadata["start"]
            stop = run.metadata.get("stop") or {}
            label = start.get("gate") or start.get("task", {}).get("name", "")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start["time"]))
            scores = final_scores(run) if start["plan_name"] in _RESULT_PLANS and stop else None
            result = ""
            if scores:  # several devices: the worst of them, and how many there were
                accuracy = min(a for a, _ in scores.values())
                margin = min(m for _, m in scores.values())
                result = f"{accuracy:>8.0%}{margin:>11.2f}"
                if label == "sphere":  # held-out points: the accuracy that tells
                    tests = [held_out_accuracy(run, device) for device in scores]
                    if None not in tests:
                        result += f"  test {min(tests):.0%}"
                if len(scores) > 1:
                    result += f"  ({len(scores)} devices)"
            method = start.get("method", "") if start["plan_name"] != "evaluate_controls" else ""
            status = stop.get("exit_status", "open")
            if start["plan_name"] in _RESULT_PLANS and status == "success" and not scores:
                status = "stopped"  # RE.stop() (a queue's "re stop") ends a run as a success
            print(
                f"{start['uid'][:8]:<10}{when:<21}{start['plan_name']:<20}{method:<9}{label:<11}"
                f"{status:<9}{result}"
            )
        if more:
            print(f"(the newest {args.limit}; --limit N for more)", file=sys.stderr)
    return 0


def _find_runs(client: Any, args: argparse.Namespace) -> list[Any]:
    """``runs``' search; ``--task boolean`` (as ``train --task`` names it) is every gate."""
    import itertools

    from .storage import find_runs
    from .tasks import GATES

    task: str | list[str] | None = args.task
    kind, _, gate = (args.task or "").partition(":")
    named = args.gate
    if named is not None:
        named = _one_gate(named, "--gate")
    if kind.lower() == "boolean" and gate:  # stored as BooleanGate.name has it
        task = f"boolean:{_one_gate(gate, '--task boolean:GATE')}"
    elif kind.lower() == "boolean":  # each gate's task has its own name
        task = None if named is not None else [f"boolean:{name}" for name in GATES]
    # One more than shown, to tell whether the list was cut.
    found = find_runs(client, plan_name=args.plan, gate=named, task=task).values()
    return list(itertools.islice(found, args.limit + 1))


def _one_gate(text: str, option: str) -> str:
    gates = _gates(text, option)
    if len(gates) != 1:
        raise UsageError(f"{option}: one gate, got {', '.join(gates)}")
    return gates[0]


def _cmd_report(args: argparse.Namespace) -> int:
    from .results import has_stream

    with _open_storage(args) as storage:
        runs = [_load_past_run(storage, uid) for uid in args.uids]
        for run in runs:
            start = run.metadata["start"]
            if start["plan_name"] not in _RESULT_PLANS:
                raise UsageError(f"run {start['uid'][:8]} is not a training run")
            if not has_stream(run, "evaluation"):
                status = (run.metadata.get("stop") or {}).get("exit_status", "not stopped")
                print(
                    f"note: run {start['uid'][:8]} ({status}) has no unperturbed evaluation; "
                    "its loss curve only",
                    file=sys.stderr,
                )
        figures = _write_figures(runs, Path(args.out or _report_folder(runs)))
    _print_figures(figures)
    return 0 if figures else 1


def _report_folder(runs: Sequence[Any]) -> Path:
    """``reports/<uid>[-<uid>...]``: one folder per set of runs, so that a report never
    overwrites the demo's figures or another run's."""
    uids = [run.metadata["start"]["uid"][:8] for run in runs]
    more = f"-and-{len(uids) - 3}-more" if len(uids) > 3 else ""
    return Path("reports") / ("-".join(uids[:3]) + more)


def _cmd_check_profile(args: argparse.Namespace) -> int:
    from .config import load_profile

    # load_profile makes every check building the device makes without hardware; what only
    # the hardware (or a surrogate model) can answer is named, not guessed.
    profile = load_profile(args.file)
    print(
        f"{args.file}: valid setup {profile.name!r} ({profile.backend}, "
        f"{len(profile.electrodes)} electrodes, inputs {list(profile.indices('input'))})"
    )
    full_scale_na = profile.output.ai_range_v / profile.amplifier.gain_v_per_a * 1e9
    print(
        f"  full scale +-{full_scale_na:.4g} nA (AI range +-{profile.output.ai_range_v:g} V at "
        f"{profile.amplifier.gain_v_per_a:g} V/A): a larger current clips, and training "
        "abandons an attempt whose output clips"
    )
    if profile.backend == "nidaqmx":
        print(
            "  not checked here: the AO/AI channel names and the trigger terminal exist only "
            "on the hardware; they are checked when the NI-DAQmx backend opens them"
        )
    elif profile.sim is not None and profile.sim.surrogate is not None:
        print(
            "  not checked here: the surrogate model's electrode count and voltage ranges; "
            "they are checked when the model is loaded"
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnpu-bluesky",
        description="Train DNPUs by gradient descent measured on the device (HGE), on Bluesky.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def storage_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--data-dir", help="embedded Tiled storage directory")
        sub.add_argument("--tiled-uri", help="remote Tiled server (API key: DNPU_TILED_API_KEY)")

    def training_options(sub: argparse.ArgumentParser, demo: bool = False) -> None:
        continued = "; with --from it only picks the virtual DNPU, by default the run's own"
        continued = "" if demo else continued
        sub.add_argument(
            "--seed",
            type=int,
            help="training seed of the first gate (the k-th trains with SEED+k), and the "
            "virtual DNPU's seed; with --setup (or DNPU_SETUP) the device is the setup's and "
            f"SEED seeds the training only{continued} (default: DNPU_SEED, else 0)",
        )
        sub.add_argument(
            "--setup",
            action="append",
            help="setup profile YAML (default: the virtual DNPU); repeat to train several "
            "devices side by side",
        )
        sub.add_argument(
            "--devices",
            type=int,
            default=1,
            help="train this many virtual DNPUs side by side (seeds SEED, SEED+1, ...)",
        )
        sub.add_argument(
            "--model",
            help="brains-py surrogate file to simulate instead of the virtual DNPU; its "
            "electrode ranges and amplification are used, the inputs' levels default to them",
        )
        sub.add_argument(
            "--max-iterations",
            type=int,
            metavar="N",
            help=f"{'' if demo else 'gradient methods: '}iterations per attempt; an "
            f"unsolved attempt restarts from random controls, up to {_DEFAULT_MAX_ATTEMPTS} "
            f"attempts, so up to {_DEFAULT_MAX_ATTEMPTS}*N iterations in all (default: "
            f"{_DEFAULT_MAX_ITERATIONS} per attempt)"
            + (
                ""
                if demo
                else f"; the GA (--method ga) runs {_DEFAULT_GENERATIONS} "
                "generations and ignores it"
            ),
        )
        sub.add_argument(
            "--margin",
            type=float,
            metavar="NA",
            help="gates: the separation (nA) between the classes to train for: training "
            "stops once it is reached, the corrsig loss's sigmoid is centred on it, and the "
            "exit status counts it (default: no margin asked; training stops at "
            f"{_DEFAULT_TARGET_MARGIN_NA:g} nA with the sigmoid centred at "
            f"{_DEFAULT_LOSS_OFFSET_NA:g} nA, and the exit status counts accuracy only)",
        )
        sub.add_argument(
            "--input-range",
            metavar="LOW,HIGH",
            help="fixed input voltages: a gate's logical 0 and 1, the sphere's cube; write "
            "--input-range=-0.5,0.3 (default: trained, each input's own 0 and 1 found by the "
            f"descent, at least {DEFAULT_MIN_SWING_V:g} V apart)",
        )
        sub.add_argument(
            "--inputs",
            metavar="NAMES",
            help="the input electrodes, e.g. --inputs e3,e4 (default: gates screen every pair "
            "first; the sphere uses the setup's inputs)",
        )
        sub.add_argument(
            "--screen-budget",
            type=float,
            metavar="S",
            help="gradient methods: device seconds the screening of input pairs may spend "
            f"(default: {DEFAULT_SCREEN_BUDGET_S:g})",
        )
        sub.add_argument(
            "--figures",
            default=str(DEFAULT_OUTPUT) if demo else None,
            help="write figures to this directory" + (" (default: %(default)s)" if demo else ""),
        )
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        storage_options(sub)

    demo = commands.add_parser("demo", help="train all six gates on the virtual DNPU with HGE")
    training_options(demo, demo=True)
    demo.set_defaults(handler=_cmd_demo)

    train = commands.add_parser("train", help="train gates or sphere classification")
    train.add_argument("--task", choices=("boolean", "sphere"), help="default: boolean")
    train.add_argument("--gates", help="comma-separated, e.g. XOR,AND (default: XOR)")
    train.add_argument(
        "--method",
        choices=METHODS,
        default="hge",
        help="hge: homodyne gradient extraction; fd: finite differences; spsa: simultaneous "
        "perturbation; ga: genetic algorithm (default: hge)",
    )
    train.add_argument(
        "--lr",
        type=float,
        metavar="V",
        help="gradient methods: the optimizer's learning rate, volts per step for Adam "
        f"(default: {DEFAULT_LR:g})",
    )
    train.add_argument(
        "--optimizer",
        choices=("adam", "gd"),
        help=f"gradient methods: Adam or plain gradient descent (default: {_DEFAULT_OPTIMIZER})",
    )
    train.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        metavar="FRACTION",
        help="sphere: stop once an unperturbed evaluation of the training points is this "
        "accurate, e.g. 0.9 (default: 1, which the sphere rarely reaches: training runs its "
        "iterations)",
    )
    train.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sphere: training cases per step (default: the whole training split)",
    )
    train.add_argument(
        "--from",
        dest="source",
        metavar="UID",
        help="continue a past run: its task and its margin, starting from its final controls",
    )
    train.add_argument("--device", help="with --from: which device of a run that trained several")
    train.add_argument("--json", help="write the results as JSON to this file")
    training_options(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="measure a past run's task again at its trained controls"
    )
    evaluate.add_argument("uid", help="the training run (uid or unique prefix)")
    evaluate.add_argument("--device", help="which device of a run that trained several")
    evaluate.add_argument(
        "--seed",
        type=int,
        help="measure on the virtual DNPU of this seed (default: the one the run used); "
        "not with --setup or DNPU_SETUP, which give the device",
    )
    evaluate.add_argument("--setup", help="setup profile YAML of the device to measure")
    evaluate.add_argument("--model", help="brains-py surrogate file to simulate instead")
    evaluate.add_argument(
        "--fixed-threshold",
        action="store_true",
        help="classify at the threshold chosen in that run, not the best one now",
    )
    evaluate.add_argument("--figures", help="write the output figure to this directory")
    storage_options(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate, devices=1)

    runs = commands.add_parser(
        "runs",
        help="list past runs from Tiled, with the method, final accuracy and margin of "
        "training runs (and a sphere run's test accuracy)",
    )
    runs.add_argument("--plan", help="only runs of this plan_name")
    runs.add_argument("--gate", help="only runs of this gate")
    runs.add_argument(
        "--task",
        help="only runs of this task: boolean (every gate), boolean:XOR (one gate), sphere",
    )
    runs.add_argument(
        "--limit", type=int, default=20, help="at most this many, newest first (default: 20)"
    )
    storage_options(runs)
    runs.set_defaults(handler=_cmd_runs)

    report = commands.add_parser("report", help="redraw training runs' figures from Tiled")
    report.add_argument("uids", nargs="+", help="run uids (or unique prefixes)")
    report.add_argument(
        "--out",
        help="figure directory (default: reports/UID, with the short uid of each run drawn)",
    )
    storage_options(report)
    report.set_defaults(handler=_cmd_report)

    check = commands.add_parser("check-profile", help="validate a setup profile (no hardware)")
    check.add_argument("file", help="the setup profile (YAML) to check")
    check.set_defaults(handler=_cmd_check_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dnpu-bluesky`` console script."""
    args = _parser().parse_args(argv)
    set_up_console_log()
    try:
        return _dispatch(args)
    except KeyboardInterrupt:  # outside the RunEngine (starting, stopping): no run is open
        print(
            f"dnpu-bluesky {args.command}: interrupted; documents not yet in Tiled stay in "
            "the spool and are written the next time the run store opens",
            file=sys.stderr,
        )
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from ._errors import HardwareUnavailableError, MissingDependencyError, StorageError
    from .config import ProfileError

    try:
        if hasattr(args, "seed"):
            args.seed_given = args.seed is not None
            if args.seed is None:
                args.seed = _seed_from_env()
            if not 0 <= args.seed <= _MAX_SEED:
                where = "--seed" if args.seed_given else "DNPU_SEED"
                raise UsageError(f"{where} must be 0 to {_MAX_SEED}, got {args.seed}")
        _check_numbers(args)
        _check_output_paths(args)
        return args.handler(args)
    except Interrupted as exc:
        print(f"dnpu-bluesky {args.command}: {exc}", file=sys.stderr)
        return 130
    except (UsageError, ProfileError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if not str(message):  # a bare KeyError() of a library: say at least what it was
            message = f"{type(exc).__name__} {exc!r}"
        print(f"dnpu-bluesky {args.command}: {message}", file=sys.stderr)
        return 2
    except (StorageError, HardwareUnavailableError, MissingDependencyError) as exc:
        # the setting, not the arguments
        print(f"dnpu-bluesky {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Only a plan can fail a status, so bluesky is imported by then (not for check-profile).
        failed_status = getattr(sys.modules.get("bluesky.utils"), "FailedStatus", ())
        if not isinstance(exc, failed_status):
            raise
        cause = exc.__cause__ or exc  # the instrument failed mid-run: its cause, not the stack
        print(
            f"dnpu-bluesky {args.command}: the device failed during the run, which was stored "
            "with exit status 'fail' (unstaging parks every electrode at 0 V; a failure to do "
            f"so is logged above): {type(cause).__name__}: {cause}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
