"""A test double of exactly the part of ``nidaqmx`` that the NI-DAQmx backend uses.

``FakeNidaqmx()`` stands in for the ``nidaqmx`` module. Its ``constants`` and ``errors`` ARE the
installed package's modules, so every constant and exception the backend touches is real.
Every other name the backend may call is a method or property registered in :data:`SURFACE`
with the dotted path of its real counterpart; ``tests/test_nidaqmx_api.py`` checks each one
against the installed package (existence, kind, parameter names and order) and binds every
recorded call to the real signature. The fake's classes have no other public names, so the
backend cannot use anything the API test does not check.

The rig (``fake.rig``) is the test's side: it keeps every task created, every call made, the
voltage each AO channel holds and the history of all samples generated, computes the AI
response of a simulated device, and injects failures (missing driver, a DaqError on a call,
a generation that stalls part-way, a sample clock the driver coerces) or runs an action (such
as raising a signal) at a given call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nidaqmx.constants
import nidaqmx.errors
import numpy as np
from nidaqmx.error_codes import DAQmxErrors
from nidaqmx.types import DriverVersion

#: Real dotted path -> the fake function (property getter or method) that stands in for it.
SURFACE: dict[str, Callable[..., Any]] = {}

_FINITE = nidaqmx.constants.AcquisitionType.FINITE
#: Samples a running AO generation advances while its progress is queried.
_SAMPLES_PER_QUERY = 25
_DRIVER_MISSING = (
    "Could not find an installation of NI-DAQmx. Please ensure that NI-DAQmx is installed on "
    "this machine or contact National Instruments for support."
)


def _api(real_path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a fake function under its real path; record each call and inject errors."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            rig: Rig = self._rig
            rig.calls.append(Call(real_path, args, kwargs))
            action = rig.actions.pop(real_path, None)
            if action is not None:
                action()
            error = rig.errors.pop(real_path, None)
            if error is not None:
                raise error
            return func(self, *args, **kwargs)

        wrapper.real_path = real_path  # type: ignore[attr-defined]
        SURFACE[real_path] = func
        return wrapper

    return decorate


@dataclass
class Call:
    """One call the backend made: the real path and the arguments as passed."""

    path: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class TaskRecord:
    """What a test can inspect about one task."""

    kind: str | None = None  # "ao" or "ai" once a channel is added
    channels: list[dict[str, Any]] = field(default_factory=list)
    rate: float | None = None
    samps_per_chan: int | None = None
    trigger_source: str | None = None
    written: np.ndarray | None = None  # (n_samples, n_channels)
    started: bool = False
    generated: int = 0
    closed: bool = False
    triggered: bool = False

    @property
    def physical_channels(self) -> list[str]:
        """Physical channel names in the order they were added."""
        return [c["physical_channel"] for c in self.channels]


class Rig:
    """The simulated instrument behind the fake module, and the test's controls."""

    def __init__(self, ao_start_trigger: str = "/cDAQ1/ao/StartTrigger") -> None:
        self.ao_start_trigger = ao_start_trigger
        self.driver_installed = True
        self.tasks: list[TaskRecord] = []
        self.calls: list[Call] = []
        #: Real path -> exception raised (once) at the next call of that path.
        self.errors: dict[str, BaseException] = {}
        #: Real path -> function run (once) at the next call of that path, before any error.
        self.actions: dict[str, Callable[[], Any]] = {}
        #: The sample clock rate the driver makes for a requested rate (here: exactly it).
        self.coerce_rate: Callable[[float], float] = float
        #: If set, an AO generation has produced only this many samples until waited or stopped.
        self.ao_stalls_at: int | None = None
        self.levels: dict[str, float] = {}
        #: Every AO generation in order: (rate, physical channels, samples generated).
        self.history: list[tuple[float, tuple[str, ...], np.ndarray]] = []
        #: AI volts from the AO values held at each AI sample, shape (n_ai, n_ao), and times.
        self.response: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda held, t: (
            0.5 * held.sum(axis=1)
        )
        self._fake_tasks: list[_FakeTask] = []

    @property
    def open_tasks(self) -> list[TaskRecord]:
        """Tasks created and not closed."""
        return [t for t in self.tasks if not t.closed]

    def level(self, channels: list[str]) -> np.ndarray:
        """The voltage each channel holds now (0 V for a channel never driven)."""
        return np.array([self.levels.get(c, 0.0) for c in channels])

    def max_slew(self, channels: list[str]) -> float:
        """Largest |dV/dt| in V/s over everything ever generated, from 0 V at power-up."""
        previous = dict.fromkeys(channels, 0.0)
        worst = 0.0
        for rate, names, samples in self.history:
            for j, name in enumerate(names):
                if name not in previous or len(samples) == 0:
                    continue
                path = np.concatenate([[previous[name]], samples[:, j]])
                worst = max(worst, float(np.max(np.abs(np.diff(path)))) * rate)
                previous[name] = float(samples[-1, j])
        return worst

    def generated_samples(self, channels: list[str]) -> np.ndarray:
        """All samples generated on ``channels``, concatenated over the history."""
        rows = [s for _, names, s in self.history if list(names) == list(channels)]
        return np.vstack(rows) if rows else np.zeros((0, len(channels)))

    def _fire_ao_start(self) -> None:
        for task in self._fake_tasks:
            record = task._record
            if (
                record.kind == "ai"
                and task._armed
                and record.trigger_source == self.ao_start_trigger
                and not record.triggered
            ):
                task._capture()


