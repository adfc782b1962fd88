"""Everything that touches other libraries' internals, each with why and which version.

Check these against the installed versions when upgrading tiled, bluesky-tiled-plugins or
Python: each says what it relies on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from ._config import CATALOG_FILE

# Seconds an event is held by the Tiled writer at most before it is written (see tiled_writer).
HOLD_S = 2.0


def register_before_thread_join(hook: Callable[[], None]) -> bool:
    """Call ``hook`` at interpreter exit before non-daemon threads are joined, if possible.

    Storages left open are closed at exit. ``atexit`` hooks run only after the interpreter
    has joined the non-daemon threads; this hook runs before, while they still run.
    ``threading._register_atexit`` is a CPython internal (present since 3.9); this matches
    CPython 3.11.7, whose ``threading._shutdown`` calls such hooks, last registered first,
    before it joins the threads.

    Parameters
    ----------
    hook : callable
        Called without arguments.

    Returns
    -------
    bool
        False where the interpreter has no such hook (the caller relies on ``atexit``).
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        return False
    register(hook)
    return True


@contextlib.contextmanager
def no_catalog_init_if_current(directory: Path) -> Iterator[None]:
    """Skip ``tiled catalog init --if-not-exists`` when it would find nothing to do.

    SimpleTiledServer runs that command on every start, in a new Python process that imports
    tiled: about 3 s, half of opening the embedded storage. When the catalog is stamped with
    the schema revision this tiled requires, the command only checks that and returns.

    Matches tiled 0.2.20: ``SimpleTiledServer.__init__`` (tiled/server/simple.py) imports
    ``tiled.catalog.from_uri`` when called and passes ``init_if_not_exists=True``, which makes
    ``from_uri`` (tiled/catalog/adapter.py) run ``python -m tiled catalog init
    --if-not-exists`` in a subprocess. For as long as the context lasts,
    ``tiled.catalog.from_uri`` is replaced by a wrapper that passes
    ``init_if_not_exists=False``; the catalog's ``alembic_version`` is compared with
    ``tiled.catalog.core.REQUIRED_REVISION`` first. Should tiled move that import, the patch
    is inert (the command runs, as without it).

    Parameters
    ----------
    directory : pathlib.Path
        The embedded server's directory (its ``catalog.db``).
    """
    import sqlite3

    import tiled.catalog
    from tiled.catalog.core import REQUIRED_REVISION

    try:
        catalog = sqlite3.connect(f"{(directory / CATALOG_FILE).as_uri()}?mode=ro", uri=True)
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


def as_v3(run: Any) -> Any:
    """``run`` as a ``BlueskyRunV3`` client when it is SQL-backed (spec ``BlueskyRun`` 3.x).

    ``catalog.v2`` (databroker style) re-registers the BlueskyRun client class in tiled's
    process-wide dispatch table (the copy it makes is shallow), after which every client
    returns v2 runs, whose streams have no per-field nodes. Rebuild SQL-backed runs as v3
    without touching that table, so our callers always get the v3 layout.

    Matches bluesky-tiled-plugins 2.0.12 (what databroker 2.0.2 re-exports):
    ``CatalogOfBlueskyRuns.v2`` (clients/catalog_of_bluesky_runs.py) does
    ``copy.copy(self.structure_clients).set("BlueskyRun", ...)``, and tiled 0.2.20's
    ``OneShotCachedMap`` shares its mapping with the copy; ``BlueskyRunV3``
    (clients/bluesky_run.py) is not exported by the package and is built here with the
    constructor signature of tiled's clients, ``(context, *, item, structure_clients)``.
    """
    from bluesky_tiled_plugins import BlueskyRun
    from bluesky_tiled_plugins.clients.bluesky_run import BlueskyRunV3

    if not isinstance(run, BlueskyRun) or isinstance(run, BlueskyRunV3):
        return run
    for spec in run.item["attributes"]["specs"]:
        if spec["name"] == "BlueskyRun" and str(spec.get("version") or "").startswith("3."):
            return BlueskyRunV3(run.context, item=run.item, structure_clients=run.structure_clients)
    return run


