"""Continue a past training run, and check that a device is the one a run measured.

What ``dnpu-bluesky train --from UID`` and ``dnpu-bluesky evaluate UID`` do, for IPython::

    RE(train(dnpu, **continue_from(runs, "3f2a9c1e", dnpu)))

trains the past run's task again on ``dnpu``, on the run's input electrodes, from the
controls (and trained input levels) it ended with, for the margin and accuracy it trained
for; its random restarts draw from the past run's seed plus one.
"""

from __future__ import annotations

import logging
from typing import Any

from .devices.dnpu import DNPU
from .plans.train import DEFAULT_TARGET_MARGIN_NA
from .results import electrode_label, trained_setting
from .storage import Storage, load_run
from .tasks import task_from_description

__all__ = [
    "RESULT_PLANS",
    "asked_margin",
    "check_same_device",
    "continuation_options",
    "continue_from",
    "past_training",
    "virtual_dnpu_seed",
]

logger = logging.getLogger(__name__)

#: Plans whose runs end with an unperturbed evaluation of a task at their controls.
RESULT_PLANS = ("train", "train_genetic", "evaluate_controls")


def past_training(run: Any, device: str | None = None) -> dict[str, Any]:
    """Return what a past training run ended with, and what it trained for.

    Parameters
    ----------
    run : BlueskyRun
        A ``train``, ``train_genetic`` or ``evaluate_controls`` run, e.g.
        ``load_run(runs, uid)``.
    device : str, optional
        Which device, for a run that trained several side by side (required then).

    Returns
    -------
    dict
        The keys of :func:`~dnpu_bluesky.results.trained_setting` (``controls``, ``inputs``,
        ``input_levels``, ``accuracy``, ``margin_na``, ``control_electrodes``, ...), with
        ``task`` rebuilt as a task object, and: ``uid`` (the run's), ``device`` (the device's
        name in that run), ``backend`` (the description of the device it measured),
        ``training_seed``, ``target_margin_na`` (the margin it trained for, nA) and
        ``target_accuracy``.

    Raises
    ------
    ValueError
        The run is not a training run, or ``device`` is missing or not one of the run's.
    KeyError
        The run stopped before its final evaluation.
    """
    start = run.metadata["start"]
    uid = start["uid"]
    if start["plan_name"] not in RESULT_PLANS:
        raise ValueError(f"run {uid[:8]} is not a training run")
    devices = start["detectors"]
    if device is None and len(devices) > 1:
        raise ValueError(f"run {uid[:8]} trained {devices}: choose one as device")
    if device is not None and device not in devices:
        raise ValueError(f"run {uid[:8]} trained {devices}, not {device!r}")
    setting = trained_setting(run, device)
    task = task_from_description(setting["task"])
    backend = start["dnpu_backend"]
    setting.update(
        task=task,
        uid=uid,
        device=device or devices[0],
        backend=backend[device or devices[0]] if len(devices) > 1 else backend,
        training_seed=int(start.get("seed", 0)),
        target_margin_na=_target_margin(start, task),
        target_accuracy=float(start.get("plan_args", {}).get("target_accuracy", 1.0)),
    )
    return setting


def _target_margin(start: dict[str, Any], task: Any) -> float:
    """Return the margin (nA) a run trained for.

    An ``evaluate_controls`` run has none of its own: its task's loss is centred on the one
    its controls were trained for (if one was asked).
    """
    plan_args = start.get("plan_args", {})
    if "target_margin_na" in plan_args:
        return float(plan_args["target_margin_na"])
    offset = getattr(task, "loss_params", {}).get("offset_na")
    return DEFAULT_TARGET_MARGIN_NA if offset is None else float(offset)


def asked_margin(past: dict[str, Any]) -> float | None:
    """Return the margin a past gate run was asked to train for.

    Parameters
    ----------
    past : dict
        From :func:`past_training`.

    Returns
    -------
    float or None
        ``past["target_margin_na"]`` if the run asked for a margin (its loss centred on it, or
        a target other than the default); None for a sphere run, or a gate run that trained
        for the default margin without asking for one.
    """
    task = past["task"]
    if task.name == "sphere":
        return None
    target = past["target_margin_na"]
    asked = "offset_na" in task.loss_params or target != DEFAULT_TARGET_MARGIN_NA
    return target if asked else None


def virtual_dnpu_seed(past: dict[str, Any]) -> int | None:
    """Return the seed of the built-in virtual DNPU a past run measured.

    Parameters
    ----------
    past : dict
        From :func:`past_training`.

    Returns
    -------
    int or None
        The seed (``default_sim_profile(seed=...)`` builds that device again); None if the run
        measured hardware or a surrogate model.
    """
    backend = past["backend"]
    model = backend.get("model", {})
    if backend.get("name") != "sim" or model.get("kind") != "VirtualDNPU":
        return None
    return int(model["seed"])


