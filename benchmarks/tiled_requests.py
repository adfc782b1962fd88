"""What one request and one training run cost the embedded Tiled server.

``python -m benchmarks.tiled_requests`` (about a minute) prints a table and one line
``RESULT {json}``; ``docs/benchmarks.md`` explains the figures.

The default storage (``open_storage(StorageConfig(directory=<temporary directory>))``:
embedded server in its own process) is given plain tiled-client requests in a container of
its own, the three kinds a ``train`` run is made of, ``--count`` of each:

* ``array_create``: ``write_array`` of a (1, 7) float array, a new node (two requests: create
  the node, write its data), as ``TiledWriter`` writes each array field of a stream;
* ``array_append``: ``patch(..., extend=True)`` of one more row, as each further batch does;
* ``container_create``: a new container, as for a run and each of its streams;
* ``lookup``: ``container[key]`` of an existing array node (one metadata request).

Figures, each the server process's CPU (``/proc``) over that phase divided by its requests
(its ``access.log`` lines): ``cpu_ms_per_request`` per kind, with the client's wall time per
request beside it. Then one ``train`` run (AND, HGE, the virtual DNPU's defaults, seed 0)
through the storage's writer: ``train_run_requests`` and ``train_run_server_cpu_s``, counted
from the run's start until the writer reports it in Tiled. Their product is the floor of a
run's time from its stop to Tiled when nothing was written before the stop, as for a run
shorter than the writer's hold time. ``train_run_array_nodes`` counts the run's array nodes
in Tiled.

Last, without HTTP: tiled's catalog adapter, called in this process on a catalog of its own
(SQLite in write-ahead-log mode, as the embedded server keeps it), creates ``--count`` array
nodes of the same (1, 7) array and writes each one's data, as the server does for the two
requests of ``array_create``, then looks each one up. ``catalog_cpu_ms_per_array_node`` and
``catalog_cpu_ms_per_lookup`` are this process's CPU per node: what tiled itself costs, with
no HTTP, FastAPI or middleware around it. ``train_run_catalog_floor_s`` (that cost times the
run's array nodes) is the least server CPU a run's array fields take, however they are sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.demo_pace import served_requests
from dnpu_bluesky.storage._config import CATALOG_FILE


def _server_pid(directory: Path) -> int:
    """The pid of the embedded server process that serves ``directory``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"_server_process" in part for part in command) and str(directory).encode() in (
            command
        ):
            return int(entry.name)
    raise RuntimeError(f"no embedded server process found for {directory}")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _array_nodes(directory: Path) -> int:
    """Array nodes in the embedded server's catalog (read-only, beside the server)."""
    import sqlite3

    connection = sqlite3.connect(f"{(directory / CATALOG_FILE).as_uri()}?mode=ro", uri=True)
    try:
        query = "SELECT COUNT(*) FROM nodes WHERE structure_family = 'array'"
        return connection.execute(query).fetchone()[0]
    finally:
        connection.close()


class _Meter:
    """Server CPU and requests (access-log lines) between two readings."""

    def __init__(self, directory: Path) -> None:
        self._pid = _server_pid(directory)
        self._log = directory / "access.log"

    def reading(self) -> tuple[float, int]:
        time.sleep(0.2)  # the access log is written after the response
        return _cpu_s(self._pid), served_requests(self._log)


def measure(directory: Path, count: int) -> dict[str, Any]:
    """Measure the request kinds and one training run on a fresh embedded server.

    Parameters
    ----------
    directory : pathlib.Path
        An empty scratch directory for the storage.
    count : int
        Requests of each kind.

    Returns
    -------
    dict
        ``cpu_ms_per_request`` and ``wall_ms_per_request`` (by kind), ``train_run_requests``,
        ``train_run_server_cpu_s`` and ``train_run_array_nodes``.
    """
    from tiled.client import from_context

    from dnpu_bluesky.devices import build_dnpu
    from dnpu_bluesky.plans import train
    from dnpu_bluesky.session import make_run_engine
    from dnpu_bluesky.storage import StorageConfig, open_storage
    from dnpu_bluesky.tasks import BooleanGate

    cpu_ms: dict[str, float] = {}
    wall_ms: dict[str, float] = {}
    with open_storage(StorageConfig(directory=directory)) as storage:
        meter = _Meter(directory)
        root = from_context(storage.client.context)
        bench = root.create_container(key="bench_requests")
        row = np.arange(7.0)[None, :]
        arrays: list[Any] = []
        phases = {
            "array_create": lambda i: arrays.append(bench.write_array(row, key=f"a{i}")),
            "array_append": lambda i: arrays[i].patch(row, offset=(1,), extend=True),
            "container_create": lambda i: bench.create_container(key=f"c{i}"),
            "lookup": lambda i: bench[f"a{i}"],
        }
        for kind, request in phases.items():
            cpu0, lines0 = meter.reading()
            started = time.perf_counter()
            for i in range(count):
                request(i)
            wall = time.perf_counter() - started
            cpu1, lines1 = meter.reading()
            requests = lines1 - lines0
            cpu_ms[kind] = round(1000 * (cpu1 - cpu0) / requests, 1)
            wall_ms[kind] = round(1000 * wall / requests, 1)

        dnpu = build_dnpu()
        engine = make_run_engine(storage, interactive=False)
        arrays0 = _array_nodes(directory)
        cpu0, lines0 = meter.reading()
        try:
            engine(train(dnpu, BooleanGate("AND"), seed=0))
        finally:
            dnpu.backend.close()
        storage.flush(timeout=600)
        cpu1, lines1 = meter.reading()
        run_arrays = _array_nodes(directory) - arrays0
    return {
        "cpu_ms_per_request": cpu_ms,
        "wall_ms_per_request": wall_ms,
        "train_run_requests": lines1 - lines0,
        "train_run_server_cpu_s": round(cpu1 - cpu0, 2),
        "train_run_array_nodes": run_arrays,
    }