def cache_fastapi_dependants() -> bool:
    """Build each FastAPI dependency graph once, not on every request (server process only).

    Tiled's app sets ``app.dependency_overrides``; with any override, FastAPI's
    ``solve_dependencies`` calls ``get_dependant`` (``inspect.signature`` of every dependency)
    for every dependency of every request. In the embedded server that was about 30 % of its
    CPU per request. The graph of a given dependency never changes while the server runs, so
    the result is kept per set of arguments.

    Matches FastAPI 0.165: ``fastapi.dependencies.utils.get_dependant`` takes keyword
    arguments only (``path``, ``call``, ``name``, ``own_oauth_scopes``,
    ``parent_oauth_scopes``, ``use_cache``, ``scope``, ``concurrency``) and
    ``solve_dependencies`` looks it up as a module global; neither mutates the returned
    ``Dependant``. Should FastAPI change that signature, the patch is skipped.

    Returns
    -------
    bool
        Whether the patch is in place.
    """
    import inspect

    from fastapi.dependencies import utils

    original = utils.get_dependant
    if getattr(original, "_dnpu_cached", False):
        return True
    expected = {
        "path",
        "call",
        "name",
        "own_oauth_scopes",
        "parent_oauth_scopes",
        "use_cache",
        "scope",
        "concurrency",
    }
    if set(inspect.signature(original).parameters) != expected:
        return False
    cache: dict[Any, Any] = {}

    def get_dependant(**kwargs: Any) -> Any:
        try:
            key = tuple(
                tuple(value) if isinstance(value, list) else value
                for value in (kwargs.get(name) for name in sorted(expected))
            )
            hash(key)
        except TypeError:  # an unhashable argument: not cached
            return original(**kwargs)
        dependant = cache.get(key)
        if dependant is None:
            dependant = cache[key] = original(**kwargs)
        return dependant

    get_dependant._dnpu_cached = True  # type: ignore[attr-defined]
    utils.get_dependant = get_dependant
    return True


def uvloop_for_the_server() -> bool:
    """Run the embedded server's event loop on uvloop (server process only).

    ``SimpleTiledServer`` asks uvicorn for the plain asyncio loop. Every catalog query
    completes on aiosqlite's thread and wakes the loop through its self-pipe; with asyncio's
    selector loop that wake-up and the loop's bookkeeping were about a tenth of the server's
    CPU per request, which uvloop (installed with uvicorn's ``standard`` extra) largely saves.

    Matches uvicorn 0.3x: ``uvicorn.config.LOOP_FACTORIES`` maps a ``loop`` setting to the
    import path of its factory, looked up when the server starts. Skipped where uvloop is not
    installed (Windows).

    Returns
    -------
    bool
        Whether the patch is in place.
    """
    try:
        import uvloop  # noqa: F401
        from uvicorn import config
    except ImportError:
        return False
    factories = getattr(config, "LOOP_FACTORIES", None)
    if not isinstance(factories, dict) or "uvloop" not in factories:
        return False
    factories["asyncio"] = factories["uvloop"]
    return True


def one_thread_at_a_time_on_duckdb() -> bool:
    """Let one request at a time use the embedded server's DuckDB connection (server process).

    The tables of every stream live in DuckDB (``storage.duckdb``). tiled hands every caller
    the same DuckDB connection (a ``StaticPool``), and runs table reads and appends on its
    thread pool: a read of a table while the writer appends to one fails on the server
    ("Attempting to execute an unsuccessful or closed pending query result", "No active
    transaction, cannot commit") and soon ends the server process. Here a connection taken
    for DuckDB holds a lock until it is closed.

    Matches tiled 0.2.20: ``tiled.storage.SQLStorage.connect()`` returns the pool's
    connection, and every caller (``tiled.adapters.sql`` and the catalog's deletion of table
    rows) uses it as ``with closing(storage.connect()) as conn``.

    Returns
    -------
    bool
        Whether the patch is in place.
    """
    from tiled.storage import SQLStorage

    connect = SQLStorage.connect
    if getattr(connect, "one_thread_at_a_time", False):
        return True
    lock = threading.RLock()

    class _Held:
        """The connection, with the lock released when it is closed."""

        def __init__(self, conn: Any) -> None:
            self._conn = conn
            self._held = True

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

        def close(self) -> None:
            try:
                self._conn.close()
            finally:
                if self._held:
                    self._held = False
                    lock.release()

    def locked_connect(self: Any) -> Any:
        if self.dialect != "duckdb":
            return connect(self)
        lock.acquire()
        try:
            return _Held(connect(self))
        except BaseException:
            lock.release()
            raise

    locked_connect.one_thread_at_a_time = True  # type: ignore[attr-defined]
    SQLStorage.connect = locked_connect  # type: ignore[method-assign]
    return True


def register_json_seq_export() -> None:
    """Offer runs as ``application/json-seq`` (their documents) from this process's server.

    As a server configuration's ``media_types`` section would.

    Uses tiled's process-wide ``default_serialization_registry``, which ``build_app`` (and so
    ``SimpleTiledServer``) serves when given no registry of its own; the exporter is
    bluesky-tiled-plugins' ``bluesky_tiled_plugins.exporters:json_seq_exporter``, registered
    for the ``BlueskyRun`` spec (tiled 0.2.20, bluesky-tiled-plugins 2.0). It is imported at
    the first export: importing it loads the package's clients (xarray, dask), which took
    about half of the server's start-up.
    """
    from tiled.media_type_registration import default_serialization_registry

    default_serialization_registry.register("BlueskyRun", "application/json-seq", _json_seq_export)


