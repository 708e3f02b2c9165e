"""Stage 6: layer-mapping search with DEAP (Jiao et al.): which teacher layer each student
distillation point learns from.

Individuals are monotone mappings (non-decreasing lists of teacher layers 1..N). Variation keeps
them monotone: a custom mutation moves one point within its neighbours' bounds, and one-point
crossover is followed by a repair (sorting). Tournament selection, a hall of fame, statistics
and a logbook come from DEAP. Fitness is the held-out final-state loss after a short proxy
distillation (lower is better), memoised in the database. Generation 0 holds TinyBERT's uniform
mapping and the last-layers mapping. After every generation the population, hall of fame,
logbook and RNG state are saved as JSON (`identity.atomic_write_text`: written whole or not at
all), so a killed search continues; the state file is named by the proxy's protocol, so a changed
protocol starts afresh and never resumes another protocol's population. Nothing is unpickled.
Small spaces are enumerated instead.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
from deap import base, creator, tools
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tqdm.auto import tqdm

from nas_bert.data import corpus_identity
from nas_bert.distill.objective import distill_points, last_layers_mapping, own_layers_mapping, uniform_mapping
from nas_bert.errors import NasBertError
from nas_bert.space import Architecture
from nas_bert.store import Database, MappingEval, atomic_write_text, fingerprint
from nas_bert.study import MappingConfig, Study
from nas_bert.teacher import teacher_identity

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


# distillation settings the proxy overrides (from the mapping settings) or does not use
_NOT_PROXY = ("steps", "batch_size", "grad_accum", "warmup_steps", "eval_every", "val_batches", "checkpoint_every",
              "keep_checkpoints", "seed", "freeze_embeddings")


def protocol_hash(cfg: MappingConfig, study: Study, origin: str | None = None) -> str:
    """The proxy distillation's identity: the mapping settings, every distillation setting the proxy uses,
    the teacher and the corpus (with their content), and where the student starts (`origin`: for a searched
    student the supernet checkpoint's sha256). Memoised fitness values and the GA's state are keyed on it, so
    a changed protocol never mixes its fitness values with another's."""
    distill = {k: v for k, v in study.cfg.distill.model_dump(mode="json").items() if k not in _NOT_PROXY}
    return fingerprint({"mapping": cfg.model_dump(mode="json"), "distill": distill,
                        "teacher": teacher_identity(study.cfg.teacher), "corpus": corpus_identity(study.cfg.corpus),
                        "origin": origin})


def best_memoised(db: Database, study: Study, arch: Architecture, origin: str | None = None
                  ) -> tuple[list[int], float] | None:
    """The mapping the search chose for this student under the current proxy protocol (None: none yet): its
    decision where it confirmed the GA against the heuristics, else the best memoised; what stage 7 should read
    instead of the best over every protocol."""
    protocol = protocol_hash(study.cfg.mapping, study, origin)
    with db.session() as s:
        decided = s.scalars(select(MappingEval).where(
            MappingEval.study == study.name, MappingEval.arch_hash == arch.hash(),
            MappingEval.protocol_hash == decision_protocol(protocol, study.cfg.mapping))).first()
        if decided is not None:
            return json.loads(decided.mapping_json), decided.fitness
        row = s.scalars(select(MappingEval).where(
            MappingEval.study == study.name, MappingEval.arch_hash == arch.hash(),
            MappingEval.protocol_hash == protocol_hash(study.cfg.mapping, study, origin))
            .order_by(MappingEval.fitness).limit(1)).first()
    return None if row is None else (json.loads(row.mapping_json), row.fitness)


def decided_mapping(db: Database, study: Study, arch: Architecture, origin: str | None = None
                    ) -> tuple[list[int], str] | None:
    """The mapping the confirmation decided for this student and which it is ("searched", "uniform", "own",
    "last"); None where nothing was confirmed under the current protocol."""
    protocol = decision_protocol(protocol_hash(study.cfg.mapping, study, origin), study.cfg.mapping)
    with db.session() as s:
        row = s.scalars(select(MappingEval).where(MappingEval.study == study.name, MappingEval.arch_hash == arch.hash(),
                                                  MappingEval.protocol_hash == protocol)).first()
    return None if row is None else (json.loads(row.mapping_json), row.origin)


def decision_protocol(protocol: str, cfg: MappingConfig) -> str:
    """Where the confirmed choice between the GA's mapping and the best heuristic is recorded."""
    return fingerprint(protocol, "decision", cfg.confirm_seeds, cfg.confirm_steps)


def paired_gain(heuristic: list[float], searched: list[float], level: float = 0.95) -> tuple[float, float]:
    """The heuristic's mean loss minus the searched mapping's over runs paired by seed, and the half-width of its
    two-sided `level` interval (Student's t over the seeds' differences; 0 where they agree exactly)."""
    d = np.asarray(heuristic, dtype=float) - np.asarray(searched, dtype=float)
    half = scipy.stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(half)


STATE_FORMAT = "nas-bert GA state"
STATE_VERSION = 1


class MappingSearch:
    """One student's mapping search; `fitness_fn(mapping) -> loss` is the proxy distillation."""

    def __init__(self, study: Study, db: Database, arch: Architecture, n_layers: int,
                 fitness_fn: Callable[..., float], folder: Path, origin: str | None = None) -> None:
        self.study, self.db, self.arch, self.n = study, db, arch, n_layers
        self.cfg = study.cfg.mapping
        self.m = len(distill_points(arch))
        self.fitness_fn = fitness_fn
        self.folder = folder
        self.protocol = protocol_hash(self.cfg, study, origin)
        self.evaluated = 0  # fitness evaluations this process ran (the rest were memoised)

    # -- memoised fitness -------------------------------------------------------------------
    def fitness(self, mapping: list[int], generation: int, origin: str, seed: int | None = None) -> float:
        """The proxy's fitness of `mapping` (memoised); with `seed`, a confirmation run of the proxy (its own seed
        and `confirm_steps`), memoised under a protocol of its own."""
        key = json.dumps(list(mapping))
        protocol = self.protocol if seed is None else fingerprint(self.protocol, "confirm", seed, self.cfg.confirm_steps)
        with self.db.session() as s:
            row = s.scalars(select(MappingEval).where(
                MappingEval.study == self.study.name, MappingEval.arch_hash == self.arch.hash(),
                MappingEval.mapping_json == key, MappingEval.protocol_hash == protocol)).first()
        if row is not None:
            return row.fitness
        value = self.fitness_fn(list(mapping)) if seed is None else self.fitness_fn(
            list(mapping), seed=seed, steps=self.cfg.confirm_steps or None)
        self.evaluated += 1
        try:
            with self.db.session() as s:
                s.add(MappingEval(study=self.study.name, arch_hash=self.arch.hash(), mapping_json=key,
                                  protocol_hash=protocol, fitness=value, generation=generation, origin=origin))
        except IntegrityError:
            pass
        return value

    def baselines(self) -> dict[str, list[int]]:
        """The heuristic mappings: TinyBERT's uniform one, the last layers, and in a space made from the teacher
        each kept layer learning from itself ("own")."""
        out = {"uniform": uniform_mapping(self.m, self.n), "last": last_layers_mapping(self.m, self.n)}
        own = own_layers_mapping(self.arch)
        if own is not None and len(own) == self.m:
            out["own"] = own
        return out

    def confirm(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Does the searched mapping earn its stage? The best searched mapping and the best heuristic, each run
        again with `confirm_seeds` seeds (`confirm_steps` steps); the searched one is used only where its mean
        loss is lower beyond the 95% interval of the difference, else the heuristic, which costs no search. The
        two runs of a seed share their batches, masks and start, so the differences are taken seed by seed
        (common random numbers: the seed's own luck cancels) and Student's t over the seeds gives the interval.
        Recorded, so stage 7 distils with the mapping decided here."""
        cfg, base = self.cfg, summary["baselines"]
        name = min(base, key=lambda k: base[k]["fitness"])
        searched, heuristic = summary["best"]["mapping"], base[name]["mapping"]
        if cfg.confirm_seeds < 2 or self.m == 0:
            return summary
        if searched == heuristic:
            decision = {"used": name, "mapping": heuristic, "reason": f"the search's best is the {name} mapping"}
        else:
            runs = {label: [self.fitness(m, -1, f"confirm-{label}", seed=cfg.seed + 1 + i)
                            for i in range(cfg.confirm_seeds)]
                    for label, m in (("searched", searched), (name, heuristic))}
            gain, noise = paired_gain(runs[name], runs["searched"])
            wins = gain > noise
            within = f"the paired 95% interval +-{noise:.4g} over {cfg.confirm_seeds} seeds"
            decision = {"used": "searched" if wins else name, "mapping": searched if wins else heuristic,
                        "runs": runs, "gain": gain, "noise": noise, "paired": True,
                        "reason": (f"the searched mapping beats {name} by {gain:.4g}, beyond {within}" if wins else
                                   f"the searched mapping does not beat {name} beyond noise (gain {gain:.4g}, "
                                   f"{within}): the {name} mapping is used")}
        runs = decision.get("runs")
        fit = float(np.mean(runs[decision["used"]])) if runs else base[name]["fitness"]
        try:
            with self.db.session() as s:
                s.add(MappingEval(study=self.study.name, arch_hash=self.arch.hash(),
                                  mapping_json=json.dumps(decision["mapping"]),
                                  protocol_hash=decision_protocol(self.protocol, cfg), fitness=fit, generation=-1,
                                  origin=decision["used"]))
        except IntegrityError:  # decided already (a resumed run): the same inputs decide the same
            pass
        return {**summary, "decision": decision}

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
            return self.confirm(self._summary("enumerated", total, best[1], best[0], base_fit, [],
                                              [{"mapping": m, "fitness": f} for f, m in results[: self.cfg.hall_of_fame]]))
        return self.confirm(self._genetic(total, base_fit, progress))

    def _toolbox(self) -> base.Toolbox:
        tb = base.Toolbox()
        tb.register("individual", lambda: creator.Mapping(sorted(random.randint(1, self.n) for _ in range(self.m))))
        tb.register("mate", tools.cxOnePoint)
        tb.register("mutate", mutate_monotone, n=self.n)
        tb.register("select", tools.selTournament, tournsize=self.cfg.tournament_size)
        return tb

    def _checkpoint_path(self) -> Path:
        # one file per proxy protocol: a changed protocol starts afresh and leaves the old state untouched
        # (a `ga_state.pkl` of an older nas-bert is never read)
        return self.folder / f"ga_state-{self.protocol}.json"

    def _save(self, pop: list[Any], hof: tools.HallOfFame, logbook: tools.Logbook, generation: int) -> None:
        version, internal, gauss = random.getstate()
        state = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "protocol": self.protocol,
            "arch_hash": self.arch.hash(), "points": self.m, "teacher_layers": self.n, "generation": generation,
            "population": [{"mapping": [int(v) for v in ind],
                            "fitness": float(ind.fitness.values[0]) if ind.fitness.valid else None} for ind in pop],
            "hall_of_fame": [{"mapping": [int(v) for v in h], "fitness": float(h.fitness.values[0])} for h in hof],
            "logbook": {"header": list(logbook.header or []), "records": [dict(r) for r in logbook]},
            "random": [version, list(internal), gauss],
        }
        atomic_write_text(self._checkpoint_path(), json.dumps(state, default=_plain))

    def _load(self) -> tuple[list[Any], tools.HallOfFame, tools.Logbook, int] | None:
        """The saved state of this search (None: none yet); sets the module `random` to its saved state.
        A damaged or foreign file is a one-line error naming it: nothing is overwritten."""
        path = self._checkpoint_path()
        if not path.exists():
            return None
        try:
            st = json.loads(path.read_text())
            if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
                raise ValueError("not a nas-bert GA state")
            if st.get("version") != STATE_VERSION:
                raise ValueError(f"state version {st.get('version')!r}, this nas-bert reads {STATE_VERSION}")
            for key, want in (("protocol", self.protocol), ("arch_hash", self.arch.hash()), ("points", self.m),
                              ("teacher_layers", self.n)):
                if st.get(key) != want:
                    raise ValueError(f"its {key} is {st.get(key)!r}, this search's is {want!r}")
            generation = st["generation"]
            if not isinstance(generation, int) or not 0 <= generation <= self.cfg.generations:
                raise ValueError(f"generation {generation!r}")
            pop = [self._individual(d, fitness_required=False) for d in st["population"]]
            if len(pop) != self.cfg.population:
                raise ValueError(f"{len(pop)} individuals, the population is {self.cfg.population}")
            hof = tools.HallOfFame(self.cfg.hall_of_fame)
            for ind in reversed([self._individual(d, fitness_required=True) for d in st["hall_of_fame"]]):
                hof.insert(ind)  # inserting worst first keeps the saved order of equal fitness values
            logbook = tools.Logbook()
            logbook.header = [str(h) for h in st["logbook"]["header"]]
            for record in st["logbook"]["records"]:
                logbook.record(**record)
            version, internal, gauss = st["random"]
            if not (isinstance(internal, list) and len(internal) == 625 and all(isinstance(x, int) for x in internal)):
                raise ValueError("its random state is not 625 integers")
            random.setstate((int(version), tuple(internal), gauss))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            reason = " ".join(str(e).split())[:120] or type(e).__name__
            raise NasBertError(
                f"mapping search state {path} is corrupt or not this search's ({reason}); delete it and rerun: the "
                f"search replays from generation 0 with the fitness values memoised in the database, so no proxy "
                f"distillation is repeated") from None
        return pop, hof, logbook, generation

    def _individual(self, d: Any, fitness_required: bool) -> Any:
        mapping, fitness = d["mapping"], d["fitness"]
        if not (isinstance(mapping, list) and len(mapping) == self.m and mapping == sorted(mapping)
                and all(isinstance(v, int) and 1 <= v <= self.n for v in mapping)):
            raise ValueError(f"mapping {mapping!r} is not a monotone list of {self.m} teacher layers 1..{self.n}")
        ind = creator.Mapping(mapping)
        if fitness is None and fitness_required:
            raise ValueError(f"mapping {mapping} has no fitness")
        if fitness is not None:
            ind.fitness.values = (float(fitness),)
        return ind

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
        saved = self._load()
        if saved is not None:
            pop, hof, logbook, generation = saved
            start = generation + 1
        else:
            random.seed(cfg.seed)
            pop = [creator.Mapping(v) for v in self.baselines().values()]
            pop += [tb.individual() for _ in range(cfg.population - len(pop))]
            hof, logbook, start = tools.HallOfFame(cfg.hall_of_fame), tools.Logbook(), 1
            logbook.header = ["gen", "evals", "min", "avg", "max"]
            self._evaluate(pop, 0)
            hof.update(pop)
            logbook.record(gen=0, evals=len(pop), **stats.compile(pop))
            self._save(pop, hof, logbook, 0)
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
            self._save(pop, hof, logbook, gen)
        best = hof[0]
        return self._summary("genetic", total, list(best), best.fitness.values[0], base_fit,
                             [dict(r) for r in logbook],
                             [{"mapping": list(h), "fitness": h.fitness.values[0]} for h in hof])

    def _evaluate(self, inds: list[Any], gen: int) -> None:
        for ind in inds:
            ind.fitness.values = (self.fitness(list(ind), gen, "ga"),)

    def _summary(self, method: str, total: int, best: list[int], best_fit: float, base_fit: dict[str, float],
                 logbook: list[dict[str, Any]], hall: list[dict[str, Any]]) -> dict[str, Any]:
        base = self.baselines()
        return {"study": self.study.name, "arch_hash": self.arch.hash(), "architecture": str(self.arch),
                "points": self.m, "teacher_layers": self.n, "mappings_possible": total, "method": method,
                "best": {"mapping": best, "fitness": best_fit},
                "baselines": {k: {"mapping": v, "fitness": base_fit[k]} for k, v in base.items()},
                "improvement_vs_uniform": (base_fit["uniform"] - best_fit) / base_fit["uniform"],
                "hall_of_fame": hall, "logbook": logbook, "fitness_evaluations": self.evaluated}


def _plain(o: Any) -> Any:
    """JSON for numpy scalars (DEAP's statistics are numpy floats)."""
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