async def _catalog_costs(directory: Path, count: int) -> dict[str, float]:
    from tiled.catalog import from_uri
    from tiled.structures.array import ArrayStructure
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import DataSource, Management

    from dnpu_bluesky.storage._server import _write_ahead_log

    (directory / "data").mkdir(parents=True)
    catalog_file = directory / CATALOG_FILE
    catalog = from_uri(
        f"sqlite:///{catalog_file}",
        writable_storage=[str(directory / "data")],
        init_if_not_exists=True,  # tiled's init command, in a process of its own
    )
    _write_ahead_log(catalog_file)  # before this process's first connection, as the server
    await catalog.startup()
    try:
        bench = await catalog.create_node(
            structure_family=StructureFamily.container, metadata={}, key="bench_requests"
        )
        row = np.arange(7.0)[None, :]
        structure = ArrayStructure.from_array(row)
        started = _own_cpu_s()
        for i in range(count):
            node = await bench.create_node(
                structure_family=StructureFamily.array,
                metadata={},
                key=f"a{i}",
                data_sources=[
                    DataSource(
                        structure_family=StructureFamily.array,
                        structure=structure,
                        management=Management.writable,
                    )
                ],
            )
            (await node.get_adapter()).write(row)
        per_node = 1000 * (_own_cpu_s() - started) / count
        started = _own_cpu_s()
        for i in range(count):
            await bench.lookup_adapter([f"a{i}"])
        per_lookup = 1000 * (_own_cpu_s() - started) / count
    finally:
        await catalog.shutdown()
    return {
        "catalog_cpu_ms_per_array_node": round(per_node, 1),
        "catalog_cpu_ms_per_lookup": round(per_lookup, 1),
    }


def measure_catalog(directory: Path, count: int) -> dict[str, float]:
    """Measure tiled's catalog adapter in this process, without HTTP.

    Parameters
    ----------
    directory : pathlib.Path
        An empty scratch directory for the catalog and its data.
    count : int
        Array nodes to create, write and look up.

    Returns
    -------
    dict
        ``catalog_cpu_ms_per_array_node`` (create and write) and
        ``catalog_cpu_ms_per_lookup``.
    """
    return asyncio.run(_catalog_costs(directory, count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="requests of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dnpu_tiled_requests_") as tmp:
        result = measure(Path(tmp) / "server", args.count)
        result.update(measure_catalog(Path(tmp) / "catalog", args.count))
    result["train_run_catalog_floor_s"] = round(
        result["catalog_cpu_ms_per_array_node"] * result["train_run_array_nodes"] / 1000, 2
    )
    print(f"{'request kind':<18} {'server CPU ms':>14} {'client wall ms':>15}")
    for kind, cpu in result["cpu_ms_per_request"].items():
        print(f"{kind:<18} {cpu:>14} {result['wall_ms_per_request'][kind]:>15}")
    print(
        f"one train run (AND): {result['train_run_requests']} requests, "
        f"{result['train_run_server_cpu_s']} s of server CPU, "
        f"{result['train_run_array_nodes']} array nodes"
    )
    print(
        f"tiled's catalog in this process, no HTTP: "
        f"{result['catalog_cpu_ms_per_array_node']} ms CPU per array node (create, write), "
        f"{result['catalog_cpu_ms_per_lookup']} ms per lookup; the run's array nodes alone: "
        f"{result['train_run_catalog_floor_s']} s"
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
