"""Storage in Tiled: real RunEngine, real embedded Tiled server over HTTP, no mocks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
import yaml
from ophyd.sim import SynAxis, SynGauss, SynSignal
from tiled.client import from_uri
from tiled.queries import Contains

from benchmarks.outage_proxy import OutageProxy
from dnpu_bluesky.storage import (
    StorageConfig,
    StorageError,
    export_documents,
    find_runs,
    load_run,
    open_storage,
)

pytest_plugins = ["pytester"]

N_SAMPLES = 10_000
N_CONTROLS = 7


def _waveform(position: float) -> np.ndarray:
    t = np.arange(N_SAMPLES) / N_SAMPLES
    return (1.0 + position) * np.sin(2 * np.pi * 13 * t) + 0.25 * np.cos(2 * np.pi * 3 * t)


def _gradient(position: float) -> np.ndarray:
    return position * np.arange(1.0, N_CONTROLS + 1)


@pytest.fixture
def hw():
    """Fresh simulated devices: a motor, a scalar detector, a waveform and a 7-vector signal."""
    motor = SynAxis(name="motor")
    det = SynGauss("det", motor, "motor", center=0.0, Imax=2.0, sigma=1.0)
    wf = SynSignal(func=lambda: _waveform(motor.position), name="wf")
    grad = SynSignal(func=lambda: _gradient(motor.position), name="grad")
    return motor, det, wf, grad


def _uid(result) -> str:
    (uid,) = result.run_start_uids
    return uid


def _events(documents, stream_name: str = "primary") -> list[dict]:
    descriptors = {d["uid"] for n, d in documents if n == "descriptor" and d["name"] == stream_name}
    return [d for n, d in documents if n == "event" and d["descriptor"] in descriptors]


def _start_time(documents, uid: str) -> float:
    return next(d["time"] for n, d in documents if n == "start" and d["uid"] == uid)


def test_scan_with_waveforms_reads_back_from_tiled(stored_RE, storage, documents, hw):
    motor, det, wf, grad = hw
    result = stored_RE(bp.scan([det, wf, grad], motor, -1, 1, 5), gate="XOR", tags=["demo"])
    run = load_run(storage.client, _uid(result))

    assert list(run) == ["primary"]
    stream = run["primary"]
    data_keys = stream.metadata["data_keys"]
    assert data_keys["wf"]["shape"] == [N_SAMPLES]
    assert data_keys["grad"]["shape"] == [N_CONTROLS]

    positions = stream["motor"].read()
    np.testing.assert_allclose(positions, np.linspace(-1, 1, 5))
    waveforms = stream["wf"].read()
    assert waveforms.shape == (5, N_SAMPLES)
    np.testing.assert_allclose(waveforms, np.stack([_waveform(p) for p in positions]))
    grads = stream["grad"].read()
    assert grads.shape == (5, N_CONTROLS)
    np.testing.assert_allclose(grads, np.stack([_gradient(p) for p in positions]))

    # Exactly what the RunEngine emitted, field by field.
    events = _events(documents)
    for key in ("motor", "det", "wf", "grad"):
        emitted = np.stack([np.asarray(ev["data"][key]) for ev in events])
        np.testing.assert_array_equal(stream[key].read(), emitted)

    dataset = stream.read()
    assert dataset["wf"].shape == (5, N_SAMPLES)
    assert dataset["grad"].dtype == np.float64
    assert dataset["det"].shape == (5,)

    assert run.metadata["start"]["plan_name"] == "scan"
    assert run.metadata["start"]["gate"] == "XOR"
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run.metadata["stop"]["num_events"] == {"primary": 5}


def test_find_runs_filters_and_orders_newest_first(stored_RE, storage, documents, hw):
    motor, det, _, _ = hw
    first = _uid(stored_RE(bp.count([det]), gate="XOR", tags=["a"]))
    second = _uid(stored_RE(bp.count([det]), gate="AND", tags=["a", "b"]))
    third = _uid(stored_RE(bp.scan([det], motor, 0, 1, 2), gate="XOR", tags=["b"]))
    client = storage.client

    def uids(**kwargs) -> list[str]:
        return [run.metadata["start"]["uid"] for run in find_runs(client, **kwargs).values()]

    assert uids() == [third, second, first]
    assert uids(plan_name="count") == [second, first]
    assert uids(gate="XOR") == [third, first]
    assert uids(gate="xor") == [third, first]  # gates are stored upper-case; any case finds them
    assert uids(tag="b") == [third, second]
    assert uids(gate="XOR", tag="b") == [third]
    assert uids(gate="NAND") == []
    # A catalog: further searches chain on it, and it is counted and indexed like any other.
    xor_runs = find_runs(client, gate="XOR")
    assert list(xor_runs.search(Contains("start.tags", "b"))) == [third]
    assert len(xor_runs) == 2 and xor_runs.values().first().start["uid"] == third

    t_second = _start_time(documents, second)
    assert uids(since=t_second) == [third, second]  # inclusive
    assert uids(until=t_second) == [first]  # exclusive
    # Between the runs (they start milliseconds apart), as datetime and as ISO string.
    between = datetime.fromtimestamp((_start_time(documents, first) + t_second) / 2)
    assert uids(since=between) == [third, second]
    assert uids(until=between.isoformat()) == [first]
    assert uids(since=between.isoformat(), until=_start_time(documents, third)) == [second]

    scan_id = client[second].metadata["start"]["scan_id"]
    assert uids(scan_id=scan_id) == [second]
    sphere = _uid(stored_RE(bp.count([det]), task={"name": "sphere", "n_points": 120}))
    assert uids(task="sphere") == [sphere]
    xor = _uid(stored_RE(bp.count([det]), task={"name": "boolean:XOR"}))
    assert uids(task=["boolean:AND", "boolean:XOR"]) == [xor]  # any of several tasks
    assert uids(task=("sphere", "boolean:XOR")) == [xor, sphere]

    with pytest.raises(ValueError, match="ISO 8601"):
        find_runs(client, since="last tuesday")


def test_load_run_unknown_uid_is_a_clear_key_error(storage):
    missing = str(uuid.uuid4())
    with pytest.raises(KeyError, match=missing):
        load_run(storage.client, missing)
    with pytest.raises(KeyError, match="deadbeef"):
        load_run(storage.client, "deadbeef")


def test_failing_plan_leaves_a_fail_stop_in_tiled(stored_RE, storage, hw):
    _, det, _, _ = hw

    @bpp.run_decorator(md={"plan_name": "failing_plan"})
    def failing_plan():
        yield from bps.trigger_and_read([det])
        raise RuntimeError("amplifier saturated")

    with pytest.raises(RuntimeError, match="amplifier saturated"):
        stored_RE(failing_plan())

    (run,) = find_runs(storage.client, plan_name="failing_plan").values()
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "fail"
    assert "amplifier saturated" in stop["reason"]
    assert run["primary"]["det"].read().shape == (1,)


def test_databroker_reads_the_run(stored_RE, storage, tmp_path, monkeypatch, hw):
    import databroker
    import tiled.profiles
    from bluesky_tiled_plugins.clients.bluesky_run import BlueskyRunV3
    from databroker.client import CatalogOfBlueskyRuns
    from tiled.client.container import DEFAULT_STRUCTURE_CLIENT_DISPATCH, Container

    _, det, wf, _ = hw
    uid = _uid(stored_RE(bp.count([det, wf], num=3), gate="OR"))
    expected = load_run(storage.client, uid)["primary"]["wf"].read()

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "dnpu.yml").write_text(yaml.safe_dump({"dnpu_test": {"uri": storage.uri}}))
    with monkeypatch.context() as patch:
        patch.setattr(tiled.profiles, "paths", [profiles])
        patch.setenv("TILED_API_KEY", storage.api_key)  # the client sends it as a header
        tiled.profiles.load_profiles.cache_clear()
        try:
            root = databroker.from_profile("dnpu_test")
        finally:
            tiled.profiles.load_profiles.cache_clear()
    try:
        catalog = root[storage.config.container]
        assert isinstance(catalog, CatalogOfBlueskyRuns)
        run = catalog.v2[uid[:8]]  # databroker's partial-uid lookup, v2 (xarray) interface
        assert run.metadata["start"]["gate"] == "OR"
        dataset = run.primary.read()
        assert dataset["wf"].shape == (3, N_SAMPLES)
        np.testing.assert_array_equal(dataset["wf"].values, expected)
        assert dataset["det"].shape == (3,)

        # `.v2` switched tiled's process-wide BlueskyRun client to v2; ours still reads v3.
        assert not isinstance(catalog[uid], BlueskyRunV3)
        again = load_run(storage.client, uid)
        assert isinstance(again, BlueskyRunV3)
        np.testing.assert_array_equal(again["primary"]["wf"].read(), expected)
        assert list(find_runs(storage.client, gate="OR")) == [uid]
    finally:
        root.context.close()
        for dispatch in DEFAULT_STRUCTURE_CLIENT_DISPATCH.values():
            dispatch.set(
                "BlueskyRun", lambda: Container.STRUCTURE_CLIENTS_FROM_ENTRYPOINTS["BlueskyRun"]
            )


def test_remote_server_by_uri_and_api_key(storage, RE, hw):
    _, det, _, _ = hw
    parts = urlsplit(storage.uri)
    base = f"{parts.scheme}://{parts.netloc}"
    key = storage.api_key

    with pytest.raises(Exception, match="API key"):
        open_storage(StorageConfig(uri=base, api_key="wrong-key"))

    container = f"lab_{uuid.uuid4().hex}"
    with open_storage(StorageConfig(uri=base, api_key=key, container=container)) as remote:
        assert remote.uri == base
        assert remote.client.specs[0].name == "CatalogOfBlueskyRuns"
        RE.subscribe(remote.writer)
        uid = _uid(RE(bp.count([det], num=2), tags=["remote"]))
        assert [r.metadata["start"]["uid"] for r in find_runs(remote.client).values()] == [uid]

    # Written through that connection, visible to any other client of the server.
    root = from_uri(storage.uri, api_key=storage.api_key)
    try:
        seen = load_run(root[container], uid)
        assert seen.metadata["start"]["tags"] == ["remote"]
        assert seen["primary"]["det"].read().shape == (2,)
    finally:
        root.context.close()


def test_existing_container_without_the_catalog_spec_is_refused(storage):
    name = f"plain_{uuid.uuid4().hex}"
    root = from_uri(storage.uri, api_key=storage.api_key)
    try:
        root.create_container(key=name)
    finally:
        root.context.close()
    with pytest.raises(ValueError, match="CatalogOfBlueskyRuns"):
        open_storage(StorageConfig(uri=storage.uri, api_key=storage.api_key, container=name))


def test_close_is_idempotent_and_final(storage):
    assert "open" in repr(storage)
    storage.close()
    storage.close()
    assert "closed" in repr(storage)
    assert "api_key" not in repr(storage)
    with pytest.raises(RuntimeError, match="closed"):
        storage.writer("start", {"uid": str(uuid.uuid4()), "time": 0.0})


def test_config_is_validated():
    with pytest.raises(ValueError, match="batch_size"):
        StorageConfig(batch_size=0)
    with pytest.raises(ValueError, match="container"):
        StorageConfig(container="/")
    with pytest.raises(ValueError, match="alphanumeric"):
        StorageConfig(api_key="not-alphanumeric")
    assert StorageConfig(uri="http://tiled.example:8000", api_key="any-key.OK").api_key


_WRITER_SCRIPT = """
import json
import numpy as np
from event_model import compose_run
from dnpu_bluesky.storage import StorageConfig, open_storage

