"""The writer's worker (spool files -> TiledWriter), and replay of stored runs as documents.

The worker runs in a process of its own (or on a thread): it reads each run's spool file in
order, feeds it to a ``TiledWriter`` and, after a failed write, rebuilds the run in Tiled
from its first record.

Replay: a run written by ``TiledWriter`` (the ``BlueskyRun`` 3.x layout) keeps its start and
stop documents in the run's metadata, each stream's descriptors in the stream's metadata and
the events' readings in the stream's table (``internal``) and arrays.
:func:`export_documents` turns that back into ``(name, doc)`` pairs in emission order:
``start``, each stream's ``descriptor`` before its first event, the ``event`` documents in
time order, ``stop``.

When the server offers the run as ``application/json-seq`` (a server configured with
bluesky-tiled-plugins' ``json_seq_exporter``), the server's export is used; otherwise (e.g.
``tiled serve catalog``, whose runs export only as JSON and HDF5) the documents are rebuilt on
the client from the run's metadata and data. Either way they validate against event-model's
schemas. Event uids are not stored by ``TiledWriter``; rebuilt events get uids derived from
their descriptor uid and sequence number, so two exports of one run are identical.

Examples
--------
>>> run = load_run(storage.client, uid)                           # doctest: +SKIP
>>> for name, doc in export_documents(run): ...                   # doctest: +SKIP
>>> copy_run(run, other_storage)                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._patches import tiled_writer as patched_tiled_writer
from ._server import become_background_process
from ._spawn import ForkedWorker, fork_worker, start_python
from ._spool import CorruptSpool, abort_stop, close_quietly, decode, read_record

if TYPE_CHECKING:
    from bluesky_tiled_plugins import CatalogOfBlueskyRuns, TiledWriter

    from ._store import Storage


class _WorkerRun:
    """The worker's side of one run's spool file."""

    def __init__(self, uid: str, path: str, written: int, leftover: bool) -> None:
        self.uid = uid
        self.path = Path(path)
        self.written = written
        self.leftover = leftover
        self.sent = 0
        self.reset = True  # (re)build the run in Tiled from the first record before writing
        # Whether Tiled may hold part of the run: a run of an earlier session, or one whose
        # write failed; a fresh run of this session is created without looking it up first.
        self.maybe_in_tiled = leftover
        self.tiled_writer: TiledWriter | None = None
        self.reader: Any = None

    def has_records(self) -> bool:
        """Whether records of its spool file are still to be written (or it is to be rebuilt)."""
        return self.sent < self.written or self.reset

    def write_due(self) -> float | None:
        """When the Tiled writer's held events are due (``time.monotonic()``), if any."""
        return None if self.tiled_writer is None else self.tiled_writer.next_write_due()


def start_worker_process() -> subprocess.Popen | ForkedWorker:
    """Start the worker in a process of its own, with its end of the pipe as ``.conn``.

    It is forked from this process's worker template (:mod:`._spawn`), which has imported
    what the worker uses, or where that is not possible started as ``python -c``. Unlike
    multiprocessing's spawn, neither re-imports the user's ``__main__`` script; the worker
    runs in its own session, so a Ctrl-C meant for the RunEngine does not kill it, at nice
    +10. It talks over a socket pair (multiprocessing Connection framing).
    """
    from multiprocessing.connection import Connection

    forked = fork_worker()
    if forked is not None:
        return forked
    worker, ours = start_python("_worker", "_worker_process")
    worker.conn = Connection(ours.detach())  # type: ignore[attr-defined]
    return worker


def _worker_process() -> None:
    """Entry point of a worker process started on its own (see ``start_worker_process``)."""
    serve_worker(int(sys.argv[1]))


def serve_worker(fd: int) -> None:
    """Be the writer's worker on the pipe ``fd``, in this process, until told to quit.

    Parameters
    ----------
    fd : int
        This process's end of the pipe to the writer; the writer first sends the arguments of
        :func:`worker_main`.
    """
    from multiprocessing.connection import Connection

    become_background_process()
    conn = Connection(fd)
    try:
        connect, batch_size, retry = conn.recv()
    except EOFError:
        return
    worker_main(conn, connect, batch_size, retry, exit_when_orphaned=True)


