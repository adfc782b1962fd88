"""Past runs as ``train --from``, ``evaluate`` and ``report`` name them."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._common import UsageError, seed_given, seed_of, where


def load_past_run(storage: Any, uid: str) -> Any:
    """``load_run``, with a missing run reported with the storage it was looked for in.

    Parameters
    ----------
    storage : Storage
        The open storage.
    uid : str
        The run's uid or a unique prefix.

    Returns
    -------
    BlueskyRun
        The run.

    Raises
    ------
    UsageError
        No such run.
    """
    from ..storage import load_run

    try:
        return load_run(storage.client, uid)
    except KeyError:
        raise UsageError(
            f"no run with uid {uid!r} in {where(storage.config)} "
            f"(container {storage.config.container!r})"
        ) from None


def load_past_training(storage: Any, uid: str, device: str | None) -> dict[str, Any]:
    """Return a past training run as :func:`dnpu_bluesky.continuation.past_training` does.

    The device of a side-by-side run is the one chosen with ``--device``.

    Parameters
    ----------
    storage : Storage
        The open storage.
    uid : str
        The run's uid or a unique prefix.
    device : str or None
        ``--device``.

    Returns
    -------
    dict
        See :func:`~dnpu_bluesky.continuation.past_training`.

    Raises
    ------
    UsageError
        No such run, or ``--device`` missing or wrong.
    ValueError
        Not a training run.
    """
    from ..continuation import RESULT_PLANS, past_training

    run = load_past_run(storage, uid)
    start = run.metadata["start"]
    devices = start["detectors"]
    if start["plan_name"] in RESULT_PLANS:  # else past_training says it is none
        if device is None and len(devices) > 1:
            raise UsageError(f"run {start['uid'][:8]} trained {devices}: choose one with --device")
        if device is not None and device not in devices:
            raise UsageError(f"--device: run {start['uid'][:8]} trained {devices}, not {device!r}")
    return past_training(run, device)


def device_seed(args: argparse.Namespace, past: dict[str, Any]) -> int:
    """Return the seed of the virtual DNPU to measure.

    It is ``--seed`` (or ``DNPU_SEED``) when the command names a device (``--seed``,
    ``--setup``, ``DNPU_SETUP``), else the one the run measured.

    Parameters
    ----------
    args : argparse.Namespace
        With ``seed`` and ``setup``.
    past : dict
        From :func:`load_past_training`.

    Returns
    -------
    int
        The seed.

    Raises
    ------
    UsageError
        The run measured hardware or a surrogate, and the command names no device.
    """
    from ..continuation import virtual_dnpu_seed

    if args.setup or seed_given(args) or os.environ.get("DNPU_SETUP"):
        return seed_of(args)
    seed = virtual_dnpu_seed(past)
    if seed is None:
        raise UsageError(
            f"run {past['uid'][:8]} was measured on {past['backend'].get('name', 'hardware')!r}: "
            "give the device with --setup (or DNPU_SETUP), or --seed and --model for a simulation"
        )
    return seed
