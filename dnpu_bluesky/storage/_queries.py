"""Finding and reading past runs in a runs container."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tiled.queries import Comparison, Contains, Eq, In

from ._patches import as_v3
from ._store import storage_of

if TYPE_CHECKING:
    from bluesky_tiled_plugins import BlueskyRun, CatalogOfBlueskyRuns
    from tiled.client.container import Container


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
) -> CatalogOfBlueskyRuns:
    """Search past runs by their start document: a catalog of them, newest first.

    The result is a Tiled catalog like ``client`` itself: chain further searches on it
    (``find_runs(client, gate="XOR").search(Eq("start.seed", 3))``), look runs up in it
    (``[uid]``, ``[-1]``), count them (``len``), or take them in order with ``.values()``
    (``.values().first()``, ``.values()[:5]``); iterating the catalog itself gives uids.

    When ``client`` is the runs container of an open :class:`Storage` (``storage.client``,
    also one taken earlier), that storage's pending writes are waited for first, so a run
    is found right after ``RE(plan)`` returned.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
        The runs container, e.g. ``storage.client``.
    plan_name : str, optional
        Bluesky's ``plan_name`` (e.g. ``"train"``, ``"hge_gradient"``).
    gate : str, optional
        The start document's ``gate`` key (e.g. ``"XOR"``; any case).
    task : str or sequence of str, optional
        The name of the run's task (the start document's ``task["name"]``), e.g.
        ``"sphere"`` or ``"boolean:XOR"``; or several names, for runs of any of them.
    tag : str, optional
        One entry of the start document's ``tags`` list.
    since : datetime or str or float, optional
        Runs started at or after this time: a datetime (naive means local time), an ISO 8601
        string (``"2025-03-01"``, ``"2025-03-01T14:00"``) or epoch seconds.
    until : datetime or str or float, optional
        Runs started strictly before this time (same forms as ``since``).
    scan_id : int, optional
        Bluesky's ``scan_id``.

    Returns
    -------
    CatalogOfBlueskyRuns
        The matching runs, sorted newest first.

    Raises
    ------
    ValueError
        ``since`` or ``until`` is a string that is not an ISO 8601 date or time.
    """
    _wait_for_writes_of(client)
    results = client
    for query in _queries(plan_name, gate, task, tag, since, until, scan_id):
        results = results.search(query)
    return results.sort(("start.time", -1))


def load_run(client: Container, uid: str) -> BlueskyRun:
    """Return the run node for ``uid`` (a full uid, or a unique prefix of at least 5 characters).

    When ``client`` is the runs container of an open :class:`Storage`, it first waits for that
    storage's pending writes of this run (not those of other runs).

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
        The runs container, e.g. ``storage.client``.
    uid : str
        The run's start-document uid.

    Returns
    -------
    BlueskyRun
        The run node.

    Raises
    ------
    KeyError
        No run with this uid in the container.
    ValueError
        A prefix shorter than 5 characters, or one that matches several runs.
    """
    _wait_for_writes_of(client, run=uid)
    try:
        run = client[uid]
    except KeyError:
        raise KeyError(
            f"No run with uid {uid!r} in the Tiled container {client.item['id']!r}"
        ) from None
    return as_v3(run)


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


def _wait_for_writes_of(client: Any, run: str | None = None) -> None:
    # Read-your-writes: ask the storage that handed out this client, if any (a client of
    # another origin, or of a storage with the direct writer, has nothing to wait for).
    storage = storage_of(client)
    if storage is not None:
        storage.wait_for_writes(run)