def worker_main(
    conn: Any,
    connect: Callable[[], CatalogOfBlueskyRuns],
    batch_size: int,
    retry: tuple[float, float],
    *,
    exit_when_orphaned: bool = False,
) -> None:
    """Run the writer's worker: spool files -> TiledWriter, in a process or on a thread.

    Parameters
    ----------
    conn : multiprocessing.connection.Connection
        The pipe to the writer.
    connect : callable
        Returns a client of the runs container.
    batch_size : int
        ``TiledWriter``'s batch size.
    retry : tuple of (float, float)
        First and longest wait between retries, in seconds.
    exit_when_orphaned : bool
        End this process at once when the writer's process is gone (its pipe closed without
        a ``quit``): what is not in Tiled yet stays spooled for the next session, and a
        request to Tiled in flight would otherwise keep the process alive for its retries.
    """
    _SpoolWorker(conn, connect, batch_size, retry, exit_when_orphaned).run()


class _SpoolWorker:
    def __init__(
        self, conn: Any, connect: Callable, batch_size: int, retry: tuple, exit_when_orphaned: bool
    ) -> None:
        self._conn = conn
        self._exit_when_orphaned = exit_when_orphaned
        self._connect = connect
        self._batch_size = batch_size
        self._retry = retry
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._runs: dict[str, _WorkerRun] = {}
        self._wanted: set[str] = set()  # runs a reader waits for: written before the others
        self._closes: list[TiledWriter] = []  # writers of runs in Tiled, streams still open
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
                if self._exit_when_orphaned:
                    os._exit(0)
                message = ("abandon",)
            with self._cond:
                kind = message[0]
                if kind == "run":
                    _, uid, path, written, leftover = message
                    self._runs[uid] = _WorkerRun(uid, path, written, leftover)
                elif kind == "written":
                    if (run := self._runs.get(message[1])) is not None:
                        run.written = message[2]
                elif kind == "wanted":
                    if message[1] in self._runs:
                        self._wanted.add(message[1])
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
                    due = [r for r in self._runs.values() if r.has_records() or r.leftover]
                    run = next((r for r in due if r.uid in self._wanted), due[0] if due else None)
                    if run is not None or self._closes:
                        break
                    if self._quit:
                        return
                    # Events the Tiled writer holds are written once held long enough.
                    due, run = min(
                        (
                            (due, r)
                            for r in self._runs.values()
                            if (due := r.write_due()) is not None
                        ),
                        default=(None, None),
                        key=lambda pair: pair[0],
                    )
                    if run is not None and due <= time.monotonic():
                        break
                    self._cond.wait(None if due is None else due - time.monotonic())
            if run is None:
                self._close_streams()
                continue
            try:
                self._write_pending(run)
            except CorruptSpool as err:
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
            if self._preempted(run):
                self._send(("progress", run.uid, run.sent))
                return
            record = read_record(run.reader)
            name, doc = decode(record)
            if name == "stop" and run.tiled_writer.write_one_stream(every=True):
                run.reader.seek(run.sent)  # the stop again, once the next stream is written
                continue
            run.tiled_writer(name, doc)
            run.sent += len(record)
            if name == "stop":
                self._done(run, "done")
                return
        while not self._preempted(run) and run.tiled_writer.write_one_stream(new_streams=True):
            pass  # one stream at a time: a run that a reader waits for may come first
        self._send(("progress", run.uid, run.sent))
        if run.leftover and run.sent >= end:  # the crashed session never sent its stop
            reason = (
                "the run's spool file ends before its stop document (the session ended, or its "
                "spool disk was full, before it was spooled); closed on replay"
            )
            run.tiled_writer("stop", abort_stop(run.uid, reason))
            self._done(run, "done")

    def _close_streams(self) -> None:
        """Close the live streams of one run reported in Tiled, when nothing is to be written."""
        writer = self._closes.pop(0)
        try:
            writer.close_streams()
        except Exception:
            pass  # a close only tells live subscribers; the run and its stop are in Tiled

    def _preempted(self, run: _WorkerRun) -> bool:
        """Whether another run that a reader waits for has documents to write first."""
        with self._cond:
            return run.uid not in self._wanted and any(
                r.uid in self._wanted and r.has_records() for r in self._runs.values()
            )

    def _rebuild(self, run: _WorkerRun) -> bool:
        """Start the run over in Tiled; True when there is nothing (more) to write."""
        close_quietly(run.reader)
        run.reader, run.tiled_writer, run.sent = None, None, 0
        self._send(("progress", run.uid, 0))
        client = self._client
        node = None
        if run.maybe_in_tiled:
            try:
                node = client[run.uid]
            except KeyError:
                pass
        run.maybe_in_tiled = True
        if node is not None:
            if "stop" in (node.metadata or {}):  # complete in Tiled already (spool not deleted)
                self._done(run, "done")
                return True
            client.delete_contents(run.uid, recursive=True, external_only=False)
        if run.written == 0 and run.leftover:  # crashed before the start document was spooled
            self._done(run, "done")
            return True
        run.tiled_writer = tiled_writer(client, self._batch_size, from_spool=True)
        run.reset = False
        return False

    def _done(self, run: _WorkerRun, kind: str) -> None:
        close_quietly(run.reader)
        run.reader = None
        if kind == "done" and run.tiled_writer is not None:
            self._closes.append(run.tiled_writer)  # its live streams: closed once idle
        with self._cond:
            self._runs.pop(run.uid, None)
            self._wanted.discard(run.uid)
        self._send((kind, run.uid))


