"""Search spaces for Ray Tune, written in YAML over the training config's own field names.

    name: rho-grid
    search: grid | random | tpe          # tpe = Optuna's TPE sampler
    scheduler: none | asha               # ASHA stops trials early on the Tune metric
    num_samples: 1                       # grid: repeats of the grid; random/tpe: trials
    max_concurrent_trials: 1
    trial_cpus: 1.0                      # optional: CPUs each trial's driver reserves, > 0 (default 1; --trial-cpus)
    seed: 0                              # random draws and TPE's sampler (default 0)
    metric: val_robust_acc               # reported by every trial each epoch
    mode: max
    objective: {val_robust_acc: 1.0, val_clean_acc: 0.25}   # optional: picks the trial to register,
                                         # and is then the metric Tune optimises (objective_score)
    fixed: {objective.mode: at_reg}      # optional: overrides applied to every trial
    points:                              # optional (grid): explicit points, crossed with the grid params
      - {objective.rho: 0.0}
      - {objective.rho: 1.0, objective.regularizer: ms_mppd}
    params:
      objective.rho: {grid: [0.0, 0.5, 1.0, 2.0]}   # or {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}
      run.seed: {grid: [0, 1]}           # seeds replicate every point (grid searches)
    test_images: 2000                    # optional: the report evaluates each trial's checkpoint on this
                                         # many test images (protocol quick); reporting only, never selection

:func:`load_space` checks everything, including that every value a trial can draw makes a
valid training config, and raises :class:`SpaceError` naming the key before anything runs.
:func:`expand_trials` lists the trials of a grid or random search (the one list the search runs
and ``--dry-run`` prints); TPE draws its trials from Optuna while the search runs.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stable_snn.config import ConfigError, apply_overrides

from ..config import JobConfig

SEARCHES = ("grid", "random", "tpe")
SCHEDULERS = ("none", "asha")
METRICS = ("val_robust_acc", "val_clean_acc")
MODES = ("max", "min")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
TOP_KEYS = ("name", "search", "scheduler", "num_samples", "max_concurrent_trials", "seed", "metric", "mode",
            "objective", "fixed", "points", "params", "test_images", "trial_cpus")
SEED_KEY = "run.seed"  # the one run.* field a space may search: replicates of every point
SCORE = "objective_score"  # the weighted objective, reported to Tune when a space has one


class SpaceError(ConfigError):
    """A search space is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Param:
    key: str
    kind: str
    values: tuple

    def candidates(self) -> list:
        """Values that bound what a trial can draw (all of a grid/choice, both ends of a range)."""
        return list(self.values)

    def draw(self, rng: np.random.Generator) -> Any:
        """One draw of a random search."""
        if self.kind in ("grid", "choice"):
            return self.values[int(rng.integers(len(self.values)))]
        lo, hi = self.values
        if self.kind == "uniform":
            return float(rng.uniform(lo, hi))
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass(frozen=True)
class SearchSpace:
    name: str
    search: str
    scheduler: str
    num_samples: int
    max_concurrent_trials: int
    metric: str
    mode: str
    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, float] | None = None
    seed: int = 0
    points: tuple[dict[str, Any], ...] = ()
    test_images: int | None = None
    trial_cpus: float | None = None  # the driver's reservation; None: the job's default

    def score(self, metrics: dict[str, float]) -> float:
        """The value that ranks trials for registration (higher is better)."""
        if self.objective:
            return sum(w * float(metrics.get(k, float("nan"))) for k, w in self.objective.items())
        value = float(metrics.get(self.metric, float("nan")))
        return value if self.mode == "max" else -value

    @property
    def tune_metric(self) -> tuple[str, str]:
        """``(metric, mode)`` Tune optimises: the weighted objective when there is one, so the search
        and the registration rank trials alike."""
        return (SCORE, "max") if self.objective else (self.metric, self.mode)

    @property
    def searched_keys(self) -> list[str]:
        """The fields the trials differ in, the seed excepted (the groups of the report)."""
        keys = dict.fromkeys(k for point in self.points for k in point)
        keys.update(dict.fromkeys(p.key for p in self.params))
        return [k for k in keys if k != SEED_KEY]

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """``section.field=value`` overrides of one trial: the ``fixed`` fields, then the drawn ``values``."""
        merged = {**self.fixed, **values}
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in merged.items()]


def expand_trials(space: SearchSpace) -> list[dict[str, Any]]:
    """The values of every trial of a grid search (points x grid, seeds outermost, repeated
    ``num_samples`` times) or of a random search (``num_samples`` draws from the space's seed)."""
    if space.search == "tpe":
        raise SpaceError("a TPE search draws its trials while it runs; only grid and random searches expand")
    if space.search == "random":
        rng = np.random.default_rng(space.seed)
        return [{p.key: p.draw(rng) for p in space.params} for _ in range(space.num_samples)]
    params = sorted(space.params, key=lambda p: p.key != SEED_KEY)  # seeds outermost, the rest in order
    grid = [dict(zip((p.key for p in params), combo)) for combo in itertools.product(*(p.values for p in params))]
    one = [{**g, **point} for g in grid for point in (space.points or ({},))]
    return one * space.num_samples


def _err(key: str, value: Any, allowed: str) -> SpaceError:
    return SpaceError(f"{key}={value!r} is invalid: allowed {allowed}")


