"""Sphere classification: whether a point of the 3-D input cube lies inside a sphere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dnpu_bluesky.tasks._labelled import (
    LabelledTask,
    check_loss,
    check_split,
    json_params,
)

#: Radius, as a fraction of the cube's half-edge, of the centred sphere holding half the cube's
#: volume: (4/3) pi r^3 = (2 h)^3 / 2.
HALF_VOLUME_RADIUS_FRACTION = float((3.0 / np.pi) ** (1.0 / 3.0))

#: Default input range (V) of every input electrode, a typical DNPU input range.
DEFAULT_INPUT_RANGE_V: tuple[float, float] = (-0.7, 0.3)

_MAX_SAMPLING_ROUNDS = 1000


@dataclass(frozen=True)
class SphereClassification(LabelledTask):
    """Points drawn in the input cube, labelled 1 inside a centred sphere and 0 outside.

    Each of the three inputs spans ``input_range_v``; the sphere is centred in the cube with
    radius ``radius_fraction`` times the cube's half-edge. Exactly ``n_points // 2`` points are
    drawn inside and the rest outside (uniformly within each region, by rejection), so the
    classes are balanced whatever the radius; the default radius puts half the cube's volume
    inside, so the points are also close to uniform over the cube. The split into train and
    test keeps the class balance in both (``has_test_split`` is True: training classifies the
    test split at the end). Everything is fixed by ``seed``.

    Attributes
    ----------
    n_points : int
        Number of points, train and test together (at least 8).
    radius_fraction : float
        Sphere radius over the cube's half-edge, in (0, 1].
    test_fraction : float
        Fraction of each class held out for the test split, in (0, 1).
    seed : int
        Seed of the points and the split.
    input_range_v : tuple of (float, float)
        ``(low, high)`` voltage range of each input electrode.
    batch_size : int or None
        Cases per step for stochastic training (see :meth:`minibatch`), or None
        to present all training cases every step.
    loss_name : str
        Key of :data:`dnpu_bluesky.tasks.losses.LOSSES`.
    loss_params : dict of {str: float}
        Keyword arguments of that loss.
    """

    n_points: int = 120
    radius_fraction: float = HALF_VOLUME_RADIUS_FRACTION
    test_fraction: float = 0.25
    seed: int = 0
    input_range_v: tuple[float, float] = DEFAULT_INPUT_RANGE_V
    batch_size: int | None = None
    loss_name: str = "sigmoid"
    loss_params: dict[str, float] = field(default_factory=dict, hash=False)
    _points: np.ndarray = field(init=False, repr=False, compare=False)
    _labels: np.ndarray = field(init=False, repr=False, compare=False)
    _split_indices: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    n_inputs = 3
    name = "sphere"
    has_test_split = True

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.input_range_v)
        if not low < high:
            raise ValueError(
                f"input_range_v must be (low, high) with low < high, got {(low, high)}"
            )
        object.__setattr__(self, "input_range_v", (low, high))
        if self.n_points < 8:
            raise ValueError(f"n_points must be at least 8, got {self.n_points}")
        if not 0.0 < self.radius_fraction <= 1.0:
            raise ValueError(f"radius_fraction must be in (0, 1], got {self.radius_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        object.__setattr__(self, "loss_params", dict(self.loss_params))
        check_loss(self.loss_name, self.loss_params)

        rng = np.random.default_rng(self.seed)
        points, labels = self._draw_points(rng)
        splits = self._split(labels, rng)
        n_train = splits["train"].size
        if self.batch_size is not None and not 2 <= self.batch_size <= n_train:
            raise ValueError(
                f"batch_size must be between 2 and the {n_train} training cases, "
                f"got {self.batch_size}"
            )
        object.__setattr__(self, "_points", points)
        object.__setattr__(self, "_labels", labels)
        object.__setattr__(self, "_split_indices", splits)

    @property
    def center_v(self) -> float:
        """Voltage of the sphere's centre on every input electrode."""
        return 0.5 * (self.input_range_v[0] + self.input_range_v[1])

    @property
    def radius_v(self) -> float:
        """Sphere radius in volts."""
        return self.radius_fraction * 0.5 * (self.input_range_v[1] - self.input_range_v[0])

    def _draw_points(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n_inside = self.n_points // 2
        n_outside = self.n_points - n_inside
        inside: list[np.ndarray] = []
        outside: list[np.ndarray] = []
        have_inside = have_outside = 0
        for _ in range(_MAX_SAMPLING_ROUNDS):
            candidates = rng.uniform(*self.input_range_v, size=(max(4 * self.n_points, 1024), 3))
            is_inside = np.linalg.norm(candidates - self.center_v, axis=1) < self.radius_v
            inside.append(candidates[is_inside][: n_inside - have_inside])
            outside.append(candidates[~is_inside][: n_outside - have_outside])
            have_inside += inside[-1].shape[0]
            have_outside += outside[-1].shape[0]
            if have_inside == n_inside and have_outside == n_outside:
                break
        else:
            raise ValueError(
                f"could not draw {n_inside} points inside a sphere of radius_fraction "
                f"{self.radius_fraction}: make it larger"
            )
        points = np.concatenate(inside + outside)
        labels = np.concatenate([np.ones(n_inside, dtype=int), np.zeros(n_outside, dtype=int)])
        return points, labels

    def _split(self, labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        train: list[np.ndarray] = []
        test: list[np.ndarray] = []
        for label in (1, 0):
            members = rng.permutation(np.flatnonzero(labels == label))
            n_test = round(self.test_fraction * members.size)
            if not 1 <= n_test < members.size:
                raise ValueError(
                    f"test_fraction {self.test_fraction} leaves a split without class {label} "
                    f"among {members.size} points: change n_points or test_fraction"
                )
            test.append(members[:n_test])
            train.append(members[n_test:])
        return {
            "train": rng.permutation(np.concatenate(train)),
            "test": rng.permutation(np.concatenate(test)),
            "all": np.arange(labels.size),
        }

    def input_voltages(self, split: str = "train") -> np.ndarray:
        """Return the split's points, shape ``(n_cases, 3)`` volts."""
        check_split(split)
        return self._points[self._split_indices[split]].copy()

    def unit_inputs(self, split: str = "train") -> np.ndarray:
        """Return the split's points as fractions of the input range, shape ``(n_cases, 3)``."""
        low, high = self.input_range_v
        return (self.input_voltages(split) - low) / (high - low)

    def input_levels(self) -> np.ndarray:
        """Return each input's range ``(low, high)``, shape ``(3, 2)``.

        These are the voltages of unit inputs 0 and 1.
        """
        return np.array([self.input_range_v] * self.n_inputs, dtype=float)

    def targets(self, split: str = "train") -> np.ndarray:
        """Return 1 for a point inside the sphere, 0 outside, shape ``(n_cases,)``."""
        check_split(split)
        return self._labels[self._split_indices[split]].copy()

    def minibatch(self, rng: np.random.Generator) -> np.ndarray:
        """Return indices into the training split for one stochastic step, both classes present.

        Returns all training indices when ``batch_size`` is None; otherwise ``batch_size``
        distinct indices, sorted, with the classes in their training proportion (at least one
        of each so every loss is defined).
        """
        labels = self.targets("train")
        if self.batch_size is None:
            return np.arange(labels.size)
        high = np.flatnonzero(labels == 1)
        low = np.flatnonzero(labels == 0)
        n_high = round(self.batch_size * high.size / labels.size)
        n_high = min(max(n_high, 1), self.batch_size - 1, high.size)
        n_low = min(self.batch_size - n_high, low.size)
        chosen = np.concatenate(
            [rng.choice(high, n_high, replace=False), rng.choice(low, n_low, replace=False)]
        )
        return np.sort(chosen)

    def describe(self) -> dict[str, Any]:
        """Describe parameters, geometry and split sizes (the points follow from the seed)."""
        return {
            "task": "sphere_classification",
            "name": self.name,
            "n_inputs": self.n_inputs,
            "n_points": int(self.n_points),
            "n_train": int(self._split_indices["train"].size),
            "n_test": int(self._split_indices["test"].size),
            "radius_fraction": float(self.radius_fraction),
            "radius_v": float(self.radius_v),
            "center_v": float(self.center_v),
            "input_range_v": [float(v) for v in self.input_range_v],
            "test_fraction": float(self.test_fraction),
            "seed": int(self.seed),
            "batch_size": None if self.batch_size is None else int(self.batch_size),
            "positive_class": "inside",
            "loss": self.loss_name,
            "loss_params": json_params(self.loss_params),
        }
