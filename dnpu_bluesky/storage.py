"""Every Bluesky document into Tiled: an embedded server by default, a remote one by URI.

The embedded server (:class:`tiled.server.SimpleTiledServer`, run in a process of its own at
low priority, so its work does not compete with the RunEngine) keeps its catalog (SQLite),
tabular data (DuckDB) and arrays (Zarr) in one local directory, so runs persist across
sessions. Runs are written by bluesky-tiled-plugins' ``TiledWriter`` into a container with
the ``CatalogOfBlueskyRuns`` (3.0) spec, the layout that the tiled client and databroker 2
search and read (``run["primary"]["field"].read()``, ``catalog.v2[uid].primary.read()``).

By default documents are appended to a local spool file per run and written to Tiled by a
worker process (:class:`BackgroundWriter`), so Tiled's latency and outages never reach the
RunEngine and a crash loses nothing (:func:`replay_spool`); ``StorageConfig(writer="direct")``
calls the ``TiledWriter`` synchronously instead.

Example:
    >>> with open_storage() as storage:                       # doctest: +SKIP
    ...     RE.subscribe(storage.writer)
    ...     (uid,) = RE(count([det])).run_start_uids
    ...     load_run(storage.client, uid)["primary"]["det"].read()
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx
import msgpack
import numpy as np
import platformdirs
from tiled.queries import Comparison, Contains, Eq, In
from tiled.structures.core import Spec

from ._console_log import CONSOLE_NOTE
from ._errors import StorageError

if TYPE_CHECKING:  # imported where used: bluesky_tiled_plugins alone takes ~2 s to import
    from bluesky_tiled_plugins import BlueskyRun, CatalogOfBlueskyRuns, TiledWriter
    from tiled.client.container import Container

try:
    import fcntl
except ImportError:  # Windows: spool files are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BackgroundWriter",
    "Storage",
    "StorageConfig",
    "StorageError",
    "StorageWarning",
    "find_runs",
    "load_run",
    "open_storage",
    "replay_spool",
]

logger = logging.getLogger(__name__)
#: A flush still waiting after this many seconds says so (INFO; the CLI and IPython show it).
_NOTE_WAITS_AFTER_S = 1.0

_CATALOG_SPEC = "CatalogOfBlueskyRuns"
_CATALOG_SPEC_VERSION = "3.0"  # the SQL-backed layout TiledWriter writes and v3 clients read


@dataclass(frozen=True)
class StorageConfig:
    """Where Bluesky documents are stored.

    Attributes:
        directory: Storage of the embedded server (catalog, tables, arrays, logs). ``None``
            means ``platformdirs.user_data_path("dnpu-bluesky") / "tiled"``. Ignored when
            ``uri`` is set.
        uri: A remote Tiled server (``http://host:8000``, optionally with a path to a
            container's parent). When set, no embedded server is started.
        api_key: Key for the remote server; for the embedded server, the key it accepts
            (alphanumeric; random when ``None``).
        container: Name (or ``/``-separated path) of the ``CatalogOfBlueskyRuns`` container
            that holds the runs; the last level is created if missing.
        batch_size: Events (per stream) the writer holds in memory before writing them to
            Tiled; the rest are written at the run's stop document. 1 writes each event at
            once (live view in Tiled) but costs an HTTP round trip per event: measured 40 ms
            for a scalar event, 110 ms for a 10k-sample waveform event on a 2-core machine.
        writer: ``"background"`` (default): documents are appended to a local spool file
            on the RunEngine's thread and written to Tiled by a worker process, so Tiled's
            latency and outages never reach the RunEngine (see :class:`BackgroundWriter`).
            ``"thread"``: the same with the worker on a thread of this process (no extra
            process, but its CPU work competes for the GIL). ``"direct"``: the plain
            ``TiledWriter`` runs inside the RunEngine's callback.
        spool_directory: Where the background writer keeps its spool files (one msgpack
            file per run, deleted once the run's stop document is in Tiled). ``None``: the
            ``spool/<container>`` subdirectory of the embedded server's directory, or for a
            remote server ``platformdirs.user_data_path("dnpu-bluesky") / "spool" /
            "<host>_<port>" / <container>``.
        spool_fsync: ``os.fsync`` every spooled document (survives power loss, not only a
            crash of the process; costs a disk flush per document).
        retry_interval_s: First wait before the background writer retries after a Tiled
            error; doubled after each failure up to ``retry_max_interval_s``.
        retry_max_interval_s: Longest wait between retries.
        flush_timeout_s: How long ``close()`` (and reading through ``Storage.client``) waits
            for the background writer to get pending documents into Tiled.
    """

    directory: Path | None = None
    uri: str | None = None
    api_key: str | None = None
    container: str = "runs"
    batch_size: int = 20
    writer: str = "background"
    spool_directory: Path | None = None
    spool_fsync: bool = False
    retry_interval_s: float = 0.5
    retry_max_interval_s: float = 30.0
    flush_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.container.strip("/"):
            raise ValueError("StorageConfig.container must name a container, got an empty name")
        if (
            self.uri is None
            and self.api_key is not None
            and not (self.api_key.isascii() and self.api_key.isalnum())
        ):
            # The embedded server refuses other keys, but only after a 20 s startup timeout.
            raise ValueError("StorageConfig.api_key for the embedded server must be alphanumeric")
        if self.batch_size < 1:
            raise ValueError(f"StorageConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.writer not in ("background", "thread", "direct"):
            raise ValueError(
                "StorageConfig.writer must be 'background', 'thread' or 'direct', "
                f"got {self.writer!r}"
            )
        if not 0 < self.retry_interval_s <= self.retry_max_interval_s:
            raise ValueError("StorageConfig needs 0 < retry_interval_s <= retry_max_interval_s")


class Storage:
    """An open connection to Tiled that stores every document it is given.

    Use :func:`open_storage` to create one. Subscribe :attr:`writer` to a RunEngine; search and
    read past runs through :attr:`client` (see :func:`find_runs`, :func:`load_run`). Close it
    (``close()``, ``with``) when done; a storage left open is closed (and flushed) at
    interpreter exit. Opening replays runs left in the spool by an earlier session.

    Attributes:
        config: The configuration, with ``directory`` resolved for an embedded server.
        client: The tiled client node of the runs container (a ``CatalogOfBlueskyRuns``);
            accessing it first waits for pending background writes (read-your-writes).
        writer: Callable ``(name, doc)`` writing documents to Tiled; subscribe it to a RunEngine.
            A :class:`BackgroundWriter` by default (``StorageConfig.writer``).
        errors: Storage errors so far (see :class:`BackgroundWriter`).
        uri: Where the server is: for an embedded server its loopback URI including the API
            key (``tiled.client.from_uri(storage.uri)`` connects); otherwise ``config.uri``.
    """

    config: StorageConfig
    writer: BackgroundWriter | _Writer
    uri: str

    def __init__(self, config: StorageConfig | None = None) -> None:
        config = config or StorageConfig()
        self._server: Any = None
        self._closed = False
        if config.uri is None:
            directory = Path(config.directory or _default_directory()).expanduser()
            config = replace(config, directory=directory)
            self.uri = _running_server(directory)  # another session's, on this directory
            if self.uri is None:
                try:
                    self._server = _ServerProcess(directory, api_key=config.api_key)
                    self.uri = self._server.uri
                except _ServerBusy:  # another session started it at the same moment
                    self.uri = _running_server(directory)
                    if self.uri is None:
                        raise StorageError(
                            f"the embedded Tiled server of {directory} was started and stopped "
                            "by another process meanwhile; try again"
                        ) from None
            api_key = None  # already in the embedded server's URI
        else:
            self.uri = config.uri
            api_key = config.api_key
            _check_reachable(self.uri, api_key)
        self._api_key = api_key
        try:
            self._root = _connect(self.uri, api_key)
        except BaseException:
            self._shutdown_server()
            raise
        try:
            try:
                self._client = _runs_container(self._root, config.container)
            except httpx.HTTPError as err:
                raise StorageError(
                    _redact(
                        f"cannot open the runs container {config.container!r} in Tiled at "
                        f"{self.uri}: {_reason(err)}",
                        api_key,
                    )
                ) from None
            self._default_spool = config.spool_directory is None
            if config.writer == "direct":
                self.config = config
                self.writer = _Writer(_tiled_writer(self._client, config.batch_size))
            else:
                spool = Path(config.spool_directory or _default_spool(config, self.uri))
                config = self.config = replace(config, spool_directory=spool.expanduser())
                _check_writable(config.spool_directory, "spool")
                self.writer = BackgroundWriter(
                    functools.partial(_connect_runs, self.uri, api_key, config.container),
                    config.spool_directory,
                    batch_size=config.batch_size,
                    fsync=config.spool_fsync,
                    retry_interval_s=config.retry_interval_s,
                    retry_max_interval_s=config.retry_max_interval_s,
                    process=config.writer == "background",
                )
                _writers_of_clients[id(self._client)] = (self.writer, config.flush_timeout_s)
        except BaseException:
            self._root.context.close()
            self._shutdown_server()
            raise
        _register_open(self)

    @property
    def client(self) -> CatalogOfBlueskyRuns:
        """The runs container; pending writes of the background writer are waited for first.

        So ``load_run(storage.client, uid)`` right after ``RE(plan)`` finds the whole run
        (read-your-writes). While Tiled is failing, it does not wait (a warning is logged).
        """
        if not self._closed:
            _wait_for_writes(self._client)
        return self._client

    @property
    def errors(self) -> list[str]:
        """Every storage error so far (the background writer's failed writes), oldest first."""
        return list(getattr(self.writer, "errors", []))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every document given to :attr:`writer` so far is in Tiled.

        Events of a run that is still open may stay in the writer's batch (``batch_size``)
        until the run's stop document; they are already in the run's spool file. A no-op
        for the direct writer.

        Raises:
            StorageError: Documents could not be written within ``timeout`` seconds
                (``None``: wait as long as it takes). They stay spooled and are retried.
        """
        if isinstance(self.writer, BackgroundWriter):
            self.writer.flush(timeout)

    def close(self) -> None:
        """Write what the writer still holds, then close the client and the server.

        A run whose stop document never arrived is closed with a stop document of
        ``exit_status="abort"`` so that its buffered events reach Tiled. The background writer
        gets ``config.flush_timeout_s`` to finish; what it could not write stays in the spool
        and is replayed the next time this storage is opened (or by :func:`replay_spool`).
        Errors are logged, not raised. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        _writers_of_clients.pop(id(self._client), None)
        try:
            if isinstance(self.writer, BackgroundWriter):
                self.writer.close(self.config.flush_timeout_s)
                if self._default_spool:  # leave no empty per-container directories behind
                    for directory in (
                        self.writer.spool_directory,
                        self.writer.spool_directory.parent,
                    ):
                        try:
                            directory.rmdir()
                        except OSError:
                            break
            else:
                self.writer.flush()
        except Exception:
            logger.exception("Could not flush the Tiled writer; see the spool for unsaved runs")
        finally:
            try:
                self._root.context.close()
            finally:
                self._shutdown_server()

    def _shutdown_server(self) -> None:
        server, self._server = self._server, None
        _unregister_open(self)
        if server is not None:
            server.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.config.uri is None:
            where = f"directory={self.config.directory}"
        else:
            where = urlsplit(self.uri)._replace(query="").geturl()  # no API key in reprs
        state = "closed" if self._closed else "open"
        return f"<Storage {state} {where} container={self.config.container!r}>"


def open_storage(config: StorageConfig | None = None) -> Storage:
    """Open the storage described by ``config`` (default: embedded server, user data dir).

    Args:
        config: Where to store; ``None`` for the defaults of :class:`StorageConfig`.

    Returns:
        An open :class:`Storage`; close it when done.

    Raises:
        StorageError: The remote server cannot be reached (connection refused, unknown host,
            an invalid URI) or rejects the request (e.g. a wrong API key); the embedded
            server's directory cannot be written, or its server fails to start. The message
            names the URI without its ``api_key`` query parameter.
        ValueError: The configured container exists but is not a ``CatalogOfBlueskyRuns``.
    """
    return Storage(config)


def find_runs(
    client: Container,
    *,
    plan_name: str | None = None,
    gate: str | None = None,
    task: str | Sequence[str] | None = None,
    tag: str | None = None,
    since: datetime | str | float | None = None,
    until: datetime | str | float | None = None,
    scan_id: int | None = None,
    limit: int | None = None,
) -> list[BlueskyRun]:
    """Search past runs by their start document, newest first.

    Args:
        client: The runs container, e.g. ``storage.client``.
        plan_name: Bluesky's ``plan_name`` (e.g. ``"train"``, ``"hge_gradient"``).
        gate: The start document's ``gate`` key (e.g. ``"XOR"``; any case).
        task: The name of the run's task (the start document's ``task["name"]``), e.g.
            ``"sphere"`` or ``"boolean:XOR"``; or several names, for runs of any of them.
        tag: One entry of the start document's ``tags`` list.
        since: Runs started at or after this time: a datetime (naive means local time), an
            ISO 8601 string (``"2025-03-01"``, ``"2025-03-01T14:00"``) or epoch seconds.
        until: Runs started strictly before this time (same forms as ``since``).
        scan_id: Bluesky's ``scan_id``.
        limit: Return at most this many (the newest).

    Returns:
        The matching run nodes, newest first.
    """
    _wait_for_writes(client)
    results = client
    for query in _queries(plan_name, gate, task, tag, since, until, scan_id):
        results = results.search(query)
    values = results.sort(("start.time", -1)).values()
    # Iterated page by page: ``head(limit)`` asks for one page of ``limit`` runs, and a Tiled
    # server refuses pages above its maximum (300).
    runs = itertools.islice(values, limit) if limit is not None else values
    return [_as_v3(run) for run in runs]


def load_run(client: Container, uid: str) -> BlueskyRun:
    """Return the run node for ``uid`` (a full uid, or a unique prefix of at least 5 characters).

    Args:
        client: The runs container, e.g. ``storage.client``.
        uid: The run's start-document uid.

    Raises:
        KeyError: No run with this uid in the container.
        ValueError: A prefix shorter than 5 characters, or one that matches several runs.
    """
    _wait_for_writes(client)
    try:
        run = client[uid]
    except KeyError:
        raise KeyError(
            f"No run with uid {uid!r} in the Tiled container {client.item['id']!r}"
        ) from None
    return _as_v3(run)


class _Writer:
    """TiledWriter plus bookkeeping of open runs, so that closing the storage can flush them."""

    def __init__(self, tiled_writer: TiledWriter) -> None:
        self._tiled_writer = tiled_writer
        self._open_runs: set[str] = set()
        self._closed = False

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if self._closed:
            raise RuntimeError(f"Storage is closed; cannot write the {name!r} document")
        self._tiled_writer(name, doc)
        if name == "start":
            self._open_runs.add(doc["uid"])
        elif name == "stop":
            self._open_runs.discard(doc["run_start"])

    def flush(self) -> None:
        # TiledWriter only writes buffered events at a stop document; a run still open here
        # (process interrupted between start and stop) gets one so its data is not lost.
        self._closed = True
        for run_start in sorted(self._open_runs):
            stop = {
                "uid": str(uuid.uuid4()),
                "time": time.time(),
                "run_start": run_start,
                "exit_status": "abort",
                "reason": "dnpu_bluesky storage closed before the run's stop document arrived",
            }
            self._tiled_writer("stop", stop)
        self._open_runs.clear()


class StorageWarning(UserWarning):
    """Issued once per writer, on the caller's thread, when the first Tiled write fails."""


class _CorruptSpool(ValueError):
    pass


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
    benchmark, and Tiled's latency never reaches the caller. The worker
    (a separate process by default, so that its CPU work does not hold this process's GIL;
    ``process=False`` runs it on a thread) reads the spool files in order and feeds each
    run to its own ``TiledWriter`` (events batched by ``batch_size``). The spool *is* the
    queue: memory stays bounded (one batch per stream plus one document) and the caller
    never waits for Tiled, even during a long outage. The worker starts with the first
    document or leftover spool file, so a writer that is never given one starts none.

    When a write fails (Tiled down, refusing writes, network error) the error is logged at
    ERROR, appended to :attr:`errors`, warned once (:class:`StorageWarning`) on the caller's
    thread and the worker retries with exponential backoff. A retry rebuilds the run in
    Tiled: a partial run node is deleted and the run is replayed from its spool file in
    order, so nothing is lost or duplicated. A run's spool file is deleted once its stop
    document is in Tiled. Spool files left by a crashed session are replayed when the next
    writer on that directory starts (or by :meth:`adopt_leftovers`); a run that never got
    its stop document is closed with ``exit_status="abort"``. Spool files are locked
    (``flock``) by the writer that owns them, so two sessions never replay the same run.

    Args:
        connect: Returns a client of the runs container; called in the worker (again after
            each failure), so it must be picklable when ``process`` is true (e.g. a
            ``functools.partial`` of a module-level function).
        spool_directory: Where the spool files live (created if missing).
        batch_size: ``TiledWriter``'s batch size.
        fsync: ``os.fsync`` each spooled document.
        retry_interval_s, retry_max_interval_s: Backoff between retries.
        replay: Adopt leftover spool files of ``spool_directory`` at start.
        process: Run the worker in a spawned process (default) or on a thread.
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
        """Start the worker and its receiver on the first message: a storage that only
        reads (listing runs, drawing figures) never pays the worker's start-up."""
        with self._start_lock:
            if self._worker is not None:
                return
            if self._in_process:
                worker: Any = _start_worker_process()
                self._conn = worker.conn
                self._conn.send(self._worker_args)
            else:
                from multiprocessing import Pipe

                self._conn, child = Pipe()
                worker = threading.Thread(
                    target=_worker_main,
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
        record = _encode(name, doc)
        with self._cond:
            run = self._route(name, doc)
        if run is None:
            return  # a document of a run whose start could not be spooled
        try:
            _append_whole(run.file, record, run.written, fsync=self._fsync)
        except BaseException:
            if name == "start":  # no run to speak of: forget it, and what comes after it
                self._forget(run)
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
        _close_quietly(run.file)
        with contextlib.suppress(OSError):
            run.path.unlink(missing_ok=True)

    def _route(self, name: str, doc: dict[str, Any]) -> _RunSpool | None:
        if name == "start":
            uid = doc["uid"]
            path = self.spool_directory / f"{uid}.spool"
            # Another storage on this spool directory removes it on closing when it is empty.
            self.spool_directory.mkdir(parents=True, exist_ok=True)
            # Unbuffered: a failed write must leave nothing behind to be flushed later.
            file = open(path, "ab", buffering=0)  # closed when the run is in Tiled
            _lock(file)
            if self._fsync and os.name == "posix":  # the new file's name, not only its data
                _fsync_directory(self.spool_directory)
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
        """What to tell the user when the worker ended without being told to quit."""
        status = ""
        if isinstance(self._worker, subprocess.Popen):
            try:
                status = f" (exit status {self._worker.wait(timeout=1.0)})"
            except subprocess.TimeoutExpired:
                pass
        return (
            f"the writer's worker stopped unexpectedly{status}: documents are still spooled in "
            f"{self.spool_directory}, and written to Tiled the next time a storage is opened "
            "on it"
        )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Start the worker if it has not started yet, and wait until it runs (a process
        needs a second or two to import)."""
        self._start_worker()
        return self._ready.wait(timeout)

    def _drop(self, uid: str, *, corrupt: bool) -> None:
        """The run is in Tiled (or unreadable): delete (or set aside) its spool file."""
        with self._cond:
            run = self._runs.get(uid)
        if run is None:
            return
        try:
            if corrupt:
                run.path.rename(run.path.with_suffix(".corrupt"))
            else:
                run.path.unlink(missing_ok=True)
        finally:
            _close_quietly(run.file)
            with self._cond:  # gone from the table only once its file is gone
                self._runs.pop(uid, None)
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every document written so far is in Tiled (open runs: up to their batch).

        Raises:
            StorageError: Not done within ``timeout`` seconds, or the worker has stopped.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        noted = 0  # runs pending when the wait was last reported
        self._announce_pending()
        with self._cond:
            targets = {uid: run.written for uid, run in self._runs.items()}
            while True:
                pending = [
                    run
                    for uid, target in targets.items()
                    if (run := self._runs.get(uid)) is not None
                    and (run.sent < target or run.leftover)
                ]
                if not pending:
                    break
                note = _wait_note(noted, len(pending), time.monotonic() - started)
                if note:
                    noted = len(pending)
                    logger.info("%s", note, extra=CONSOLE_NOTE)
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
        """
        with self._cond:
            if self._closed:
                return
            open_runs = [r.uid for r in self._runs.values() if not (r.stop_spooled or r.leftover)]
        for uid in open_runs:
            try:
                self("stop", _abort_stop(uid, "storage closed before the run's stop document"))
            except OSError as err:  # a full disk: replay closes the run from its spool file
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
                _close_quietly(self._conn)
            if stopped:
                for run in list(self._runs.values()):
                    _close_quietly(run.file)
                self._runs.clear()

    def adopt_leftovers(self, directory: Path | str | None = None) -> list[str]:
        """Queue the spool files in ``directory`` (default: this writer's) for replay.

        Files locked by a live writer (another session) are skipped. Returns the start uids.
        """
        directory = Path(directory) if directory is not None else self.spool_directory
        adopted = []
        for path in sorted(directory.glob("*.spool"), key=_mtime_or_zero):
            uid = path.stem
            with self._cond:
                if uid in self._runs:
                    continue
            try:  # another session removes its files as its runs reach Tiled
                file = open(path, "rb")  # closed when the run is in Tiled
            except FileNotFoundError:
                continue
            try:
                _lock(file)
            except OSError:
                file.close()
                continue
            written = _complete_length(path)  # a record cut by a crash mid-write is ignored
            with self._cond:
                self._runs[uid] = _RunSpool(uid, path, file, written=written, leftover=True)
            self._send(("run", uid, str(path), written, True))
            adopted.append(uid)
        if adopted:
            logger.info("Replaying %d spooled run(s) into Tiled: %s", len(adopted), adopted)
        return adopted

    def __repr__(self) -> str:
        return f"<BackgroundWriter spool={self.spool_directory} runs={len(self._runs)}>"


class _WorkerRun:
    """The worker's side of one run's spool file."""

    def __init__(self, uid: str, path: str, written: int, leftover: bool) -> None:
        self.uid = uid
        self.path = Path(path)
        self.written = written
        self.leftover = leftover
        self.sent = 0
        self.reset = True  # (re)build the run in Tiled from the first record before writing
        self.tiled_writer: TiledWriter | None = None
        self.reader: Any = None


# Held (flock) by the embedded server's process for its lifetime; holds its URI with the API
# key, readable by the user only. A second storage on the same directory uses that server:
# two servers on one directory would fight over its DuckDB file.
_SERVER_LOCK = "server.lock"


def _wait_note(noted: int, pending: int, waited_s: float) -> str | None:
    """What a flush says while waiting: that it waits, once it has for a while, then a count
    down of the runs left, so that a long wait is not taken for a hang. ``noted``: the runs
    pending when it last said something (0: nothing said yet)."""
    if not noted:
        if waited_s > _NOTE_WAITS_AFTER_S:
            return f"Waiting for {pending} run(s) to reach Tiled..."
        return None
    return f"... {pending} left" if pending < noted else None


def _running_server(directory: Path, timeout_s: float = 120.0) -> str | None:
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


class _ServerBusy(Exception):
    """Another process started the embedded server of this directory first."""


class _ServerProcess:
    """The embedded Tiled server (``SimpleTiledServer``) in a process of its own.

    Ingesting documents costs the server CPU (decoding arrays, writing SQLite, DuckDB and
    Zarr); on its own process at nice +10 that work neither holds this process's GIL nor
    delays the RunEngine's wake-ups. The server lives until ``close()`` or until this process
    ends (it reads its stdin until EOF), in its own session so that a Ctrl-C meant for the
    RunEngine does not stop it. The API key goes over the pipe, not the command line.
    """

    def __init__(self, directory: Path, api_key: str | None, timeout_s: float = 120.0) -> None:
        _check_writable(directory)
        code = "from dnpu_bluesky.storage import _server_process; _server_process()"
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
            raise _ServerBusy(directory)
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
        raise StorageError(_redact(message, api_key))

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
    """Entry point of the embedded server's process (see :class:`_ServerProcess`)."""
    _become_background_process()
    from tiled.server import SimpleTiledServer

    api_key = sys.stdin.readline().strip() or None
    directory = Path(sys.argv[1])
    lock = _take_server_lock(directory)
    if lock is None:
        print("busy", flush=True)  # another process's server: the parent uses that one
        raise SystemExit(0)
    try:
        with _no_catalog_init_if_current(directory):
            server = SimpleTiledServer(directory, api_key=api_key)
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
    that is only being probed by :func:`_running_server`."""
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


@contextlib.contextmanager
def _no_catalog_init_if_current(directory: Path) -> Iterator[None]:
    """Skip ``tiled catalog init --if-not-exists`` when it would find nothing to do.

    SimpleTiledServer runs that command on every start, in a new Python process that imports
    tiled: about 3 s, half of opening the embedded storage. When the catalog is stamped with
    the schema revision this tiled requires, the command only checks that and returns.
    """
    import sqlite3

    import tiled.catalog
    from tiled.catalog.core import REQUIRED_REVISION

    try:
        catalog = sqlite3.connect(f"{(directory / 'catalog.db').as_uri()}?mode=ro", uri=True)
        try:
            stamps = catalog.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            catalog.close()
    except sqlite3.Error:  # no catalog yet, or one left half-made: let tiled initialise it
        stamps = []
    if stamps != [(REQUIRED_REVISION,)]:
        yield
        return
    from_uri = tiled.catalog.from_uri

    def open_existing(*args: Any, **kwargs: Any) -> Any:
        return from_uri(*args, **{**kwargs, "init_if_not_exists": False})

    tiled.catalog.from_uri = open_existing
    try:
        yield
    finally:
        tiled.catalog.from_uri = from_uri


def _become_background_process() -> None:
    """Ignore Ctrl-C (the parent decides when we stop) and yield the CPU to the RunEngine."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(10)
    except (AttributeError, OSError):  # no nice on Windows
        pass


def _start_worker_process() -> subprocess.Popen:
    """The worker as ``python -c``: unlike multiprocessing's spawn, it does not re-import the
    user's ``__main__`` script; in its own session, so a Ctrl-C meant for the RunEngine
    does not kill it; at nice +10. It talks over a socket pair (multiprocessing Connection
    framing)."""
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    code = "import sys; from dnpu_bluesky.storage import _worker_process; _worker_process()"
    try:
        worker = subprocess.Popen(
            [sys.executable, "-c", code, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        theirs.close()
    worker.conn = Connection(ours.detach())  # type: ignore[attr-defined]
    return worker


def _worker_process() -> None:
    """Entry point of the worker process (see ``_start_worker_process``)."""
    from multiprocessing.connection import Connection

    _become_background_process()
    conn = Connection(int(sys.argv[1]))
    try:
        connect, batch_size, retry = conn.recv()
    except EOFError:
        return
    _worker_main(conn, connect, batch_size, retry)


def _worker_main(
    conn: Any,
    connect: Callable[[], CatalogOfBlueskyRuns],
    batch_size: int,
    retry: tuple[float, float],
) -> None:
    """The writer's worker: spool files -> TiledWriter, in a process or on a thread."""
    _SpoolWorker(conn, connect, batch_size, retry).run()


class _SpoolWorker:
    def __init__(self, conn: Any, connect: Callable, batch_size: int, retry: tuple) -> None:
        self._conn = conn
        self._connect = connect
        self._batch_size = batch_size
        self._retry = retry
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._runs: dict[str, _WorkerRun] = {}
        self._client: Any = None
        self._quit = False  # exit when idle
        self._abandon = False  # exit now (the caller's process is gone)
        self._failing = False

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                self._abandon = True

    def _receive(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = ("abandon",)
            with self._cond:
                kind = message[0]
                if kind == "run":
                    _, uid, path, written, leftover = message
                    self._runs[uid] = _WorkerRun(uid, path, written, leftover)
                elif kind == "written":
                    if (run := self._runs.get(message[1])) is not None:
                        run.written = message[2]
                elif kind == "quit":
                    self._quit = True
                else:
                    self._abandon = True
                self._cond.notify_all()
                if kind in ("quit", "abandon"):
                    return

    def run(self) -> None:
        threading.Thread(target=self._receive, daemon=True).start()
        self._send(("ready",))
        delay = self._retry[0]
        while True:
            with self._cond:
                while True:
                    if self._abandon:
                        return
                    run = next(
                        (
                            r
                            for r in self._runs.values()
                            if r.sent < r.written or r.reset or r.leftover
                        ),
                        None,
                    )
                    if run is not None:
                        break
                    if self._quit:
                        return
                    self._cond.wait()
            try:
                self._write_pending(run)
            except _CorruptSpool as err:
                self._send(("error", f"run {run.uid}: {err}; spool file set aside (.corrupt)"))
                self._done(run, "corrupt")
            except Exception as err:
                self._send(
                    (
                        "error",
                        f"writing run {run.uid} to Tiled failed: {err!r}; its documents are "
                        f"kept in {run.path} and retried",
                    )
                )
                self._failing = True
                run.reset = True
                client, self._client = self._client, None
                if client is not None:  # a fresh connection for the retry
                    try:
                        client.context.close()
                    except Exception:
                        pass
                deadline = time.monotonic() + delay
                with self._cond:
                    while not self._abandon and (left := deadline - time.monotonic()) > 0:
                        self._cond.wait(left)
                delay = min(2 * delay, self._retry[1])
            else:
                if self._failing:
                    self._failing = False
                    self._send(("ok",))
                delay = self._retry[0]

    def _write_pending(self, run: _WorkerRun) -> None:
        if self._client is None:
            self._client = self._connect()
        if run.reset and self._rebuild(run):
            return
        with self._cond:
            end = run.written
        if run.reader is None:
            run.reader = open(run.path, "rb")
        run.reader.seek(run.sent)
        while run.sent < end and not self._abandon:
            record = _read_record(run.reader)
            name, doc = _decode(record)
            run.tiled_writer(name, doc)
            run.sent += len(record)
            if name == "stop":
                self._done(run, "done")
                return
        self._send(("progress", run.uid, run.sent))
        if run.leftover and run.sent >= end:  # the crashed session never sent its stop
            reason = "replayed from the spool of a session that ended before the run's stop"
            run.tiled_writer("stop", _abort_stop(run.uid, reason))
            self._done(run, "done")

    def _rebuild(self, run: _WorkerRun) -> bool:
        """Start the run over in Tiled; True when there is nothing (more) to write."""
        _close_quietly(run.reader)
        run.reader, run.tiled_writer, run.sent = None, None, 0
        self._send(("progress", run.uid, 0))
        client = self._client
        try:
            node = client[run.uid]
        except KeyError:
            node = None
        if node is not None:
            if "stop" in (node.metadata or {}):  # complete in Tiled already (spool not deleted)
                self._done(run, "done")
                return True
            client.delete_contents(run.uid, recursive=True, external_only=False)
        if run.written == 0 and run.leftover:  # crashed before the start document was spooled
            self._done(run, "done")
            return True
        run.tiled_writer = _tiled_writer(client, self._batch_size)
        run.reset = False
        return False

    def _done(self, run: _WorkerRun, kind: str) -> None:
        _close_quietly(run.reader)
        run.reader = None
        with self._cond:
            self._runs.pop(run.uid, None)
        self._send((kind, run.uid))


def _connect_runs(uri: str, api_key: str | None, container: str) -> CatalogOfBlueskyRuns:
    """A fresh client of a runs container (the background writer's ``connect``)."""
    from tiled.client import from_uri

    return _runs_container(from_uri(uri, api_key=api_key), container)


def replay_spool(
    storage: Storage, directory: Path | str | None = None, timeout: float | None = None
) -> list[str]:
    """Push runs left in a spool directory (e.g. by a crashed session) into ``storage``.

    Args:
        storage: An open storage with the background writer.
        directory: The spool directory to replay; default ``storage.config.spool_directory``
            (which opening the storage already replays).
        timeout: Seconds to wait for them to be in Tiled (``None``: no limit).

    Returns:
        The start uids of the replayed runs (a run that never got its stop document is
        closed with ``exit_status="abort"``).

    Raises:
        StorageError: Not all of them got into Tiled within ``timeout`` (they stay spooled).
    """
    writer = storage.writer
    if not isinstance(writer, BackgroundWriter):
        raise TypeError("replay_spool needs a storage with StorageConfig(writer='background')")
    uids = writer.adopt_leftovers(directory)
    writer.flush(timeout)
    return uids


def _lock(file: Any) -> None:
    if fcntl is not None:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _close_quietly(file: Any) -> None:
    if file is not None:
        try:
            file.close()
        except OSError:
            pass


def _abort_stop(run_start: str, reason: str) -> dict[str, Any]:
    return {
        "uid": str(uuid.uuid4()),
        "time": time.time(),
        "run_start": run_start,
        "exit_status": "abort",
        "reason": f"dnpu_bluesky: {reason}",
    }


# Spool record: an 8-byte little-endian length, then msgpack of ``[name, doc]`` in which every
# numpy array is a map {"__ndarray__": dtype.str, "shape": [...], "data": <raw bytes>}.
_HEADER = struct.Struct("<Q")


def _encode(name: str, doc: dict[str, Any]) -> bytes:
    payload = msgpack.packb([name, doc], default=_pack_default, use_bin_type=True)
    return _HEADER.pack(len(payload)) + payload


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.names is not None:
            return obj.tolist()
        array = np.ascontiguousarray(obj)
        return {"__ndarray__": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"Cannot spool a {type(obj).__name__} in a Bluesky document")


def _unpack_hook(obj: dict[str, Any]) -> Any:
    if "__ndarray__" in obj and len(obj) == 3:
        buffer = bytearray(obj["data"])
        return np.frombuffer(buffer, dtype=np.dtype(obj["__ndarray__"])).reshape(obj["shape"])
    return obj


def _decode(record: bytes) -> tuple[str, dict[str, Any]]:
    """``(name, doc)`` from one whole record (header included), as ``_encode`` wrote it."""
    try:
        (size,) = _HEADER.unpack_from(record)
        if len(record) != _HEADER.size + size:
            raise ValueError("truncated record")
        name, doc = msgpack.unpackb(
            record[_HEADER.size :], object_hook=_unpack_hook, raw=False, strict_map_key=False
        )
    except (ValueError, struct.error, msgpack.UnpackException) as err:
        raise _CorruptSpool(f"not a spooled document: {record[:40]!r}") from err
    return name, doc


def _read_record(file: Any) -> bytes:
    header = file.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return header
    return header + file.read(_HEADER.unpack(header)[0])


def _complete_length(path: Path) -> int:
    """Bytes of whole records at the start of a spool file (a crash may cut the last one)."""
    size = path.stat().st_size
    end = 0
    with open(path, "rb") as file:
        while True:
            header = file.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return end
            following = end + _HEADER.size + _HEADER.unpack(header)[0]
            if following > size:
                return end
            end = following
            file.seek(end)


def _tiled_writer(client: CatalogOfBlueskyRuns, batch_size: int) -> TiledWriter:
    # max_array_size=0: every array field goes to Zarr. Small arrays (<= 16 values) would
    # otherwise go into the SQL table, where the stream's xarray view returns them as strings.
    from bluesky_tiled_plugins import TiledWriter

    return TiledWriter(client, batch_size=batch_size, max_array_size=0)


def _default_spool(config: StorageConfig, uri: str) -> Path:
    container = _safe_name(config.container)
    if config.uri is None:
        return Path(config.directory) / "spool" / container
    parts = urlsplit(uri)
    host = _safe_name(f"{parts.hostname}_{parts.port or ''}{parts.path}")
    return platformdirs.user_data_path("dnpu-bluesky") / "spool" / host / container


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")) or "_"


# The runs container client of each open Storage with a background writer: find_runs and
# load_run wait for its pending writes, so a run is found right after RE(plan) returned, even
# through a client taken from ``storage.client`` earlier.
_writers_of_clients: dict[int, tuple[BackgroundWriter, float]] = {}


def _wait_for_writes(client: Any) -> None:
    entry = _writers_of_clients.get(id(client))
    if entry is None:
        return
    writer, timeout = entry
    if writer.failing:
        logger.warning("Tiled writes are failing; reads may miss the most recent documents")
        return
    try:
        writer.flush(timeout)
    except StorageError as err:
        logger.warning("Reading from Tiled before all writes completed: %s", err)


def _as_v3(run: Any) -> Any:
    # ``catalog.v2`` (databroker style) re-registers the BlueskyRun client class in tiled's
    # process-wide dispatch table (the copy it makes is shallow), after which every client
    # returns v2 runs, whose streams have no per-field nodes. Rebuild SQL-backed runs as v3
    # without touching that table, so our callers always get the v3 layout.
    from bluesky_tiled_plugins import BlueskyRun
    from bluesky_tiled_plugins.clients.bluesky_run import BlueskyRunV3

    if not isinstance(run, BlueskyRun) or isinstance(run, BlueskyRunV3):
        return run
    for spec in run.item["attributes"]["specs"]:
        if spec["name"] == "BlueskyRun" and str(spec.get("version") or "").startswith("3."):
            return BlueskyRunV3(run.context, item=run.item, structure_clients=run.structure_clients)
    return run


def _default_directory() -> Path:
    return platformdirs.user_data_path("dnpu-bluesky") / "tiled"


def _append_whole(file: Any, record: bytes, length: int, *, fsync: bool) -> None:
    """Append ``record`` to a spool file of ``length`` bytes, all of it or nothing.

    A part of a record left behind (a full disk) would misalign every later record of the
    run, so the file is cut back to ``length`` before the error is raised.
    """
    rest = memoryview(record)
    try:
        while rest:
            rest = rest[file.write(rest) :]
        if fsync:
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(file.fileno(), length)
        raise


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as err:  # some filesystems cannot sync a directory: the files still are
        logger.warning("could not sync the spool directory %s: %s", directory, err)


def _mtime_or_zero(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed since it was listed; skipped when opened
        return 0.0


def _check_writable(directory: Path, what: str = "Tiled storage") -> None:
    """Create ``directory`` if missing and write a file in it, or raise a StorageError.

    Done before starting the embedded server, whose own failure would be less clear, and
    for the spool before any run, whose start document would fail instead.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".dnpu-write-test-"):
            pass
    except OSError as err:
        if os.path.exists(directory) and not os.path.isdir(directory):
            reason = "it is a file, not a directory"
        else:
            reason = f"[Errno {err.errno}] {err.strerror}" if err.strerror else str(err)
        message = f"cannot write the {what} directory {directory}: {reason}"
        raise StorageError(message) from None


# How long the reachability probe waits for a TCP connection before leaving the question to
# the tiled client (which retries): a refused connection or an unknown host answers at once.
_PROBE_TIMEOUT_S = 5.0

_API_KEY_PARAMETER = re.compile(r"([?&])api_key=[^&#\s'\"]*(&?)")


def _redact(text: str, api_key: str | None = None) -> str:
    """``text`` without ``api_key`` query parameters in URIs, nor the key itself."""
    text = _API_KEY_PARAMETER.sub(lambda m: m.group(1) if m.group(2) else "", text)
    if api_key and len(api_key) >= 4:
        text = text.replace(api_key, "***")
    return text


def _reason(err: BaseException) -> str:
    """A short reason: "connection refused" for ``[Errno 111] Connection refused``."""
    text = " ".join(str(err).split())
    match = re.fullmatch(r"\[Errno -?\d+\] (.+)", text)
    if match:
        return match.group(1)[:1].lower() + match.group(1)[1:]
    return text or type(err).__name__


def _check_reachable(uri: str, api_key: str | None) -> None:
    """Raise a StorageError at once for an invalid URI, an unknown host or a refused connection.

    Only a TCP connection is tried (not an HTTP request), so a server that is slow to answer
    is not refused; when the connection times out, or a proxy is configured for the URI, the
    tiled client (with its retries) decides.
    """
    shown = _redact(uri, api_key)
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError(
            f"invalid Tiled URI {shown!r}: expected http://HOST[:PORT][/PATH] or https://..."
        )
    proxies = getproxies()
    if (proxies.get(parts.scheme) or proxies.get("all")) and not proxy_bypass(parts.hostname):
        return
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT_S):
            pass
    except socket.gaierror as err:
        if err.errno == socket.EAI_AGAIN:  # the resolver may recover: let the client retry
            return
        message = f"cannot reach Tiled at {shown}: unknown host {parts.hostname!r}"
        raise StorageError(message) from None
    except TimeoutError:
        return
    except OSError as err:
        raise StorageError(f"cannot reach Tiled at {shown}: {_reason(err)}") from None


def _connect(uri: str, api_key: str | None) -> Container:
    """``from_uri`` with its failures as StorageErrors that show no API key."""
    from tiled.client import from_uri

    try:
        return from_uri(uri, api_key=api_key)
    except httpx.HTTPStatusError as err:
        message = f"Tiled at {uri} rejected the request: {_reason(err)}"
    except httpx.HTTPError as err:
        message = f"cannot reach Tiled at {uri}: {_reason(err)}"
    except RuntimeError as err:
        if "requires API key" not in str(err):
            raise
        message = (
            f"Tiled at {uri} requires an API key (StorageConfig.api_key; DNPU_TILED_API_KEY "
            "for the CLI and the IPython profile)"
        )
    raise StorageError(_redact(message, api_key)) from None


def _runs_container(root: Container, path: str) -> CatalogOfBlueskyRuns:
    path = path.strip("/")
    try:
        node = root[path]
    except KeyError:
        parent_path, _, key = path.rpartition("/")
        parent = root[parent_path] if parent_path else root
        node = parent.create_container(
            key=key, specs=[Spec(_CATALOG_SPEC, version=_CATALOG_SPEC_VERSION)]
        )
    if not any(spec.name == _CATALOG_SPEC for spec in node.specs):
        raise ValueError(
            f"Tiled container {path!r} exists but lacks the {_CATALOG_SPEC} spec "
            f"(specs: {[spec.name for spec in node.specs]}); choose another container name"
        )
    return node


def _queries(
    plan_name: str | None,
    gate: str | None,
    task: str | Sequence[str] | None,
    tag: str | None,
    since: datetime | str | float | None,
    until: datetime | str | float | None,
    scan_id: int | None,
) -> list[Any]:
    queries: list[Any] = []
    if plan_name is not None:
        queries.append(Eq("start.plan_name", plan_name))
    if gate is not None:
        queries.append(Eq("start.gate", gate.upper()))  # stored upper-case, as BooleanGate has it
    if isinstance(task, str):
        queries.append(Eq("start.task.name", task))
    elif task is not None:
        queries.append(In("start.task.name", list(task)))
    if tag is not None:
        queries.append(Contains("start.tags", tag))
    if since is not None:
        queries.append(Comparison("ge", "start.time", _timestamp(since)))
    if until is not None:
        queries.append(Comparison("lt", "start.time", _timestamp(until)))
    if scan_id is not None:
        queries.append(Eq("start.scan_id", int(scan_id)))
    return queries


def _timestamp(value: datetime | str | float) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise ValueError(f"Not an ISO 8601 date or time: {value!r}") from None
    return float(value)


# Storages left open are closed at exit, so the writer's pending documents reach Tiled before
# the server process is stopped. threading's own exit hook runs before the interpreter joins
# non-daemon threads (the "thread" writer's); atexit is the fallback.
_open_storages: set[Storage] = set()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _close_open_storages() -> None:
    for storage in list(_open_storages):
        try:
            storage.close()
        except Exception:
            logger.exception("Could not close %r at exit", storage)


def _register_open(storage: Storage) -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        _open_storages.add(storage)
        if not _exit_hook_registered:
            register = getattr(threading, "_register_atexit", None)
            if register is not None:
                register(_close_open_storages)
            atexit.register(_close_open_storages)
            _exit_hook_registered = True


def _unregister_open(storage: Storage) -> None:
    with _exit_hook_lock:
        _open_storages.discard(storage)
