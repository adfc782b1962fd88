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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import StorageError
from ._config import CATALOG_FILE, check_writable, redact
from ._patches import (
    cache_fastapi_dependants,
    no_catalog_init_if_current,
    one_thread_at_a_time_on_duckdb,
    register_json_seq_export,
    uvloop_for_the_server,
)

try:
    import fcntl
except ImportError:  # Windows: one server per directory is not enforced
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


# Held (flock) by the embedded server's process for its lifetime; holds its URI and API key
# (one line each) while it serves, readable by the user only, emptied when it stops. A second
# storage on the same directory uses that server: two servers on one directory would fight
# over its DuckDB file.
_SERVER_LOCK = "server.lock"
# Share-locked by every storage that uses the directory's server, for as long as it does. The
# server stops once its own session has closed and no storage holds this lock; it takes the
# lock exclusively while it stops, so a storage opened meanwhile waits and starts a new one.
_USERS_LOCK = "server.users"


@dataclass(frozen=True)
class ServerAddress:
    """Where an embedded server answers.

    Attributes
    ----------
    uri : str
        Its loopback URI (``http://127.0.0.1:PORT/api/v1``), without the key.
    api_key : str
        The key it accepts, sent by clients as a header, never in a URL.
    """

    uri: str
    api_key: str


def running_server(directory: Path, timeout_s: float = 120.0) -> ServerAddress | None:
    """Find the embedded server that a process runs on ``directory``.

    Parameters
    ----------
    directory : pathlib.Path
        The embedded server's directory.
    timeout_s : float
        How long to wait for a server that is starting to give its address.

    Returns
    -------
    ServerAddress or None
        Its address; None when no process runs a server on ``directory`` (or it stopped
        while we waited).

    Raises
    ------
    StorageError
        A process holds the server's lock but gave no address within ``timeout_s``.
    """
    path = directory / _SERVER_LOCK
    if fcntl is None or not path.is_file():
        return None
    deadline = time.monotonic() + timeout_s
    with open(path, "rb") as file:
        while True:  # a server that is starting writes its address once it answers
            if not _held(file):
                return None
            file.seek(0)
            lines = file.read().decode().split()
            if len(lines) == 2 and lines[0].startswith("http"):
                return ServerAddress(*lines)
            if time.monotonic() > deadline:
                raise StorageError(
                    f"another process holds the embedded Tiled server of {directory} but "
                    f"gave no address within {timeout_s:g} s"
                )
            time.sleep(0.1)


def server_alive(directory: Path) -> bool:
    """Tell whether a process holds the embedded server's lock of ``directory``.

    Parameters
    ----------
    directory : pathlib.Path
        The embedded server's directory.

    Returns
    -------
    bool
        True while a server runs (or starts, or stops) there; always True without ``flock``.
    """
    if fcntl is None:
        return True
    try:
        with open(directory / _SERVER_LOCK, "rb") as file:
            return _held(file)
    except FileNotFoundError:
        return False


def _held(file: Any) -> bool:
    """Tell whether another process holds the lock of the open ``file``."""
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    return False


