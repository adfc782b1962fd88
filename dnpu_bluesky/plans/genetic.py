"""The genetic algorithm peer: the group's earlier standard, measured on the same devices."""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps

from ..devices.dnpu import DNPU
from ..devices.records import GenerationRecord
from ..tasks import Task
from ..tasks.levels import DEFAULT_MIN_SWING_V
from ..tasks.training import (
    DEFAULT_GENERATIONS,
    DEFAULT_MUTATION_V,
    DEFAULT_N_ELITE,
    DEFAULT_POPULATION,
    DEFAULT_TARGET_ACCURACY,
    DEFAULT_TARGET_MARGIN_NA,
    rank,
    reaches_target,
)
from ._common import check_positive
from ._side_by_side import run_side_by_side
from ._training import (
    Setting,
    Trainer,
    check_target_accuracy,
    device_names,
    level_fields,
    make_trainers,
    on_inputs,
    prepare,
    resolve_inputs,
    run_metadata,
)
from .stubs import Plan

#: Chance that a child of the genetic algorithm moves to other input electrodes.
INPUTS_MUTATION_RATE = 0.1


def _next_generation(
    population: list[Setting],
    losses: np.ndarray,
    rng: np.random.Generator,
    n_elite: int,
    mutation_v: float,
    candidates: list[str],
) -> list[Setting]:
    """Keep the elite, fill the rest with blend crossover of tournament parents, mutate.

    A child takes its first parent's input electrodes and, with
    :data:`INPUTS_MUTATION_RATE`, moves to other candidates; it is projected into its bounds
    when it is measured.
    """
    order = np.argsort(losses)
    elite = [population[i] for i in order[:n_elite]]
    children = []
    while len(children) < len(population) - n_elite:
        parents = []
        for _ in range(2):
            a, b = rng.integers(len(population), size=2)
            parents.append(population[a] if losses[a] < losses[b] else population[b])
        first, second = parents[0].point, parents[1].point
        mix = rng.uniform(-0.25, 1.25, size=first.size)
        child = first + mix * (second - first)
        child += rng.normal(0.0, mutation_v, size=child.shape)
        inputs = parents[0].inputs
        if len(candidates) > 1 and rng.random() < INPUTS_MUTATION_RATE:
            inputs = candidates[int(rng.integers(len(candidates)))]
        children.append(Setting(inputs, child))
    return elite + children


def train_genetic(
    dnpu: DNPU | Sequence[DNPU],
    task: Task,
    *,
    population: int = DEFAULT_POPULATION,
    generations: int = DEFAULT_GENERATIONS,
    n_elite: int = DEFAULT_N_ELITE,
    mutation_v: float = DEFAULT_MUTATION_V,
    target_margin_na: float = DEFAULT_TARGET_MARGIN_NA,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    inputs: str | list[str] | None = None,
    learn_levels: bool = True,
    min_swing_v: float = DEFAULT_MIN_SWING_V,
    seed: int = 0,
    md: dict | None = None,
) -> Plan:
    """Evolve the controls, input levels and input electrodes.

    Every genome is one full evaluation of the task's input cases.

    Defaults follow the group's earlier practice (population ~26, elitism, ~100 generations).
    The mutation width shrinks linearly to a tenth over the generations. Stops when a genome
    reaches ``target_accuracy`` (at 1.0, the default: every case right and the classes
    ``target_margin_na`` apart), as :func:`~dnpu_bluesky.plans.train` does. A genome whose
    output left the AI range (clipped) ranks below every other and cannot end the run.

    Streams: ``eval_raw`` (every genome's raw waveform), ``primary`` (best and median loss,
    score of the best genome, device seconds) and ``evaluation`` (the final genome). A list
    of DNPUs evolves side by side, a run per device, as in :func:`~dnpu_bluesky.plans.train`.

    A genome holds the controls and, with ``learn_levels``, each input's logical-0 and
    logical-1 voltage; with ``inputs=None`` (a Boolean gate) or ``"screen"`` each genome also
    carries its own input electrodes, drawn at random and mutated, so the genetic algorithm
    searches what :func:`~dnpu_bluesky.plans.train` screens. Names pin the inputs.

    Parameters
    ----------
    dnpu : DNPU or list of DNPU
        The device, or devices evolved side by side.
    task : Task
        What to learn.
    population : int
        Genomes per generation.
    generations : int
        Generations at most.
    n_elite : int
        Best genomes kept unchanged.
    mutation_v : float
        Width of the Gaussian mutation, volts (shrinks to a tenth).
    target_margin_na : float
        Separation (nA) at which a gate counts as found.
    target_accuracy : float
        Accuracy at which evolution stops, in (0, 1].
    inputs : str or list of str, optional
        ``None`` (search them for a Boolean gate), ``"screen"``, or the inputs' names.
    learn_levels : bool
        Evolve the input levels too.
    min_swing_v : float
        Smallest distance between an input's two levels, volts.
    seed : int
        Seed of the population.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    TrainResult or list of TrainResult
        ``iterations`` counts generations; one per device for a list of DNPUs.

    Yields
    ------
    Msg
        The plan's messages.
    """
    if int(population) < n_elite + 2 or int(n_elite) < 1:
        raise ValueError(
            f"need population >= n_elite + 2 and n_elite >= 1, got {population}, {n_elite}"
        )
    if int(generations) < 1:
        raise ValueError(f"generations must be at least 1, got {generations}")
    if not (isinstance(mutation_v, int | float) and math.isfinite(mutation_v) and mutation_v >= 0):
        raise ValueError(f"mutation_v must be a finite number >= 0 (V), got {mutation_v!r}")
    check_target_accuracy(target_accuracy)
    check_positive(min_swing_v=min_swing_v)
    search, pinned = resolve_inputs(inputs, task)
    several_given = not isinstance(dnpu, DNPU)
    dnpus = list(dnpu) if several_given else [dnpu]

    def prepared_run() -> Plan:
        settings = {"learn_levels": bool(learn_levels), "min_swing_v": float(min_swing_v)}
        trainers = make_trainers(dnpus, task, "ga", seed, settings, lambda device: 0.0)
        yield from prepare(trainers, "off")
        plan_args: dict[str, Any] = {
            "dnpu": device_names(dnpus, several_given),
            "task": task.name,
            "population": population,
            "generations": generations,
            "n_elite": n_elite,
            "mutation_v": mutation_v,
            "target_margin_na": target_margin_na,
            "target_accuracy": target_accuracy,
            "inputs": "screen" if search else trainers[0].input_names,
            "learn_levels": bool(learn_levels),
            "min_swing_v": float(min_swing_v),
            "seed": seed,
        }
        metadata = run_metadata(trainers, "train_genetic", plan_args, md)
        metadata.update(seed=seed)
        settings = {
            "population": int(population),
            "generations": int(generations),
            "n_elite": int(n_elite),
            "mutation_v": mutation_v,
            "target_margin_na": target_margin_na,
            "target_accuracy": float(target_accuracy),
            "search_inputs": search,
        }
        bodies = {trainer: _evolve(trainer, **settings) for trainer in trainers}
        return (yield from run_side_by_side(bodies, metadata, []))

    results = yield from on_inputs(dnpus, pinned, prepared_run)
    return results if several_given else results[0]