async def _json_seq_export(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """bluesky-tiled-plugins' ``json_seq_exporter`` (an async generator), imported when used."""
    from bluesky_tiled_plugins.exporters import json_seq_exporter

    async for chunk in json_seq_exporter(*args, **kwargs):
        yield chunk


def tiled_writer(
    client: Any,
    batch_size: int,
    max_array_size: int = 0,
    hold_s: float = HOLD_S,
    retry_appends: bool = True,
    defer_closes: bool = False,
) -> Any:
    """bluesky-tiled-plugins' ``TiledWriter``, with named dimensions and fewer requests.

    Four changes to how it writes a run, all in its per-run ``_RunWriter``:

    * **Named dimensions.** An array field whose data key has ``dims`` (event-model's
      ``DataKey.dims``, one name per axis of a reading) gets them, after the leading ``time``
      dimension, so that ``run.primary.read()`` shows ``("time", "case")`` instead of
      ``("time", "dim_int_1")``. Fields without ``dims`` keep TiledWriter's names.
    * **One stream close per stream.** At the stop document TiledWriter closes the live
      stream (``DELETE /stream/close/...``, one request each) of every node it wrote: the run,
      each stream, each table and each array, 46 requests for a training run, a third of all
      its requests. Only the run and its streams are closed here; live subscribers learn
      that the arrays and tables are complete from their stream's and run's close (and from
      the stop document in the run's metadata, written before any close). With
      ``defer_closes`` the stop document does not close them: the writer's ``close_streams()``
      does, for a caller that reports the run complete first (its data and stop document are
      readable before the closes, which only tell live subscribers).
    * **Events held by age as well as by count.** TiledWriter writes a stream's held events
      when ``batch_size`` of them are held, and the rest at the stop document; each write
      costs one request per array field and one per table. Here events are also written
      once the oldest of them has been held ``hold_s`` seconds (at the stream's next event),
      so ``batch_size`` can be large (few requests for a run of many fast steps) while a
      slow run still shows its steps in Tiled within seconds. The writer's ``write_due()``
      writes what has been held too long when no event of its stream comes to trigger it
      (the background writer calls it while it waits), and ``next_write_due()`` tells when
      that will be. ``write_due(new_streams=True)``
      also writes the held events of each stream none of whose events are in Tiled yet (the
      background writer's worker calls it once it has read all the run spooled), so that a
      stream's nodes are made while its run goes on, not after its stop.
      ``write_one_stream()`` writes one stream of those (``every=True``: of any that holds
      events, as a stop document writes them all), for a worker that may turn to another run
      between two streams.
    * **No forced retry of a table append** (``retry_appends=False``). When an append's
      response is lost, TiledWriter sends it again, and the rows are stored twice if the
      server had taken them in. Without it the error reaches the caller, which can rebuild
      the run from its documents.

    Matches bluesky-tiled-plugins 2.0.12: ``TiledWriter._factory`` builds one
    ``writing.tiled_writer._RunWriter`` per run behind a ``RunNormalizer``; ``_RunWriter.event``
    appends each event to ``_internal_data_cache[stream name]`` and writes that list through
    ``_write_internal_data(cache, desc_node=...)`` when it holds ``_batch_size`` events;
    ``_RunWriter.descriptor`` keeps each stream's container client in ``_desc_nodes`` (by
    descriptor uid and by stream name), ``_write_internal_data`` creates array nodes with
    ``desc_node.write_array(array, key=..., metadata=<data key>, dims=..., access_tags=...)``,
    ``stop`` first writes each non-empty cache and ends with ``_close_stream_tree()``, and a
    table's rows go through ``_append_with_retry(df_client, table, desc_name)``. Backup
    callbacks (``backup_directory``) are not used by dnpu_bluesky and not built here.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
        The runs container to write into.
    batch_size : int
        Events per table append or array extension (TiledWriter's ``batch_size``).
    max_array_size : int
        TiledWriter's ``max_array_size`` (0: every array field is an array node).
    hold_s : float
        Seconds an event is held at most before it is written (the stop document writes
        every held event at once).
    retry_appends : bool
        Retry a table append whose response was lost, as TiledWriter does, at the risk of
        rows stored twice (the server may have taken it in). False: raise instead, for a
        caller that rebuilds the run from its documents (the background writer's worker).
    defer_closes : bool
        Leave the live-stream closes of a stopped run to ``close_streams()``.

    Returns
    -------
    TiledWriter
        A writer that routes each run's documents into Tiled.
    """
    from bluesky_tiled_plugins import TiledWriter
    from bluesky_tiled_plugins.writing import tiled_writer as plugin

    class _NamedDimsStream:
        """A stream's container client whose new arrays take their data key's ``dims``."""

        def __init__(self, node: Any) -> None:
            self._node = node

        def __getattr__(self, name: str) -> Any:
            return getattr(self._node, name)

        def write_array(self, array: Any, *, key: str, metadata: dict, dims: Any, **kw: Any):
            named = metadata.get("dims")
            if named and len(named) == getattr(array, "ndim", 0) - 1:
                dims = ("time", *named)
            return self._node.write_array(array, key=key, metadata=metadata, dims=dims, **kw)

    class _RunWriter(plugin._RunWriter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.held_since: dict[str, float] = {}  # stream name -> when its oldest was held
            self.written: set[str] = set()  # streams with events in Tiled
            self.stopped = False
            self.closes_due: list[Any] = []  # nodes whose live stream is still to be closed

        def event(self, doc: dict) -> None:
            stream = self._desc_nodes[doc["descriptor"]].item["id"]
            self.held_since.setdefault(stream, time.monotonic())
            super().event(doc)  # writes the held events when there are batch_size of them
            if not self._internal_data_cache[stream]:
                del self.held_since[stream]
            elif time.monotonic() - self.held_since[stream] >= hold_s:
                self.write_held(stream)  # the others' at their own events, or by write_due

        def write_due(self, new_streams: bool = False) -> None:
            while (stream := self.next_held(new_streams)) is not None:
                self.write_held(stream)

        def next_held(self, new_streams: bool = False, every: bool = False) -> str | None:
            now = time.monotonic()
            return next(
                (
                    stream
                    for stream, since in self.held_since.items()  # the streams holding events
                    if every
                    or now - since >= hold_s
                    or (new_streams and stream not in self.written)
                ),
                None,
            )

        def write_held(self, stream: str) -> None:
            held = self._internal_data_cache[stream]
            self._write_internal_data(held, desc_node=self._desc_nodes[stream])
            held.clear()
            self.held_since.pop(stream, None)

        def _append_with_retry(self, df_client: Any, table: Any, desc_name: str) -> None:
            if retry_appends:
                super()._append_with_retry(df_client, table, desc_name)
            else:
                df_client.append_partition(0, table)

        def _write_internal_data(self, data_cache: list, desc_node: Any) -> None:
            super()._write_internal_data(data_cache, desc_node=desc_node)
            self.written.add(desc_node.item["id"])

        def stop(self, doc: dict) -> None:
            self.held_since.clear()  # the stop writes them all
            self.stopped = True
            super().stop(doc)

        def descriptor(self, doc: dict) -> None:
            super().descriptor(doc)
            node = self._desc_nodes[doc["uid"]]
            if not isinstance(node, _NamedDimsStream):
                node = _NamedDimsStream(node)
            self._desc_nodes[doc["uid"]] = self._desc_nodes[doc["name"]] = node

        def _close_stream_tree(self) -> None:
            if self.root_node is None:
                return
            streams = {node.uri: node for node in self._desc_nodes.values()}
            self.closes_due = [*streams.values(), self.root_node]
            if not defer_closes:
                self.close_streams()

        def close_streams(self) -> None:
            while self.closes_due:
                self.closes_due.pop(0).close_stream()

    class _Writer(TiledWriter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.run_writers: list[_RunWriter] = []

        def next_write_due(self) -> float | None:
            """When (``time.monotonic()``) held events are next due, or None if none are."""
            held = [t for w in self.run_writers for t in w.held_since.values()]
            return min(held) + hold_s if held else None

        def write_due(self, new_streams: bool = False) -> None:
            """Write every stream's held events whose oldest has been held ``hold_s``.

            With ``new_streams``, also those of streams none of whose events are in Tiled yet.
            """
            for run_writer in self.run_writers:
                run_writer.write_due(new_streams)

        def close_streams(self) -> None:
            """Close the live streams of the stopped runs (``defer_closes``)."""
            for run_writer in self.run_writers:
                run_writer.close_streams()

        def write_one_stream(self, new_streams: bool = False, every: bool = False) -> bool:
            """Write one stream's held events that ``write_due`` would write; whether it did.

            With ``every``, those of any stream that holds events (a stop writes them all).
            """
            for run_writer in self.run_writers:
                if (stream := run_writer.next_held(new_streams, every)) is not None:
                    run_writer.write_held(stream)
                    return True
            return False

        def _factory(self, name: str, doc: dict) -> tuple[list, list]:
            run_writer = _RunWriter(
                self.client, batch_size=self._batch_size, max_array_size=self._max_array_size
            )
            self.run_writers = [w for w in self.run_writers if not w.stopped or w.closes_due]
            self.run_writers.append(run_writer)
            normalizer = self._normalizer(
                patches=self.patches, spec_to_mimetype=self.spec_to_mimetype
            )
            normalizer.subscribe(run_writer)
            return [normalizer], []

    return _Writer(client, batch_size=batch_size, max_array_size=max_array_size)
