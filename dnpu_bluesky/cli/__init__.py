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
from ._common import (
    Interrupted,
    RunFailed,
    UsageError,
    check_numbers,
    check_output_paths,
    check_tiled_uri,
    redact_uri_password,
    seed_of,
)
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
        The exit status: 0 done; 1 a gate not solved, the setting failed (storage, driver)
        or a run failed (it is stored with exit status 'fail'); 2 a bad argument or input
        file; 130 interrupted.
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
    """Run the command; report its failure in one line, and return the exit status."""
    from .._errors import HardwareUnavailableError, MissingDependencyError, StorageError
    from ..config import ProfileError

    def say(message: object) -> None:
        text = redact_uri_password(str(message), args)
        print(f"dnpu-bluesky {args.command}: {text}", file=sys.stderr)

    try:
        if hasattr(args, "seed"):
            seed_of(args)  # a bad seed is refused before anything else
        check_numbers(args)
        check_tiled_uri(args)
        check_output_paths(args)
        return args.handler(args)
    except Interrupted as exc:
        say(exc)
        return 130
    except RunFailed as exc:  # the run is stored; what failed was the device or the plan
        say(exc)
        return 1
    except (UsageError, ProfileError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if not str(message):  # a bare KeyError() of a library: say at least what it was
            message = f"{type(exc).__name__} {exc!r}"
        say(message)
        return 2
    except (StorageError, HardwareUnavailableError, MissingDependencyError) as exc:
        say(exc)  # the setting, not the arguments
        return 1
    except Exception as exc:
        # Only a device can fail a status, so bluesky is imported by then (not for check-profile).
        failed_status = getattr(sys.modules.get("bluesky.utils"), "FailedStatus", ())
        if not isinstance(exc, failed_status):
            raise
        cause = exc.__cause__ or exc  # before any run opened (a run's failure is RunFailed)
        say(
            "the device failed before the run opened (every electrode is parked at 0 V when "
            f"its backend closes): {type(cause).__name__}: {cause}"
        )
        return 1
