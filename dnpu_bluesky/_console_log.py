"""The log as the CLI and the IPython profile show it (light: no bluesky import)."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, TextIO

# What the RunEngine logs on every abort: a traceback of the abort itself and a tracing
# complaint. The CLI says in one line that the run was aborted; IPython shows the traceback.
_ABORT_NOISE = ("Run aborted", "No open traces left to close!")


#: ``extra`` of an INFO record meant for the console, e.g. that storage waits for its writer.
#: dnpu_bluesky.storage, which imports nothing of the package around it, writes it out.
CONSOLE_NOTE = {"console_note": True}


class _ToStderr(logging.Handler):
    """Records to whatever ``sys.stderr`` is now, as Python's last-resort handler prints them.

    It prints the message alone: warnings and errors, and notes (INFO with ``CONSOLE_NOTE``);
    not what the RunEngine logs on every abort (``_ABORT_NOISE``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and not getattr(record, "console_note", False):
            return False  # e.g. every retry of a failing write, logged once at ERROR
        return record.getMessage() not in _ABORT_NOISE

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _show_own_warning_in_one_line(show: Any) -> Any:
    """``warnings.showwarning`` that prints this package's warnings as ``Category: message``.

    A package warning is issued for its caller (``stacklevel``), which may be bluesky's
    code: the file and source line printed by default would name bluesky, not the cause.
    Other warnings go to ``show``, the hook before.
    """

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not category.__module__.startswith("dnpu_bluesky"):
            show(message, category, filename, lineno, file, line)
            return
        stream = file if file is not None else sys.stderr
        try:
            stream.write(f"{category.__name__}: {message}\n")
        except (OSError, AttributeError):  # no console to warn on
            pass

    showwarning.dnpu_one_line = True  # type: ignore[attr-defined]
    return showwarning


def set_up_console_log() -> None:
    """Show bluesky's warnings and errors and this package's notes on the console.

    Bluesky's warnings and errors (e.g. a device that failed to unstage) are shown, but not the
    "Run aborted" traceback, which would repeat or bury the error reported to the user; this
    package's notes (``CONSOLE_NOTE``) are shown as well as its warnings, e.g. that storage is
    waiting for its writer, so that a long wait is not taken for a hang. This package's
    warnings (e.g. ``StorageWarning``) are printed as one line, ``Category: message``,
    without the file and source line they were issued for.
    """
    if not getattr(warnings.showwarning, "dnpu_one_line", False):
        warnings.showwarning = _show_own_warning_in_one_line(warnings.showwarning)
    for name, level in (("bluesky", logging.WARNING), ("dnpu_bluesky", logging.INFO)):
        log = logging.getLogger(name)
        if not any(isinstance(handler, _ToStderr) for handler in log.handlers):
            log.addHandler(_ToStderr(level))
        if name == "dnpu_bluesky" and log.getEffectiveLevel() > level:
            log.setLevel(level)
