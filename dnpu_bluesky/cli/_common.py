"""What every command shares: errors, the run store, seeds, gates, output paths, figures."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._errors import StorageError

#: Largest seed: seeds are stored in the runs' documents, which hold 64-bit integers, and a
#: seed names a device or a training run, for which 32 bits are plenty.
MAX_SEED = 2**32 - 1


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


#: Most virtual DNPUs trained side by side (``--devices``). Every step measures each of them
#: in turn in this process, so N devices take N times as long as one; more than this is a
#: typo, not a plan.
MAX_DEVICES = 16
#: Most iterations per attempt (``--max-iterations``): a million HGE steps take weeks.
MAX_ITERATIONS = 1_000_000
#: Most runs listed (``runs --limit``).
MAX_LIMIT = 1_000_000


class Interrupted(Exception):
    """Ctrl-C: the run was aborted (and stored as such); exit status 130."""


class RunFailed(Exception):
    """A run failed while open: it was stored with exit status 'fail'; exit status 1."""


def run_plan(engine: Any, plan: Any) -> Any:
    """Run ``plan``; on Ctrl-C, which pauses the RunEngine at the next step, abort the run.

    Aborting unstages the devices (every electrode to 0 V) and closes the run with
    ``exit_status="abort"``, so it is stored like any other.

    Parameters
    ----------
    engine : RunEngine
        Made with ``returns_result=True``.
    plan : generator
        The plan.

    Returns
    -------
    RunEngineResult
        The engine's result.

    Raises
    ------
    Interrupted
        On Ctrl-C, once the run is aborted.
    RunFailed
        The plan failed after its run opened (the run is stored with exit status 'fail').
    """
    from bluesky.utils import FailedStatus, RunEngineInterrupted

    started: list[str] = []
    token = engine.subscribe(lambda name, doc: started.append(doc["uid"]), "start")
    try:
        return engine(plan)
    except RunEngineInterrupted:
        aborted = engine.abort("interrupted from the keyboard (Ctrl-C)")
        uids = ", ".join(uid[:8] for uid in aborted.run_start_uids) or "none"
        raise Interrupted(
            f"interrupted; run {uids} aborted and stored (unstaging the devices parked "
            "every electrode at 0 V; a failure to do so is reported above)"
        ) from None
    except StorageError:  # the spool disk is full: the caller reports it after its table
        raise
    except Exception as exc:
        if not started:  # refused before any run opened: the plan's own error
            raise
        # A failed status (the instrument failed mid-run) says only that: its cause tells.
        cause = (exc.__cause__ or exc) if isinstance(exc, FailedStatus) else exc
        reason = (str(cause).strip().splitlines() or [""])[0]
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        uids = ", ".join(uid[:8] for uid in started)
        raise RunFailed(
            f"run {uids} failed and was stored with exit status 'fail' (unstaging the devices "
            f"parked every electrode at 0 V; a failure to do so is reported above): "
            f"{type(cause).__name__}: {reason}"
        ) from exc
    finally:
        engine.unsubscribe(token)


def _storage_config(args: argparse.Namespace) -> Any:
    from ..session import storage_config_from_env

    config = storage_config_from_env()
    if getattr(args, "data_dir", None):
        config = replace(config, directory=Path(args.data_dir))
    if getattr(args, "tiled_uri", None):
        config = replace(config, uri=args.tiled_uri)
    return config


def open_storage(args: argparse.Namespace, *, writes: bool = False) -> Any:
    """Return the storage of ``args``, announced on stderr: starting it takes seconds.

    Parameters
    ----------
    args : argparse.Namespace
        With ``data_dir`` and ``tiled_uri`` (each may be None).
    writes : bool
        The command will write runs (see :func:`dnpu_bluesky.storage.open_storage`).

    Returns
    -------
    Storage
        Not yet entered.
    """
    from ..storage import creates_catalog
    from ..storage import open_storage as open_configured

    config = _storage_config(args)
    note = " (first use: creating its catalog takes longer)" if creates_catalog(config) else ""
    print(f"Opening the run store in {where(config)}{note}", file=sys.stderr, flush=True)
    return open_configured(config, writes=writes)


def where(config: Any) -> str:
    """Return the data directory, or the Tiled server's URI without its query (an API key).

    Parameters
    ----------
    config : StorageConfig
        The storage's configuration.

    Returns
    -------
    str
        E.g. ``"the data directory /data/runs"`` or ``"Tiled at http://host:8000/api"``.
    """
    from urllib.parse import urlsplit

    from ..storage import embedded_directory

    if (directory := embedded_directory(config)) is not None:
        return f"the data directory {directory}"
    parts = urlsplit(config.uri)
    host = parts.netloc.rpartition("@")[2]  # no user:password either
    return "Tiled at " + parts._replace(netloc=host, query="", fragment="").geturl()


def seed_given(args: argparse.Namespace) -> bool:
    """Whether ``--seed`` was given on the command line.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    bool
        True if the command has ``--seed`` and it was given.
    """
    return getattr(args, "seed", None) is not None


def seed_of(args: argparse.Namespace) -> int:
    """``--seed``, else ``DNPU_SEED``, else 0; refused outside ``0 .. MAX_SEED``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments of a command with ``--seed``.

    Returns
    -------
    int
        The seed.

    Raises
    ------
    UsageError
        ``DNPU_SEED`` is not an integer, or the seed is out of range.
    """
    if seed_given(args):
        seed, where_from = args.seed, "--seed"
    else:
        text = os.environ.get("DNPU_SEED", "0")
        try:
            seed, where_from = int(text), "DNPU_SEED"
        except ValueError:
            raise UsageError(f"DNPU_SEED must be an integer, got {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{where_from} must be 0 to {MAX_SEED}, got {seed}")
    return seed


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse the numeric options any command has, before anything starts.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    UsageError
        A count out of its range (``--devices``, ``--max-iterations``, ``--batch-size``,
        ``--limit``), or ``--lr`` or ``--screen-budget`` not positive and finite.
    """
    for option, low, high in (
        ("devices", 1, MAX_DEVICES),
        ("max_iterations", 1, MAX_ITERATIONS),
        ("batch_size", 1, None),
        ("limit", 1, MAX_LIMIT),
    ):
        count = getattr(args, option, None)
        flag = "--" + option.replace("_", "-")
        if count is None:
            continue
        if count < low:
            raise UsageError(f"{flag} must be at least {low}, got {count}")
        if high is not None and count > high:
            raise UsageError(f"{flag} must be at most {high}, got {count}")
    for option, unit in (("lr", "V per step"), ("screen_budget", "device seconds")):
        value = getattr(args, option, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            flag = "--" + option.replace("_", "-")
            raise UsageError(f"{flag} must be positive ({unit}), got {value:g}")


def redact_uri_password(text: str, args: argparse.Namespace) -> str:
    """``text`` without the password of ``--tiled-uri`` (``http://user:PASSWORD@host``).

    Parameters
    ----------
    text : str
        A message about to be printed.
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    str
        The message, the password replaced by ``***``.
    """
    from urllib.parse import urlsplit

    uri = getattr(args, "tiled_uri", None)
    try:
        password = urlsplit(uri).password if uri else None
    except ValueError:  # not a URI at all: its text after "//" up to the last "@" may be one
        password = uri.partition("//")[2].rpartition("@")[0].partition(":")[2] or None
    return text.replace(password, "***") if password else text


def check_tiled_uri(args: argparse.Namespace) -> None:
    """Refuse a ``--tiled-uri`` that is no HTTP(S) address, before the storage is opened.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    UsageError
        Not ``http://HOST[:PORT][/PATH]`` or ``https://...``.
    """
    from urllib.parse import urlsplit

    uri = getattr(args, "tiled_uri", None)
    if uri is None:
        return
    try:
        parts = urlsplit(uri)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise UsageError(f"--tiled-uri {uri!r}: expected http://HOST[:PORT][/PATH] or https://...")


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written, before anything is measured.

    The paths are the ``--json`` file and the ``--figures`` or ``--out`` folder (a folder is
    created here if missing).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    UsageError
        A path that cannot be written.
    """
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


def gates_of(text: str, option: str = "--gates") -> list[str]:
    """Return the gates named in ``text`` (comma-separated, any case).

    Parameters
    ----------
    text : str
        E.g. ``"xor,AND"``.
    option : str
        The option named in the error.

    Returns
    -------
    list of str
        Upper-case gate names.

    Raises
    ------
    UsageError
        An unknown gate, or none.
    """
    from ..tasks import GATES

    gates = [g.strip().upper() for g in text.split(",") if g.strip()]
    unknown = [g for g in gates if g not in GATES]
    if unknown or not gates:
        raise UsageError(f"{option}: unknown gate(s) {unknown or text!r}; choose from {GATES}")
    return gates


def one_gate(text: str, option: str) -> str:
    """Return the one gate named in ``text``; see :func:`gates_of`.

    Parameters
    ----------
    text : str
        E.g. ``"xor"``.
    option : str
        The option named in the error.

    Returns
    -------
    str
        The upper-case gate name.

    Raises
    ------
    UsageError
        An unknown gate, none, or several.
    """
    gates = gates_of(text, option)
    if len(gates) != 1:
        raise UsageError(f"{option}: one gate, got {', '.join(gates)}")
    return gates[0]


def label(task: Any) -> str:
    """Return a task as the messages name it: the gate, else the task's name.

    Parameters
    ----------
    task : Task
        The task.

    Returns
    -------
    str
        E.g. ``"XOR"`` or ``"sphere"``.
    """
    return getattr(task, "gate", None) or task.name


def write_figures(runs: Sequence[Any], directory: Path) -> list[Path]:
    """Draw the runs' figures into ``directory``.

    Figures that cannot be written are reported in one line, so that the results printed
    after them are not lost (the runs are in Tiled).

    Parameters
    ----------
    runs : list of BlueskyRun
        The runs to draw.
    directory : Path
        Where to write them.

    Returns
    -------
    list of Path
        The figure files written.
    """
    from ..figures import save_figures

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


def print_figures(paths: Sequence[Path]) -> None:
    """Print the figure files written, if any.

    Parameters
    ----------
    paths : list of Path
        The figure files.
    """
    if paths:
        print("figures: " + ", ".join(str(p) for p in paths))