def _evolve(
    trainer: Trainer,
    *,
    population: int,
    generations: int,
    n_elite: int,
    mutation_v: float,
    target_margin_na: float,
    target_accuracy: float,
    search_inputs: bool,
) -> Plan:
    """One device's evolution; yields plan messages and measurement requests."""
    task = trainer.task
    record = GenerationRecord(name="generation")
    candidates = trainer.candidates() if search_inputs else [trainer.input_names]
    genomes = []
    for _ in range(population):
        inputs = candidates[int(trainer.rng.integers(len(candidates)))]
        yield from trainer.use_inputs(inputs)
        genomes.append(Setting(inputs, trainer.random_point()))
    best, generation = genomes[0], 0
    for generation in range(1, generations + 1):
        losses, scores, clipped = [], [], []
        for index, genome in enumerate(genomes):
            yield from bps.checkpoint()  # a Ctrl-C pauses here, between two genomes
            yield from trainer.use_inputs(genome.inputs)
            genome = genomes[index] = Setting(genome.inputs, trainer.project(genome.point))
            yield from trainer.apply(genome.point)
            clipped_before = trainer.clipped_samples
            outputs = yield from trainer.evaluate_outputs()
            clipped.append(trainer.clipped_samples > clipped_before)
            losses.append(task.loss(outputs)[0])
            scores.append(task.evaluate(outputs))
        clipped, losses = np.array(clipped), np.array(losses)
        # Outputs read through a clipped ADC are wrong: such genomes rank last.
        ranked = np.where(clipped, np.inf, losses)
        top = int(np.argmin(ranked))
        in_range = losses[~clipped] if not clipped.all() else losses
        best = genomes[top]
        yield from trainer.use_inputs(best.inputs)
        record.record(
            generation=generation,
            best_loss=float(losses[top]),
            median_loss=float(np.median(in_range)),
            best_accuracy=scores[top].accuracy,
            best_margin_na=scores[top].margin_na,
            best_controls=best.point[: trainer.controls.size],
            best_inputs=best.inputs,
            **level_fields(trainer.levels_of(best.point), "best_"),
            device_seconds=trainer.device_seconds,
            measurements=trainer.measurements,
            clipped_genomes=int(clipped.sum()),
        )
        yield from bps.trigger_and_read([record], name="primary")
        winners = [
            i
            for i, s in enumerate(scores)
            if not clipped[i] and reaches_target(s, target_accuracy, target_margin_na)
        ]
        if winners:
            best = genomes[max(winners, key=lambda i: rank(scores[i]))]
            break
        shrink = 1.0 - 0.9 * generation / generations
        genomes = _next_generation(
            genomes, ranked, trainer.rng, n_elite, mutation_v * shrink, candidates
        )
    return (yield from trainer.finish(best, None, attempt=0, iterations=generation, attempts=1))
