"""The ``dnpu-bluesky`` argument parser: commands, options, their help and defaults."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..plans.train import GRADIENT_METHODS
from ..tasks.levels import DEFAULT_MIN_SWING_V, DEFAULT_SCREEN_BUDGET_S
from ..tasks.optimizers import DEFAULT_LR
from ..tasks.training import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_OPTIMIZER,
    DEFAULT_TARGET_MARGIN_NA,
)
from ._runs import cmd_check_profile, cmd_evaluate, cmd_report, cmd_runs
from ._train import cmd_demo, cmd_train

DEFAULT_OUTPUT = Path("demo-output")
METHODS = (*GRADIENT_METHODS, "ga")


def _default_of(function: Callable[..., Any], name: str) -> Any:
    """Return the default of a parameter that its function defines only in its signature."""
    return inspect.signature(function).parameters[name].default


class _OneLineErrors(argparse.ArgumentParser):
    """A parser that reports a bad argument in one line, pointing to ``--help``."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: MESSAGE (see PROG --help)`` on stderr and exit with status 2.

        Parameters
        ----------
        message : str
            What argparse refused.
        """
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``dnpu-bluesky`` argument parser; each command's ``handler`` runs it.

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    from ..plans import train_genetic
    from ..tasks.losses import corrsig_loss

    generations = _default_of(train_genetic, "generations")
    loss_offset_na = _default_of(corrsig_loss, "offset_na")
    parser = _OneLineErrors(
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
            f"unsolved attempt restarts from random controls, up to {DEFAULT_MAX_ATTEMPTS} "
            f"attempts, so up to {DEFAULT_MAX_ATTEMPTS}*N iterations in all (default: "
            f"{DEFAULT_MAX_ITERATIONS} per attempt)"
            + (
                ""
                if demo
                else f"; the GA (--method ga) runs {generations} generations and ignores it"
            ),
        )
        sub.add_argument(
            "--margin",
            type=float,
            metavar="NA",
            help="gates: the separation (nA) between the classes to train for: training "
            "stops once it is reached, the corrsig loss's sigmoid is centred on it, and the "
            "exit status counts it (default: no margin asked; training stops at "
            f"{DEFAULT_TARGET_MARGIN_NA:g} nA with the sigmoid centred at "
            f"{loss_offset_na:g} nA, and the exit status counts accuracy only)",
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
    demo.set_defaults(handler=cmd_demo)

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
        help=f"gradient methods: Adam or plain gradient descent (default: {DEFAULT_OPTIMIZER})",
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
    train.set_defaults(handler=cmd_train)

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
    evaluate.set_defaults(handler=cmd_evaluate, devices=1)

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
    runs.set_defaults(handler=cmd_runs)

    report = commands.add_parser("report", help="redraw training runs' figures from Tiled")
    report.add_argument("uids", nargs="+", help="run uids (or unique prefixes)")
    report.add_argument(
        "--out",
        help="figure directory (default: reports/UID, with the short uid of each run drawn)",
    )
    storage_options(report)
    report.set_defaults(handler=cmd_report)

    check = commands.add_parser("check-profile", help="validate a setup profile (no hardware)")
    check.add_argument("file", help="the setup profile (YAML) to check")
    check.set_defaults(handler=cmd_check_profile)
    return parser
