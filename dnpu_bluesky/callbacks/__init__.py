"""Document consumers: lock-in demodulation and training progress."""

from .lockin import Demodulated, LockInCallback, LockInError
from .progress import TrainingProgress

__all__ = ["Demodulated", "LockInCallback", "LockInError", "TrainingProgress"]
