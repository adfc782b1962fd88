"""What an NI-DAQmx backend's analog outputs hold, kept on disk, and the lock on them.

The analog outputs cannot be read back, so while its electrodes hold a non-zero level or a
generation runs, a backend keeps a state file per AO device next to that device's lock file,
in the ``nidaqmx`` folder of ``$DNPU_STATE_DIR`` (default:
``platformdirs.user_state_path("dnpu-bluesky")``). Internal to
:mod:`dnpu_bluesky.devices.ni_daqmx`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

try:
    import fcntl
except ImportError:  # Windows: no lock between sessions (see docs/hardware.md)
    fcntl = None  # type: ignore[assignment]

from .._errors import HardwareUnavailableError

__all__ = ["STATE_DIR_ENV", "OutputRecords", "device_of", "forget_locks"]

_log = logging.getLogger(__name__)

#: Environment variable naming the directory of the output state files.
STATE_DIR_ENV = "DNPU_STATE_DIR"
#: Lock files of the AO devices this process's backends hold (``lockf`` locks do not exclude
#: the process that holds them, so a second backend here is refused by this set).
_locked_devices: set[Path] = set()


def device_of(channel: str) -> str:
    """Return the DAQmx device of a physical channel, as DAQmx compares names (ignoring case).

    Parameters
    ----------
    channel
        A physical channel, e.g. ``cDAQ1Mod1/ao0``.

    Returns
    -------
    str
        The device, e.g. ``cdaq1mod1``.
    """
    return channel.strip("/").partition("/")[0].lower()


def forget_locks() -> None:
    """Forget the locks this process holds (in a forked child, which holds none of them)."""
    _locked_devices.clear()


def _state_directory() -> Path:
    directory = os.environ.get(STATE_DIR_ENV) or platformdirs.user_state_path("dnpu-bluesky")
    return Path(directory) / "nidaqmx"


class OutputRecords:
    """The lock and state files of the AO devices of one backend's electrode channels.

    Parameters
    ----------
    profile_name
        The setup profile's name, written into each state file.
    channels
        The electrodes' AO channels, in channel order.
    """

    def __init__(self, profile_name: str, channels: Sequence[str]) -> None:
        self.profile_name = profile_name
        self.channels = list(channels)
        self.devices = sorted({device_of(channel) for channel in self.channels})
        # Fixed for the backend's life, and one spelling per directory for the lock registry.
        self.directory = _state_directory().resolve()
        self._lock_fds: dict[Path, int] = {}

    def _file(self, device: str, suffix: str) -> Path:
        """Return the lock (``.lock``) or state (``.json``) file of one AO device."""
        return self.directory / (re.sub(r"[^a-z0-9._-]", "-", device) + suffix)

    def lock(self) -> None:
        """Lock the AO devices until :meth:`release` or the end of the process.

        A second backend on the same outputs would start from 0 V while this one holds a
        level, and this one would then ramp from a level no longer on the pins.

        Raises
        ------
        HardwareUnavailableError
            If another backend (of this or another process) holds them, or the state
            directory cannot be written.
        """
        outputs = f"{', '.join(self.devices)} (AO)"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for device in self.devices:
                path = self._file(device, ".lock")
                if path in _locked_devices:
                    raise HardwareUnavailableError(
                        f"{outputs}: in use by another backend of this process; close it "
                        "first (dnpu.backend.close())"
                    )
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides who may lock
                try:
                    if fcntl is not None:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except (BlockingIOError, PermissionError):  # held: EAGAIN or EACCES
                    try:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    finally:
                        os.close(fd)
                    raise HardwareUnavailableError(
                        f"{outputs}: in use by process {holder or 'unknown'}; close that "
                        "session first"
                    ) from None
                except OSError:
                    os.close(fd)
                    raise
                self._lock_fds[path] = fd
                _locked_devices.add(path)
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())  # at offset 0: the file was just opened
        except OSError as err:  # e.g. a state directory that cannot be written
            raise HardwareUnavailableError(
                f"{outputs}: cannot lock the outputs in {self.directory}: {err}"
            ) from None

    def release(self) -> None:
        """Release the locks (to the next session)."""
        for path, fd in self._lock_fds.items():
            # Closing the descriptor drops this process's lock on the file (lockf).
            os.close(fd)
            _locked_devices.discard(path)
        self._lock_fds.clear()

    def check_none_left(self) -> None:
        """Refuse to start where an earlier session may have left a voltage on the pins.

        Raises
        ------
        HardwareUnavailableError
            Naming the levels (or the generation) the state files record, and the files.
        """
        left = [path for device in self.devices if (path := self._file(device, ".json")).exists()]
        if not left:
            return
        records = []
        for path in left:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                record = {}
            levels = record.get("levels_v") if isinstance(record, dict) else None
            if isinstance(levels, dict) and levels:
                held = ", ".join(f"{name} {float(v):+.3f} V" for name, v in levels.items())
                records.append(f"held {held}")
            else:
                records.append("a generation was running (levels unknown)")
        files = " ".join(str(path) for path in left)
        raise HardwareUnavailableError(
            f"an earlier session ended without parking the outputs ({'; '.join(records)}): "
            "they may still hold that, or be at 0 V after a reset or power cycle. Check them "
            f"(NI MAX test panel or a multimeter), bring them to 0 V, then delete {files}"
        )

    def clear(self) -> None:
        """Remove the state files: the outputs are at 0 V."""
        for device in self.devices:
            path = self._file(device, ".json")
            try:
                path.unlink(missing_ok=True)
            except OSError:
                _log.warning("could not remove %s", path, exc_info=True)

    def write(self, levels: np.ndarray, *, running: bool, required: bool = True) -> None:
        """Record on disk what the outputs hold.

        Parameters
        ----------
        levels
            The levels the electrodes hold, in channel order (ignored if ``running``).
        running
            A generation is about to start (the levels will be unknown until it ends).
        required
            Raise if the record before a generation fails; otherwise it is logged.

        Raises
        ------
        HardwareUnavailableError
            If ``running`` and ``required`` and the record could not be written.
        """
        for device in self.devices:
            record: dict[str, Any] = {"pid": os.getpid(), "profile": self.profile_name}
            if running:
                record["running"] = True
            else:
                record["levels_v"] = {
                    channel: float(level)
                    for channel, level in zip(self.channels, levels, strict=True)
                    if device_of(channel) == device
                }
            path = self._file(device, ".json")
            partial = path.with_suffix(".tmp")
            try:
                with open(partial, "w") as file:
                    file.write(json.dumps(record))
                    file.flush()
                    os.fsync(file.fileno())  # on disk before the generation starts
                os.replace(partial, path)
            except OSError as err:
                with contextlib.suppress(OSError):
                    partial.unlink(missing_ok=True)
                if running and required:  # better no generation than one unrecorded
                    raise HardwareUnavailableError(
                        f"cannot record the output state in {path} before generating: {err}"
                    ) from None
                _log.error("could not record the output state in %s: %s", path, err)
