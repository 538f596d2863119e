"""Ray Tune search over the training config (rho, chi, beta, ...); every trial a Ray Train run.

    python -m jobs.tune --space tune_spaces/rho-grid.yaml --config jobs/configs/quick.yaml [--set ...]
    python -m jobs.tune ... --resume        # continue an interrupted search

MLflow: a parent run for the search (the space, the results table, the clean-vs-robust plot
with the Pareto front, the best config) and one child run per trial with the content of a
training run.  The best trial's best checkpoint is registered with the alias ``candidate``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import yaml

from stable_snn.config import ConfigError, TrainConfig, apply_overrides, config_from_dict, load_config

from .logs import setup_logging
from .reporting import markdown_table
from .tune_space import SearchSpace, SpaceError, load_space

log = logging.getLogger("stable_snn.tune")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, help="search space YAML, e.g. tune_spaces/rho-grid.yaml")
    p.add_argument("--config", required=True, help="training preset the trials start from, e.g. jobs/configs/quick.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a field of the preset (repeatable)")
    p.add_argument("--name", default=None, help="name of the search (default: the space's name); also its storage folder")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search of this name (Tuner.restore)")
    p.add_argument("--trial-cpus", type=float, default=1.0, help="CPUs reserved for each trial's driver (default 1)")
    p.add_argument("--no-register", action="store_true", help="do not register the best trial's checkpoint")
    p.add_argument("--alias", default="candidate", help="alias of the registered version (default candidate)")
    return p.parse_args(argv)


def trial(config: dict, base: dict, search: str, parent_run_id: str, tracking_uri: str) -> None:
    """One trial: a full Ray Train run (its own workers), reporting per-epoch validation to Tune."""
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .train import run_training
    from .tracking import configure_client_retries

    setup_logging()
    configure_client_retries()
    trial_id = tune.get_context().get_trial_id()
    space_overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in config.items()]
    cfg = apply_overrides(config_from_dict(base), [*space_overrides, f"run.name={search}-{trial_id}"])
    client = MlflowClient(tracking_uri)
    done = _finished_trial_run(client, cfg)
    if done is not None:
        # The search was interrupted after this trial finished but before Tune saved that:
        # report the finished run's results instead of training again.
        log.info("trial %s already finished (MLflow run %s); reporting its results", trial_id, done.info.run_id)
        tune.report({k: done.data.metrics[k] for k in ("val_robust_acc", "val_clean_acc") if k in done.data.metrics})
        return
    run_training(
        cfg, client, tracking_uri, register=False, parent_run_id=parent_run_id,
        callbacks=[TuneReportCallback()], inline_validation=True,
        extra_tags={"stable_snn.search": search, "stable_snn.trial_id": trial_id},
    )


def _finished_trial_run(client, cfg: TrainConfig):
    from .tracking import experiment_id, find_run

    run = find_run(client, experiment_id(client, cfg.run.experiment), cfg.run.name)
    return run if run is not None and run.info.status == "FINISHED" else None


def open_parent_run(client, base: TrainConfig, name: str, space_path: Path, resume: bool) -> str:
    from mlflow.entities import Param

    from .tracking import JOB_KIND_TAG, RUN_NAME_TAG, experiment_id, find_run

    exp = experiment_id(client, base.run.experiment)
    existing = find_run(client, exp, name, job="tune")
    if existing is not None:
        if not resume:
            raise ConfigError(f"a search named {name!r} exists (MLflow run {existing.info.run_id}); use --resume or --name")
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id
    if resume:
        raise ConfigError(f"--resume: no search named {name!r} in experiment {base.run.experiment!r}")
    run = client.create_run(exp, run_name=name, tags={RUN_NAME_TAG: name, JOB_KIND_TAG: "tune", "mlflow.runName": name})
    params = [Param(f"base.{k}", str(v)) for k, v in base.flat().items()]
    for i in range(0, len(params), 90):
        client.log_batch(run.info.run_id, params=params[i : i + 90])
    client.log_artifact(run.info.run_id, str(space_path))
    return run.info.run_id


def build_tuner(space: SearchSpace, base: TrainConfig, name: str, parent_run_id: str, tracking_uri: str, trial_cpus: float, resume: bool):
    from ray import tune

    trainable = tune.with_resources(
        tune.with_parameters(trial, base=base.to_dict(), search=name, parent_run_id=parent_run_id, tracking_uri=tracking_uri),
        {"CPU": trial_cpus},
    )
    path = str(Path(base.run.resolved_storage()) / name) if "://" not in base.run.resolved_storage() else f"{base.run.resolved_storage().rstrip('/')}/{name}"
    if resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: no Tune experiment to restore at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    if tune.Tuner.can_restore(path):
        raise ConfigError(f"a Tune experiment exists at {path}; use --resume or another --name")
    search_alg = None
    if space.search == "tpe":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=base.run.seed)
    scheduler = None
    if space.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base.optim.epochs, grace_period=1, reduction_factor=2)
    return tune.Tuner(
        trainable,
        param_space=space.to_tune(),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, num_samples=space.num_samples,
            max_concurrent_trials=space.max_concurrent_trials, search_alg=search_alg, scheduler=scheduler,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=base.run.resolved_storage(),
            failure_config=tune.FailureConfig(max_failures=max(base.run.max_failures, 0)),
        ),
    )


def trial_rows(client, parent_run_id: str, experiment: str, space: SearchSpace) -> list[dict]:
    """One row per trial (its child run): searched values, best validation metrics, checkpoint."""
    exp = client.get_experiment_by_name(experiment)
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    rows = []
    for run in children:
        best = {"val_robust_acc": None, "val_clean_acc": None}
        hist = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} for key in ("val_robust_acc", "val_clean_acc")}
        epoch = run.data.tags.get("best_epoch")
        if epoch is not None and int(epoch) in hist["val_robust_acc"]:
            best = {k: hist[k].get(int(epoch)) for k in hist}
        row = {
            "trial_id": run.data.tags.get("stable_snn.trial_id"), "run_id": run.info.run_id, "status": run.info.status,
            **{p.key: run.data.params.get(p.key) for p in space.params}, **best,
            "best_epoch": epoch, "checkpoint": run.data.tags.get("best_checkpoint"),
        }
        rows.append(row)
    rows.sort(key=lambda r: r["trial_id"] or "")
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (clean, robust), both maximised."""
    front = []
    for i, (c, r) in enumerate(points):
        if not any((c2 >= c and r2 >= r) and (c2 > c or r2 > r) for j, (c2, r2) in enumerate(points) if j != i):
            front.append(i)
    return front


