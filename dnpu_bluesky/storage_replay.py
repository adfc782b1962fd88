"""Replay a run stored in Tiled as Bluesky documents, and copy it into another storage.

A run written by ``TiledWriter`` (the ``BlueskyRun`` 3.x layout) keeps its start and stop
documents in the run's metadata, each stream's descriptors in the stream's metadata and the
events' readings in the stream's table (``internal``) and arrays. :func:`export_documents`
turns that back into ``(name, doc)`` pairs in emission order: ``start``, each stream's
``descriptor`` before its first event, the ``event`` documents in time order, ``stop``.

When the server offers the run as ``application/json-seq`` (a server configured with
bluesky-tiled-plugins' ``json_seq_exporter``), the server's export is used; otherwise (e.g.
``tiled serve catalog``, whose runs export only as JSON and HDF5) the documents are rebuilt on
the client from the run's metadata and data. Either way they validate against event-model's
schemas. Event uids are not stored by ``TiledWriter``; rebuilt events get uids derived from
their descriptor uid and sequence number, so two exports of one run are identical.

Example:
    >>> run = load_run(storage.client, uid)                           # doctest: +SKIP
    >>> for name, doc in export_documents(run): ...                   # doctest: +SKIP
    >>> copy_run(run, other_storage)                                  # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .storage import Storage

__all__ = ["copy_run", "export_documents"]

_JSON_SEQ = "application/json-seq"
# Event uids of rebuilt events: uuid5(namespace, f"{descriptor_uid}/{seq_num}").
_EVENT_NAMESPACE = uuid.UUID("6f1c1b5e-4a1e-4d55-9f0b-2f6d0f7a3c11")


def export_documents(run: Any, *, use_server_export: bool = True) -> Iterator[tuple[str, dict]]:
    """Yield the Bluesky documents of a stored run, ``(name, doc)``, in emission order.

    Args:
        run: A run node from Tiled (e.g. ``load_run(storage.client, uid)``), ``BlueskyRun``
            3.x layout, as ``TiledWriter`` writes it.
        use_server_export: Use the server's ``application/json-seq`` export of the run when
            the server offers it; ``False`` always rebuilds the documents on the client.

    Yields:
        ``("start", doc)``, then ``descriptor`` and ``event`` documents, then ``("stop", doc)``
        if the run has a stop document. Readings are plain Python values (lists for arrays).

    Raises:
        NotImplementedError: The run has externally stored data (stream resources), which
            the client-side rebuild does not reconstruct; use a server with the JSON-seq
            exporter for such runs.
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
    """Write every document of ``run`` into ``storage`` (its runs container); return the uid.

    The copy keeps the start document's uid, so the run is found in the target container
    under the same uid (``load_run(storage.client, uid)``).
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