def _daq_error(message: str, code: DAQmxErrors) -> nidaqmx.errors.DaqError:
    return nidaqmx.errors.DaqError(message, code.value)


class _FakeChannels:
    def __init__(self, task: _FakeTask, kind: str) -> None:
        self._rig = task._rig
        self._task = task
        self._kind = kind

    def _add(self, kind: str, physical_channel: str, **settings: Any) -> None:
        record = self._task._record
        if record.kind not in (None, kind):
            raise _daq_error(
                "Task cannot mix input and output channels", DAQmxErrors.INVALID_ATTRIBUTE_VALUE
            )
        if ":" in physical_channel or "," in physical_channel:
            raise NotImplementedError("the fake takes one physical channel per call")
        if not -10.0 <= settings["min_val"] < settings["max_val"] <= 10.0:
            raise _daq_error(
                f"Requested range {settings['min_val']}..{settings['max_val']} V not supported",
                DAQmxErrors.INVALID_ATTRIBUTE_VALUE,
            )
        record.kind = kind
        record.channels.append({"physical_channel": physical_channel, **settings})


class _FakeAOChannels(_FakeChannels):
    @_api("nidaqmx.task.collections.AOChannelCollection.add_ao_voltage_chan")
    def add_ao_voltage_chan(
        self,
        physical_channel: str,
        name_to_assign_to_channel: str = "",
        *,
        min_val: float = -10.0,
        max_val: float = 10.0,
    ) -> None:
        self._add(
            "ao",
            physical_channel,
            name=name_to_assign_to_channel,
            min_val=min_val,
            max_val=max_val,
        )


class _FakeAIChannels(_FakeChannels):
    @_api("nidaqmx.task.collections.AIChannelCollection.add_ai_voltage_chan")
    def add_ai_voltage_chan(
        self,
        physical_channel: str,
        name_to_assign_to_channel: str = "",
        *,
        terminal_config: Any = nidaqmx.constants.TerminalConfiguration.DEFAULT,
        min_val: float = -5.0,
        max_val: float = 5.0,
    ) -> None:
        if not isinstance(terminal_config, nidaqmx.constants.TerminalConfiguration):
            raise TypeError(
                f"terminal_config must be a TerminalConfiguration, got {terminal_config}"
            )
        self._add(
            "ai",
            physical_channel,
            name=name_to_assign_to_channel,
            terminal_config=terminal_config,
            min_val=min_val,
            max_val=max_val,
        )


class _FakeTiming:
    def __init__(self, task: _FakeTask) -> None:
        self._rig = task._rig
        self._task = task

    @_api("nidaqmx.task.Timing.cfg_samp_clk_timing")
    def cfg_samp_clk_timing(
        self, rate: float, *, sample_mode: Any = _FINITE, samps_per_chan: int = 1000
    ) -> None:
        if sample_mode is not _FINITE:
            raise NotImplementedError("the fake only does finite generation and acquisition")
        if not (math.isfinite(rate) and rate > 0) or samps_per_chan < 2:
            raise _daq_error("Invalid sample clock settings", DAQmxErrors.INVALID_ATTRIBUTE_VALUE)
        self._task._record.rate = float(self._rig.coerce_rate(rate))
        self._task._record.samps_per_chan = int(samps_per_chan)

    @property
    @_api("nidaqmx.task.Timing.samp_clk_rate")
    def samp_clk_rate(self) -> float:
        rate = self._task._record.rate
        if rate is None:
            raise _daq_error("Sample clock rate not set", DAQmxErrors.UNKNOWN)
        return rate


class _FakeStartTrigger:
    def __init__(self, task: _FakeTask) -> None:
        self._rig = task._rig
        self._task = task

    @_api("nidaqmx.task.triggering.StartTrigger.cfg_dig_edge_start_trig")
    def cfg_dig_edge_start_trig(self, trigger_source: str) -> None:
        self._task._record.trigger_source = trigger_source


