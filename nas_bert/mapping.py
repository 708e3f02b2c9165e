"""Stage 6: layer-mapping search with DEAP (Jiao et al.): which teacher layer each student
distillation point learns from.

Individuals are monotone mappings (non-decreasing lists of teacher layers 1..N). Variation keeps
them monotone: a custom mutation moves one point within its neighbours' bounds, and one-point
crossover is followed by a repair (sorting). Tournament selection, a hall of fame, statistics
and a logbook come from DEAP. Fitness is the held-out final-state loss after a short proxy
distillation (lower is better), memoised in the database. Generation 0 holds TinyBERT's uniform
mapping and the last-layers mapping. After every generation the population, hall of fame,
logbook and RNG state are saved (temp file + rename), so a killed search continues. Small
spaces are enumerated instead.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
from collections.abc import Callable
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Any

import numpy as np
from deap import base, creator, tools
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tqdm.auto import tqdm

from nas_bert.architecture import Architecture
from nas_bert.config import MappingConfig, Study
from nas_bert.db import Database, MappingEval
from nas_bert.distill import distill_points, last_layers_mapping, uniform_mapping

if not hasattr(creator, "MappingFitness"):
    creator.create("MappingFitness", base.Fitness, weights=(-1.0,))
    creator.create("Mapping", list, fitness=creator.MappingFitness)


def count_monotone(m: int, n: int) -> int:
    """Non-decreasing maps of m points into n layers: C(n + m - 1, m)."""
    return math.comb(n + m - 1, m)


def mutate_monotone(ind: list[int], n: int) -> tuple[list[int]]:
    """Move one point up or down, staying between its neighbours (so the mapping stays monotone).

    Uses the module-level `random`, like DEAP's own operators (its state is checkpointed).
    """
    rng = random
    i = rng.randrange(len(ind))
    low = ind[i - 1] if i > 0 else 1
    high = ind[i + 1] if i + 1 < len(ind) else n
    choices = [v for v in range(low, high + 1) if v != ind[i]]
    if choices:
        ind[i] = rng.choice(choices)
    return (ind,)


def repair(ind: list[int]) -> list[int]:
    ind[:] = sorted(ind)
    return ind


def protocol_hash(cfg: MappingConfig, study: Study) -> str:
    import hashlib

    blob = json.dumps({"mapping": cfg.model_dump(mode="json"), "weights": study.cfg.distill.weights.model_dump(),
                       "lr": study.cfg.distill.lr}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class MappingSearch:
    """One student's mapping search; `fitness_fn(mapping) -> loss` is the proxy distillation."""

    def __init__(self, study: Study, db: Database, arch: Architecture, n_layers: int,
                 fitness_fn: Callable[[list[int]], float], folder: Path) -> None:
        self.study, self.db, self.arch, self.n = study, db, arch, n_layers
        self.cfg = study.cfg.mapping
        self.m = len(distill_points(arch))
        self.fitness_fn = fitness_fn
        self.folder = folder
        self.protocol = protocol_hash(self.cfg, study)
        self.evaluated = 0  # fitness evaluations this process ran (the rest were memoised)

    # -- memoised fitness -------------------------------------------------------------------
    def fitness(self, mapping: list[int], generation: int, origin: str) -> float:
        key = json.dumps(list(mapping))
        with self.db.session() as s:
            row = s.scalars(select(MappingEval).where(
                MappingEval.study == self.study.name, MappingEval.arch_hash == self.arch.hash(),
                MappingEval.mapping_json == key, MappingEval.protocol_hash == self.protocol)).first()
        if row is not None:
            return row.fitness
        value = self.fitness_fn(list(mapping))
        self.evaluated += 1
        try:
            with self.db.session() as s:
                s.add(MappingEval(study=self.study.name, arch_hash=self.arch.hash(), mapping_json=key,
                                  protocol_hash=self.protocol, fitness=value, generation=generation, origin=origin))
        except IntegrityError:
            pass
        return value

    def baselines(self) -> dict[str, list[int]]:
        return {"uniform": uniform_mapping(self.m, self.n), "last": last_layers_mapping(self.m, self.n)}

    # -- the search -------------------------------------------------------------------------
    def run(self, progress: bool = True) -> dict[str, Any]:
        total = count_monotone(self.m, self.n)
        base_fit = {k: self.fitness(v, 0, k) for k, v in self.baselines().items()}
        if total <= self.cfg.enumerate_below or self.m == 0:  # a student without layers has one mapping: []
            results = []
            for combo in tqdm(list(combinations_with_replacement(range(1, self.n + 1), self.m)),
                              desc="mappings (enumerated)", disable=not progress):
                results.append((self.fitness(list(combo), 0, "enumerated"), list(combo)))
            results.sort()
            best = results[0]
            return self._summary("enumerated", total, best[1], best[0], base_fit, [],
                                 [{"mapping": m, "fitness": f} for f, m in results[: self.cfg.hall_of_fame]])
        return self._genetic(total, base_fit, progress)

    def _toolbox(self) -> base.Toolbox:
        tb = base.Toolbox()
        tb.register("individual", lambda: creator.Mapping(sorted(random.randint(1, self.n) for _ in range(self.m))))
        tb.register("mate", tools.cxOnePoint)
        tb.register("mutate", mutate_monotone, n=self.n)
        tb.register("select", tools.selTournament, tournsize=self.cfg.tournament_size)
        return tb

    def _checkpoint_path(self) -> Path:
        return self.folder / "ga_state.pkl"

    def _save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._checkpoint_path()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump(state, f)
        os.replace(tmp, path)

    def _genetic(self, total: int, base_fit: dict[str, float], progress: bool) -> dict[str, Any]:
        # DEAP's operators draw from the module-level `random`: seed it for this search, keep its
        # state in the checkpoint so a resumed search draws what it would have drawn, and give
        # the caller's state back afterwards.
        caller_state = random.getstate()
        try:
            return self._generations(total, base_fit, progress)
        finally:
            random.setstate(caller_state)

    def _generations(self, total: int, base_fit: dict[str, float], progress: bool) -> dict[str, Any]:
        cfg = self.cfg
        tb = self._toolbox()
        stats = tools.Statistics(lambda ind: ind.fitness.values[0])
        stats.register("min", np.min)
        stats.register("avg", np.mean)
        stats.register("max", np.max)
        path = self._checkpoint_path()
        if path.exists():
            with open(path, "rb") as f:
                st = pickle.load(f)
            pop, hof, logbook, start = st["population"], st["hof"], st["logbook"], st["generation"] + 1
            random.setstate(st["random"])
        else:
            random.seed(cfg.seed)
            pop = [creator.Mapping(v) for v in self.baselines().values()]
            pop += [tb.individual() for _ in range(cfg.population - len(pop))]
            hof, logbook, start = tools.HallOfFame(cfg.hall_of_fame), tools.Logbook(), 1
            logbook.header = ["gen", "evals", "min", "avg", "max"]
            self._evaluate(pop, 0)
            hof.update(pop)
            logbook.record(gen=0, evals=len(pop), **stats.compile(pop))
            self._save({"population": pop, "hof": hof, "logbook": logbook, "generation": 0, "random": random.getstate()})
        bar = tqdm(range(start, cfg.generations + 1), desc="mapping GA", disable=not progress,
                   initial=start - 1, total=cfg.generations)
        for gen in bar:
            offspring = [tb.clone(ind) for ind in tb.select(pop, len(pop))]
            for a, b in zip(offspring[::2], offspring[1::2], strict=False):
                if random.random() < cfg.crossover_prob and self.m > 1:
                    tb.mate(a, b)
                    repair(a)  # one-point crossover of two monotone lists need not be monotone
                    repair(b)
                    del a.fitness.values, b.fitness.values
            for ind in offspring:
                if random.random() < cfg.mutation_prob:
                    tb.mutate(ind)
                    del ind.fitness.values
            fresh = [ind for ind in offspring if not ind.fitness.valid]
            self._evaluate(fresh, gen)
            pop[:] = offspring
            hof.update(pop)
            logbook.record(gen=gen, evals=len(fresh), **stats.compile(pop))
            bar.set_postfix(best=f"{hof[0].fitness.values[0]:.4f}")
            self._save({"population": pop, "hof": hof, "logbook": logbook, "generation": gen, "random": random.getstate()})
        best = hof[0]
        return self._summary("genetic", total, list(best), best.fitness.values[0], base_fit,
                             [dict(r) for r in logbook],
                             [{"mapping": list(h), "fitness": h.fitness.values[0]} for h in hof])

    def _evaluate(self, inds: list[Any], gen: int) -> None:
        for ind in inds:
            ind.fitness.values = (self.fitness(list(ind), gen, "ga"),)

    def _summary(self, method: str, total: int, best: list[int], best_fit: float, base_fit: dict[str, float],
                 logbook: list[dict[str, Any]], hall: list[dict[str, Any]]) -> dict[str, Any]:
        return {"study": self.study.name, "arch_hash": self.arch.hash(), "architecture": str(self.arch),
                "points": self.m, "teacher_layers": self.n, "mappings_possible": total, "method": method,
                "best": {"mapping": best, "fitness": best_fit},
                "baselines": {k: {"mapping": v, "fitness": base_fit[k]} for k, v in self.baselines().items()},
                "improvement_vs_uniform": (base_fit["uniform"] - best_fit) / base_fit["uniform"],
                "hall_of_fame": hall, "logbook": logbook, "fitness_evaluations": self.evaluated}
