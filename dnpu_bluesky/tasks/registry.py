"""Build a task from its name, e.g. from a plan argument or a configuration file."""

from __future__ import annotations

import dataclasses
from typing import Any

from dnpu_bluesky.tasks.base import Task
from dnpu_bluesky.tasks.boolean import GATES, BooleanGate
from dnpu_bluesky.tasks.sphere import SphereClassification

_TASK_NAMES = "'boolean:<GATE>' (GATE one of " + ", ".join(GATES) + ") or 'sphere'"


def make_task(name: str, **kwargs: Any) -> Task:
    """The task named ``name``, built with ``kwargs`` as its fields.

    Args:
        name: ``"boolean:<GATE>"`` (e.g. ``"boolean:XOR"``, gate case-insensitive) or
            ``"sphere"``.
        **kwargs: Fields of :class:`BooleanGate` (besides ``gate``) or of
            :class:`SphereClassification`.

    Raises:
        ValueError: for an unknown name or gate, or a keyword the task does not have (the
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


def _build(cls: type, **kwargs: Any) -> Any:
    accepted = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no field {', '.join(unknown)}: accepted are {', '.join(accepted)}"
        )
    return cls(**kwargs)