n = {n}
storage = open_storage(StorageConfig(api_key="aKnownKey123"))  # default directory
finished = compose_run(metadata={{"plan_name": "finished"}})
storage.writer("start", finished.start_doc)
wf_key = {{"source": "sim", "dtype": "array", "shape": [n], "dtype_numpy": "<f8"}}
desc = finished.compose_descriptor(name="primary", data_keys={{"wf": wf_key}})
storage.writer("descriptor", desc.descriptor_doc)
for k in range(2):
    ev = desc.compose_event(data={{"wf": k * np.arange(n)}}, timestamps={{"wf": 0.0}})
    storage.writer("event", ev)
storage.writer("stop", finished.compose_stop())

unfinished = compose_run(metadata={{"plan_name": "unfinished"}})
storage.writer("start", unfinished.start_doc)
det_key = {{"source": "sim", "dtype": "number", "shape": []}}
desc = unfinished.compose_descriptor(name="primary", data_keys={{"det": det_key}})
storage.writer("descriptor", desc.descriptor_doc)
for k in range(3):  # fewer than batch_size: only in the writer's memory
    storage.writer("event", desc.compose_event(data={{"det": float(k)}}, timestamps={{"det": 0.0}}))
print(json.dumps([str(storage.config.directory), storage.uri, storage.api_key]))
# Exit without close(): must neither hang nor lose the buffered events.
"""


@pytest.mark.slow  # two embedded-server starts and a fresh interpreter: ~10-15 s here
def test_runs_persist_and_an_unclosed_server_exits_cleanly(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _WRITER_SCRIPT.format(n=N_SAMPLES)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    directory, uri, key = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(directory) == tmp_path / "dnpu-bluesky" / "tiled"
    assert key == "aKnownKey123" and "api_key" not in uri  # the key goes in a header

    with open_storage(StorageConfig(directory=Path(directory))) as reopened:
        unfinished, finished = find_runs(reopened.client).values()
        assert finished.metadata["start"]["plan_name"] == "finished"
        assert finished.metadata["stop"]["exit_status"] == "success"
        np.testing.assert_array_equal(
            finished["primary"]["wf"].read(), np.stack([k * np.arange(N_SAMPLES) for k in range(2)])
        )
        assert unfinished.metadata["start"]["plan_name"] == "unfinished"
        assert unfinished.metadata["stop"]["exit_status"] == "abort"
        np.testing.assert_array_equal(unfinished["primary"]["det"].read(), [0.0, 1.0, 2.0])


def test_RE_fixture_fails_a_test_that_emitted_an_invalid_document(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(
        test_inner="""
        import bluesky.plans as bp
        from event_model import DocumentNames
        from ophyd.sim import SynAxis

        def test_valid_run(RE, documents):
            RE(bp.count([SynAxis(name="m")], num=2))
            assert [name for name, _ in documents] == [
                "start", "descriptor", "event", "event", "stop"
            ]

        def test_invalid_event(RE):
            RE.emit_sync(DocumentNames.event, {"uid": "u", "data": {}})
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*Invalid Bluesky documents*", "*event u: *required property*"])


