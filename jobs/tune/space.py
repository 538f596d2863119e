"""Search spaces for Ray Tune, written in YAML over the training config's own field names.

    name: rho-grid
    search: grid | random | tpe          # tpe = Optuna's TPE sampler
    scheduler: none | asha               # ASHA stops trials early on `metric`
    num_samples: 1                       # grid: repeats of the grid; random/tpe: trials
    max_concurrent_trials: 1
    metric: val_robust_acc               # reported by every trial each epoch
    mode: max
    objective: {val_robust_acc: 1.0, val_clean_acc: 0.25}   # optional: picks the trial to register
    fixed: {objective.mode: at_reg}      # optional: overrides applied to every trial
    params:
      objective.rho: {grid: [0.0, 0.5, 1.0, 2.0]}   # or {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}

:func:`load_space` checks everything, including that every value a trial can draw makes a
valid training config, and raises :class:`SpaceError` naming the key before anything runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stable_snn.config import ConfigError, apply_overrides

from ..config import JobConfig

SEARCHES = ("grid", "random", "tpe")
SCHEDULERS = ("none", "asha")
METRICS = ("val_robust_acc", "val_clean_acc")
MODES = ("max", "min")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
TOP_KEYS = ("name", "search", "scheduler", "num_samples", "max_concurrent_trials", "metric", "mode", "objective", "fixed", "params")


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

    def score(self, metrics: dict[str, float]) -> float:
        """The value that ranks trials for registration (higher is better)."""
        if self.objective:
            return sum(w * float(metrics.get(k, float("nan"))) for k, w in self.objective.items())
        value = float(metrics.get(self.metric, float("nan")))
        return value if self.mode == "max" else -value

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """``section.field=value`` overrides of one trial: the ``fixed`` fields, then the drawn ``values``."""
        merged = {**self.fixed, **values}
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in merged.items()]


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
    return Param(key, kind, tuple(values))


def _pick(data: dict, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise _err(key, value, "one of " + ", ".join(allowed))
    return value


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
    for key in ("num_samples", "max_concurrent_trials"):
        v = data.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _err(key, v, "an integer >= 1")
    metric = _pick(data, "metric", "val_robust_acc", METRICS)
    mode = _pick(data, "mode", "max", MODES)
    objective = data.get("objective")
    if objective is not None:
        if not isinstance(objective, dict) or not objective:
            raise _err("objective", objective, "a mapping of metric -> weight")
        for k, w in objective.items():
            if k not in METRICS:
                raise _err(f"objective.{k}", w, "metrics " + ", ".join(METRICS))
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise _err(f"objective.{k}", w, "a finite number")
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
    space = SearchSpace(name, search, scheduler, data.get("num_samples", 1), data.get("max_concurrent_trials", 1),
                        metric, mode, params, dict(fixed), dict(objective) if objective else None)
    _check_against_config(space, base)
    return space


def _check_against_config(space: SearchSpace, base: JobConfig) -> None:
    """Every key is a config field and every value a trial can draw gives a valid config."""
    fields = set(base.flat())
    for key in [*space.fixed, *(p.key for p in space.params)]:
        if key not in fields:
            raise SpaceError(f"{key} is not a training config field; allowed: {', '.join(sorted(fields))}")
        if key.startswith("run."):
            raise SpaceError(f"{key}: run.* fields are set per trial by the search and cannot be searched")
    draws = [("fixed", {})] + [(f"params.{p.key}", {p.key: v}) for p in space.params for v in p.candidates()]
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