class _FakeTriggers:
    def __init__(self, task: _FakeTask) -> None:
        self._rig = task._rig
        self._task = task

    @property
    @_api("nidaqmx.task.triggering.Triggers.start_trigger")
    def start_trigger(self) -> _FakeStartTrigger:
        return _FakeStartTrigger(self._task)


class _FakeOutStream:
    def __init__(self, task: _FakeTask) -> None:
        self._rig = task._rig
        self._task = task

    @property
    @_api("nidaqmx.task.OutStream.total_samp_per_chan_generated")
    def total_samp_per_chan_generated(self) -> int:
        record = self._task._record
        count = record.generated
        if self._task._running:
            # A running generation moves on while the driver is queried.
            record.generated = min(count + _SAMPLES_PER_QUERY, len(record.written))
        return count


class _FakeTask:
    def __init__(self, rig: Rig) -> None:
        self._rig = rig
        self._record = TaskRecord()
        self._armed = False
        self._running = False
        self._captured: np.ndarray | None = None
        rig.tasks.append(self._record)
        rig._fake_tasks.append(self)

    @_api("nidaqmx.task.Task.__enter__")
    def __enter__(self) -> _FakeTask:
        return self

    @_api("nidaqmx.task.Task.__exit__")
    def __exit__(self, type: Any, value: Any, traceback: Any) -> None:
        self.close()

    @property
    @_api("nidaqmx.task.Task.ao_channels")
    def ao_channels(self) -> _FakeAOChannels:
        return _FakeAOChannels(self, "ao")

    @property
    @_api("nidaqmx.task.Task.ai_channels")
    def ai_channels(self) -> _FakeAIChannels:
        return _FakeAIChannels(self, "ai")

    @property
    @_api("nidaqmx.task.Task.timing")
    def timing(self) -> _FakeTiming:
        return _FakeTiming(self)

    @property
    @_api("nidaqmx.task.Task.triggers")
    def triggers(self) -> _FakeTriggers:
        return _FakeTriggers(self)

    @property
    @_api("nidaqmx.task.Task.out_stream")
    def out_stream(self) -> _FakeOutStream:
        return _FakeOutStream(self)

    @_api("nidaqmx.task.Task.write")
    def write(self, data: Any, *, auto_start: bool = False, timeout: float = 10.0) -> int:
        record = self._check_usable("ao")
        n_channels = len(record.channels)
        array = np.asarray(data, dtype=float)
        if n_channels == 1:
            if array.ndim != 1:
                raise _daq_error("Write data must be 1-D for one channel", DAQmxErrors.UNKNOWN)
            samples = array[:, np.newaxis]
        else:
            if array.ndim != 2 or array.shape[0] != n_channels:
                raise _daq_error(
                    f"Write data has shape {array.shape}, task has {n_channels} channels",
                    DAQmxErrors.UNKNOWN,
                )
            samples = array.T
        if len(samples) != record.samps_per_chan:
            raise AssertionError(
                f"fake: wrote {len(samples)} samples, timing set {record.samps_per_chan}"
            )
        for j, channel in enumerate(record.channels):
            column = samples[:, j]
            if np.any(column < channel["min_val"]) or np.any(column > channel["max_val"]):
                raise _daq_error(
                    f"{channel['physical_channel']}: sample beyond the channel range",
                    DAQmxErrors.INVALID_AO_DATA_WRITE,
                )
        record.written = samples.copy()
        if auto_start:
            self.start()
        return len(samples)

    @_api("nidaqmx.task.Task.start")
    def start(self) -> None:
        record = self._check_usable(None)
        if record.kind == "ao":
            if record.written is None:
                raise _daq_error("No data written before start", DAQmxErrors.UNKNOWN)
            record.started = True
            self._running = True
            n = len(record.written)
            stall = self._rig.ao_stalls_at
            record.generated = n if stall is None else min(stall, n)
            self._rig._fire_ao_start()
        elif record.kind == "ai":
            record.started = True
            if record.trigger_source is None:
                self._capture()  # untriggered: starts at once, unrelated to any AO stream
            else:
                self._armed = True

    @_api("nidaqmx.task.Task.read")
    def read(self, number_of_samples_per_channel: int = 1, *, timeout: float = 10.0) -> list[float]:
        record = self._check_usable("ai")
        if self._captured is None:
            raise nidaqmx.errors.DaqReadError(
                "Some or all of the samples requested have not yet been acquired "
                "(the start trigger never arrived).",
                DAQmxErrors.SAMPLES_NOT_YET_AVAILABLE.value,
                0,
            )
        if number_of_samples_per_channel != record.samps_per_chan:
            raise AssertionError(
                f"fake: read {number_of_samples_per_channel}, timing set {record.samps_per_chan}"
            )
        return [float(v) for v in self._captured]

    @_api("nidaqmx.task.Task.wait_until_done")
    def wait_until_done(self, timeout: float = 10.0) -> None:
        record = self._check_usable(None)
        if record.kind == "ao" and self._running:
            record.generated = len(record.written)

    @_api("nidaqmx.task.Task.control")
    def control(self, action: Any) -> None:
        if not isinstance(action, nidaqmx.constants.TaskMode):
            raise TypeError(f"action must be a TaskMode, got {action!r}")
        if action is not nidaqmx.constants.TaskMode.TASK_VERIFY:
            raise NotImplementedError("the fake only verifies tasks")
        record = self._check_usable(None)
        if record.kind is None or record.rate is None:
            raise _daq_error("Task has no channels or no sample clock", DAQmxErrors.UNKNOWN)

    @_api("nidaqmx.task.Task.stop")
    def stop(self) -> None:
        self._check_usable(None)
        self._running = False
        self._armed = False

    @_api("nidaqmx.task.Task.close")
    def close(self) -> None:
        record = self._record
        if record.closed:
            return
        record.closed = True
        self._running = False
        self._armed = False
        if record.kind == "ao" and record.started and record.generated > 0:
            samples = record.written[: record.generated]
            names = tuple(record.physical_channels)
            self._rig.history.append((record.rate, names, samples.copy()))
            for j, name in enumerate(names):
                self._rig.levels[name] = float(samples[-1, j])

    def _check_usable(self, kind: str | None) -> TaskRecord:
        record = self._record
        if record.closed:
            raise _daq_error("Task has been closed", DAQmxErrors.INVALID_TASK)
        if kind is not None and record.kind != kind:
            raise _daq_error(f"Task has no {kind} channels", DAQmxErrors.UNKNOWN)
        return record

    def _capture(self) -> None:
        """Acquire the AI samples: triggered by the running AO task, or the static levels."""
        record = self._record
        n_ai = record.samps_per_chan
        t = np.arange(n_ai) / record.rate
        ao = next((f for f in self._rig._fake_tasks if f._record.kind == "ao" and f._running), None)
        if self._armed and ao is not None:
            ao_record = ao._record
            index = np.minimum(
                np.floor(t * ao_record.rate + 1e-9).astype(int), len(ao_record.written) - 1
            )
            held = ao_record.written[index]
        else:
            ao_names = sorted(self._rig.levels)
            held = np.tile(self._rig.level(ao_names), (n_ai, 1))
        volts = np.asarray(self._rig.response(held, t), dtype=float)
        channel = record.channels[0]
        self._captured = np.clip(volts, channel["min_val"], channel["max_val"])
        record.triggered = self._armed
        self._armed = False


