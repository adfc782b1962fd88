"""A remote Tiled server backed by PostgreSQL, as a facility deploys it, and run replay.

The server is a separate ``tiled serve catalog`` process (loopback, a free port, a single-user
API key) whose catalog and event tables live in PostgreSQL and whose arrays live in a
temporary directory. It needs a PostgreSQL role that may create databases, given as
``DNPU_TEST_POSTGRES_URI`` (``.ci/run`` sets one up); without it these tests are skipped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

POSTGRES_URI = os.environ.get("DNPU_TEST_POSTGRES_URI")
pytestmark = pytest.mark.skipif(
    not POSTGRES_URI,
    reason="DNPU_TEST_POSTGRES_URI is unset: no PostgreSQL for a remote Tiled server "
    "(.ci/run sets one up; e.g. postgresql://user:password@127.0.0.1:5432/database)",
)


def _with_database(uri: str, database: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _postgres(uri: str, *statements: str) -> list:
    import asyncpg

    async def run() -> list:
        connection = await asyncpg.connect(uri)
        try:
            rows = []
            for statement in statements:
                rows.extend(await connection.fetch(statement))
            return rows
        finally:
            await connection.close()

    return asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RemoteTiled:
    def __init__(self, uri: str, api_key: str, catalog_db: str) -> None:
        self.uri = uri
        self.api_key = api_key
        self.catalog_db = catalog_db


@contextmanager
def _tiled_on_postgres(directory: Path, config_file: bool) -> Iterator[RemoteTiled]:
    """A ``tiled serve`` process on fresh PostgreSQL databases, dropped afterwards.

    ``config_file=False``: ``tiled serve catalog --init ...`` (the command line only).
    ``config_file=True``: ``tiled serve config`` with the same storage, plus
    bluesky-tiled-plugins' JSON-seq exporter for runs, as a facility's config would have it.
    """
    suffix = uuid.uuid4().hex[:12]
    catalog_db, tables_db = f"dnpu_catalog_{suffix}", f"dnpu_tables_{suffix}"
    catalog_uri = _with_database(POSTGRES_URI, catalog_db)
    tables_uri = _with_database(POSTGRES_URI, tables_db)
    (directory / "data").mkdir()
    api_key = secrets.token_hex(16)
    port = _free_port()
    tiled = str(Path(sys.executable).with_name("tiled"))
    listen = ["--host", "127.0.0.1", "--port", str(port)]
    if config_file:
        config = directory / "config.yml"
        config.write_text(
            CONFIG.format(catalog=catalog_uri, data=directory / "data", tables=tables_uri)
        )
        command = [tiled, "serve", "config", str(config), *listen]
    else:
        command = [
            tiled, "serve", "catalog", "--init", catalog_uri,
            "--write", str(directory / "data"), "--write", tables_uri, *listen,
        ]  # fmt: skip
    log_path = directory / "server.log"
    log = log_path.open("wb")
    env = {**os.environ, "TILED_SINGLE_USER_API_KEY": api_key}
    try:
        _postgres(POSTGRES_URI, f"CREATE DATABASE {catalog_db}", f"CREATE DATABASE {tables_db}")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            uri = f"http://127.0.0.1:{port}"
            _wait_ready(uri, process, log_path)
            yield RemoteTiled(uri, api_key, catalog_db)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        log.close()
        _postgres(
            POSTGRES_URI,
            f"DROP DATABASE IF EXISTS {catalog_db} WITH (FORCE)",
            f"DROP DATABASE IF EXISTS {tables_db} WITH (FORCE)",
        )


CONFIG = """\
authentication:
  single_user_api_key: "${{TILED_SINGLE_USER_API_KEY}}"
trees:
  - path: /
    tree: catalog
    args:
      uri: "{catalog}"
      init_if_not_exists: true
      writable_storage: ["{data}", "{tables}"]
media_types:
  BlueskyRun:
    application/json-seq: bluesky_tiled_plugins.exporters:json_seq_exporter
