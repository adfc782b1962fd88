"""The front end: :class:`Storage` (server, client, writer) and the direct writer."""

from __future__ import annotations

import atexit
import functools
import logging
import re
import secrets
import socket
import threading
import time
import uuid
import weakref
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx
from tiled.structures.core import Spec

from .._errors import StorageError
from ._config import (
    StorageConfig,
    check_writable,
    default_spool,
    embedded_directory,
    redact,
    split_api_key,
)
from ._patches import register_before_thread_join
from ._server import (
    ServerAddress,
    ServerBusy,
    ServerProcess,
    running_server,
    server_alive,
    stop_using_server,
    use_server,
)
from ._spawn import start_template
from ._worker import tiled_writer
from ._writer import BackgroundWriter

if TYPE_CHECKING:  # imported where used: bluesky_tiled_plugins alone takes ~2 s to import
    from bluesky_tiled_plugins import CatalogOfBlueskyRuns, TiledWriter
    from tiled.client.container import Container

logger = logging.getLogger(__name__)

# The runs container client of a Storage holds a weak reference to that Storage under this
# name, so that find_runs and load_run can ask the storage to wait for its pending writes.
_STORAGE_ATTRIBUTE = "_dnpu_storage"

_CATALOG_SPEC = "CatalogOfBlueskyRuns"
_CATALOG_SPEC_VERSION = "3.0"  # the SQL-backed layout TiledWriter writes and v3 clients read
#: How often a storage checks that its embedded server still runs.
_WATCH_INTERVAL_S = 1.0


