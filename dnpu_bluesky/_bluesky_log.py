"""Bluesky's log, as the CLI and the IPython profile show it (light: no bluesky import)."""

from __future__ import annotations

import logging
import sys

# What the RunEngine logs on every abort: a traceback of the abort itself and a tracing
# complaint. The CLI says in one line that the run was aborted; IPython shows the traceback.
_ABORT_NOISE = ("Run aborted", "No open traces left to close!")


class _BlueskyToStderr(logging.Handler):
    """Bluesky's warnings and errors to whatever ``sys.stderr`` is now, as Python's last-resort
    handler would print them, except what the RunEngine logs on every abort (``_ABORT_NOISE``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in _ABORT_NOISE

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def quiet_run_aborted_log() -> None:
    """Keep bluesky's warnings and errors (e.g. a device that failed to unstage) but not the
    "Run aborted" traceback, which would repeat or bury the error reported to the user."""
    bluesky_log = logging.getLogger("bluesky")
    if not any(isinstance(handler, _BlueskyToStderr) for handler in bluesky_log.handlers):
        bluesky_log.addHandler(_BlueskyToStderr())