# Failures to open the storage: one StorageError with a clear message, fast, no API key.


def _free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("key_in", ["uri", "config"])
def test_unreachable_server_is_a_quick_storage_error_without_the_api_key(key_in):
    port = _free_port()
    secret = "TopSecretKey123"
    if key_in == "uri":
        config = StorageConfig(uri=f"http://127.0.0.1:{port}/api/v1?api_key={secret}&x=1")
        shown = f"http://127.0.0.1:{port}/api/v1?x=1"
    else:
        config = StorageConfig(uri=f"http://127.0.0.1:{port}", api_key=secret)
        shown = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        open_storage(config)
    assert time.monotonic() - started < 2  # no retries for a refused connection
    assert str(caught.value) == f"cannot reach Tiled at {shown}: connection refused"
    assert secret not in str(caught.value) and "api_key" not in str(caught.value)


@pytest.mark.parametrize(
    "uri", ["not-a-url", "htp://host:8000", "http://", "http://host:port", "ftp://host/x"]
)
def test_an_invalid_uri_is_a_storage_error_naming_it(uri):
    with pytest.raises(StorageError) as caught:
        open_storage(StorageConfig(uri=uri))
    assert str(caught.value) == (
        f"invalid Tiled URI {uri!r}: expected http://HOST[:PORT][/PATH] or https://..."
    )


