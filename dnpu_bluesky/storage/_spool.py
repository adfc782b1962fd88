"""The spool: one append-only file of length-prefixed msgpack records per run.

The background writer appends each document of a run to ``<start uid>.spool`` on the
caller's thread; its worker reads the records back in order and writes them to Tiled. The
format keeps numpy arrays bit for bit (raw bytes with dtype and shape).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

try:
    import fcntl
except ImportError:  # Windows: spool files are not locked
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


class CorruptSpool(ValueError):
    """A spool file holds bytes that are not a spooled document."""


def lock_file(file: Any) -> None:
    """Lock an open spool file for this writer (``BlockingIOError`` if another holds it)."""
    if fcntl is not None:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def close_quietly(file: Any) -> None:
    """Close ``file`` (if any), ignoring the errors of closing."""
    if file is not None:
        try:
            file.close()
        except OSError:
            pass


def abort_stop(run_start: str, reason: str) -> dict[str, Any]:
    """Make a stop document (``exit_status="abort"``) for a run whose own never came.

    Parameters
    ----------
    run_start : str
        The run's start uid.
    reason : str
        Why the run is closed so.

    Returns
    -------
    dict
        The stop document.
    """
    return {
        "uid": str(uuid.uuid4()),
        "time": time.time(),
        "run_start": run_start,
        "exit_status": "abort",
        "reason": f"dnpu_bluesky: {reason}",
    }


# Spool record: an 8-byte little-endian length, then msgpack of ``[name, doc]`` in which every
# numpy array is a map {"__ndarray__": dtype.str, "shape": [...], "data": <raw bytes>}.
_HEADER = struct.Struct("<Q")


def encode(name: str, doc: dict[str, Any]) -> bytes:
    """Encode the document ``(name, doc)`` as one spool record, header included.

    Parameters
    ----------
    name : str
        The document's name.
    doc : dict
        The document.

    Returns
    -------
    bytes
        The record.
    """
    payload = msgpack.packb([name, doc], default=_pack_default, use_bin_type=True)
    return _HEADER.pack(len(payload)) + payload


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.names is not None:
            return obj.tolist()
        array = np.ascontiguousarray(obj)
        return {"__ndarray__": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"Cannot spool a {type(obj).__name__} in a Bluesky document")


def _unpack_hook(obj: dict[str, Any]) -> Any:
    if "__ndarray__" in obj and len(obj) == 3:
        buffer = bytearray(obj["data"])
        return np.frombuffer(buffer, dtype=np.dtype(obj["__ndarray__"])).reshape(obj["shape"])
    return obj


def decode(record: bytes) -> tuple[str, dict[str, Any]]:
    """Decode one whole record (header included), as ``encode`` wrote it.

    Parameters
    ----------
    record : bytes
        The record.

    Returns
    -------
    tuple of (str, dict)
        The document's name and the document.

    Raises
    ------
    CorruptSpool
        The bytes are not a spooled document.
    """
    try:
        (size,) = _HEADER.unpack_from(record)
        if len(record) != _HEADER.size + size:
            raise ValueError("truncated record")
        name, doc = msgpack.unpackb(
            record[_HEADER.size :], object_hook=_unpack_hook, raw=False, strict_map_key=False
        )
    except (ValueError, struct.error, msgpack.UnpackException) as err:
        raise CorruptSpool(f"not a spooled document: {record[:40]!r}") from err
    return name, doc


def read_record(file: Any) -> bytes:
    """Read the next record of ``file``, header included.

    Parameters
    ----------
    file : binary file
        A spool file open for reading, at a record's start.

    Returns
    -------
    bytes
        The record; shorter than its header announced at a cut end, empty at the end.
    """
    header = file.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return header
    return header + file.read(_HEADER.unpack(header)[0])


def complete_length(path: Path) -> int:
    """Count the bytes of whole records at the start of a spool file.

    Parameters
    ----------
    path : pathlib.Path
        The spool file (a crash may have cut its last record).

    Returns
    -------
    int
        Where the last whole record ends.
    """
    size = path.stat().st_size
    end = 0
    with open(path, "rb") as file:
        while True:
            header = file.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return end
            following = end + _HEADER.size + _HEADER.unpack(header)[0]
            if following > size:
                return end
            end = following
            file.seek(end)


def append_whole(file: Any, record: bytes, length: int, *, fsync: bool) -> None:
    """Append ``record`` to a spool file of ``length`` bytes, all of it or nothing.

    A part of a record left behind (a full disk) would misalign every later record of the
    run, so the file is cut back to ``length`` before the error is raised.
    """
    rest = memoryview(record)
    try:
        while rest:
            rest = rest[file.write(rest) :]
        if fsync:
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(file.fileno(), length)
        raise


#: Disk space set aside per open run for its stop document (and an abort stop of ours), so
#: that a run stopped by a full spool disk still gets its own stop document spooled.
RESERVED_BYTES = 64 * 1024
#: ``errno`` values that mean the spool's disk (or the user's share of it) is full.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def reserve_path(path: Path) -> Path:
    """Give the path of the file that holds a spool file's reserved space.

    Parameters
    ----------
    path : pathlib.Path
        The run's spool file.

    Returns
    -------
    pathlib.Path
        ``<start uid>.reserve`` beside it.
    """
    return path.with_suffix(".reserve")


def reserve_space(path: Path) -> None:
    """Set aside :data:`RESERVED_BYTES` on the spool's disk for a run's last documents.

    Parameters
    ----------
    path : pathlib.Path
        The run's spool file.

    Raises
    ------
    OSError
        The disk has no room for it (the file is removed again).
    """
    reserve = reserve_path(path)
    descriptor = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(descriptor, 0, RESERVED_BYTES)
        else:  # written out, so that the blocks are really taken
            os.write(descriptor, bytes(RESERVED_BYTES))
    except BaseException:
        os.close(descriptor)
        release_space(path)
        raise
    os.close(descriptor)


def release_space(path: Path) -> None:
    """Give back the space that :func:`reserve_space` set aside (if any).

    Parameters
    ----------
    path : pathlib.Path
        The run's spool file.
    """
    with contextlib.suppress(OSError):
        reserve_path(path).unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    """Sync ``directory`` (a new file's name), warning instead of failing where it cannot."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as err:  # some filesystems cannot sync a directory: the files still are
        logger.warning("could not sync the spool directory %s: %s", directory, err)


def mtime_or_zero(path: Path) -> float:
    """Give ``path``'s modification time, 0 for a file removed meanwhile (replay order).

    Parameters
    ----------
    path : pathlib.Path
        A spool file.

    Returns
    -------
    float
        Seconds since the epoch.
    """
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed since it was listed; skipped when opened
        return 0.0
