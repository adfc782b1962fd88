"""The in-process half of benchmarks.tiled_requests: tiled's catalog, no HTTP."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from tiled.catalog import from_uri

from benchmarks.tiled_requests import _array_nodes, measure_catalog


async def _read_array(directory: Path, segments: list[str]) -> Any:
    catalog = from_uri(
        f"sqlite:///{directory / 'catalog.db'}", writable_storage=[str(directory / "data")]
    )
    await catalog.startup()
    try:
        node = await catalog.lookup_adapter(segments)
        return (await node.get_adapter()).read()
    finally:
        await catalog.shutdown()


def test_the_catalog_floor_creates_and_writes_real_array_nodes(tmp_path: Path) -> None:
    directory = tmp_path / "catalog"

    costs = measure_catalog(directory, count=3)

    assert set(costs) == {"catalog_cpu_ms_per_array_node", "catalog_cpu_ms_per_lookup"}
    assert all(value > 0 for value in costs.values())
    assert _array_nodes(directory) == 3
    with sqlite3.connect(directory / "catalog.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    data = asyncio.run(_read_array(directory, ["bench_requests", "a2"]))
    np.testing.assert_array_equal(np.asarray(data), np.arange(7.0)[None, :])
