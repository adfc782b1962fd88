"""What produced a run: the versions of Python, the stack and this package's git commit."""

import functools
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_STACK = ("bluesky", "ophyd", "event-model", "tiled", "bluesky-tiled-plugins", "numpy", "scipy")


def software_versions() -> dict[str, str]:
    """Return what produced a run, for its start document.

    Returns
    -------
    dict of str to str
        Python's version, the stack's package versions and, when the package runs from a git
        checkout, its commit (``-dirty`` with local changes).
    """
    return dict(_found_versions())


@functools.cache
def _found_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _STACK:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    commit = _git_commit()
    if commit:
        versions["dnpu_bluesky_git"] = commit
    return versions


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None  # an installed copy: its version says what it is
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # never in the way of the user's git
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip() or None