def tiled_writer(
    client: CatalogOfBlueskyRuns, batch_size: int, *, from_spool: bool = False
) -> TiledWriter:
    """Make the ``TiledWriter`` of one run (or of the direct writer) into the runs container.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
        The runs container.
    batch_size : int
        Events per table append or array extension.
    from_spool : bool
        The documents come from a spool file, and a failed write rebuilds the run from it: a
        table append whose response was lost raises rather than being sent again (which could
        store its rows twice), and the live streams of a stopped run are closed by the
        writer's ``close_streams()`` (the worker's, once it has reported the run in Tiled).

    Returns
    -------
    TiledWriter
        bluesky-tiled-plugins' writer with named dimensions and one live-stream close per
        stream (see :func:`dnpu_bluesky.storage._patches.tiled_writer`).
    """
    # max_array_size=0: every array field goes to Zarr. Small arrays (<= 16 values) would
    # otherwise go into the SQL table, where the stream's xarray view returns them as strings.
    return patched_tiled_writer(
        client,
        batch_size,
        max_array_size=0,
        retry_appends=not from_spool,
        defer_closes=from_spool,
    )


# -- replay: a stored run as Bluesky documents ---------------------------------------------

_JSON_SEQ = "application/json-seq"
# Event uids of rebuilt events: uuid5(namespace, f"{descriptor_uid}/{seq_num}").
_EVENT_NAMESPACE = uuid.UUID("6f1c1b5e-4a1e-4d55-9f0b-2f6d0f7a3c11")


def export_documents(run: Any, *, use_server_export: bool = True) -> Iterator[tuple[str, dict]]:
    """Yield the Bluesky documents of a stored run, ``(name, doc)``, in emission order.

    Parameters
    ----------
    run : BlueskyRun
        A run node from Tiled (e.g. ``load_run(storage.client, uid)``), ``BlueskyRun`` 3.x
        layout, as ``TiledWriter`` writes it.
    use_server_export : bool
        Use the server's ``application/json-seq`` export of the run when the server offers
        it; ``False`` always rebuilds the documents on the client.

    Yields
    ------
    tuple of (str, dict)
        ``("start", doc)``, then ``descriptor`` and ``event`` documents, then
        ``("stop", doc)`` if the run has a stop document. Readings are plain Python values
        (lists for arrays).

    Raises
    ------
    NotImplementedError
        The run has externally stored data (stream resources), which the client-side
        rebuild does not reconstruct; use a server with the JSON-seq exporter for such runs.
    """
    if use_server_export and _JSON_SEQ in (getattr(run, "formats", None) or ()):
        for document in run.documents():
            if isinstance(document, dict):  # {"name": ..., "doc": ...} records
                yield document["name"], document["doc"]
            else:
                name, doc = document
                yield name, doc
        return
    yield from _rebuild_documents(run)


