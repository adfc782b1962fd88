"""Every Bluesky document into Tiled: an embedded server by default, a remote one by URI.

The embedded server (:class:`tiled.server.SimpleTiledServer`) keeps its catalog (SQLite),
tabular data (DuckDB) and arrays (Zarr) in one local directory, so runs persist across
sessions. Runs are written by bluesky-tiled-plugins' ``TiledWriter`` into a container with
the ``CatalogOfBlueskyRuns`` (3.0) spec, the layout that the tiled client and databroker 2
search and read (``run["primary"]["field"].read()``, ``catalog.v2[uid].primary.read()``).

Example:
    >>> with open_storage() as storage:                       # doctest: +SKIP
    ...     RE.subscribe(storage.writer)
    ...     (uid,) = RE(count([det])).run_start_uids
    ...     load_run(storage.client, uid)["primary"]["det"].read()
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import platformdirs
from bluesky_tiled_plugins import BlueskyRun, CatalogOfBlueskyRuns, TiledWriter
from bluesky_tiled_plugins.clients.bluesky_run import BlueskyRunV3
from tiled.client import from_uri
from tiled.client.container import Container
from tiled.queries import Comparison, Contains, Eq
from tiled.structures.core import Spec

__all__ = ["Storage", "StorageConfig", "find_runs", "load_run", "open_storage"]

logger = logging.getLogger(__name__)

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
    """

    directory: Path | None = None
    uri: str | None = None
    api_key: str | None = None
    container: str = "runs"
    batch_size: int = 20

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


class Storage:
    """An open connection to Tiled that stores every document it is given.

    Use :func:`open_storage` to create one. Subscribe :attr:`writer` to a RunEngine; search and
    read past runs through :attr:`client` (see :func:`find_runs`, :func:`load_run`). Close it
    (``close()``, ``with``) when done; an embedded server left open is closed at interpreter
    exit.

    Attributes:
        config: The configuration, with ``directory`` resolved for an embedded server.
        client: The tiled client node of the runs container (a ``CatalogOfBlueskyRuns``).
        writer: Callable ``(name, doc)`` writing documents to Tiled; subscribe it to a RunEngine.
        uri: Where the server is: for an embedded server its loopback URI including the API
            key (``tiled.client.from_uri(storage.uri)`` connects); otherwise ``config.uri``.
    """

    config: StorageConfig
    client: CatalogOfBlueskyRuns
    writer: _Writer
    uri: str

    def __init__(self, config: StorageConfig | None = None) -> None:
        config = config or StorageConfig()
        self._server: Any = None
        self._closed = False
        if config.uri is None:
            from tiled.server import SimpleTiledServer

            directory = Path(config.directory or _default_directory()).expanduser()
            config = replace(config, directory=directory)
            self._server = SimpleTiledServer(directory, api_key=config.api_key)
            _register_open(self)
            self.uri = self._server.uri
            api_key = None  # already in the embedded server's URI
        else:
            self.uri = config.uri
            api_key = config.api_key
        self.config = config
        try:
            self._root = from_uri(self.uri, api_key=api_key)
        except BaseException:
            self._shutdown_server()
            raise
        try:
            self.client = _runs_container(self._root, config.container)
            # max_array_size=0: every array field goes to Zarr. Small arrays (<= 16 values)
            # would otherwise go into the SQL table, where the stream's xarray view returns
            # them as strings.
            self.writer = _Writer(
                TiledWriter(self.client, batch_size=config.batch_size, max_array_size=0)
            )
        except BaseException:
            self._root.context.close()
            self._shutdown_server()
            raise

    def close(self) -> None:
        """Write what the writer still holds, then close the client and the server.

        A run whose stop document never arrived is closed with a stop document of
        ``exit_status="abort"`` so that its buffered events reach Tiled. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.writer.flush()
        except Exception:
            logger.exception("Could not flush the Tiled writer; unsaved events are lost")
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
        ValueError: The configured container exists but is not a ``CatalogOfBlueskyRuns``.
    """
    return Storage(config)


def find_runs(
    client: Container,
    *,
    plan_name: str | None = None,
    gate: str | None = None,
    tag: str | None = None,
    since: datetime | str | float | None = None,
    until: datetime | str | float | None = None,
    scan_id: int | None = None,
    limit: int | None = None,
) -> list[BlueskyRun]:
    """Search past runs by their start document, newest first.

    Args:
        client: The runs container, e.g. ``storage.client``.
        plan_name: Bluesky's ``plan_name`` (e.g. ``"train_boolean_gate"``).
        gate: The start document's ``gate`` key (e.g. ``"XOR"``).
        tag: One entry of the start document's ``tags`` list.
        since: Runs started at or after this time: a datetime (naive means local time), an
            ISO 8601 string (``"2025-03-01"``, ``"2025-03-01T14:00"``) or epoch seconds.
        until: Runs started strictly before this time (same forms as ``since``).
        scan_id: Bluesky's ``scan_id``.
        limit: Return at most this many (the newest).

    Returns:
        The matching run nodes, newest first.
    """
    results = client
    for query in _queries(plan_name, gate, tag, since, until, scan_id):
        results = results.search(query)
    values = results.sort(("start.time", -1)).values()
    runs = values.head(limit) if limit is not None else values
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


def _as_v3(run: Any) -> Any:
    # ``catalog.v2`` (databroker style) re-registers the BlueskyRun client class in tiled's
    # process-wide dispatch table (the copy it makes is shallow), after which every client
    # returns v2 runs, whose streams have no per-field nodes. Rebuild SQL-backed runs as v3
    # without touching that table, so our callers always get the v3 layout.
    if not isinstance(run, BlueskyRun) or isinstance(run, BlueskyRunV3):
        return run
    for spec in run.item["attributes"]["specs"]:
        if spec["name"] == "BlueskyRun" and str(spec.get("version") or "").startswith("3."):
            return BlueskyRunV3(run.context, item=run.item, structure_clients=run.structure_clients)
    return run


def _default_directory() -> Path:
    return platformdirs.user_data_path("dnpu-bluesky") / "tiled"


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
    tag: str | None,
    since: datetime | str | float | None,
    until: datetime | str | float | None,
    scan_id: int | None,
) -> list[Any]:
    queries: list[Any] = []
    if plan_name is not None:
        queries.append(Eq("start.plan_name", plan_name))
    if gate is not None:
        queries.append(Eq("start.gate", gate))
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


# SimpleTiledServer runs uvicorn on a non-daemon thread. The interpreter joins such threads
# *before* running atexit handlers, so a server closed only via atexit hangs the exit.
# threading's own exit hook runs before that join; atexit is the fallback.
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
