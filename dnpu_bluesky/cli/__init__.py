"""The ``dnpu-bluesky`` command: demo, train, evaluate, runs, report, check-profile.

Private modules: ``_parser`` (the commands and their options), ``_train`` (``demo`` and
``train``), ``_runs`` (``evaluate``, ``runs``, ``report``, ``check-profile``), ``_past``
(past runs as the commands name them), ``_devices`` (setups, virtual DNPUs, surrogates) and
``_common`` (errors, storage, seeds, output paths, figures). Continuing a past run and
checking a device against it are :mod:`dnpu_bluesky.continuation`'s, for IPython too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._console_log import set_up_console_log
from ._common import Interrupted, UsageError, check_numbers, check_output_paths, seed_of
from ._parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dnpu-bluesky`` console script.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 done, 1 a gate not solved or the setting failed, 2 a bad argument,
        130 interrupted.
    """
    args = build_parser().parse_args(argv)
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
    from .._errors import HardwareUnavailableError, MissingDependencyError, StorageError
    from ..config import ProfileError

    try:
        if hasattr(args, "seed"):
            seed_of(args)  # a bad seed is refused before anything else
        check_numbers(args)
        check_output_paths(args)
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
