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

Stored runs turn back into Bluesky documents with :func:`export_documents`, and
:func:`copy_run` writes one into another storage.

The modules are private; every public name is here. ``_config`` (:class:`StorageConfig`),
``_store`` (:class:`Storage`, the direct writer), ``_queries`` (:func:`find_runs`,
:func:`load_run`), ``_spool`` (the spool file format), ``_writer``
(:class:`BackgroundWriter`), ``_worker`` (its worker; :func:`export_documents`), ``_server``
(the embedded server's process) and ``_patches`` (what touches other libraries' internals).

Examples
--------
>>> with open_storage() as storage:                       # doctest: +SKIP
...     RE.subscribe(storage.writer)
...     (uid,) = RE(count([det])).run_start_uids
...     load_run(storage.client, uid)["primary"]["det"].read()
"""

from .._errors import StorageError
from ._config import StorageConfig, creates_catalog, default_directory, embedded_directory
from ._queries import find_runs, load_run
from ._store import Storage, open_storage, replay_spool
from ._worker import copy_run, export_documents
from ._writer import BackgroundWriter, StorageWarning

__all__ = [
    "BackgroundWriter",
    "Storage",
    "StorageConfig",
    "StorageError",
    "StorageWarning",
    "copy_run",
    "creates_catalog",
    "default_directory",
    "embedded_directory",
    "export_documents",
    "find_runs",
    "load_run",
    "open_storage",
    "replay_spool",
]