def test_an_invalid_uri_with_an_api_key_does_not_show_the_key():
    with pytest.raises(StorageError) as caught:
        open_storage(StorageConfig(uri="htp://host?api_key=TopSecretKey123"))
    assert str(caught.value).startswith("invalid Tiled URI 'htp://host':")


def test_an_unknown_host_is_a_quick_storage_error():
    host = "no-such-host.invalid"
    try:
        socket.getaddrinfo(host, 8000)
    except socket.gaierror as err:
        if err.errno == socket.EAI_AGAIN:
            pytest.skip("no name resolution here (the client would retry)")
    else:
        pytest.skip(f"{host} resolves here")
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        open_storage(StorageConfig(uri=f"http://{host}:8000", api_key="TopSecretKey123"))
    assert time.monotonic() - started < 5
    assert str(caught.value) == (f"cannot reach Tiled at http://{host}:8000: unknown host '{host}'")


def test_a_wrong_api_key_is_a_storage_error_without_the_key(tiled_server):
    parts = urlsplit(tiled_server.uri)
    base = f"{parts.scheme}://{parts.netloc}"
    real_key = parse_qs(parts.query)["api_key"][0]
    for config in (
        StorageConfig(uri=f"{base}/api/v1?api_key=WrongKey123", writer="direct"),
        StorageConfig(uri=base, api_key="WrongKey123", writer="direct"),
    ):
        with pytest.raises(StorageError, match="Invalid API key") as caught:
            open_storage(config)
        message = str(caught.value)
        assert message.startswith(f"Tiled at {base}")
        assert "WrongKey123" not in message and real_key not in message
        assert "api_key" not in message
    with pytest.raises(StorageError, match=r"requires an API key .*DNPU_TILED_API_KEY"):
        open_storage(StorageConfig(uri=base, writer="direct"))


