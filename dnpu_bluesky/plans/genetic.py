"""The genetic algorithm peer: the group's earlier standard, measured on the same devices."""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps

from ..devices.dnpu import DNPU
from ..devices.records import GenerationRecord
from ..tasks import Task
from .hge import _move_controls
from .stubs import Plan
from .train import (
    _check_target_accuracy,
    _device_names,
    _make_trainers,
    _prepare,
    _rank,
    _reaches_target,
    _run_metadata,
    _run_side_by_side,
    _Trainer,
)


def _next_generation(
    population: np.ndarray,
    losses: np.ndarray,
    bounds: np.ndarray,
    rng: np.random.Generator,
    n_elite: int,
    mutation_v: float,
) -> np.ndarray:
    """Keep the elite, fill the rest with blend crossover of tournament parents, mutate."""
    order = np.argsort(losses)
    elite = population[order[:n_elite]]
    children = []
    while len(children) < len(population) - n_elite:
        parents = []
        for _ in range(2):
            a, b = rng.integers(len(population), size=2)
            parents.append(population[a] if losses[a] < losses[b] else population[b])
        mix = rng.uniform(-0.25, 1.25, size=bounds.shape[0])
        child = parents[0] + mix * (parents[1] - parents[0])
        child += rng.normal(0.0, mutation_v, size=child.shape)
        children.append(np.clip(child, bounds[:, 0], bounds[:, 1]))
    return np.vstack([elite, np.array(children)])


def train_genetic(
    dnpu: DNPU | Sequence[DNPU],
    task: Task,
    *,
    population: int = 26,
    generations: int = 100,
    n_elite: int = 5,
    mutation_v: float = 0.1,
    target_margin_na: float = 2.0,
    target_accuracy: float = 1.0,
    seed: int = 0,
    md: dict | None = None,
) -> Plan:
    """Evolve the controls: every genome is one full evaluation of the task's input cases.

    Defaults follow the group's earlier practice (population ~26, elitism, ~100 generations).
    The mutation width shrinks linearly to a tenth over the generations. Stops when a genome
    reaches ``target_accuracy`` (at 1.0, the default: every case right and the classes
    ``target_margin_na`` apart), as :func:`~dnpu_bluesky.plans.train` does. A genome whose
    output left the AI range (clipped) ranks below every other and cannot end the run.

    Streams: ``eval_raw`` (every genome's raw waveform), ``generation`` (best and median loss,
    score of the best genome, device seconds) and ``evaluation`` (the final genome). A list
    of DNPUs evolves side by side in one run, as in :func:`~dnpu_bluesky.plans.train`.

    Returns:
        A :class:`TrainResult` (``iterations`` counts generations), or a list of them for a
        list of DNPUs.
    """
    if int(population) < n_elite + 2 or int(n_elite) < 1:
        raise ValueError(
            f"need population >= n_elite + 2 and n_elite >= 1, got {population}, {n_elite}"
        )
    if int(generations) < 1:
        raise ValueError(f"generations must be at least 1, got {generations}")
    if not (isinstance(mutation_v, int | float) and math.isfinite(mutation_v) and mutation_v >= 0):
        raise ValueError(f"mutation_v must be a finite number >= 0 (V), got {mutation_v!r}")
    _check_target_accuracy(target_accuracy)
    several_given = not isinstance(dnpu, DNPU)
    dnpus = list(dnpu) if several_given else [dnpu]
    trainers = _make_trainers(dnpus, task, "ga", seed, {}, lambda device: 0.0)
    yield from _prepare(trainers, "off")
    plan_args: dict[str, Any] = {
        "dnpu": _device_names(dnpus, several_given),
        "task": task.name,
        "population": population,
        "generations": generations,
        "n_elite": n_elite,
        "mutation_v": mutation_v,
        "target_margin_na": target_margin_na,
        "target_accuracy": target_accuracy,
        "seed": seed,
    }
    metadata = _run_metadata(trainers, "train_genetic", plan_args, md)
    metadata.update(seed=seed)
    settings = {
        "population": int(population),
        "generations": int(generations),
        "n_elite": int(n_elite),
        "mutation_v": mutation_v,
        "target_margin_na": target_margin_na,
        "target_accuracy": float(target_accuracy),
    }
    bodies = {trainer: _evolve(trainer, **settings) for trainer in trainers}
    results = yield from _run_side_by_side(bodies, metadata, [])
    return results if several_given else results[0]


def _evolve(
    trainer: _Trainer,
    *,
    population: int,
    generations: int,
    n_elite: int,
    mutation_v: float,
    target_margin_na: float,
    target_accuracy: float,
) -> Plan:
    """One device's evolution; yields plan messages and measurement requests."""
    task = trainer.task
    record = GenerationRecord(name="generation")
    genomes = np.array([trainer.random_controls() for _ in range(population)])
    best_point, generation = genomes[0], 0
    for generation in range(1, generations + 1):
        losses, scores, clipped = [], [], []
        for genome in genomes:
            yield from bps.checkpoint()  # a Ctrl-C pauses here, between two genomes
            yield from _move_controls(trainer.dnpu, genome)
            clipped_before = trainer.clipped_samples
            outputs = yield from trainer.evaluate_outputs()
            clipped.append(trainer.clipped_samples > clipped_before)
            losses.append(task.loss(outputs)[0])
            scores.append(task.evaluate(outputs))
        clipped, losses = np.array(clipped), np.array(losses)
        # Outputs read through a clipped ADC are wrong: such genomes rank last.
        ranked = np.where(clipped, np.inf, losses)
        best = int(np.argmin(ranked))
        in_range = losses[~clipped] if not clipped.all() else losses
        best_point = genomes[best].copy()
        record.record(
            generation=generation,
            best_loss=float(losses[best]),
            median_loss=float(np.median(in_range)),
            best_accuracy=scores[best].accuracy,
            best_margin_na=scores[best].margin_na,
            best_controls=best_point,
            device_seconds=trainer.device_seconds,
            measurements=trainer.measurements,
            clipped_genomes=int(clipped.sum()),
        )
        yield from bps.trigger_and_read([record], name=trainer.stream("generation"))
        winners = [
            i
            for i, s in enumerate(scores)
            if not clipped[i] and _reaches_target(s, target_accuracy, target_margin_na)
        ]
        if winners:
            top = max(winners, key=lambda i: _rank(scores[i]))
            best_point = genomes[top].copy()
            break
        shrink = 1.0 - 0.9 * generation / generations
        genomes = _next_generation(
            genomes, ranked, trainer.bounds, trainer.rng, n_elite, mutation_v * shrink
        )
    return (
        yield from trainer.finish(best_point, None, attempt=0, iterations=generation, attempts=1)
    )
