"""The Ray Tune search: its MLflow run (the parent of the trials' runs) and its Tuner.

Grid and random searches hand Tune the explicit list of :func:`~jobs.tune.space.expand_trials`
(one ``grid_search`` over whole trials, under :data:`TRIAL_KEY`), so a search runs exactly the
trials ``--dry-run`` prints; a TPE search gives Tune the distributions and Optuna's sampler seeded
with the space's seed.
"""
from __future__ import annotations

from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from stable_snn.config import ConfigError

from ..config import JobConfig
from ..tracking.runs import create_run, experiment_id, find_run, log_params
from ..training.checkpoints import run_path
from .space import SearchSpace, expand_trials
from .trial import TRIAL_KEY, trial


def open_parent_run(client, base: JobConfig, space: SearchSpace, name: str, space_path: Path, resume: bool) -> str:
    """The search's MLflow run: created with the base config as ``base.*`` params, the metric Tune
    optimises and the space file, or, with ``resume``, the existing one reopened."""
    exp = experiment_id(client, base.run.experiment)
    existing = find_run(client, exp, name, job="tune")
    if existing is not None:
        if not resume:
            raise ConfigError(f"a search named {name!r} exists (MLflow run {existing.info.run_id}); use --resume or --name")
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id
    if resume:
        raise ConfigError(f"--resume: no search named {name!r} in experiment {base.run.experiment!r}")
    run_id = create_run(client, exp, name, "tune")
    metric, mode = space.tune_metric
    log_params(client, run_id, {f"base.{k}": v for k, v in base.flat().items()} | {
        "tune.metric": metric, "tune.mode": mode, "tune.search": space.search, "tune.scheduler": space.scheduler,
        "tune.seed": space.seed})
    client.log_artifact(run_id, str(space_path))
    return run_id


def param_space(space: SearchSpace) -> dict:
    """Tune's ``param_space``: the expanded trials (grid, random) or the distributions (TPE)."""
    if space.search != "tpe":
        return {TRIAL_KEY: tune.grid_search(expand_trials(space))}
    kinds = {"choice": lambda v: tune.choice(list(v)), "uniform": lambda v: tune.uniform(*v),
             "loguniform": lambda v: tune.loguniform(*v)}
    return {p.key: kinds[p.kind](p.values) for p in space.params}


def tpe_searcher(space: SearchSpace) -> OptunaSearch:
    """Optuna's TPE sampler, seeded with the space's seed (its first trials are random draws)."""
    return OptunaSearch(seed=space.seed)


def tpe_samples(space: SearchSpace) -> list[dict]:
    """The trials a TPE search of ``space`` starts with, asked of the same seeded sampler without results
    (the first ones, Optuna's random start-up draws, are those the search runs)."""
    searcher = tpe_searcher(space)
    searcher.set_search_properties(*space.tune_metric, param_space(space))
    return [searcher.suggest(f"dry-run-{i}") for i in range(space.num_samples)]


def scheduler_of(space: SearchSpace, epochs: int) -> ASHAScheduler | None:
    """ASHA on the Tune metric (rungs at epochs 1, 2, 4, ...), or None.

    ``max_t`` is one past the last epoch: ASHA stops every trial that reaches ``max_t``, and a stop
    at the last epoch's report would end the trial's training run before it selects, registers and
    closes its MLflow run; the trial ends by itself there instead."""
    if space.scheduler != "asha":
        return None
    return ASHAScheduler(time_attr="training_iteration", max_t=epochs + 1, grace_period=1, reduction_factor=2)


def build_tuner(space: SearchSpace, base: JobConfig, name: str, parent_run_id: str, tracking_uri: str,
                trial_cpus: float, resume: bool) -> tune.Tuner:
    """A new Tuner over ``space``, or with ``resume`` the interrupted one restored from the storage path."""
    trainable = tune.with_resources(
        tune.with_parameters(trial, base=base.to_dict(), space=space, search=name, parent_run_id=parent_run_id,
                             tracking_uri=tracking_uri),
        {"CPU": trial_cpus},
    )
    path = run_path(base.run.resolved_storage(), name)
    if resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: no Tune experiment to restore at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    if tune.Tuner.can_restore(path):
        raise ConfigError(f"a Tune experiment exists at {path}; use --resume or another --name")
    metric, mode = space.tune_metric
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=space.num_samples if space.search == "tpe" else 1,
            max_concurrent_trials=space.max_concurrent_trials,
            search_alg=tpe_searcher(space) if space.search == "tpe" else None,
            scheduler=scheduler_of(space, base.optim.epochs),
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=base.run.resolved_storage(),
            failure_config=tune.FailureConfig(max_failures=max(base.run.max_failures, 0)),
        ),
    )