class Storage:
    """An open connection to Tiled that stores every document it is given.

    Use :func:`open_storage` to create one. Subscribe :attr:`writer` to a RunEngine; search and
    read past runs through :attr:`client` (see :func:`find_runs`, :func:`load_run`). Close it
    (``close()``, ``with``) when done; a storage left open is closed (and flushed) at
    interpreter exit. Opening replays runs left in the spool by an earlier session.

    Parameters
    ----------
    config : StorageConfig, optional
        Where to store; ``None`` for the defaults of :class:`StorageConfig`.
    writes : bool
        The session will write runs (see :func:`open_storage`).

    Attributes
    ----------
    config : StorageConfig
        The configuration, with ``directory`` resolved for an embedded server.
    client : CatalogOfBlueskyRuns
        The tiled client node of the runs container; accessing it first waits for pending
        background writes (read-your-writes).
    writer : callable
        ``(name, doc)`` writing documents to Tiled; subscribe it to a RunEngine. A
        :class:`BackgroundWriter` by default (``StorageConfig.writer``).
    errors : list of str
        Storage errors so far (see :class:`BackgroundWriter`).
    uri : str
        Where the server is, without any API key: for an embedded server its loopback URI;
        otherwise ``config.uri`` (less an ``api_key`` query parameter).
    api_key : str or None
        The key to send: ``tiled.client.from_uri(storage.uri, api_key=storage.api_key)``
        connects. The client sends it as a header, so it appears in no URL or log.

    Raises
    ------
    StorageError, ValueError
        As :func:`open_storage`.
    """

    config: StorageConfig
    writer: BackgroundWriter | _Writer
    uri: str
    api_key: str | None

    def __init__(self, config: StorageConfig | None = None, *, writes: bool = False) -> None:
        config = config or StorageConfig()
        if writes and config.writer == "background":
            start_template()
        self._server: ServerProcess | None = None
        self._server_user: int | None = None
        self._watchdog: threading.Thread | None = None
        self._closed = False
        self._closing = threading.Event()
        if (directory := embedded_directory(config)) is not None:
            config = replace(config, directory=directory)
            check_writable(directory)
            self._server_user = use_server(directory)
            try:
                address = self._embedded_server(directory, config.api_key)
            except BaseException:
                stop_using_server(self._server_user)
                raise
            self.uri, api_key = address.uri, address.api_key
        else:
            self.uri, api_key = split_api_key(config.uri, config.api_key)
            _check_reachable(self.uri, api_key)
        self.api_key = api_key
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
                    redact(
                        f"cannot open the runs container {config.container!r} in Tiled at "
                        f"{self.uri}: {_reason(err)}",
                        api_key,
                    )
                ) from None
            self._default_spool = config.spool_directory is None
            if config.writer == "direct":
                self.config = config
                self.writer = _Writer(tiled_writer(self._client, config.batch_size))
            else:
                spool = Path(config.spool_directory or default_spool(config, self.uri))
                config = self.config = replace(config, spool_directory=spool.expanduser())
                check_writable(config.spool_directory, "spool")
                self.writer = BackgroundWriter(
                    functools.partial(_connect_runs, self.uri, api_key, config.container),
                    config.spool_directory,
                    batch_size=config.batch_size,
                    fsync=config.spool_fsync,
                    retry_interval_s=config.retry_interval_s,
                    retry_max_interval_s=config.retry_max_interval_s,
                    process=config.writer == "background",
                )
            # find_runs and load_run, given this client, ask this storage to wait for its
            # writes (also through a client taken from ``storage.client`` long before).
            setattr(self._client, _STORAGE_ATTRIBUTE, weakref.ref(self))
            if config.uri is None:
                self._watchdog = threading.Thread(
                    target=self._watch_server, name="dnpu-tiled-server-watchdog", daemon=True
                )
                self._watchdog.start()
        except BaseException:
            self._root.context.close()
            self._shutdown_server()
            raise
        _register_open(self)

    def _embedded_server(
        self, directory: Path, api_key: str | None, port: int = 0
    ) -> ServerAddress:
        """Find the server that another process runs on ``directory``, or start one."""
        address = running_server(directory)
        if address is not None:
            return address
        try:
            self._server = ServerProcess(
                directory, api_key=api_key or secrets.token_hex(16), port=port
            )
            return self._server.address
        except ServerBusy:  # another session started it at the same moment
            address = running_server(directory)
            if address is None:
                raise StorageError(
                    f"the embedded Tiled server of {directory} was started and stopped "
                    "by another process meanwhile; try again"
                ) from None
            return address

    def _watch_server(self) -> None:
        """Restart the embedded server, on the same port and key, when it has died.

        A server that another session started stops only once every storage using it has
        closed, so one that is gone while this storage is open has died (killed, crashed).
        Restarted at the same address, it is found again by every client of this storage,
        the writer's worker included, which retries what failed meanwhile.
        """
        directory = Path(self.config.directory)
        port = urlsplit(self.uri).port or 0
        while not self._closing.wait(_WATCH_INTERVAL_S):
            if server_alive(directory):
                continue
            logger.error("The embedded Tiled server of %s has died; restarting it", directory)
            dead, self._server = self._server, None
            if dead is not None:
                dead.close()
            try:
                address = self._embedded_server(directory, self.api_key, port)
            except StorageError as err:
                logger.error("Could not restart the embedded Tiled server: %s", err)
                continue
            if address.uri != self.uri:  # another session restarted it elsewhere
                logger.error(
                    "The embedded Tiled server of %s came back at another address; close "
                    "and reopen the storage",
                    directory,
                )
                return

    @property
    def client(self) -> CatalogOfBlueskyRuns:
        """The runs container, once the writer's pending writes are in (see wait_for_writes)."""
        self.wait_for_writes()
        return self._client

    def wait_for_writes(self, run: str | None = None) -> None:
        """Wait for the background writer's pending documents, before a read from Tiled.

        So a run is found, whole, right after ``RE(plan)`` returned (read-your-writes).
        ``run`` (a start uid or its prefix): that run's documents only, which the writer then
        writes first (:func:`load_run`); ``None``: all (:attr:`client`, :func:`find_runs`).
        Waits up to ``config.flush_timeout_s`` (a timeout is logged as a warning, not
        raised); not while Tiled writes are failing (a warning is logged), nor for a closed
        storage or the direct writer (which has written everything when it returns).
        """
        writer = self.writer
        if self._closed or not isinstance(writer, BackgroundWriter):
            return
        if writer.failing:
            logger.warning("Tiled writes are failing; reads may miss the most recent documents")
            return
        try:
            writer.flush(self.config.flush_timeout_s, run=run)
        except StorageError as err:
            logger.warning("Reading from Tiled before all writes completed: %s", err)

    @property
    def errors(self) -> list[str]:
        """Every storage error so far (the background writer's failed writes), oldest first.

        Returns
        -------
        list of str
            A copy; empty for the direct writer.
        """
        return list(getattr(self.writer, "errors", []))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every document given to :attr:`writer` so far is in Tiled.

        Events of a run that is still open may stay in the writer's batch (``batch_size``)
        until the run's stop document; they are already in the run's spool file. A no-op
        for the direct writer.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait; ``None``: as long as it takes.

        Raises
        ------
        StorageError
            Documents could not be written within ``timeout`` seconds. They stay spooled and
            are retried.
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
        self._closing.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join()
        server, self._server = self._server, None
        user, self._server_user = self._server_user, None
        _unregister_open(self)
        stop_using_server(user)  # first: the server stops only when no storage uses it
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
            where = self.uri
        state = "closed" if self._closed else "open"
        return f"<Storage {state} {where} container={self.config.container!r}>"