def _parse_param(key: str, spec: Any) -> Param:
    where = f"params.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _err(where, spec, "a mapping with exactly one of " + ", ".join(DISTRIBUTIONS))
    kind, values = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise _err(where, kind, "one of " + ", ".join(DISTRIBUTIONS))
    if not isinstance(values, list) or not values:
        raise _err(f"{where}.{kind}", values, "a non-empty list")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise _err(f"{where}.{kind}", values, "[low, high] numbers")
        lo, hi = float(values[0]), float(values[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise _err(f"{where}.{kind}", values, "finite bounds with low < high")
        if kind == "loguniform" and lo <= 0:
            raise _err(f"{where}.{kind}", values, "bounds > 0 for a log-uniform range")
        values = [lo, hi]
    if key == SEED_KEY and kind != "grid":
        raise _err(where, spec, "{grid: [seeds]}: every point is run once per seed")
    return Param(key, kind, tuple(values))


def _pick(data: dict, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise _err(key, value, "one of " + ", ".join(allowed))
    return value


def _count(data: dict, key: str, default: int | None, minimum: int) -> int | None:
    v = data.get(key, default)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
        raise _err(key, v, f"an integer >= {minimum}")
    return v


def _parse_objective(objective: Any) -> dict[str, float] | None:
    if objective is None:
        return None
    if not isinstance(objective, dict) or not objective:
        raise _err("objective", objective, "a mapping of metric -> weight")
    for k, w in objective.items():
        if k not in METRICS:
            raise _err(f"objective.{k}", w, "metrics " + ", ".join(METRICS))
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise _err(f"objective.{k}", w, "a finite number")
    return dict(objective)


def _parse_points(points: Any, search: str, params: tuple[Param, ...]) -> tuple[dict[str, Any], ...]:
    if points is None:
        return ()
    if search != "grid":
        raise _err("search", search, "grid when the space lists points")
    if not isinstance(points, list) or not points or not all(isinstance(p, dict) and p for p in points):
        raise _err("points", points, "a non-empty list of non-empty mappings of config field -> value")
    searched = {p.key for p in params}
    for i, point in enumerate(points):
        clash = sorted(set(point) & (searched | {SEED_KEY}))
        if clash:
            raise _err(f"points[{i}].{clash[0]}", point[clash[0]], "fields that are not also params (run.seed goes "
                       "in params as {grid: [seeds]})")
    if len({yaml.safe_dump(p, sort_keys=True) for p in points}) != len(points):
        raise _err("points", points, "distinct points")
    return tuple(dict(p) for p in points)


def parse_space(data: Any, base: JobConfig) -> SearchSpace:
    """A validated :class:`SearchSpace` from its YAML mapping, checked against the ``base`` config."""
    if not isinstance(data, dict):
        raise SpaceError(f"a search space must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SpaceError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise _err("name", name, "a non-empty string without '/'")
    search = _pick(data, "search", "random", SEARCHES)
    scheduler = _pick(data, "scheduler", "none", SCHEDULERS)
    num_samples, concurrent = _count(data, "num_samples", 1, 1), _count(data, "max_concurrent_trials", 1, 1)
    seed, test_images = _count(data, "seed", 0, 0), _count(data, "test_images", None, 1)
    trial_cpus = data.get("trial_cpus")
    if trial_cpus is not None and (isinstance(trial_cpus, bool) or not isinstance(trial_cpus, (int, float))
                                   or not math.isfinite(trial_cpus) or trial_cpus <= 0):
        raise _err("trial_cpus", trial_cpus, "a number > 0")
    metric = _pick(data, "metric", "val_robust_acc", METRICS)
    mode = _pick(data, "mode", "max", MODES)
    objective = _parse_objective(data.get("objective"))
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise _err("fixed", fixed, "a mapping of config field -> value")
    raw = data.get("params")
    if not isinstance(raw, dict) or not raw:
        raise _err("params", raw, "a non-empty mapping of config field -> distribution")
    params = tuple(_parse_param(k, v) for k, v in raw.items())
    kinds = {p.kind for p in params}
    if search == "grid" and kinds - {"grid"}:
        raise _err("search", search, "grid only with params given as {grid: [...]}; use random or tpe for ranges")
    if search != "grid" and "grid" in kinds:
        raise _err("search", search, "grid, since params use {grid: [...]} (or use {choice: [...]})")
    points = _parse_points(data.get("points"), search, params)
    space = SearchSpace(name, search, scheduler, num_samples, concurrent, metric, mode, params, dict(fixed), objective,
                        seed, points, test_images, None if trial_cpus is None else float(trial_cpus))
    _check_against_config(space, base)
    return space


def _check_against_config(space: SearchSpace, base: JobConfig) -> None:
    """Every key is a config field and every value a trial can draw gives a valid config."""
    fields = set(base.flat())
    keys = [*space.fixed, *(k for point in space.points for k in point), *(p.key for p in space.params)]
    for key in keys:
        if key not in fields:
            raise SpaceError(f"{key} is not a training config field; allowed: {', '.join(sorted(fields))}")
        if key.startswith("run.") and key != SEED_KEY:
            raise SpaceError(f"{key}: run.* fields are set per trial by the search and cannot be searched "
                             f"(except {SEED_KEY})")
    draws = [("fixed", {})] + [(f"params.{p.key}", {p.key: v}) for p in space.params for v in p.candidates()]
    draws += [(f"points[{i}]", point) for i, point in enumerate(space.points)]
    for where, values in draws:
        try:
            apply_overrides(base, space.overrides(values))
        except ConfigError as e:
            raise SpaceError(f"{where}: {e}") from None


def load_space(path: str | Path, base: JobConfig) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space file {str(path)!r} does not exist")
    with path.open() as f:
        return parse_space(yaml.safe_load(f), base)