def test_a_server_slow_to_answer_still_opens(tiled_server):
    parts = urlsplit(tiled_server.uri)
    key = parse_qs(parts.query)["api_key"][0]
    relay = OutageProxy((parts.hostname, parts.port), delay_s=1.0)
    relay.start()
    try:
        config = StorageConfig(
            uri=f"http://127.0.0.1:{relay.port}",
            api_key=key,
            container=f"slow_{uuid.uuid4().hex}",
            writer="direct",
        )
        with open_storage(config) as slow:
            assert slow.client.specs[0].name == "CatalogOfBlueskyRuns"
        assert relay.connections >= 1
    finally:
        relay.stop()


@pytest.mark.parametrize("case", ["below_a_file", "a_file", "proc"])
def test_an_unwritable_directory_is_refused_before_the_server_starts(tmp_path, case):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    directory, reason = {
        "below_a_file": (afile / "tiled", "[Errno 20] Not a directory"),
        "a_file": (afile, "it is a file, not a directory"),
        "proc": (Path("/proc/dnpu-bluesky-test/tiled"), "[Errno 2] No such file or directory"),
    }[case]
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        open_storage(StorageConfig(directory=directory, api_key="EmbeddedKey123"))
    assert time.monotonic() - started < 1  # no server process was started
    assert str(caught.value) == f"cannot write the Tiled storage directory {directory}: {reason}"