def copy_run(run: Any, storage: Storage) -> str:
    """Write every document of ``run`` into ``storage`` (its runs container).

    The copy keeps the start document's uid, so the run is found in the target container
    under the same uid (``load_run(storage.client, uid)``).

    Parameters
    ----------
    run : BlueskyRun
        A stored run, as for :func:`export_documents`.
    storage : Storage
        The open storage to copy into (its :attr:`Storage.writer`).

    Returns
    -------
    str
        The run's start uid.

    Raises
    ------
    ValueError
        The run has no start document.
    """
    uid = None
    for name, doc in export_documents(run):
        if name == "start":
            uid = doc["uid"]
        storage.writer(name, doc)
    if uid is None:
        raise ValueError("The run has no start document")
    return uid


def _rebuild_documents(run: Any) -> Iterator[tuple[str, dict]]:
    metadata = run.metadata
    start = _plain(dict(metadata["start"]))
    timeline: list[tuple[float, int, int, str, dict]] = []
    for order, stream_name in enumerate(run):
        stream = run[stream_name]
        if "BlueskyEventStream" not in {spec.name for spec in stream.specs}:
            continue
        descriptors = [_plain(doc) for doc in stream.descriptors]
        events = _stream_events(stream, descriptors)
        first_event_time = {}
        for event in events:
            first_event_time.setdefault(event["descriptor"], event["time"])
        for descriptor in descriptors:
            when = min(descriptor["time"], first_event_time.get(descriptor["uid"], float("inf")))
            timeline.append((when, 0, order, "descriptor", descriptor))
        for event in events:
            timeline.append((event["time"], 1, order, "event", event))
    timeline.sort(key=lambda item: (item[0], item[1], item[2], item[4].get("seq_num", 0)))
    yield "start", start
    for _, _, _, name, doc in timeline:
        yield name, doc
    stop = metadata.get("stop")
    if stop:
        yield "stop", _plain(dict(stop))


def _stream_events(stream: Any, descriptors: list[dict]) -> list[dict]:
    base = stream.base
    parts = list(base)
    data_keys = descriptors[0]["data_keys"]
    external = [key for key in parts if data_keys.get(key, {}).get("external")]
    if external:
        raise NotImplementedError(
            f"Stream {descriptors[0]['name']!r} has externally stored data {external}; "
            "rebuilding stream resources on the client is not supported (export the run "
            f"from a server that offers {_JSON_SEQ})"
        )
    data: dict[int, dict[str, Any]] = {}
    timestamps: dict[int, dict[str, float]] = {}
    times: dict[int, float] = {}
    table_timestamps: dict[int, dict[str, float]] = {}
    if "internal" in parts:
        table = base["internal"].read()
        keys = [c for c in table.columns if c not in ("seq_num", "time") and c[:3] != "ts_"]
        ts_columns = [c for c in table.columns if c.startswith("ts_")]
        for row in table.to_dict(orient="records"):
            seq_num = int(row["seq_num"])
            times[seq_num] = float(row["time"])
            data[seq_num] = {key: _plain(row[key]) for key in keys}
            table_timestamps[seq_num] = {c[3:]: float(row[c]) for c in ts_columns}
            timestamps[seq_num] = {
                key: table_timestamps[seq_num].get(key, times[seq_num]) for key in keys
            }
    for key in sorted(set(parts) - {"internal"}):
        values = base[key].read()
        seq_nums = sorted(data) if data else list(range(1, len(values) + 1))
        for seq_num, value in zip(seq_nums, values, strict=False):
            data.setdefault(seq_num, {})[key] = _plain(value)
            timestamps.setdefault(seq_num, {})[key] = table_timestamps.get(seq_num, {}).get(
                key, times.get(seq_num, 0.0)
            )
    events = []
    for seq_num in sorted(data):
        when = times.get(seq_num, 0.0)
        descriptor = descriptors[0]
        for later in descriptors[1:]:  # configuration changed: later descriptors take over
            if later["time"] <= when:
                descriptor = later
        events.append(
            {
                "uid": str(uuid.uuid5(_EVENT_NAMESPACE, f"{descriptor['uid']}/{seq_num}")),
                "time": when,
                "seq_num": seq_num,
                "descriptor": descriptor["uid"],
                "data": data[seq_num],
                "timestamps": timestamps[seq_num],
                "filled": {},
            }
        )
    return events


def _plain(value: Any) -> Any:
    """Numpy arrays and scalars (also nested in dicts and lists) as plain Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
