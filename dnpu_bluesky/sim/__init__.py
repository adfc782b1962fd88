"""The virtual DNPU: device models, readout electronics and a simulated DAQ backend.

``SimulatedBackend()`` is a complete virtual instrument: a seeded :class:`VirtualDNPU` read
through a noisy current amplifier and ADC (:class:`Electronics`), behind the same backend
protocol as the NI-DAQmx hardware. A brains-py surrogate of a measured device can replace
the built-in model (:func:`load_brainspy_surrogate`).
"""

from dnpu_bluesky.sim.daq import SimulatedBackend
from dnpu_bluesky.sim.electronics import Electronics
from dnpu_bluesky.sim.models import DeviceModel, VirtualDNPU
from dnpu_bluesky.sim.surrogate import SurrogateModel, load_brainspy_surrogate

__all__ = [
    "DeviceModel",
    "Electronics",
    "SimulatedBackend",
    "SurrogateModel",
    "VirtualDNPU",
    "load_brainspy_surrogate",
]
