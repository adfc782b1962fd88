"""The embedded Tiled server, in a process of its own, shared by the storages on its directory."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .._errors import StorageError
from ._config import check_writable, redact
from ._patches import (
    cache_fastapi_dependants,
    no_catalog_init_if_current,
    register_json_seq_export,
)

try:
    import fcntl
except ImportError:  # Windows: one server per directory is not enforced
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


# Held (flock) by the embedded server's process for its lifetime; holds its URI with the API
# key, readable by the user only. A second storage on the same directory uses that server:
# two servers on one directory would fight over its DuckDB file.
_SERVER_LOCK = "server.lock"


def running_server(directory: Path, timeout_s: float = 120.0) -> str | None:
    """The URI of the embedded server that another process runs on ``directory``, or None."""
    path = directory / _SERVER_LOCK
    if fcntl is None or not path.is_file():
        return None
    deadline = time.monotonic() + timeout_s
    with open(path, "rb") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: that server is running (or starting)
        else:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
            return None
        while True:  # a server that is starting writes its URI once it answers
            file.seek(0)
            uri = file.read().decode().strip()
            if uri.startswith("http"):
                return uri
            if time.monotonic() > deadline:
                raise StorageError(
                    f"another process holds the embedded Tiled server of {directory} but "
                    f"gave no address within {timeout_s:g} s"
                )
            time.sleep(0.1)


class ServerBusy(Exception):
    """Another process started the embedded server of this directory first."""


class ServerProcess:
    """The embedded Tiled server (``SimpleTiledServer``) in a process of its own.

    Ingesting documents costs the server CPU (decoding arrays, writing SQLite, DuckDB and
    Zarr); in its own process that work does not hold this process's GIL. It runs at this
    process's priority, as it answers the reads a user waits for (the writer's worker, which
    paces the ingest, runs at nice +10). The server lives until ``close()`` or until this process
    ends (it reads its stdin until EOF), in its own session so that a Ctrl-C meant for the
    RunEngine does not stop it. The API key goes over the pipe, not the command line.
    """

    def __init__(self, directory: Path, api_key: str | None, timeout_s: float = 120.0) -> None:
        check_writable(directory)
        code = "from dnpu_bluesky.storage._server import _server_process; _server_process()"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._process.stdin.write((api_key or "") + "\n")
        self._process.stdin.flush()
        # The session reads and writes through these as soon as the server answers; importing
        # them (about 2 s) while the server starts, on the other core, saves that wait.
        import bluesky_tiled_plugins  # noqa: F401
        import tiled.client  # noqa: F401

        # The child's first line: its URI, or "error: ..." when the server failed to start.
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: lines.put(self._process.stdout.readline()), daemon=True
        )
        reader.start()
        try:
            line: str | None = lines.get(timeout=timeout_s).strip()
        except queue.Empty:
            line = None
        if line is not None and line.startswith("http"):
            self.uri = line
            return
        if line == "busy":
            self._process.wait()
            raise ServerBusy(directory)
        self.close()
        where = f"the embedded Tiled server in {directory}"
        if line is None:
            message = f"{where} did not start within {timeout_s:g} s (see its error.log there)"
        elif line:
            message = f"{where} failed to start: {line.removeprefix('error: ')}"
        else:  # it ended without a word (its messages went to stderr)
            message = (
                f"{where} exited with status {self._process.returncode} before it started "
                "(see the messages above)"
            )
        raise StorageError(redact(message, api_key))

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the server (it closes its storage) and wait for its process to end."""
        process = self._process
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("The embedded Tiled server did not stop in %s s; killing it", timeout_s)
            process.kill()
            process.wait()
        process.stdout.close()


def _server_process() -> None:
    """Entry point of the embedded server's process (see :class:`ServerProcess`)."""
    become_background_process(nice=0)
    from tiled.server import SimpleTiledServer

    api_key = sys.stdin.readline().strip() or None
    directory = Path(sys.argv[1])
    # The server's logs record request lines, which may carry the API key: readable by this
    # account only, like every file the server creates.
    os.umask(0o077)
    for log in ("access.log", "error.log"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(directory / log, 0o600)
    lock = _take_server_lock(directory)
    if lock is None:
        print("busy", flush=True)  # another process's server: the parent uses that one
        raise SystemExit(0)
    try:
        register_json_seq_export()  # run.documents(), export_documents: the server's export
        cache_fastapi_dependants()
        with no_catalog_init_if_current(directory):
            server = SimpleTiledServer(directory, api_key=api_key)
        _write_ahead_log(directory / "catalog.db")
    except Exception as err:
        # One line for the parent's StorageError, no traceback on the session's terminal.
        print("error:", " ".join(f"{type(err).__name__}: {err}".split()), flush=True)
        raise SystemExit(1) from None
    try:
        os.write(lock, server.uri.encode())
        print(server.uri, flush=True)
        sys.stdin.read()  # until the parent closes the pipe or ends
    finally:
        os.ftruncate(lock, 0)
        server.close()
    # All is on disk now: the server closed its storage, the catalog commits every write,
    # and the logs are flushed here. Tearing down this interpreter's modules would cost about
    # another second of CPU, which the session would spend waiting for this process to end.
    logging.shutdown()
    os._exit(0)


def _take_server_lock(directory: Path, wait_s: float = 2.0) -> int | None:
    """Lock ``directory``'s server file for this process (an empty file descriptor to write
    the URI to), or None if another process's server holds it. Waits ``wait_s`` for a lock
    that is only being probed by :func:`running_server`."""
    fd = os.open(directory / _SERVER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    if fcntl is None:
        return fd
    os.fchmod(fd, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
        else:
            os.ftruncate(fd, 0)
            return fd


def _write_ahead_log(catalog: Path) -> None:
    """Put the catalog in SQLite's write-ahead-log mode (it stays so, in the file).

    tiled 0.2.20 means to (``initialize_database`` runs ``PRAGMA journal_mode=WAL``), but
    inside a transaction, where SQLite ignores it: the catalog stays in rollback-journal
    mode, in which every commit (several per write request) syncs the journal and the
    database. Called once the server has opened the catalog and before any client knows
    its address, so no other connection is in a transaction.

    Parameters
    ----------
    catalog : pathlib.Path
        The server's ``catalog.db``.
    """
    import sqlite3

    try:
        connection = sqlite3.connect(catalog)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
    except sqlite3.Error:  # a catalog in use elsewhere: keep its mode
        pass


def become_background_process(nice: int = 10) -> None:
    """Ignore Ctrl-C (the parent decides when we stop) and lower our CPU priority.

    Called first by the embedded server's process and by the writer's worker process.

    Parameters
    ----------
    nice : int
        Added to the process's nice value: the worker (10) yields the CPU to the RunEngine;
        the server (0) does not, since it also answers the reads a user waits for.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(nice)
    except (AttributeError, OSError):  # no nice on Windows
        pass
