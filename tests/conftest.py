"""Shared fixtures: a real RunEngine whose documents are all schema-validated, and real Tiled.

Heavy imports (bluesky, tiled) happen inside the fixtures so that test modules that need
neither (``hge``, ``tasks``) collect fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from bluesky import RunEngine

    from dnpu_bluesky.storage import Storage

Document = tuple[str, dict[str, Any]]


def pytest_configure(config: pytest.Config) -> None:
    """Keep the tests' default data and spool directories out of the user's data directory."""
    os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="dnpu-bluesky-tests-")
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="dnpu-bluesky-tests-state-")


@pytest.fixture
def ni_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The NI-DAQmx backend's output state files in the test's directory; the SIGTERM
    handler (which building that backend replaces) restored after the test."""
    from dnpu_bluesky.devices import ni_daqmx

    monkeypatch.setenv("DNPU_STATE_DIR", str(tmp_path / "state"))
    handler = signal.getsignal(signal.SIGTERM)
    yield tmp_path / "state"
    for backend in list(ni_daqmx._open_backends):  # left open by the test: parked here
        with contextlib.suppress(Exception):
            backend.close()
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture
def clipping_controls() -> list[float]:
    """Controls (e0, e1, e2, e5, e6) at which the default virtual DNPU draws about -113 nA in
    every gate case: beyond the ``clipping_dnpu``'s full scale."""
    return [0.489, -1.169, -0.558, -0.566, 0.235]


@pytest.fixture
def clipping_dnpu() -> Iterator[Any]:
    """The default virtual DNPU read on a +-0.5 V AI range (+-50 nA full scale), which about
    7 % of random gate control settings exceed (``clipping_controls`` is one of them)."""
    from dnpu_bluesky.config import SetupProfile, default_sim_profile
    from dnpu_bluesky.devices import build_dnpu

    data = default_sim_profile().to_dict()
    data["output"]["ai_range_v"] = 0.5
    device = build_dnpu(SetupProfile.model_validate(data))
    yield device
    device.backend.close()


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory) -> Iterator[Storage]:
    """One embedded Tiled server for the whole session (an embedded-mode Storage).

    Starting a SimpleTiledServer takes seconds (it initialises its catalog in a subprocess),
    so tests share this server and get a fresh container each (see ``storage``).
    """
    from dnpu_bluesky.storage import StorageConfig, open_storage

    store = open_storage(StorageConfig(directory=tmp_path_factory.mktemp("tiled")))
    try:
        yield _KeyedServer(store)  # type: ignore[misc]
    finally:
        store.close()


class _KeyedServer:
    """The session's storage, whose ``uri`` carries the API key as a user would paste it.

    ``storage.uri`` has no key (clients send it as a header); the tests connect like a remote
    user given ``http://...?api_key=...``, which the tiled client and StorageConfig accept.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.uri = f"{storage.uri}?api_key={storage.api_key}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


@pytest.fixture
def storage(tiled_server: Storage) -> Iterator[Storage]:
    """A Storage writing to a fresh, empty runs container on the session's real Tiled server.

    It talks HTTP on loopback like any remote client (``storage.config.uri`` is set, so
    ``storage.config.directory`` is ``None``); closed after the test.
    """
    from dnpu_bluesky.storage import StorageConfig, open_storage

    container = f"runs_{uuid.uuid4().hex}"
    store = open_storage(StorageConfig(uri=tiled_server.uri, container=container))
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def documents() -> list[Document]:
    """Every ``(name, doc)`` the ``RE`` fixture emitted, in order (also ``RE.collected_docs``)."""
    return []


@pytest.fixture
def collect_valid(documents: list[Document]) -> Iterator[Callable[[str, dict[str, Any]], None]]:
    """A callback that appends every ``(name, doc)`` to ``documents`` and validates it against
    event-model's JSON schema; the test fails at teardown if any was invalid, listing them."""
    from event_model import DocumentNames, schema_validators
    from jsonschema.exceptions import ValidationError

    invalid: list[str] = []

    def collect_and_validate(name: str, doc: dict[str, Any]) -> None:
        documents.append((name, doc))
        try:
            validator = schema_validators[DocumentNames[name]]
        except KeyError:
            invalid.append(f"{name}: no event-model schema for this document type")
            return
        try:
            validator.validate(doc)
        except ValidationError as err:
            invalid.append(f"{name} {doc.get('uid', '')}: {err.message}")

    yield collect_and_validate
    if invalid:
        pytest.fail("Invalid Bluesky documents:\n" + "\n".join(invalid), pytrace=False)


@pytest.fixture
def RE(documents: list[Document], collect_valid) -> Iterator[RunEngine]:
    """A real RunEngine (``call_returns_result=True``) on its own event loop.

    Every emitted document (pages included) goes through ``collect_valid``: collected in the
    ``documents`` fixture (also ``RE.collected_docs``) and schema-validated.
    """
    from bluesky import RunEngine
    from bluesky.run_engine import TransitionError

    loop = asyncio.new_event_loop()
    engine = RunEngine({}, loop=loop, call_returns_result=True)
    engine.subscribe(collect_valid)
    engine.collected_docs = documents
    try:
        yield engine
    finally:
        if engine.state not in ("idle", "panicked"):
            try:
                engine.halt()
            except TransitionError:
                pass
        loop.call_soon_threadsafe(loop.stop)
        engine._th.join()
        loop.close()


@pytest.fixture
def stored_RE(storage: Storage, RE: RunEngine) -> RunEngine:
    """The ``RE`` fixture with ``storage.writer`` subscribed: every run lands in ``storage``.

    Read a run back with ``dnpu_bluesky.storage.load_run(storage.client, uid)``. The storage is
    set up first so that it is torn down last, after the RunEngine has emitted any stop document.
    """
    RE.subscribe(storage.writer)
    return RE


@pytest.fixture
def run_profile(tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """Run IPython with the repository's profile: ``run(*args, input=None, extra_env=None)``.

    Its files are in ``tmp_path`` (see ``benchmarks.tutorial.profile_session``); the embedded
    storage is ``tmp_path / "tiled"``.
    """
    from benchmarks.tutorial import profile_session

    ipython, env = profile_session(tmp_path)

    def run(
        *args: str, input: str | None = None, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*ipython, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=180,
            env={**env, **(extra_env or {})},
        )

    return run
