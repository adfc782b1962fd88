"""Configuration: where documents are stored, and the checks and names derived from it."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import platformdirs

from .._errors import StorageError


@dataclass(frozen=True)
class StorageConfig:
    """Where Bluesky documents are stored.

    Attributes
    ----------
    directory : pathlib.Path or None
        Storage of the embedded server (catalog, tables, arrays, logs). ``None`` means
        ``platformdirs.user_data_path("dnpu-bluesky") / "tiled"`` (see
        :func:`default_directory`). Ignored when ``uri`` is set.
    uri : str or None
        A remote Tiled server (``http://host:8000``, optionally with a path to a container's
        parent). When set, no embedded server is started.
    api_key : str or None
        Key for the remote server; for the embedded server, the key it accepts (alphanumeric;
        random when ``None``).
    container : str
        Name (or ``/``-separated path) of the ``CatalogOfBlueskyRuns`` container that holds
        the runs; the last level is created if missing.
    batch_size : int
        Events (per stream) the writer holds in memory at most before writing them to Tiled.
        Held events are also written once the oldest has been held 2 s (by the ``"direct"``
        writer: at the next event after that), a stream's first ones as soon as the
        background writer's worker has read all their run spooled, and the rest at the run's
        stop document; each write costs one request per array field and one per table, so
        fewer, larger writes get a run into Tiled sooner. 1 writes each event at once (live
        view in Tiled) but costs an HTTP round trip per event: measured 40 ms for a scalar
        event, 110 ms for a 10k-sample waveform event on a 2-core machine.
    writer : {"background", "thread", "direct"}
        ``"background"`` (default): documents are appended to a local spool file on the
        RunEngine's thread and written to Tiled by a worker process, so Tiled's latency and
        outages never reach the RunEngine (see :class:`BackgroundWriter`). ``"thread"``: the
        same with the worker on a thread of this process (no extra process, but its CPU work
        competes for the GIL). ``"direct"``: the plain ``TiledWriter`` runs inside the
        RunEngine's callback.
    spool_directory : pathlib.Path or None
        Where the background writer keeps its spool files (one msgpack file per run, deleted
        once the run's stop document is in Tiled). ``None``: the ``spool/<container>``
        subdirectory of the embedded server's directory, or for a remote server
        ``platformdirs.user_data_path("dnpu-bluesky") / "spool" / "<host>_<port>" /
        <container>``.
    spool_fsync : bool
        ``os.fsync`` every spooled document (survives power loss, not only a crash of the
        process; costs a disk flush per document).
    retry_interval_s : float
        First wait before the background writer retries after a Tiled error; doubled after
        each failure up to ``retry_max_interval_s``.
    retry_max_interval_s : float
        Longest wait between retries.
    flush_timeout_s : float
        How long ``close()`` (and reading through ``Storage.client``) waits for the background
        writer to get pending documents into Tiled.

    Raises
    ------
    ValueError
        An empty container name, a non-alphanumeric key for the embedded server, a
        ``batch_size`` below 1, an unknown ``writer``, or retry intervals out of order.
    """

    directory: Path | None = None
    uri: str | None = None
    api_key: str | None = None
    container: str = "runs"
    batch_size: int = 200
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


def default_spool(config: StorageConfig, uri: str) -> Path:
    """Give the spool directory of ``config`` when it names none, for the server at ``uri``.

    Parameters
    ----------
    config : StorageConfig
        The storage's configuration.
    uri : str
        The server's URI (for a remote server, its host, port and path name the directory).

    Returns
    -------
    pathlib.Path
        ``<directory>/spool/<container>`` for the embedded server, else under the user's
        data directory.
    """
    container = _safe_name(config.container)
    if config.uri is None:
        return Path(config.directory) / "spool" / container
    parts = urlsplit(uri)
    host = _safe_name(f"{parts.hostname}_{parts.port or ''}{parts.path}")
    return platformdirs.user_data_path("dnpu-bluesky") / "spool" / host / container


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")) or "_"


def default_directory() -> Path:
    """Give the embedded server's directory when ``StorageConfig.directory`` is ``None``.

    Returns
    -------
    pathlib.Path
        ``platformdirs.user_data_path("dnpu-bluesky") / "tiled"``.
    """
    return platformdirs.user_data_path("dnpu-bluesky") / "tiled"


CATALOG_FILE = "catalog.db"  # the embedded server's SQLite catalog, in its directory


def embedded_directory(config: StorageConfig) -> Path | None:
    """Give the embedded server's directory of ``config``; None for a remote server.

    Parameters
    ----------
    config : StorageConfig
        The storage's configuration.

    Returns
    -------
    pathlib.Path or None
        ``config.directory`` (else :func:`default_directory`) with ``~`` expanded; None when
        ``config.uri`` is set.
    """
    if config.uri is not None:
        return None
    return Path(config.directory or default_directory()).expanduser()


def creates_catalog(config: StorageConfig) -> bool:
    """Tell whether opening ``config`` creates its embedded server's catalog (a first use).

    Parameters
    ----------
    config : StorageConfig
        The storage's configuration.

    Returns
    -------
    bool
        True for an embedded server whose directory holds no catalog yet: opening it takes
        longer.
    """
    directory = embedded_directory(config)
    return directory is not None and not (directory / CATALOG_FILE).exists()


def check_writable(directory: Path, what: str = "Tiled storage") -> None:
    """Create ``directory`` if missing and write a file in it, or raise a StorageError.

    Done before starting the embedded server, whose own failure would be less clear, and
    for the spool before any run, whose start document would fail instead.

    Parameters
    ----------
    directory : pathlib.Path
        The directory to check.
    what : str
        What it is, for the message.

    Raises
    ------
    StorageError
        It cannot be created or written.
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


def split_api_key(uri: str, api_key: str | None) -> tuple[str, str | None]:
    """Move an ``api_key`` query parameter out of ``uri``.

    A key in a URL lands in the server's access log; the tiled client sends a key given
    separately as a header.

    Parameters
    ----------
    uri : str
        A Tiled URI, perhaps with ``?api_key=...``.
    api_key : str or None
        The key given separately, which wins over one in ``uri``.

    Returns
    -------
    tuple of (str, str or None)
        ``uri`` without the parameter, and the key.
    """
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    keys = [value for name, value in query if name == "api_key"]
    if not keys:
        return uri, api_key
    rest = urlencode([(name, value) for name, value in query if name != "api_key"])
    return parts._replace(query=rest).geturl(), api_key or keys[-1]


_API_KEY_PARAMETER = re.compile(r"([?&])api_key=[^&#\s'\"]*(&?)")


# The password of a URI's user information: http://user:PASSWORD@host
_USERINFO_PASSWORD = re.compile(r"(\w[\w+.-]*://[^/?#@\s:'\"]*):[^/?#\s'\"]*@")


def redact(text: str, api_key: str | None = None) -> str:
    """Remove from ``text`` URIs' ``api_key`` parameters and passwords, and the key itself.

    A URI's password becomes ``***`` (``http://user:***@host``).

    Parameters
    ----------
    text : str
        A message.
    api_key : str or None
        A key to mask wherever it appears (keys shorter than 4 characters are not).

    Returns
    -------
    str
        The message, safe to show.
    """
    text = _API_KEY_PARAMETER.sub(lambda m: m.group(1) if m.group(2) else "", text)
    text = _USERINFO_PASSWORD.sub(r"\1:***@", text)
    if api_key and len(api_key) >= 4:
        text = text.replace(api_key, "***")
    return text
