"""Document consumers: lock-in demodulation."""

from .lockin import Demodulated, LockInCallback, LockInError

__all__ = ["Demodulated", "LockInCallback", "LockInError"]