def log_search_results(client, parent_run_id: str, rows: list[dict], space: SearchSpace, best: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        df = pd.DataFrame(rows)
        df.to_csv(tmp / "trials.csv", index=False)
        (tmp / "trials.md").write_text(markdown_table(rows))
        done = [r for r in rows if r.get("val_clean_acc") is not None and r.get("val_robust_acc") is not None]
        fig, ax = plt.subplots(figsize=(5, 4))
        if done:
            pts = [(r["val_clean_acc"], r["val_robust_acc"]) for r in done]
            front = set(pareto_front(pts))
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=["C3" if i in front else "C0" for i in range(len(pts))])
            fp = sorted(pts[i] for i in front)
            ax.plot([p[0] for p in fp], [p[1] for p in fp], "C3--", label="Pareto front")
            for r, (c, rb) in zip(done, pts):
                ax.annotate(r["trial_id"][-5:] if r["trial_id"] else "", (c, rb), fontsize=7)
            ax.legend()
        ax.set_xlabel("validation clean accuracy")
        ax.set_ylabel("validation PGD robust accuracy")
        ax.set_title(f"search {space.name}")
        fig.tight_layout()
        fig.savefig(tmp / "clean_vs_robust.png", dpi=120)
        plt.close(fig)
        for f in ("trials.csv", "trials.md", "clean_vs_robust.png"):
            client.log_artifact(parent_run_id, str(tmp / f))
        if best is not None:
            (tmp / "best_config.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
            client.log_artifact(parent_run_id, str(tmp / "best_config.yaml"))
            for p in space.params:
                client.log_param(parent_run_id, f"best.{p.key}", best.get(p.key))
            for k in ("val_robust_acc", "val_clean_acc"):
                if best.get(k) is not None:
                    client.log_metric(parent_run_id, f"best_{k}", best[k])
            client.set_tag(parent_run_id, "best_trial", best["trial_id"])


def register_best(client, best: dict, base: TrainConfig, alias: str):
    from .checkpointing import load_checkpoint
    from .registry import build_network
    from .train import register_model

    ckpt = best["checkpoint"]
    if "://" in ckpt:
        import pyarrow.fs as pafs

        with tempfile.TemporaryDirectory() as tmp:
            fs, path = pafs.FileSystem.from_uri(ckpt)
            pafs.copy_files(path, tmp, source_filesystem=fs)
            state, cfg = load_checkpoint(Path(tmp))
    else:
        state, cfg = load_checkpoint(Path(ckpt))
    model = build_network(cfg)
    model.load_state_dict(state["model"])
    summary = {k: best.get(k) for k in ("val_clean_acc", "val_robust_acc")}
    return register_model(client, best["run_id"], model, cfg, int(best["best_epoch"]), summary, alias)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    from .tracking import TrackingUnavailableError
    from .train import connect, preflight

    try:
        base = load_config(args.config, args.overrides)
        space = load_space(args.space, base)
        name = args.name or space.name
        base = preflight(base)
        tracking_uri, client = connect(base)
        parent = open_parent_run(client, base, name, Path(args.space), args.resume)
    except TrackingUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, SpaceError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = "FAILED"
    try:
        try:
            tuner = build_tuner(space, base, name, parent, tracking_uri, args.trial_cpus, args.resume)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        results = tuner.fit()
        errors = [r.error for r in results if r.error is not None]
        rows = trial_rows(client, parent, base.run.experiment, space)
        finished = [r for r in rows if r["status"] == "FINISHED" and r.get("val_robust_acc") is not None and r.get("checkpoint")]
        best = max(finished, key=lambda r: space.score(r)) if finished else None
        log_search_results(client, parent, rows, space, best)
        print(f"search {name}: {len(rows)} trial(s), {len(finished)} finished, {len(errors)} errored")
        for r in rows:
            print("  {trial_id}  {vals}  clean {c}  robust {rb}  ({status})".format(
                trial_id=r["trial_id"], vals=", ".join(f"{p.key}={r.get(p.key)}" for p in space.params),
                c=_pct(r.get("val_clean_acc")), rb=_pct(r.get("val_robust_acc")), status=r["status"]))
        if best is not None and not args.no_register:
            version = register_best(client, best, base, args.alias)
            print(f"best trial {best['trial_id']}: registered models:/{version.name}@{args.alias} (version {version.version})")
        status = "FINISHED" if not errors else "FAILED"
        return 0 if not errors else 1
    finally:
        try:
            client.set_terminated(parent, status=status)
        except Exception as e:
            log.warning("could not close the search's MLflow run: %s", e)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f}%"


if __name__ == "__main__":
    sys.exit(main())
