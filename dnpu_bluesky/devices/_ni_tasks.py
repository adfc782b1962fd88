"""The NI-DAQmx tasks of one setup profile: channels, clocks, trigger, and the driver's checks.

Internal to :mod:`dnpu_bluesky.devices.ni_daqmx`, whose backend decides when tasks run and
keeps the electrodes safe; this module only builds and verifies them.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from .._errors import HardwareUnavailableError
from ..config import ElectrodeConfig, SetupProfile

__all__ = ["RATE_TOLERANCE", "TaskBuilder", "import_nidaqmx"]

#: Relative difference allowed between the requested and the driver's sample clock rate.
RATE_TOLERANCE = 1e-6

_TERMINAL_CONFIG = {
    "default": "DEFAULT",
    "rse": "RSE",
    "nrse": "NRSE",
    "diff": "DIFF",
    "pseudo_diff": "PSEUDO_DIFF",
}


def import_nidaqmx() -> ModuleType:
    """Import the installed ``nidaqmx`` package with the submodules the backend uses.

    Returns
    -------
    ModuleType
        The ``nidaqmx`` module.
    """
    module = importlib.import_module("nidaqmx")
    for name in ("constants", "errors", "system"):
        importlib.import_module(f"nidaqmx.{name}")
    return module


class TaskBuilder:
    """Builds the AO and AI tasks a setup profile describes, through one ``nidaqmx`` module.

    Parameters
    ----------
    daq
        The ``nidaqmx`` module (or a test double with its API).
    profile
        A validated setup profile with ``backend: nidaqmx``.
    """

    def __init__(self, daq: Any, profile: SetupProfile) -> None:
        self.daq = daq
        self.profile = profile

    @contextlib.contextmanager
    def driver_errors(self) -> Iterator[None]:
        """Turn the driver's "not found / not supported" into a HardwareUnavailableError.

        Yields
        ------
        None
        """
        errors = self.daq.errors
        try:
            yield
        except (errors.DaqNotFoundError, errors.DaqNotSupportedError) as exc:
            raise HardwareUnavailableError(
                "NI-DAQmx driver not found: install NI-DAQmx from ni.com (Windows or a "
                "supported Linux) or use the sim backend (backend: sim in the setup profile)"
            ) from exc

    def new_task(self) -> Any:
        """Create a new, empty ``nidaqmx.Task`` (a context manager that closes it).

        Returns
        -------
        nidaqmx.Task
            The task.
        """
        with self.driver_errors():
            return self.daq.Task()

    def driver_version(self) -> str:
        """Return the installed NI-DAQmx driver's version, ``major.minor.update``.

        Returns
        -------
        str
            The version.
        """
        with self.driver_errors():
            version = self.daq.system.System.local().driver_version
        return f"{version.major_version}.{version.minor_version}.{version.update_version}"

    def add_electrodes(self, task: Any) -> None:
        """Add every electrode's AO channel to ``task``, in channel order.

        Parameters
        ----------
        task
            An AO task.
        """
        # NI coerces the channel range to the module's own (+-10 V on a 9264): the software
        # check is the guard, this range only picks the DAC's range.
        for electrode in self.profile.electrodes:
            self._add_electrode(task, electrode)

    def _add_electrode(self, task: Any, electrode: ElectrodeConfig) -> None:
        task.ao_channels.add_ao_voltage_chan(
            electrode.channel,
            name_to_assign_to_channel=electrode.name,
            min_val=electrode.min_v,
            max_val=electrode.max_v,
        )

    def _add_output(self, task: Any) -> None:
        output = self.profile.output
        task.ai_channels.add_ai_voltage_chan(
            output.channel,
            name_to_assign_to_channel="output",
            terminal_config=getattr(
                self.daq.constants.TerminalConfiguration,
                _TERMINAL_CONFIG[output.terminal_config],
            ),
            min_val=-output.ai_range_v,
            max_val=output.ai_range_v,
        )

    def set_clock(self, task: Any, rate: float, n_samples: int) -> None:
        """Give ``task`` a finite sample clock at exactly ``rate``.

        Parameters
        ----------
        task
            The task.
        rate
            Samples per second.
        n_samples
            Samples per channel.

        Raises
        ------
        ValueError
            If the device cannot make ``rate`` exactly (before anything starts).
        """
        constants = self.daq.constants
        task.timing.cfg_samp_clk_timing(
            rate, sample_mode=constants.AcquisitionType.FINITE, samps_per_chan=n_samples
        )
        task.control(constants.TaskMode.TASK_VERIFY)  # the driver coerces the rate here
        actual = float(task.timing.samp_clk_rate)
        if not math.isclose(actual, rate, rel_tol=RATE_TOLERANCE):
            raise ValueError(
                f"the device runs the sample clock at {actual:.6g} S/s, not the requested "
                f"{rate:.6g} S/s; choose a sample_rate (times readout_oversampling) it makes "
                "exactly"
            )

    def configure_acquisition(
        self,
        ao: Any,
        ai: Any,
        rate: float,
        n_samples: int,
        step: Callable[[str], Any] | None = None,
    ) -> None:
        """Set up both tasks of one acquisition.

        The electrodes go on ``ao`` and the output on ``ai``, which is armed on the AO start
        trigger; both get finite clocks for ``n_samples`` AO samples at ``rate``.

        Parameters
        ----------
        ao, ai
            Two new tasks.
        rate
            AO samples per second (AI runs ``readout_oversampling`` times faster).
        n_samples
            AO samples per channel.
        step
            If given, told which part comes next, so that an error can name it.
        """
        step = step or (lambda part: None)
        for electrode in self.profile.electrodes:
            step(f"AO channel {electrode.channel} ({electrode.name})")
            self._add_electrode(ao, electrode)
        step("the AO sample clock")
        self.set_clock(ao, rate, n_samples)
        step(f"AI channel {self.profile.output.channel}")
        self._add_output(ai)
        source = self.profile.trigger.start_trigger_source
        step(f"trigger {source}")
        ai.triggers.start_trigger.cfg_dig_edge_start_trig(source)
        step("the AI sample clock")
        oversampling = self.profile.readout_oversampling
        self.set_clock(ai, rate * oversampling, n_samples * oversampling)

    def verify_setup(self) -> None:
        """Let the driver check every channel, both clocks and the trigger terminal now.

        Nothing is generated.

        Raises
        ------
        HardwareUnavailableError
            Naming the part the driver refused and its error.
        ValueError
            If the device cannot make the sample rate exactly.
        """
        parts = ["the AO task"]
        try:
            with self.new_task() as ao, self.new_task() as ai:
                self.configure_acquisition(ao, ai, self.profile.sample_rate, 2, parts.append)
        except self.daq.errors.DaqError as exc:
            lines = [line.strip().rstrip(".") for line in str(exc).splitlines() if line.strip()]
            detail = "; ".join(
                [lines[0], *(line for line in lines[1:] if line.startswith("Suggested"))]
            )
            raise HardwareUnavailableError(
                f"setup {self.profile.name!r}, {parts[-1]}: NI-DAQmx error {exc.error_code}: "
                f"{detail} (compare the setup profile with NI MAX)"
            ) from exc
        except ValueError as exc:
            raise ValueError(f"setup {self.profile.name!r}, {parts[-1]}: {exc}") from None

    def channel_major(self, samples: np.ndarray) -> np.ndarray:
        """``(n, channels)`` samples in the layout ``Task.write`` expects.

        Parameters
        ----------
        samples
            One row per sample, one column per electrode.

        Returns
        -------
        numpy.ndarray
            The samples, channel-major (1-D for a single channel).
        """
        if len(self.profile.electrodes) == 1:
            return np.ascontiguousarray(samples[:, 0])
        return np.ascontiguousarray(samples.T)
