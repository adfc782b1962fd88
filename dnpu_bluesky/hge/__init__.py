"""Homodyne gradient extraction: the signal core (numpy and scipy only).

Plan tones (:func:`plan_frequencies`), build the electrode stream
(:func:`hge_segments`, :func:`synthesize_waveform`), demodulate the recorded output
(:func:`demodulate`) and assemble the gradient per input case (:func:`estimate_gradients`),
optionally through a :class:`PhaseCalibration` of the measurement chain.
"""

from dnpu_bluesky.hge.frequencies import (
    FrequencyPlan,
    FrequencyPlanError,
    check_frequencies,
    plan_frequencies,
)
from dnpu_bluesky.hge.gradient import GradientEstimate, PhaseCalibration, estimate_gradients
from dnpu_bluesky.hge.lockin import LockInResult, demodulate
from dnpu_bluesky.hge.waveforms import Segment, Waveform, hge_segments, synthesize_waveform

__all__ = [
    "FrequencyPlan",
    "FrequencyPlanError",
    "GradientEstimate",
    "LockInResult",
    "PhaseCalibration",
    "Segment",
    "Waveform",
    "check_frequencies",
    "demodulate",
    "estimate_gradients",
    "hge_segments",
    "plan_frequencies",
    "synthesize_waveform",
]
