"""Build a task from its name, e.g. from a plan argument or a configuration file."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from dnpu_bluesky.tasks.base import Task
from dnpu_bluesky.tasks.boolean import GATES, BooleanGate
from dnpu_bluesky.tasks.sphere import SphereClassification

_TASK_NAMES = "'boolean:<GATE>' (GATE one of " + ", ".join(GATES) + ") or 'sphere'"


def make_task(name: str, **kwargs: Any) -> Task:
    """Make the task named ``name``, built with ``kwargs`` as its fields.

    Parameters
    ----------
    name : str
        ``"boolean:<GATE>"`` (e.g. ``"boolean:XOR"``, gate case-insensitive) or
        ``"sphere"``.
    **kwargs : object
        Fields of :class:`BooleanGate` (besides ``gate``) or of
        :class:`SphereClassification`.

    Raises
    ------
    ValueError
        For an unknown name or gate, or a keyword the task does not have (the
        message lists the accepted ones).
    """
    kind, _, argument = name.strip().partition(":")
    kind = kind.lower()
    if kind == "boolean":
        if not argument:
            raise ValueError(f"name the gate, e.g. 'boolean:XOR', not {name!r}")
        if "gate" in kwargs:
            raise ValueError("give the gate in the name ('boolean:XOR'), not as a keyword")
        return _build(BooleanGate, gate=argument.strip(), **kwargs)
    if kind == "sphere" and not argument:
        return _build(SphereClassification, **kwargs)
    raise ValueError(f"unknown task {name!r}: use {_TASK_NAMES}")


#: Fields of each task kind that its description records as they are (the rest is derived).
_DESCRIBED_FIELDS = {
    "boolean_gate": ("input_low_v", "input_high_v"),
    "sphere_classification": (
        "n_points",
        "radius_fraction",
        "test_fraction",
        "seed",
        "input_range_v",
        "batch_size",
    ),
}


def task_from_description(description: Mapping[str, Any]) -> Task:
    """Rebuild a task from its :meth:`~Task.describe` output, e.g. a run's start document.

    Parameters
    ----------
    description : mapping
        The ``task`` entry of a training run's start document.

    Raises
    ------
    ValueError
        For a description this version cannot rebuild exactly (an unknown kind,
        or one whose rebuilt task would describe itself differently).
    """
    kind = description.get("task")
    if kind not in _DESCRIBED_FIELDS:
        raise ValueError(f"cannot rebuild a task of kind {kind!r}")
    fields = {key: description[key] for key in _DESCRIBED_FIELDS[kind]}
    if "input_range_v" in fields:
        fields["input_range_v"] = tuple(fields["input_range_v"])
    task = make_task(
        description["name"],
        loss_name=description["loss"],
        loss_params=dict(description["loss_params"]),
        **fields,
    )
    rebuilt = json.loads(json.dumps(task.describe()))
    given = json.loads(json.dumps(dict(description)))
    differing = sorted(
        key for key in rebuilt.keys() | given.keys() if rebuilt.get(key) != given.get(key)
    )
    if differing:
        raise ValueError(f"the rebuilt task differs from its description in {differing}")
    return task


def _build(cls: type, **kwargs: Any) -> Any:
    accepted = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no field {', '.join(unknown)}: accepted are {', '.join(accepted)}"
        )
    return cls(**kwargs)
