"""The background writer: documents to a local spool at once, to Tiled by a worker."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import StorageError
from ._spool import (
    DISK_FULL,
    abort_stop,
    append_whole,
    close_quietly,
    complete_length,
    encode,
    fsync_directory,
    lock_file,
    mtime_or_zero,
    release_space,
    reserve_space,
)
from ._worker import start_worker_process, worker_main

if TYPE_CHECKING:
    from bluesky_tiled_plugins import CatalogOfBlueskyRuns

logger = logging.getLogger(__name__)

# The console handler of dnpu_bluesky._console_log shows INFO records marked so (the storage
# package imports nothing of the package around it, hence the literal).
_CONSOLE_NOTE = {"console_note": True}
#: A flush still waiting after this many seconds says so (INFO; the CLI and IPython show it).
_NOTE_WAITS_AFTER_S = 1.0


class StorageWarning(UserWarning):
    """Issued once per writer, on the caller's thread, when the first Tiled write fails."""


class _RunSpool:
    """The caller's side of one run's spool file."""

    def __init__(self, uid: str, path: Path, file: Any, *, written: int = 0, leftover: bool):
        self.uid = uid
        self.path = path
        self.file = file  # append handle (live run) or read handle (leftover); holds the lock
        self.written = written  # bytes of complete records in the file
        self.announced = written  # bytes the worker has been told about
        self.announced_at = time.monotonic()
        self.sent = 0  # bytes of those records in Tiled (or in the TiledWriter's batch)
        self.stop_spooled = False
        self.leftover = leftover  # from an earlier session: no more documents will come
        self.refs: list[str] = []  # descriptor/resource uids routed to this run


#: While events stream in, the worker hears how far a run's spool goes at most this often
#: (and at once for every other document, and on flush): each message wakes a thread in both
#: processes, and on a busy machine each wake-up can keep the GIL from the RunEngine's thread
#: for about a millisecond. Measured by benchmarks.storage.
_ANNOUNCE_INTERVAL_S = 0.2
_COALESCED = frozenset({"event", "event_page", "datum", "datum_page", "stream_datum"})

_ROUTE = {
    "descriptor": "run_start",
    "stop": "run_start",
    "resource": "run_start",
    "stream_resource": "run_start",
    "event": "descriptor",
    "event_page": "descriptor",
    "stream_datum": "descriptor",
    "datum": "resource",
    "datum_page": "resource",
}