class _FakeSystem:
    def __init__(self, rig: Rig) -> None:
        self._rig = rig

    @property
    @_api("nidaqmx.system.System.driver_version")
    def driver_version(self) -> DriverVersion:
        if not self._rig.driver_installed:
            raise nidaqmx.errors.DaqNotFoundError(_DRIVER_MISSING)
        return DriverVersion(2025, 1, 0)


class _FakeSystemClass:
    def __init__(self, rig: Rig) -> None:
        self._rig = rig

    @_api("nidaqmx.system.System.local")
    def local(self) -> _FakeSystem:
        return _FakeSystem(self._rig)


class _FakeSystemModule:
    def __init__(self, rig: Rig) -> None:
        self.System = _FakeSystemClass(rig)


class FakeNidaqmx:
    """Stands in for the ``nidaqmx`` module; ``rig`` is the test's handle on the instrument."""

    __version__ = "fake"
    constants = nidaqmx.constants
    errors = nidaqmx.errors

    def __init__(self, rig: Rig | None = None) -> None:
        self.rig = rig or Rig()
        self._rig = self.rig
        self.system = _FakeSystemModule(self.rig)

    @_api("nidaqmx.task.Task.__init__")
    def Task(self, new_task_name: str = "") -> _FakeTask:
        if not self.rig.driver_installed:
            raise nidaqmx.errors.DaqNotFoundError(_DRIVER_MISSING)
        return _FakeTask(self.rig)


#: Module attributes of the fake -> the real object each stands for.
MODULE_ATTRIBUTES = {
    "Task": "nidaqmx.task.Task",
    "system": "nidaqmx.system",
    "constants": "nidaqmx.constants",
    "errors": "nidaqmx.errors",
}

#: Public names of each fake class: all of them must be registered in SURFACE.
FAKE_CLASSES = (
    _FakeAOChannels,
    _FakeAIChannels,
    _FakeTiming,
    _FakeStartTrigger,
    _FakeTriggers,
    _FakeOutStream,
    _FakeTask,
    _FakeSystem,
    _FakeSystemClass,
)
