"""Lock-in demodulation of raw DNPU waveforms as a document consumer."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

import numpy as np
from event_model import DocumentRouter

from ..hge import (
    GradientEstimate,
    LockInResult,
    PhaseCalibration,
    Segment,
    demodulate,
    estimate_gradients,
)


class LockInError(RuntimeError):
    """Demodulating a raw waveform event failed; the message names the event."""


@dataclass(frozen=True)
class Demodulated:
    """What the lock-in made of one raw-waveform event."""

    event_uid: str
    seq_num: int
    tones: tuple[int, ...]
    lockin: LockInResult
    gradient: GradientEstimate


class LockInCallback(DocumentRouter):
    """Demodulate each raw-waveform event of one stream and hand the result to a queue.

    The plan that subscribed this callback reads :attr:`results` after each measurement
    (the per-event pattern of bluesky-adaptive). Errors are raised as :class:`LockInError`,
    which the RunEngine turns into a failed run rather than a silent hang.

    Parameters
    ----------
    device_name : str
        Name of the DNPU device whose fields the events carry.
    stream_name : str or tuple of str
        Event stream (or streams) holding the raw waveforms.
    estimator : str
        ``"projection"`` (default) or ``"sign"``, see :func:`estimate_gradients`.
    window : str
        Lock-in window, ``"rect"`` or ``"hann"``.
    """

    def __init__(
        self,
        device_name: str,
        stream_name: str | tuple[str, ...] = "hge_raw",
        *,
        estimator: str = "projection",
        window: str = "rect",
    ) -> None:
        super().__init__()
        self.device_name = device_name
        self.stream_names = (stream_name,) if isinstance(stream_name, str) else stream_name
        self.estimator = estimator
        self.window = window
        self.results: queue.Queue[Demodulated] = queue.Queue()
        self._settings: dict[str, dict[str, Any]] = {}

    def descriptor(self, doc: dict) -> None:
        """Read the lock-in settings of a raw-waveform stream of this callback's device.

        Parameters
        ----------
        doc : dict
            An event descriptor; other streams, and other devices' streams (devices trained
            side by side, each in its run), are left out.

        Raises
        ------
        LockInError
            The stream's configuration lacks the device or its lock-in settings.
        """
        if doc.get("name") not in self.stream_names:
            return
        if self.device_name not in doc.get("object_keys", {self.device_name: []}):
            return  # another device's stream (devices trained side by side, each in its run)
        try:
            config = doc["configuration"][self.device_name]["data"]
        except KeyError as exc:
            raise LockInError(
                f"stream {self.stream_names!r} has no configuration for device "
                f"{self.device_name!r}; is that the DNPU being read?"
            ) from exc
        try:
            self._settings[doc["uid"]] = self._settings_from(config)
        except Exception as exc:
            raise LockInError(
                f"cannot read the lock-in settings of stream {self.stream_names!r} from the "
                f"configuration of {self.device_name!r}: {exc}"
            ) from exc

    def _settings_from(self, config: dict[str, Any]) -> dict[str, Any]:
        prefix = self.device_name
        electrodes = sorted(
            {key[len(prefix) + 1 :].split("_")[0] for key in config if key.endswith("_frequency")}
        )
        frequencies = np.array([config[f"{prefix}_{e}_frequency"] for e in electrodes], float)
        sample_rate = float(config[f"{prefix}_sample_rate"])
        window_samples = round(float(config[f"{prefix}_window_s"]) * sample_rate)
        tones = np.flatnonzero(frequencies > 0)
        calibration = PhaseCalibration(
            frequencies=frequencies[tones],
            lag_rad=np.asarray(config[f"{prefix}_phase_lag_rad"], float)[tones],
            gain=np.asarray(config[f"{prefix}_phase_gain"], float)[tones],
        )
        return {
            "frequencies": frequencies,
            "sample_rate": sample_rate,
            "window_samples": window_samples,
            "tones": tuple(int(t) for t in tones),
            "calibration": calibration,
        }

    def event(self, doc: dict) -> None:
        """Demodulate a raw event of the stream and queue the result for :meth:`take`."""
        settings = self._settings.get(doc["descriptor"])
        if settings is None:
            return
        try:
            self.results.put(self._demodulate(doc, settings))
        except Exception as exc:
            raise LockInError(
                f"demodulation of event {doc['seq_num']} in streams {self.stream_names!r} "
                f"failed: {exc}"
            ) from exc

    def _demodulate(self, doc: dict, settings: dict[str, Any]) -> Demodulated:
        data = doc["data"]
        prefix = self.device_name
        output = np.asarray(data[f"{prefix}_output"], dtype=float)
        starts = np.asarray(data[f"{prefix}_window_start"], dtype=int)
        cases = np.asarray(data[f"{prefix}_segment_case"], dtype=int)
        dc = np.asarray(data[f"{prefix}_segment_dc"], dtype=float)
        amplitudes = np.asarray(data[f"{prefix}_segment_amplitudes"], dtype=float)
        n = settings["window_samples"]
        windows = [slice(int(s), int(s) + n) for s in starts]
        segments = [
            Segment(dc=dc[i], amplitudes=amplitudes[i], case=int(cases[i]))
            for i in range(len(starts))
        ]
        tones = list(settings["tones"])
        lockin = demodulate(
            output,
            settings["frequencies"][tones],
            settings["sample_rate"],
            windows=windows,
            window=self.window,
        )
        gradient = estimate_gradients(
            lockin,
            segments,
            settings["calibration"],
            estimator=self.estimator,
        )
        return Demodulated(
            event_uid=doc["uid"],
            seq_num=int(doc["seq_num"]),
            tones=settings["tones"],
            lockin=lockin,
            gradient=gradient,
        )

    def take(self) -> Demodulated:
        """Return the result for the latest raw event; raise if the callback produced none."""
        try:
            return self.results.get_nowait()
        except queue.Empty:
            raise LockInError(
                f"no demodulated result for stream {self.stream_names!r}: the lock-in callback "
                "saw no matching event (is it subscribed to this run?)"
            ) from None