"""


@pytest.fixture(scope="module")
def remote_tiled(tmp_path_factory) -> Iterator[RemoteTiled]:
    """``tiled serve catalog`` on PostgreSQL in its own process."""
    with _tiled_on_postgres(tmp_path_factory.mktemp("remote_tiled"), config_file=False) as server:
        yield server


def _wait_ready(uri: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tiled serve exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{uri}/healthz", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"tiled serve not ready within {timeout} s:\n{log.read_text()}")


def _validate(documents: list[tuple[str, dict]]) -> None:
    from event_model import DocumentNames, schema_validators

    for name, doc in documents:
        schema_validators[DocumentNames[name]].validate(doc)


def test_remote_postgres_tiled_stores_replays_and_copies_a_run(remote_tiled, RE):
    # Without the key the server refuses access.
    from tiled.client import from_uri

    from dnpu_bluesky.devices import build_dnpu
    from dnpu_bluesky.plans import hge_gradient
    from dnpu_bluesky.storage import (
        StorageConfig,
        copy_run,
        export_documents,
        load_run,
        open_storage,
    )

    with pytest.raises(Exception, match=r"401|nauthenticated|API key|credentials"):
        from_uri(remote_tiled.uri, api_key="wrong")["runs"]

    config = StorageConfig(uri=remote_tiled.uri, api_key=remote_tiled.api_key, batch_size=1)
    storage = open_storage(config)
    try:
        RE.subscribe(storage.writer)
        dnpu = build_dnpu()
        (uid,) = RE(hge_gradient(dnpu, repeats=2)).run_start_uids
    finally:
        storage.close()
    emitted = RE.collected_docs

    # The same package code reads it back from the remote server.
    with open_storage(config) as storage:
        run = load_run(storage.client, uid)
        assert sorted(run) == ["hge_raw", "primary"]
        gradient = run.primary["dnpu_hge_gradient"].read()
        sent = [
            doc for name, doc in emitted if name == "event" and "dnpu_hge_gradient" in doc["data"]
        ]
        assert gradient.shape[0] == len(sent) == 2
        np.testing.assert_allclose(gradient, [e["data"]["dnpu_hge_gradient"] for e in sent])

        # The catalog really is in PostgreSQL.
        rows = _postgres(
            _with_database(POSTGRES_URI, remote_tiled.catalog_db),
            "SELECT key FROM nodes",
        )
        assert uid in {row["key"] for row in rows}

        # Replay: the documents come back in order and schema-valid.
        replayed = list(export_documents(run))
        _validate(replayed)
        names = [name for name, _ in replayed]
        assert names[0] == "start" and names[-1] == "stop"
        assert names.count("descriptor") == 2
        assert names.count("event") == sum(name == "event" for name, _ in emitted)
        original_start = next(doc for name, doc in emitted if name == "start")
        assert replayed[0][1]["uid"] == uid
        assert replayed[0][1]["plan_name"] == original_start["plan_name"] == "hge_gradient"
        seen: set[str] = set()
        for name, doc in replayed:  # each event follows its descriptor
            if name == "descriptor":
                seen.add(doc["uid"])
            elif name == "event":
                assert doc["descriptor"] in seen
        assert list(export_documents(run)) == replayed  # deterministic

        # ... and write into a second container as a new copy of the run.
        with open_storage(StorageConfig(**{**_fields(config), "container": "replayed"})) as copy:
            assert copy_run(run, copy) == uid
        with open_storage(StorageConfig(**{**_fields(config), "container": "replayed"})) as copy:
            again = load_run(copy.client, uid)
            assert sorted(again) == ["hge_raw", "primary"]
            np.testing.assert_allclose(again.primary["dnpu_hge_gradient"].read(), gradient)
            np.testing.assert_allclose(
                again["hge_raw"]["dnpu_output"].read(), run["hge_raw"]["dnpu_output"].read()
            )
            assert again.metadata["stop"]["exit_status"] == "success"
            assert again.metadata["start"] == run.metadata["start"]


def _fields(config) -> dict:
    from dataclasses import fields

    return {field.name: getattr(config, field.name) for field in fields(config)}


def test_server_json_seq_export_matches_the_client_rebuild(tmp_path, RE):
    """A config-file server with the JSON-seq exporter: ``export_documents`` uses the server's
    export, and it agrees with the client-side rebuild (the path for other servers)."""
    from dnpu_bluesky.devices import build_dnpu
    from dnpu_bluesky.plans import hge_gradient
    from dnpu_bluesky.storage import StorageConfig, export_documents, load_run, open_storage

    with _tiled_on_postgres(tmp_path, config_file=True) as server:
        config = StorageConfig(uri=server.uri, api_key=server.api_key, batch_size=1)
        with open_storage(config) as storage:
            RE.subscribe(storage.writer)
            (uid,) = RE(hge_gradient(build_dnpu(), repeats=2)).run_start_uids
        with open_storage(config) as storage:
            run = load_run(storage.client, uid)
            assert "application/json-seq" in run.formats
            served = list(export_documents(run))
            rebuilt = list(export_documents(run, use_server_export=False))
    _validate(served)
    assert [name for name, _ in served] == [name for name, _ in rebuilt]
    for (name, a), (_, b) in zip(served, rebuilt, strict=True):
        if name != "event":
            assert a == b
            continue
        # Event uids are not stored; each side makes its own.
        assert {k: v for k, v in a.items() if k not in ("uid", "data", "filled")} == {
            k: v for k, v in b.items() if k not in ("uid", "data", "filled")
        }
        assert a["data"].keys() == b["data"].keys()
        for key in a["data"]:
            if isinstance(a["data"][key], str):  # e.g. the input electrodes, "e3,e4"
                assert a["data"][key] == b["data"][key]
            else:
                np.testing.assert_allclose(a["data"][key], b["data"][key])
