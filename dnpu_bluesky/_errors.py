"""Errors the command line reports in one line.

The module is light enough to import before knowing which command runs (``storage`` and
``devices`` take seconds to import). Use them from :mod:`dnpu_bluesky.storage` and
:mod:`dnpu_bluesky.devices.ni_daqmx`.
"""


class StorageError(RuntimeError):
    """Tiled cannot be opened, or documents could not be written to it in time.

    Raised by :func:`~dnpu_bluesky.storage.open_storage` when the server cannot be reached or
    started, and by ``flush`` when documents are not in Tiled yet (they stay in the spool and
    are retried).
    """


class HardwareUnavailableError(RuntimeError):
    """The hardware cannot be used as the setup describes it.

    The NI-DAQmx driver is not installed or not supported on this platform; the driver
    refuses a channel, clock or trigger terminal of the setup profile; another backend holds
    the AO devices; or an earlier session ended without parking them, so the voltages on the
    outputs are unknown.
    """


class MissingDependencyError(ImportError):
    """An optional dependency that the asked-for feature needs is not installed.

    The message names the install command (e.g. torch for brains-py surrogate files).
    """
