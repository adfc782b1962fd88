"""Devices trained side by side: each device's loop, their measurements played together.

Internal to :mod:`dnpu_bluesky.plans`: a trainer's loop (:mod:`._training`) yields bluesky
messages and, to measure, a :class:`Measure`; :func:`run_side_by_side` passes the messages
through and plays the devices' measurements together, each device in a run of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import Msg, RunEngineControlException, short_uid

from ._common import device_setup
from .stubs import within_run

if TYPE_CHECKING:
    from ._training import Trainer

Plan = Generator[Msg, Any, Any]


@dataclass(frozen=True)
class Measure:
    """A training loop's request: play the device's stream once and send back the reading.

    The reading is saved to ``stream``. Requests of several devices are played together.
    """

    stream: str


def run_side_by_side(bodies: dict[Trainer, Plan], metadata: dict[str, Any], subs: list[Any]):
    """Run each trainer's loop, each device in a run of its own.

    One device: one run, as :func:`~dnpu_bluesky.plans.stubs.within_run` makes it. Several:
    one run per device, open at the same time (bluesky's run keys: the device's name), each
    with the streams a device trained alone has and the device's own ``detectors``,
    ``dnpu_backend`` and ``hge`` in its start document, plus ``side_by_side``: the
    ``devices`` in the order given and a ``group`` uid shared by the runs.

    Parameters
    ----------
    bodies : dict
        Each trainer's loop, in the order of the devices.
    metadata : dict
        The start document's metadata (:func:`run_metadata`).
    subs : list
        Callbacks subscribed for the run(s), e.g. the lock-in callbacks.

    Returns
    -------
    list
        The loops' results, in order.
    """
    stage = [trainer.dnpu for trainer in bodies]
    if len(bodies) == 1:
        return (yield from within_run(_side_by_side(bodies), md=metadata, stage=stage, subs=subs))
    group = {"devices": [t.dnpu.name for t in bodies], "group": str(uuid.uuid4())}
    plan: Plan = _side_by_side(bodies, keyed=True)
    for trainer in reversed(list(bodies)):
        device = trainer.dnpu
        md = {**metadata, **device_setup(device), "detectors": [device.name]}
        md["side_by_side"] = group
        plan = _keyed_run(plan, md, device.name)
    plan = bpp.stage_wrapper(plan, stage)
    plan = bpp.rewindable_wrapper(plan, False)  # see within_run
    if subs:
        plan = bpp.subs_wrapper(plan, subs)
    return (yield from plan)


def _keyed_run(plan: Plan, md: dict[str, Any], key: str) -> Plan:
    """Run ``plan`` inside the run of key ``key``, as ``bpp.run_wrapper`` does for one run.

    Parameters
    ----------
    plan : generator
        The plan.
    md : dict
        The run's start-document metadata.
    key : str
        The run key.

    Returns
    -------
    object
        What ``plan`` returned.
    """
    returned: list[Any] = []

    def body() -> Plan:
        returned.append((yield from plan))

    def close(error: BaseException | None = None) -> Plan:
        if error is None:
            yield Msg("close_run", run=key)
        elif isinstance(error, RunEngineControlException):
            yield Msg("close_run", exit_status=error.exit_status, run=key)
        else:
            yield Msg("close_run", exit_status="fail", reason=str(error), run=key)

    hints = dict(md.get("hints", {}))
    hints.setdefault("dimensions", [(["time"], "primary")])  # see within_run
    yield Msg("open_run", run=key, **{**md, "hints": hints})
    yield from bpp.contingency_wrapper(body(), except_plan=close, else_plan=close)
    return returned[0]


def _side_by_side(bodies: dict[Trainer, Plan], keyed: bool = False) -> Plan:
    """Run each device's loop, playing the devices' :class:`Measure` requests together.

    Parameters
    ----------
    bodies : dict
        Each trainer's loop.
    keyed : bool
        Send each device's messages to its own run (run key: the device's name).

    Returns
    -------
    list
        The loops' results, in order.
    """
    results: dict[Trainer, Any] = {}
    ready: dict[Trainer, Any] = dict.fromkeys(bodies)
    while ready:
        requests: dict[Trainer, Measure] = {}
        for trainer, reply in ready.items():
            body = bodies[trainer]
            while True:
                try:
                    item = body.send(reply)
                except StopIteration as done:
                    results[trainer] = done.value
                    break
                if isinstance(item, Measure):
                    requests[trainer] = item
                    break
                if keyed and isinstance(item, Msg):
                    item = item._replace(run=trainer.dnpu.name)
                reply = yield item
        ready = (yield from _measure_together(requests, keyed)) if requests else {}
    return [results[trainer] for trainer in bodies]


def _measure_together(requests: dict[Trainer, Measure], keyed: bool = False) -> Plan:
    """Trigger every requesting device at once, then save each reading to its stream.

    Parameters
    ----------
    requests : dict
        Each requesting trainer's :class:`Measure`.
    keyed : bool
        Save each reading in its device's own run (run key: the device's name).

    Returns
    -------
    dict
        Each trainer's reading.
    """
    group = short_uid("measure")
    for trainer in requests:
        yield from bps.trigger(trainer.dnpu, group=group)
    yield from bps.wait(group=group)
    readings = {}
    for trainer, request in requests.items():
        run = trainer.dnpu.name if keyed else None
        yield Msg("create", name=request.stream, run=run)
        readings[trainer] = yield Msg("read", trainer.dnpu, run=run)
        yield Msg("save", run=run)
    return readings