def test_an_unwritable_spool_directory_is_refused_when_the_storage_opens(tiled_server, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    config = StorageConfig(uri=tiled_server.uri, spool_directory=afile / "spool")
    with pytest.raises(StorageError) as caught:
        open_storage(config)
    assert str(caught.value) == (
        f"cannot write the spool directory {afile / 'spool'}: [Errno 20] Not a directory"
    )


def test_an_embedded_server_that_fails_says_why_not_timeout(tmp_path):
    directory = tmp_path / "tiled"
    directory.mkdir()
    (directory / "data").write_text("where the server wants its array directory")
    with pytest.raises(StorageError) as caught:
        open_storage(StorageConfig(directory=directory, api_key="EmbeddedKey123"))
    message = str(caught.value)
    assert message.startswith(
        f"the embedded Tiled server in {directory} failed to start: FileExistsError: "
    )
    assert str(directory / "data") in message
    assert "within" not in message and "EmbeddedKey123" not in message


def test_a_half_made_catalog_is_initialised_and_a_current_one_reopened(tmp_path, RE):
    import sqlite3

    from tiled.catalog.core import REQUIRED_REVISION

    directory = tmp_path / "tiled"
    directory.mkdir()
    (directory / "catalog.db").touch()  # as a first start interrupted before tiled's init
    with open_storage(StorageConfig(directory=directory)) as first:
        token = RE.subscribe(first.writer)
        (uid,) = RE(bp.count([SynSignal(name="det", func=lambda: 1.5)], num=2)).run_start_uids
        RE.unsubscribe(token)
    stamp = sqlite3.connect(directory / "catalog.db").execute("SELECT * FROM alembic_version")
    assert stamp.fetchall() == [(REQUIRED_REVISION,)]
    # Stamped with the revision this tiled requires: reopened without tiled's init command.
    with open_storage(StorageConfig(directory=directory)) as reopened:
        np.testing.assert_array_equal(
            load_run(reopened.client, uid)["primary"]["det"].read(), [1.5, 1.5]
        )


@pytest.mark.parametrize("stamp", ["current", "older", None])
def test_tiled_initialises_the_catalog_unless_it_is_current(tmp_path, stamp):
    import sqlite3

    import tiled.catalog
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION

    from dnpu_bluesky.storage._patches import no_catalog_init_if_current

    catalog = sqlite3.connect(tmp_path / "catalog.db")
    if stamp is not None:
        catalog.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        revision = REQUIRED_REVISION if stamp == "current" else ALL_REVISIONS[1]
        catalog.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
        catalog.commit()
    catalog.close()
    tiled_from_uri = tiled.catalog.from_uri
    with no_catalog_init_if_current(tmp_path):
        skipped = tiled.catalog.from_uri is not tiled_from_uri
    assert skipped == (stamp == "current")
    assert tiled.catalog.from_uri is tiled_from_uri


def test_a_second_storage_on_a_directory_uses_the_server_already_running_there(tmp_path, RE):
    """As `dnpu-bluesky runs` from a shell while an IPython session holds the directory: two
    servers on one directory would fight over its DuckDB file (HTTP 500 on reads)."""
    directory = tmp_path / "tiled"
    det = SynSignal(name="det", func=lambda: 1.5)
    with open_storage(StorageConfig(directory=directory)) as session:
        token = RE.subscribe(session.writer)
        (first,) = RE(bp.count([det], num=2)).run_start_uids
        session.writer.flush(30)
        with open_storage(StorageConfig(directory=directory)) as shell:
            assert shell.uri == session.uri
            assert [run.start["uid"] for run in find_runs(shell.client).values()] == [first]
        # Closing the shell's storage removed the spool directory they share (it was empty):
        # the session's next run must still be spooled and stored.
        assert not session.writer.spool_directory.exists()
        (second,) = RE(bp.count([det], num=2)).run_start_uids
        assert load_run(session.client, second)["primary"]["det"].read().tolist() == [1.5, 1.5]
        RE.unsubscribe(token)
    lock = directory / "server.lock"
    assert lock.read_text() == "" and lock.stat().st_mode & 0o777 == 0o600  # no key left
    with open_storage(StorageConfig(directory=directory)) as later:  # a server of its own
        assert later.uri != session.uri
        assert {run.start["uid"] for run in find_runs(later.client).values()} == {first, second}


def test_the_storage_package_imports_nothing_of_the_domain():
    import ast

    import dnpu_bluesky.storage

    imported = set()
    for path in Path(dnpu_bluesky.storage.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level > 1 or (node.module or "").startswith("dnpu_bluesky"):
                    imported.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.startswith("dnpu_bluesky")}
    assert imported == {".._errors"}  # StorageError, shared with the command line


def test_the_embedded_server_asks_uvicorn_for_asyncio_and_gets_uvloop():
    # In a fresh interpreter: the patch changes uvicorn's table for the whole process.
    code = (
        "import uvicorn\n"
        "from dnpu_bluesky.storage._patches import uvloop_for_the_server\n"
        "assert uvloop_for_the_server()\n"
        "factory = uvicorn.Config(app=None, loop='asyncio').get_loop_factory()\n"
        "print(type(factory()).__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("uvloop")


def test_the_embedded_stores_logs_and_spool_are_this_accounts_only(tmp_path, RE, hw):
    # The server's request log may hold its API key (issue 17): no other account may read it.
    det = hw[1]
    config = StorageConfig(directory=tmp_path / "data", spool_directory=tmp_path / "spool")
    modes: list[int] = []

    def spool_mode(name, doc):
        if name == "event":
            modes.extend(os.stat(p).st_mode & 0o777 for p in config.spool_directory.iterdir())

    with open_storage(config) as storage:
        RE.subscribe(storage.writer)
        RE.subscribe(spool_mode)
        RE(bp.count([det], num=2))
        storage.flush(timeout=60)
    logs = [config.directory / "access.log", config.directory / "error.log"]
    assert [os.stat(p).st_mode & 0o777 for p in logs] == [0o600, 0o600]
    assert modes and set(modes) == {0o600}


def test_run_documents_on_the_embedded_server(stored_RE, storage, documents, hw):
    _, det, _, _ = hw
    uid = _uid(stored_RE(bp.count([det], num=3)))
    run = load_run(storage.client, uid)
    assert "application/json-seq" in run.formats  # the server's export, no client fallback
    replayed = list(run.documents())
    names = [name for name, _ in replayed]
    assert names[0] == "start" and names[-1] == "stop" and names.count("event") == 3
    emitted = [doc["data"]["det"] for name, doc in documents if name == "event"]
    assert [doc["data"]["det"] for name, doc in replayed if name == "event"] == emitted
    assert [name for name, _ in export_documents(run)] == names


def test_databroker_v1_reads_a_run(stored_RE, storage, documents, hw):
    _, det, _, _ = hw
    uid = _uid(stored_RE(bp.count([det], num=2), gate="XOR"))
    header = storage.client.v1[uid]  # databroker's v1 Broker
    assert header.start["gate"] == "XOR" and header.stop["exit_status"] == "success"
    emitted = [doc["data"]["det"] for name, doc in documents if name == "event"]
    assert header.table("primary")["det"].tolist() == emitted