def open_storage(config: StorageConfig | None = None, *, writes: bool = False) -> Storage:
    """Open the storage described by ``config`` (default: embedded server, user data dir).

    Parameters
    ----------
    config : StorageConfig, optional
        Where to store; ``None`` for the defaults of :class:`StorageConfig`.
    writes : bool
        The session will write runs: the background writer's worker process starts
        importing while the storage opens (about a second sooner for the first run), which a
        storage opened only to read would spend for nothing.

    Returns
    -------
    Storage
        An open storage; close it when done.

    Raises
    ------
    StorageError
        The remote server cannot be reached (connection refused, unknown host, an invalid
        URI) or rejects the request (e.g. a wrong API key); the embedded server's directory
        cannot be written, or its server fails to start. The message names the URI without
        its ``api_key`` query parameter.
    ValueError
        The configured container exists but is not a ``CatalogOfBlueskyRuns``.
    """
    return Storage(config, writes=writes)


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


def _connect_runs(uri: str, api_key: str | None, container: str) -> CatalogOfBlueskyRuns:
    """Connect a fresh client of a runs container (the background writer's ``connect``)."""
    from tiled.client import from_uri

    return _runs_container(from_uri(uri, api_key=api_key), container)


def storage_of(client: Any) -> Storage | None:
    """Find the storage whose runs container ``client`` is (see :attr:`Storage.client`).

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
        A runs container client, e.g. ``storage.client``, taken at any time.

    Returns
    -------
    Storage or None
        None for a client that no :class:`Storage` handed out, or whose storage is gone.
    """
    reference = getattr(client, _STORAGE_ATTRIBUTE, None)
    return reference() if reference is not None else None


def replay_spool(
    storage: Storage, directory: Path | str | None = None, timeout: float | None = None
) -> list[str]:
    """Push runs left in a spool directory (e.g. by a crashed session) into ``storage``.

    Parameters
    ----------
    storage : Storage
        An open storage with the background writer.
    directory : pathlib.Path or str, optional
        The spool directory to replay; default ``storage.config.spool_directory`` (which
        opening the storage already replays).
    timeout : float, optional
        Seconds to wait for them to be in Tiled (``None``: no limit).

    Returns
    -------
    list of str
        The start uids of the replayed runs (a run that never got its stop document is
        closed with ``exit_status="abort"``).

    Raises
    ------
    TypeError
        The storage has no background writer.
    StorageError
        Not all of them got into Tiled within ``timeout`` (they stay spooled).
    """
    writer = storage.writer
    if not isinstance(writer, BackgroundWriter):
        raise TypeError("replay_spool needs a storage with StorageConfig(writer='background')")
    uids = writer.adopt_leftovers(directory)
    writer.flush(timeout)
    return uids


# How long the reachability probe waits for a TCP connection before leaving the question to
# the tiled client (which retries): a refused connection or an unknown host answers at once.
_PROBE_TIMEOUT_S = 5.0


def _reason(err: BaseException) -> str:
    """Shorten an error to its reason: "connection refused" for ``[Errno 111] ...``."""
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
    shown = redact(uri, api_key)
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
    """Connect with ``from_uri``, its failures as StorageErrors that show no API key."""
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
    raise StorageError(redact(message, api_key)) from None


def _runs_container(root: Container, path: str) -> CatalogOfBlueskyRuns:
    """Open the ``CatalogOfBlueskyRuns`` container at ``path`` under ``root``, made if missing."""
    path = path.strip("/")
    try:
        node = root[path]
    except KeyError:
        parent_path, _, key = path.rpartition("/")
        parent = root[parent_path] if parent_path else root
        try:
            node = parent.create_container(
                key=key, specs=[Spec(_CATALOG_SPEC, version=_CATALOG_SPEC_VERSION)]
            )
        except httpx.HTTPStatusError as err:
            if err.response.status_code != httpx.codes.CONFLICT:
                raise
            node = root[path]  # another session created it meanwhile
    if not any(spec.name == _CATALOG_SPEC for spec in node.specs):
        raise ValueError(
            f"Tiled container {path!r} exists but lacks the {_CATALOG_SPEC} spec "
            f"(specs: {[spec.name for spec in node.specs]}); choose another container name"
        )
    return node


# Storages left open are closed at exit, so the writer's pending documents reach Tiled before
# the server process is stopped: before the interpreter joins non-daemon threads where it
# can, otherwise (and in any case; closing twice does nothing) by atexit.
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
            register_before_thread_join(_close_open_storages)
            atexit.register(_close_open_storages)
            _exit_hook_registered = True


def _unregister_open(storage: Storage) -> None:
    with _exit_hook_lock:
        _open_storages.discard(storage)