class BackgroundWriter:
    """Writes documents to Tiled from a worker process, through a durable local spool.

    Calling it (``writer(name, doc)``, e.g. as a RunEngine subscriber) appends the document
    to its run's spool file (``<spool_directory>/<start uid>.spool``: per document a length
    prefix and msgpack of ``[name, doc]``, numpy arrays as raw bytes with dtype and shape, so
    they come back bit for bit), tells the worker how far the file goes (for events at most
    every 0.2 s), and returns: 0.16 ms on average for a 10k-sample event in the storage
    benchmark; Tiled's latency never reaches the caller. The worker (a separate process by
    default, so that its CPU work does not hold this process's GIL; ``process=False`` runs it
    on a thread) feeds each run to its own ``TiledWriter`` (events batched by ``batch_size``),
    run after run in the order they started, except that a run :meth:`flush` waits for goes
    first. The spool *is* the queue: memory stays bounded (one batch per stream plus one
    document) and the caller never waits for Tiled, even during a long outage. The worker
    starts with the first document or leftover spool file (a writer given none starts none).

    When a write fails (Tiled down, refusing writes, network error) the error is logged at
    ERROR, appended to :attr:`errors`, warned once (:class:`StorageWarning`) on the caller's
    thread and the worker retries with exponential backoff. A retry rebuilds the run in
    Tiled: a partial run node is deleted and the run is replayed from its spool file in
    order, so nothing is lost or duplicated. A run's spool file is deleted once its stop
    document is in Tiled. Spool files left by a crashed session are replayed when the next
    writer on that directory starts (or by :meth:`adopt_leftovers`); a run that never got
    its stop document is closed with ``exit_status="abort"``. Spool files are locked
    (``flock``) by the writer that owns them, so two sessions never replay the same run.

    Parameters
    ----------
    connect : callable
        Returns a client of the runs container; called in the worker (again after each
        failure), so it must be picklable when ``process`` is true (e.g. a
        ``functools.partial`` of a module-level function).
    spool_directory : pathlib.Path or str
        Where the spool files live (created if missing).
    batch_size : int
        ``TiledWriter``'s batch size.
    fsync : bool
        ``os.fsync`` each spooled document.
    retry_interval_s, retry_max_interval_s : float
        Backoff between retries.
    replay : bool
        Adopt leftover spool files of ``spool_directory`` at start.
    process : bool
        Run the worker in a spawned process (default) or on a thread.

    Attributes
    ----------
    spool_directory : pathlib.Path
        Where the spool files live.
    errors : list of str
        The failed writes so far (the last 1000), oldest first.
    failing : bool
        True from a failed write until a write succeeds again.
    """

    def __init__(
        self,
        connect: Callable[[], CatalogOfBlueskyRuns],
        spool_directory: Path | str,
        *,
        batch_size: int = 20,
        fsync: bool = False,
        retry_interval_s: float = 0.5,
        retry_max_interval_s: float = 30.0,
        replay: bool = True,
        process: bool = True,
    ) -> None:
        self.spool_directory = Path(spool_directory)
        self.spool_directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._runs: dict[str, _RunSpool] = {}
        self._unspooled: set[str] = set()  # runs whose start document could not be spooled
        self._run_of: dict[str, str] = {}  # descriptor / resource uid -> run start uid
        self.errors: list[str] = []
        self.failing = False
        self._warn_pending = False
        self._warned = False
        self._closed = False
        self._alive = True
        self._ready = threading.Event()
        self._worker_args = (connect, batch_size, (retry_interval_s, retry_max_interval_s))
        self._in_process = process and os.name == "posix"
        self._start_lock = threading.Lock()
        self._worker: Any = None
        if replay and (uids := self.adopt_leftovers()):
            logger.warning(
                "Storage: writing %d run(s) that an earlier session left in %s to Tiled: %s",
                len(uids),
                self.spool_directory,
                ", ".join(uid[:8] for uid in uids),
            )

    def _start_worker(self) -> None:
        """Start the worker and its receiver on the first message (a reader never does)."""
        with self._start_lock:
            if self._worker is not None:
                return
            if self._in_process:
                worker: Any = start_worker_process()
                self._conn = worker.conn
                self._conn.send(self._worker_args)
            else:
                from multiprocessing import Pipe

                self._conn, child = Pipe()
                worker = threading.Thread(
                    target=worker_main,
                    args=(child, *self._worker_args),
                    name="dnpu-tiled-writer",
                    daemon=True,
                )
                worker.start()
            self._receiver = threading.Thread(
                target=self._receive, name="dnpu-tiled-writer-receiver", daemon=True
            )
            self._receiver.start()
            self._worker = worker

    # -- caller side -----------------------------------------------------------------------

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if self._closed:
            raise RuntimeError(f"Storage is closed; cannot write the {name!r} document")
        self._warn_once()
        record = encode(name, doc)
        with self._cond:
            run = self._route(name, doc)
        if run is None:
            return  # a document of a run whose start could not be spooled
        if name == "stop":  # the space set aside at the start is for this document
            release_space(run.path)
        try:
            append_whole(run.file, record, run.written, fsync=self._fsync)
        except BaseException as err:
            if name == "start":  # no run to speak of: forget it, and what comes after it
                self._forget(run)
            if isinstance(err, OSError) and err.errno in DISK_FULL:
                raise StorageError(
                    f"the spool disk is full: cannot write the {name} document of run "
                    f"{run.uid[:8]} to {self.spool_directory} ({err.strerror}); what was "
                    "spooled before reaches Tiled"
                ) from err
            raise
        now = time.monotonic()
        with self._cond:
            run.written += len(record)
            if name == "stop":
                run.stop_spooled = True
                for ref in run.refs:
                    self._run_of.pop(ref, None)
            if name in _COALESCED and now - run.announced_at < _ANNOUNCE_INTERVAL_S:
                return  # announced by the next document, the receiver's timer or a flush
            run.announced, run.announced_at = run.written, now
            written = run.written
        if name == "start":
            self._send(("run", run.uid, str(run.path), written, False))
        else:
            self._send(("written", run.uid, written))

    def _announce_pending(self) -> None:
        """Tell the worker about documents spooled but not yet announced."""
        now = time.monotonic()
        with self._cond:
            pending = []
            for run in self._runs.values():
                if run.announced < run.written:
                    run.announced, run.announced_at = run.written, now
                    pending.append((run.uid, run.written))
        for uid, written in pending:
            self._send(("written", uid, written))

    def _send(self, message: tuple) -> None:
        self._start_worker()
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                if self._alive:
                    raise

    def _forget(self, run: _RunSpool) -> None:
        with self._cond:
            self._runs.pop(run.uid, None)
            self._unspooled.add(run.uid)
        close_quietly(run.file)
        release_space(run.path)
        with contextlib.suppress(OSError):
            run.path.unlink(missing_ok=True)

    def _route(self, name: str, doc: dict[str, Any]) -> _RunSpool | None:
        if name == "start":
            uid = doc["uid"]
            path = self.spool_directory / f"{uid}.spool"
            # Another storage on this spool directory removes it on closing when it is empty.
            self.spool_directory.mkdir(parents=True, exist_ok=True)
            # Unbuffered: a failed write must leave nothing behind to be flushed later. Readable
            # by this account only, like the run store it is on its way to.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            file = os.fdopen(os.open(path, flags, 0o600), "ab", buffering=0)
            lock_file(file)
            try:
                reserve_space(path)
            except OSError as err:
                close_quietly(file)
                with contextlib.suppress(OSError):
                    path.unlink()
                self._unspooled.add(uid)  # the rest of this run has nowhere to go
                if err.errno in DISK_FULL:
                    raise StorageError(
                        f"the spool disk is full: no room for a new run in "
                        f"{self.spool_directory} ({err.strerror})"
                    ) from err
                raise
            if self._fsync and os.name == "posix":  # the new file's name, not only its data
                fsync_directory(self.spool_directory)
            run = self._runs[uid] = _RunSpool(uid, path, file, leftover=False)
            return run
        field = _ROUTE.get(name)
        ref = doc.get(field) if field else None
        uid = ref if field == "run_start" else self._run_of.get(ref or "")
        if uid in self._unspooled:
            logger.debug("not spooled: the %s document of run %s, whose start failed", name, uid)
            return None
        run = self._runs.get(uid or "")
        if run is None or run.stop_spooled or run.leftover:
            raise StorageError(
                f"Cannot store the {name!r} document {doc.get('uid', '')!r}: it belongs to no "
                "open run of this storage (documents are stored per run, from its start document)"
            )
        if name in ("descriptor", "resource", "stream_resource"):
            self._run_of[doc["uid"]] = run.uid
            run.refs.append(doc["uid"])
        return run

    def _warn_once(self) -> None:
        if self._warn_pending and not self._warned:
            self._warned = True
            warnings.warn(
                f"Writing to Tiled failed: {self.errors[0]} (documents are kept in "
                f"{self.spool_directory} and retried; see Storage.errors)",
                StorageWarning,
                stacklevel=3,
            )

    def _receive(self) -> None:
        """Progress and errors from the worker (on a thread of the caller's process)."""
        while True:
            try:
                if not self._conn.poll(_ANNOUNCE_INTERVAL_S):
                    self._announce_pending()
                    continue
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "ready":
                self._ready.set()
            elif kind == "error":
                # ERROR once per outage; the retries while it lasts at INFO.
                (logger.info if self.failing else logger.error)("Storage: %s", message[1])
                with self._cond:
                    self.errors.append(message[1])
                    del self.errors[:-1000]
                    self._warn_pending = True
                    self.failing = True
                    self._cond.notify_all()
            elif kind == "ok":
                logger.warning("Tiled writes work again; spooled documents are being replayed")
                with self._cond:
                    self.failing = False
                    self._cond.notify_all()
            elif kind == "progress":
                with self._cond:
                    if (run := self._runs.get(message[1])) is not None:
                        run.sent = message[2]
                    self._cond.notify_all()
            elif kind in ("done", "corrupt"):
                self._drop(message[1], corrupt=kind == "corrupt")
        with self._cond:
            self._alive = False
            died = self._worker_death() if not self._closed else None
            if died:
                self.errors.append(died)
                self._warn_pending = True
                self.failing = True
            self._cond.notify_all()
        if died:
            logger.error("Storage: %s", died)

    def _worker_death(self) -> str:
        """Say what to tell the user when the worker ended without being told to quit."""
        status = ""
        if not isinstance(self._worker, threading.Thread):
            try:
                code = self._worker.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            else:
                status = "" if code is None else f" (exit status {code})"
        return (
            f"the writer's worker stopped unexpectedly{status}: documents are still spooled in "
            f"{self.spool_directory}, and written to Tiled the next time a storage is opened "
            "on it"
        )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Start the worker if it has not started yet, and wait until it runs.

        A worker process needs a second or two to import.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait; ``None``: as long as it takes.

        Returns
        -------
        bool
            Whether the worker runs.
        """
        self._start_worker()
        return self._ready.wait(timeout)

    def _drop(self, uid: str, *, corrupt: bool) -> None:
        """Delete (or set aside, when unreadable) the spool file of a run that is in Tiled."""
        with self._cond:
            run = self._runs.get(uid)
        if run is None:
            return
        try:
            release_space(run.path)  # a run that never got its stop (a leftover)
            if corrupt:
                run.path.rename(run.path.with_suffix(".corrupt"))
            else:
                run.path.unlink(missing_ok=True)
        finally:
            close_quietly(run.file)
            with self._cond:  # gone from the table only once its file is gone
                self._runs.pop(uid, None)
                self._cond.notify_all()

    def flush(self, timeout: float | None = None, *, run: str | None = None) -> None:
        """Wait until every document written so far is in Tiled (open runs: up to their batch).

        Parameters
        ----------
        timeout : float or None
            Seconds to wait; ``None``: as long as it takes.
        run : str or None
            Wait only for the run whose start uid is (or begins with) this (written before the
            others); ``None``: all.

        Raises
        ------
        StorageError
            Not done within ``timeout`` seconds, or the worker has stopped.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        noted = 0  # runs pending when the wait was last reported
        self._announce_pending()
        with self._cond:
            targets = {
                uid: spooled.written
                for uid, spooled in self._runs.items()
                if run is None or uid.startswith(run)
            }
        for uid in targets if run else ():
            self._send(("wanted", uid))
        with self._cond:
            while True:
                pending = [
                    spooled
                    for uid, target in targets.items()
                    if (spooled := self._runs.get(uid)) is not None
                    and (spooled.sent < target or spooled.leftover)
                ]
                if not pending:
                    break
                note = _wait_note(noted, len(pending), time.monotonic() - started)
                if note:
                    noted = len(pending)
                    logger.info("%s", note, extra=_CONSOLE_NOTE)
                remaining = None if deadline is None else deadline - time.monotonic()
                if not self._alive:
                    self._warn_once()
                    raise StorageError(
                        f"{len(pending)} run(s) not completely in Tiled: "
                        + (self.errors[-1] if self.errors else "the writer's worker has stopped")
                    )
                if remaining is not None and remaining <= 0:
                    self._warn_once()
                    last = self.errors[-1] if self.errors else "no error reported"
                    raise StorageError(
                        f"{len(pending)} run(s) not completely in Tiled after {timeout} s "
                        f"(last error: {last}); their documents stay spooled in "
                        f"{self.spool_directory} for replay"
                    )
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
        self._warn_once()

    def close(self, timeout: float | None = None) -> None:
        """Stop open runs (``exit_status="abort"``), flush, stop the worker. Idempotent.

        What could not be written within ``timeout`` stays spooled (logged at ERROR) for a
        later :func:`replay_spool` or the next storage opened on the same spool directory.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait for the flush; ``None``: as long as it takes.
        """
        with self._cond:
            if self._closed:
                return
            open_runs = [r.uid for r in self._runs.values() if not (r.stop_spooled or r.leftover)]
        for uid in open_runs:
            try:
                self("stop", abort_stop(uid, "storage closed before the run's stop document"))
            except (OSError, StorageError) as err:  # replay closes it from its spool file
                logger.error("could not spool the abort stop of run %s: %s", uid, err)
        self._closed = True
        try:
            self.flush(timeout)
        except StorageError as err:
            logger.error("%s", err)
        finally:
            stopped = True
            if self._worker is not None:  # else nothing was ever written: nothing to stop
                self._send(("quit",))
                if isinstance(self._worker, threading.Thread):
                    self._worker.join(timeout=10.0)
                    stopped = not self._worker.is_alive()
                else:
                    try:
                        self._worker.wait(timeout=10.0)
                    except subprocess.TimeoutExpired:
                        self._worker.kill()
                        self._worker.wait(timeout=5.0)
                self._receiver.join(timeout=5.0)
                close_quietly(self._conn)
            if stopped:
                for run in list(self._runs.values()):
                    close_quietly(run.file)
                self._runs.clear()

    def adopt_leftovers(self, directory: Path | str | None = None) -> list[str]:
        """Queue the spool files in ``directory`` (default: this writer's) for replay.

        Files locked by a live writer (another session) are skipped.

        Parameters
        ----------
        directory : pathlib.Path or str or None
            The spool directory to replay; ``None``: :attr:`spool_directory`.

        Returns
        -------
        list of str
            The start uids of the queued runs.
        """
        directory = Path(directory) if directory is not None else self.spool_directory
        adopted = []
        for path in sorted(directory.glob("*.spool"), key=mtime_or_zero):
            uid = path.stem
            with self._cond:
                if uid in self._runs:
                    continue
            try:  # another session removes its files as its runs reach Tiled
                file = open(path, "rb")  # closed when the run is in Tiled
            except FileNotFoundError:
                continue
            try:
                lock_file(file)
            except OSError:
                file.close()
                continue
            written = complete_length(path)  # a record cut by a crash mid-write is ignored
            with self._cond:
                self._runs[uid] = _RunSpool(uid, path, file, written=written, leftover=True)
            self._send(("run", uid, str(path), written, True))
            adopted.append(uid)
        if adopted:
            logger.info("Replaying %d spooled run(s) into Tiled: %s", len(adopted), adopted)
        return adopted

    def __repr__(self) -> str:
        return f"<BackgroundWriter spool={self.spool_directory} runs={len(self._runs)}>"


def _wait_note(noted: int, pending: int, waited_s: float) -> str | None:
    """Say what a flush tells while waiting, if anything.

    That it waits, once it has for a while, then a count down of the runs left, so that a
    long wait is not taken for a hang.

    Parameters
    ----------
    noted : int
        The runs pending when it last said something (0: nothing said yet).
    pending : int
        The runs pending now.
    waited_s : float
        How long it has waited.

    Returns
    -------
    str or None
        The note, or None for nothing to say.
    """
    if not noted:
        if waited_s > _NOTE_WAITS_AFTER_S:
            return f"Waiting for {pending} run(s) to reach Tiled..."
        return None
    return f"... {pending} left" if pending < noted else None
