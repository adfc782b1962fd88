"""The tutorial, run top to bottom as written: does every step work, and how long does it take?

``python -m benchmarks.tutorial`` (about a minute) prints a table and one line
``RESULT {json}``; ``docs/benchmarks.md`` explains the figures.

Every ``In [n]:`` command of ``docs/tutorial.md``'s Python blocks (with its ``...:``
continuation lines) runs, in the order of the document, in one IPython session started with
the repository's profile (``profiles/profile_dnpu``), as a user starts it: the virtual DNPU,
the default storage (an embedded Tiled server) on a fresh data directory, and the Agg
backend (no plot windows). Each command is one ``run_cell``, timed. A command whose block
shows an exception (a line ``SomeError: message`` among its output) must raise that exception
with that message; every other command must not raise.

Figures: per step its line in the document, its wall time and its outcome; ``failed`` (the
steps that raised what the document does not show, or did not raise what it shows) and
``waits_over_1s``: the steps that only read (no ``RE(...)``: loading, searching, reading runs
back) and took longer than a second, the tutorial's promise for a reader.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
TUTORIAL = REPOSITORY / "docs" / "tutorial.md"

_COMMAND = re.compile(r"^In \[\d+\]: ?(.*)$")
_CONTINUATION = re.compile(r"^\s+\.\.\.: ?(.*)$")
_ERROR = re.compile(r"^([A-Za-z_]\w*(?:Error|Exception)): (.+)$")


@dataclass
class Step:
    """One command of the tutorial."""

    line: int  # where it starts in the document (1-based)
    source: str
    error: str | None = None  # the exception the document shows it raising
    message: str | None = None


def tutorial_steps(path: Path = TUTORIAL) -> list[Step]:
    """Read the commands of the document's Python blocks, in order.

    Parameters
    ----------
    path : pathlib.Path
        The tutorial (Markdown).

    Returns
    -------
    list of Step
        Each command with its continuation lines and the exception its block shows, if any.
    """
    steps: list[Step] = []
    in_block = False
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if text.startswith("```"):
            in_block = text.strip() == "```python"
            continue
        if not in_block:
            continue
        if command := _COMMAND.match(text):
            steps.append(Step(number, command.group(1)))
        elif steps and (continued := _CONTINUATION.match(text)):
            steps[-1].source += "\n" + continued.group(1)
        elif steps and (error := _ERROR.match(text)):
            steps[-1].error, steps[-1].message = error.group(1), error.group(2)
    return steps


def profile_session(workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment of an IPython session with the repository's profile.

    The startup files are copied into ``workdir`` (so that IPython's history and logs are
    written there, not into the repository), and the embedded storage is ``workdir/"tiled"``.

    Parameters
    ----------
    workdir : pathlib.Path
        An empty scratch directory.

    Returns
    -------
    command : list of str
        ``ipython`` with the profile, to which the session's own arguments are appended.
    env : dict
        This process's environment with the data and IPython directories set.
    """
    profile = workdir / "profile_dnpu"
    shutil.copytree(REPOSITORY / "profiles" / "profile_dnpu" / "startup", profile / "startup")
    ipython = Path(sys.executable).with_name("ipython")
    env = {**os.environ, "DNPU_DATA_DIR": str(workdir / "tiled"), "IPYTHONDIR": str(workdir)}
    return [str(ipython), f"--profile-dir={profile}", "--no-banner"], env


_DRIVER = """
import json, time
from pathlib import Path
_report = []
for _step in json.loads(Path({steps!r}).read_text()):
    _started = time.perf_counter()
    _result = get_ipython().run_cell(_step["source"])
    _error = _result.error_in_exec or _result.error_before_exec
    _report.append({{
        "line": _step["line"],
        "wall_s": round(time.perf_counter() - _started, 2),
        "error": None if _error is None else type(_error).__name__,
        "message": None if _error is None else str(_error),
    }})
Path({report!r}).write_text(json.dumps(_report))
"""


def run_tutorial(workdir: Path, timeout_s: float = 900) -> list[dict[str, Any]]:
    """Run every step of the tutorial in one IPython session with the repository's profile.

    Parameters
    ----------
    workdir : pathlib.Path
        An empty scratch directory (the profile's copy, IPython's files and the data).
    timeout_s : float
        The whole session's time limit.

    Returns
    -------
    list of dict
        Per step: ``line``, ``source``, ``wall_s``, ``error`` and ``message`` (what it
        raised), ``expected_error`` and ``expected_message`` (what the document shows), and
        ``ok``.
    """
    steps = tutorial_steps()
    command, env = profile_session(workdir)
    (workdir / "steps.json").write_text(json.dumps([asdict(step) for step in steps]))
    report = workdir / "report.json"
    driver = _DRIVER.format(steps=str(workdir / "steps.json"), report=str(report))
    env["MPLBACKEND"] = "agg"
    for name in ("DNPU_SETUP", "DNPU_TILED_URI", "DNPU_TILED_API_KEY", "DNPU_METADATA_DIR"):
        env.pop(name, None)
    finished = subprocess.run(
        [*command, "-c", driver],
        capture_output=True, text=True, timeout=timeout_s, env=env, cwd=workdir,
    )  # fmt: skip
    if not report.exists():
        raise RuntimeError(
            f"the IPython session ended (status {finished.returncode}) before its report:\n"
            + finished.stdout[-3000:]
            + finished.stderr[-3000:]
        )
    results = []
    for step, outcome in zip(steps, json.loads(report.read_text()), strict=True):
        ok = outcome["error"] == step.error and (
            step.message is None or outcome["message"] == step.message
        )
        results.append(
            {
                **outcome,
                "source": step.source,
                "expected_error": step.error,
                "expected_message": step.message,
                "ok": ok,
            }
        )
    return results


def _reads_only(source: str) -> bool:
    return "RE(" not in source


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dnpu_tutorial_") as tmp:
        results = run_tutorial(Path(tmp))
    print(f"{'line':>5} {'wall s':>7}  {'outcome':<12} command")
    for step in results:
        outcome = "ok" if step["ok"] else f"FAIL {step['error']}"
        if step["ok"] and step["error"]:
            outcome = f"ok ({step['error']})"
        first = step["source"].splitlines()[0]
        print(f"{step['line']:>5} {step['wall_s']:>7.2f}  {outcome:<12} {first[:70]}")
    failed = [step["line"] for step in results if not step["ok"]]
    waits = {
        step["line"]: step["wall_s"]
        for step in results
        if _reads_only(step["source"]) and step["wall_s"] > 1.0
    }
    reads = [step["wall_s"] for step in results if _reads_only(step["source"])]
    print(
        "RESULT "
        + json.dumps(
            {
                "steps": len(results),
                "failed": failed,
                "waits_over_1s": waits,
                "slowest_read_s": max(reads),
                "total_s": round(sum(step["wall_s"] for step in results), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