def check_same_device(dnpu: DNPU, past: dict[str, Any]) -> bool:
    """Check that a past run's controls fit ``dnpu``, and whether it is the device measured.

    The controls are applied in order, so they must be on the same electrodes and channels.

    Parameters
    ----------
    dnpu : DNPU
        The device to measure now.
    past : dict
        From :func:`past_training`.

    Returns
    -------
    bool
        True if ``dnpu`` is the device the run measured (the same simulated model, or the same
        setup's name and channels); False for another device with the same control electrodes.

    Raises
    ------
    ValueError
        ``dnpu`` has its control electrodes (those that are not the run's inputs) on other
        electrodes or channels than the run had.
    """
    inputs = (past.get("inputs") or "").split(",")
    ours = [
        electrode_label(e.attr_name, e.channel.get())
        for e in dnpu.electrodes
        if (e.attr_name not in inputs if inputs[0] else e.role.get() == "control")
    ]
    if past["control_electrodes"] != ours:
        raise ValueError(
            f"run {past['uid'][:8]} had its controls on {', '.join(past['control_electrodes'])}"
            f"; this device has them on {', '.join(ours)}: give the setup it was measured with"
        )
    return _device_identity(dnpu.backend.describe()) == _device_identity(past["backend"])


def _device_identity(backend: dict[str, Any]) -> Any:
    """Return what tells devices apart in a backend's description.

    That is a simulated model's parameters, or the setup's name and channels.
    """
    if "model" in backend:
        return backend["model"].get("parameter_hash")
    profile = backend.get("profile", {})
    channels = [electrode.get("channel") for electrode in profile.get("electrodes", [])]
    return profile.get("name"), channels, profile.get("output", {}).get("channel")


def continuation_options(past: dict[str, Any]) -> dict[str, Any]:
    """Return the keyword arguments of :func:`~dnpu_bluesky.plans.train` that continue a run.

    Parameters
    ----------
    past : dict
        From :func:`past_training`.

    Returns
    -------
    dict
        ``task``; ``inputs`` (the run's own, no screening) and ``learn_levels`` (as the run
        had them); ``initial_controls`` and, with trained levels, ``initial_levels``;
        ``target_margin_na`` and ``target_accuracy`` as the run trained for; ``seed``, the
        run's training seed plus one, so that the restarts are not the run's own starts; and
        ``md`` recording ``source_run`` and ``source_device``.
    """
    options: dict[str, Any] = {
        "task": past["task"],
        "learn_levels": bool(past.get("learned_levels")),
        "target_margin_na": past["target_margin_na"],
        "target_accuracy": past["target_accuracy"],
        "initial_controls": past["controls"],
        "seed": past["training_seed"] + 1,
        "md": {"source_run": past["uid"], "source_device": past["device"]},
    }
    if past.get("inputs"):
        options["inputs"] = past["inputs"]
    if options["learn_levels"] and past.get("input_levels") is not None:
        options["initial_levels"] = past["input_levels"]
    return options


def continue_from(
    storage: Storage | Any, uid: str, dnpu: DNPU, *, device: str | None = None
) -> dict[str, Any]:
    """Return the keyword arguments of :func:`~dnpu_bluesky.plans.train` continuing a run.

    ``RE(train(dnpu, **continue_from(runs, uid, dnpu)))`` trains as
    ``dnpu-bluesky train --from UID`` does; add ``method=``, ``max_iterations=``, ... as for
    any training. A warning is logged if ``dnpu`` is not the device the run measured.

    Parameters
    ----------
    storage : Storage or tiled client
        Where the run is stored (the session's ``runs``, or ``storage.client``).
    uid : str
        The past run's uid, or a unique prefix of it.
    dnpu : DNPU
        The device to train.
    device : str, optional
        Which device of a run that trained several side by side.

    Returns
    -------
    dict
        :func:`continuation_options` of the run.

    Raises
    ------
    KeyError
        No such run, or it stopped before its final evaluation.
    ValueError
        Not a training run, ``device`` missing or wrong, or ``dnpu`` has its controls on
        other electrodes (:func:`check_same_device`).
    """
    client = storage.client if isinstance(storage, Storage) else storage
    past = past_training(load_run(client, uid), device)
    if not check_same_device(dnpu, past):
        logger.warning("run %s was measured on another device than %s", past["uid"][:8], dnpu.name)
    return continuation_options(past)
