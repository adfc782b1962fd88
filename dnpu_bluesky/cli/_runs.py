"""``dnpu-bluesky evaluate``, ``runs``, ``report`` and ``check-profile``: past runs, setups."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import (
    UsageError,
    label,
    one_gate,
    open_storage,
    print_figures,
    run_plan,
    seed_given,
    write_figures,
)
from ._devices import built, check_device, profiles_of, setups_of
from ._past import device_seed, load_past_run, load_past_training


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``dnpu-bluesky evaluate UID``: measure a past run's task again at its controls.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    int
        Exit status: 1 if a gate no longer separates or the output clipped.
    """
    from ..plans import evaluate_controls
    from ..results import trained_setting
    from ..session import make_run_engine
    from ..storage import load_run

    setup = args.setup or os.environ.get("DNPU_SETUP")
    if seed_given(args) and setup:
        where = "--setup" if args.setup else "DNPU_SETUP"
        raise UsageError(
            f"--seed picks a virtual DNPU, but {where} gives the device ({setup}); give one of them"
        )
    with open_storage(args, writes=True) as storage:
        then = load_past_training(storage, args.uid, args.device)
        task = then["task"]
        seed = device_seed(args, then)
        profiles, _ = profiles_of(args, seed, sphere=task.name == "sphere")
        with built(profiles) as ((dnpu, _),):
            check_device(dnpu, then)
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
            outcome = run_plan(engine, plan)
        (uid,) = outcome.run_start_uids
        measured = load_run(storage.client, uid)
        now = trained_setting(measured)
        held_out = then["test_accuracy"] is not None
        test = f"{'test':>7}" if held_out else ""
        print(f"{'':<5}{'run':<10}{'accuracy':>9}{test}{'margin nA':>11}{'threshold nA':>14}")
        for when, setting, run_uid in (("then", then, then["uid"]), ("now", now, uid)):
            test = f"{setting['test_accuracy']:>7.0%}" if held_out else ""
            print(
                f"{when:<5}{run_uid[:8]:<10}{setting['accuracy']:>9.0%}{test}"
                f"{setting['margin_na']:>11.2f}{setting['threshold_na']:>14.2f}"
            )
        if args.figures:
            print_figures(write_figures([measured], Path(args.figures)))
    if outcome.plan_result.clipped_samples:
        print(
            f"{label(task)}: the output left the AI range at these controls, so the "
            "classification cannot be trusted; lower the amplifier gain or widen the AI range",
            file=sys.stderr,
        )
        return 1
    if now["solved"] or task.name == "sphere":
        return 0
    device = ""
    if setups_of(args):
        device = f" --setup {setups_of(args)[0]}"
    elif seed_given(args):
        device = f" --seed {args.seed}"
    if args.device:
        device = f" --device {args.device}{device}"
    lost = "no longer separates" if then["solved"] else "does not separate (nor did it then)"
    print(
        f"{label(task)} {lost}; train again from these controls with "
        f"`dnpu-bluesky train --from {then['uid'][:8]}{device}`",
        file=sys.stderr,
    )
    return 1


def cmd_runs(args: argparse.Namespace) -> int:
    """``dnpu-bluesky runs``: the newest runs, with the scores of training runs.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    int
        Exit status 0.
    """
    from ..continuation import RESULT_PLANS
    from ..results import final_scores, held_out_accuracy

    with open_storage(args) as storage:
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
            name = start.get("gate") or start.get("task", {}).get("name", "")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start["time"]))
            scores = final_scores(run) if start["plan_name"] in RESULT_PLANS and stop else None
            result = ""
            if scores:  # several devices: the worst of them, and how many there were
                accuracy = min(a for a, _ in scores.values())
                margin = min(m for _, m in scores.values())
                result = f"{accuracy:>8.0%}{margin:>11.2f}"
                if name == "sphere":  # held-out points: the accuracy that tells
                    tests = [held_out_accuracy(run, device) for device in scores]
                    if None not in tests:
                        result += f"  test {min(tests):.0%}"
                if len(scores) > 1:
                    result += f"  ({len(scores)} devices)"
            method = start.get("method", "") if start["plan_name"] != "evaluate_controls" else ""
            status = stop.get("exit_status", "open")
            if start["plan_name"] in RESULT_PLANS and status == "success" and not scores:
                status = "stopped"  # RE.stop() (a queue's "re stop") ends a run as a success
            print(
                f"{start['uid'][:8]:<10}{when:<21}{start['plan_name']:<20}{method:<9}{name:<11}"
                f"{status:<9}{result}"
            )
        if more:
            print(f"(the newest {args.limit}; --limit N for more)", file=sys.stderr)
    return 0


def _find_runs(client: Any, args: argparse.Namespace) -> list[Any]:
    """Search for ``runs``; ``--task boolean`` (as ``train --task`` names it) is every gate."""
    from ..storage import find_runs
    from ..tasks import GATES

    task: str | list[str] | None = args.task
    kind, _, gate = (args.task or "").partition(":")
    named = args.gate
    if named is not None:
        named = one_gate(named, "--gate")
    if kind.lower() == "boolean" and gate:  # stored as BooleanGate.name has it
        task = f"boolean:{one_gate(gate, '--task boolean:GATE')}"
    elif kind.lower() == "boolean":  # each gate's task has its own name
        task = None if named is not None else [f"boolean:{name}" for name in GATES]
    # One more than shown, to tell whether the list was cut.
    found = find_runs(client, plan_name=args.plan, gate=named, task=task).values()
    return list(itertools.islice(found, args.limit + 1))


def cmd_report(args: argparse.Namespace) -> int:
    """``dnpu-bluesky report UID...``: redraw training runs' figures from Tiled.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    int
        Exit status: 1 if nothing was drawn.
    """
    from ..continuation import RESULT_PLANS
    from ..results import final_scores

    with open_storage(args) as storage:
        runs = [load_past_run(storage, uid) for uid in args.uids]
        for run in runs:
            start = run.metadata["start"]
            if start["plan_name"] not in RESULT_PLANS:
                raise UsageError(f"run {start['uid'][:8]} is not a training run")
            if final_scores(run) is None:  # no evaluation stream (of some device)
                status = (run.metadata.get("stop") or {}).get("exit_status", "not stopped")
                print(
                    f"note: run {start['uid'][:8]} ({status}) has no unperturbed evaluation; "
                    "its loss curve only",
                    file=sys.stderr,
                )
        figures = write_figures(runs, Path(args.out or _report_folder(runs)))
    print_figures(figures)
    return 0 if figures else 1


def _report_folder(runs: Sequence[Any]) -> Path:
    """Return ``reports/<uid>[-<uid>...]``, one folder per set of runs.

    So a report never overwrites the demo's figures or another run's.
    """
    uids = [run.metadata["start"]["uid"][:8] for run in runs]
    more = f"-and-{len(uids) - 3}-more" if len(uids) > 3 else ""
    return Path("reports") / ("-".join(uids[:3]) + more)


def cmd_check_profile(args: argparse.Namespace) -> int:
    """``dnpu-bluesky check-profile FILE``: validate a setup profile without hardware.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    int
        Exit status 0 (a bad profile raises ``ProfileError``).
    """
    from ..config import load_profile

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
    if profile.sample is not None:
        print(f"  sample {profile.sample!r}: the profile's sessions record it with every run")
    return 0