def use_server(directory: Path, timeout_s: float = 60.0) -> int | None:
    """Register this process as a user of ``directory``'s embedded server.

    Parameters
    ----------
    directory : pathlib.Path
        The embedded server's directory (it exists).
    timeout_s : float
        How long to wait for a server that is stopping to finish.

    Returns
    -------
    int or None
        A file descriptor holding a shared lock; close it (:func:`stop_using_server`) when
        done. None without ``flock``.

    Raises
    ------
    StorageError
        The server did not finish stopping within ``timeout_s``.
    """
    if fcntl is None:
        return None
    fd = os.open(directory / _USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:  # the server is stopping
            if time.monotonic() > deadline:
                os.close(fd)
                raise StorageError(
                    f"the embedded Tiled server of {directory} did not finish stopping "
                    f"within {timeout_s:g} s"
                ) from None
            time.sleep(0.05)


def stop_using_server(fd: int | None) -> None:
    """Release a lock taken by :func:`use_server` (None: nothing to release).

    Parameters
    ----------
    fd : int or None
        What :func:`use_server` returned.
    """
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class ServerBusy(Exception):
    """Another process started the embedded server of this directory first."""


class ServerProcess:
    """The embedded Tiled server (``SimpleTiledServer``) in a process of its own.

    Ingesting documents costs the server CPU (decoding arrays, writing SQLite, DuckDB and
    Zarr); in its own process that work does not hold this process's GIL. It runs at this
    process's priority, as it answers the reads a user waits for (the writer's worker, which
    paces the ingest, runs at nice +10). The server runs until ``close()`` or until this process
    ends (it reads its stdin until EOF), and then for as long as other storages use it (see
    :func:`use_server`). It runs in its own session so that a Ctrl-C meant for the RunEngine
    does not stop it. The API key goes over the pipe, not the command line.

    Parameters
    ----------
    directory : pathlib.Path
        The server's directory (catalog, tables, arrays, logs).
    api_key : str
        The key the server accepts.
    port : int
        The loopback port to listen on; 0 for any free port.
    timeout_s : float
        How long to wait for the server to answer.

    Attributes
    ----------
    address : ServerAddress
        Where the server answers.

    Raises
    ------
    ServerBusy
        Another process runs the directory's server.
    StorageError
        The server failed to start.
    """

    def __init__(
        self, directory: Path, api_key: str, port: int = 0, timeout_s: float = 120.0
    ) -> None:
        check_writable(directory)
        code = "from dnpu_bluesky.storage._server import _server_process; _server_process()"
        # What the server prints (a request's traceback) goes to its error log, not to the
        # terminal of the session that happened to start it.
        errors = os.open(directory / "error.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code, str(directory), str(port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                start_new_session=True,
            )
        finally:
            os.close(errors)
        self._process.stdin.write(api_key + "\n")
        self._process.stdin.flush()
        # The session reads and writes through these as soon as the server answers; importing
        # them (about 2 s) while the server starts, on the other core, saves that wait.
        import bluesky_tiled_plugins  # noqa: F401
        import tiled.client  # noqa: F401

        # The child's first line: its URI, or "error: ..." when the server failed to start.
        line = self._read_line(timeout_s)
        if line is not None and line.startswith("http"):
            self.address = ServerAddress(line, api_key)
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

    def _read_line(self, timeout_s: float) -> str | None:
        """Read the server's next line (stripped); None when none came within ``timeout_s``."""
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: lines.put(self._process.stdout.readline()), daemon=True
        )
        reader.start()
        try:
            return lines.get(timeout=timeout_s).strip()
        except queue.Empty:
            return None

    def alive(self) -> bool:
        """Tell whether the server's process still runs.

        Returns
        -------
        bool
            False once it has ended, for whatever reason.
        """
        return self._process.poll() is None

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the server and wait for its process to end, unless other storages use it.

        Parameters
        ----------
        timeout_s : float
            How long to wait before killing it.
        """
        process = self._process
        with contextlib.suppress(OSError):
            process.stdin.close()
        if process.poll() is None and self._read_line(timeout_s) == "shared":
            # Other sessions use it: it stops on its own once the last of them has closed.
            logger.info("The embedded Tiled server keeps running for other sessions")
            process.returncode = 0  # not ours to wait for any more
            process.stdout.close()
            return
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("The embedded Tiled server did not stop in %s s; killing it", timeout_s)
            process.kill()
            process.wait()
        process.stdout.close()


def _server_process() -> None:
    """Run the embedded server (the entry point of :class:`ServerProcess`'s process)."""
    become_background_process(nice=0)
    from tiled.server import SimpleTiledServer

    api_key = sys.stdin.readline().strip()
    directory = Path(sys.argv[1]).resolve()
    port = int(sys.argv[2])
    # Every file the server creates is readable by this account only.
    os.umask(0o077)
    for log in ("access.log", "error.log"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(directory / log, 0o600)
    lock = _take_server_lock(directory)
    if lock is None:
        print("busy", flush=True)  # another process's server: the parent uses that one
        raise SystemExit(0)
    try:
        relocate_catalog(directory)
        register_json_seq_export()  # run.documents(), export_documents: the server's export
        cache_fastapi_dependants()
        uvloop_for_the_server()
        one_thread_at_a_time_on_duckdb()
        with no_catalog_init_if_current(directory):
            server = SimpleTiledServer(directory, api_key=api_key, port=port)
        _write_ahead_log(directory / CATALOG_FILE)
    except Exception as err:
        # One line for the parent's StorageError, no traceback on the session's terminal.
        print("error:", " ".join(f"{type(err).__name__}: {err}".split()), flush=True)
        raise SystemExit(1) from None
    uri = server.uri.partition("?")[0]  # the key travels as a header, never in a URL
    users = os.open(directory / _USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(lock, f"{uri}\n{api_key}\n".encode())
        print(uri, flush=True)
        sys.stdin.read()  # until the parent closes the pipe or ends
        _wait_for_last_user(users)
    finally:
        os.ftruncate(lock, 0)
        server.close()
    # All is on disk now: the server closed its storage, the catalog commits every write,
    # and the logs are flushed here. Tearing down this interpreter's modules would cost about
    # another second of CPU, which the session would spend waiting for this process to end.
    logging.shutdown()
    os._exit(0)


def _wait_for_last_user(users: int) -> None:
    """Wait until no storage uses the server, then hold the users' lock until exit.

    Tells the parent (if it still listens) whether other storages use the server.
    """
    if fcntl is None:
        return
    shared = False
    while True:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not shared:
                shared = True
                with contextlib.suppress(OSError, ValueError):
                    print("shared", flush=True)
            time.sleep(0.2)
    if not shared:
        with contextlib.suppress(OSError, ValueError):
            print("stopping", flush=True)


def _take_server_lock(directory: Path, wait_s: float = 2.0) -> int | None:
    """Lock ``directory``'s server file for this process, or give None if another holds it.

    Waits ``wait_s`` for a lock that is only being probed by :func:`running_server`.

    Returns
    -------
    int or None
        The lock file's descriptor (emptied, to write the address to).
    """
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


def relocate_catalog(directory: Path) -> int:
    """Point the catalog's assets at ``directory`` when it was moved or restored elsewhere.

    The catalog records each asset (a Zarr array under ``data/``, the ``storage.duckdb``
    tables) by an absolute URI; tiled refuses to serve a file outside the server's storage
    area, and would open the tables at the old place. The old location is read from the
    catalog's DuckDB asset (the one table store of the directory), or failing that from its
    first file asset; every URI under it is rewritten to the same place under ``directory``.

    Parameters
    ----------
    directory : pathlib.Path
        The embedded server's directory, resolved.

    Returns
    -------
    int
        How many asset URIs were rewritten (0 for a catalog that is where it was made).
    """
    import sqlite3

    from tiled.utils import ensure_uri

    catalog = directory / CATALOG_FILE
    if not catalog.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(catalog)) as db:
        try:
            uris = [row[0] for row in db.execute("SELECT data_uri FROM assets")]
        except sqlite3.Error:  # not a tiled catalog (yet): tiled says what is wrong
            return 0
        old = _old_directory(uris)
        if old is None or old == str(directory):
            return 0
        moved = 0
        for before, after in (
            (ensure_uri(f"{old}/data"), ensure_uri(str(directory / "data"))),
            (
                ensure_uri(f"duckdb:///{old}/storage.duckdb"),
                ensure_uri(f"duckdb:///{directory / 'storage.duckdb'}"),
            ),
        ):
            moved += db.execute(
                "UPDATE assets SET data_uri = ? || substr(data_uri, ?) "
                "WHERE substr(data_uri, 1, ?) = ? AND "
                "(length(data_uri) = ? OR substr(data_uri, ?, 1) = '/')",
                (after, len(before) + 1, len(before), before, len(before), len(before) + 1),
            ).rowcount
        db.commit()
    logger.info("Catalog moved from %s to %s: %d asset URIs updated", old, directory, moved)
    return moved


def _old_directory(uris: list[str]) -> str | None:
    """Tell where the catalog's directory was when these asset URIs were recorded."""
    from tiled.utils import path_from_uri

    for uri in uris:
        if uri.startswith("duckdb:") and uri.endswith("/storage.duckdb"):
            return str(Path(path_from_uri(uri)).parent)
    for uri in uris:
        if uri.startswith("file:"):
            parts = str(path_from_uri(uri)).split("/data/")
            if len(parts) == 2:
                return parts[0]
    return None


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
