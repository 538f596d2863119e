"""Train a robust stable SNN on Ray Train, tracked in MLflow; register the best robust checkpoint.

    python -m jobs.train --config jobs/configs/quick.yaml [--set section.field=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train --config ...

Relaunching with the same ``run.name`` resumes the run from its last checkpoint in the
storage path and keeps logging into the same MLflow run.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stable_snn.config import ConfigError, TrainConfig, load_config

from .logs import setup_logging

log = logging.getLogger("stable_snn.train")

OUTBOX_DEADLINE_S = float(os.environ.get("STABLE_SNN_OUTBOX_DEADLINE_S", "300"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Config sections and fields (override any with --set section.field=value): "
            "model.{arch,neuron,gain_form,timesteps,leak,threshold,surrogate_width,width,classifier_width}, "
            "data.{dataset,root,format,download,val_size,train_subset,test_subset,augment,cutout,loader_workers}, "
            "objective.{mode,rho,chi,regularizer,reduction,beta,gaussian_sigma,rfgsm_step,rfgsm_init_std}, "
            "optim.{epochs,batch_size,lr,momentum,weight_decay,precision}, "
            "validation.{subset,eps,pgd_steps,pgd_step_size,batch_size,cpus,gpus}, "
            "run.{name,seed,num_workers,use_gpu,cpus_per_worker,placement_strategy,storage_path,max_failures,keep_checkpoints,"
            "tracking_uri,experiment,registered_model}. "
            "Environment: MLFLOW_TRACKING_URI (tracking server), STABLE_SNN_STORAGE_PATH (checkpoints), "
            "STABLE_SNN_DATA_ROOT (datasets)."
        ),
    )
    p.add_argument("--config", required=True, help="YAML preset, e.g. jobs/configs/quick.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set objective.rho=0.5 (repeatable)")
    p.add_argument("--no-register", action="store_true", help="do not register the best checkpoint in the model registry")
    p.add_argument("--alias", default="candidate", help="alias given to the registered model version (default: candidate)")
    return p.parse_args(argv)


def git_commit() -> str | None:
    if os.environ.get("STABLE_SNN_GIT_COMMIT"):
        return os.environ["STABLE_SNN_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def preflight(cfg: TrainConfig) -> TrainConfig:
    """Checks that need no compute (the dataset is where the config says), and the config with its
    locations resolved by the driver (data root, storage path), so every worker on every node reads
    the same ones and the logged config says where they were."""
    from stable_snn.config import apply_overrides
    from stable_snn.data.formats import resolve_format

    root = cfg.data.resolved_root()
    resolve_format(cfg.data.dataset, root, "train", format=cfg.data.format, download=cfg.data.download)
    return apply_overrides(cfg, [f"data.root={root}", f"run.storage_path={cfg.run.resolved_storage()}"])


def open_run(client, cfg: TrainConfig, tracking_uri: str, parent_run_id: str | None = None, extra_tags: dict | None = None):
    """Reuse the unfinished MLflow run of ``run.name`` (resume) or create a new one."""
    from .tracking import JOB_KIND_TAG, RUN_NAME_TAG, experiment_id, find_run

    exp = experiment_id(client, cfg.run.experiment)
    existing = find_run(client, exp, cfg.run.name)
    if existing is not None:
        if existing.info.status == "FINISHED":
            raise ConfigError(
                f"run.name={cfg.run.name!r} already finished (MLflow run {existing.info.run_id}); "
                "choose a new name with --set run.name=..."
            )
        log.info("resuming MLflow run %s of %s", existing.info.run_id, cfg.run.name)
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id, True
    tags = {RUN_NAME_TAG: cfg.run.name, JOB_KIND_TAG: "train", "mlflow.runName": cfg.run.name, **(extra_tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    run = client.create_run(exp, run_name=cfg.run.name, tags=tags)
    from mlflow.entities import Param

    params = [Param(k, str(v)) for k, v in cfg.flat().items()]
    params.append(Param("derived.weight_decay", str(cfg.weight_decay)))
    for i in range(0, len(params), 90):
        client.log_batch(run.info.run_id, params=params[i : i + 90])
    with tempfile.TemporaryDirectory() as tmp:
        from stable_snn.config import dump_config

        path = Path(tmp) / "config.yaml"
        path.write_text(dump_config(cfg))
        client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id, False


def log_figures(client, run_id: str, history: list[dict], gains) -> None:
    from .figures import heatmap_gains, training_curves

    with tempfile.TemporaryDirectory() as tmp:
        curves = Path(tmp) / "training_curves.png"
        training_curves(history, curves)
        client.log_artifact(run_id, str(curves), "figures")
        if gains is not None:
            heat = Path(tmp) / "dlif_gains.png"
            heatmap_gains(gains, heat)
            client.log_artifact(run_id, str(heat), "figures")


def validation_history(client, run_id: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for key in ("val_clean_acc", "val_robust_acc"):
        for m in client.get_metric_history(run_id, key):
            out.setdefault(int(m.step), {})[key] = m.value
    return out


@dataclass
class TrainingOutcome:
    run_id: str
    best_epoch: int
    metrics: dict  # val_clean_acc / val_robust_acc of the best checkpoint
    checkpoint_path: str
    version: object | None = None  # the registered ModelVersion, if any


def run_training(
    cfg: TrainConfig,
    client,
    tracking_uri: str,
    *,
    register: bool = True,
    alias: str = "candidate",
    parent_run_id: str | None = None,
    callbacks=None,
    inline_validation: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> TrainingOutcome:
    """Open (or resume) the MLflow run, fit on Ray Train, log figures, register the best checkpoint.

    The MLflow run is closed in ``finally`` (FINISHED on success, FAILED otherwise; a
    relaunch with the same ``run.name`` resumes it).
    """
    import ray

    from .checkpointing import load_checkpoint
    from .registry import build_network
    from .tracking import RunLogger, TrackingUnavailableError, outbox_for
    from .trainer import best_checkpoint, build_trainer

    run_id, _ = open_run(client, cfg, tracking_uri, parent_run_id=parent_run_id, extra_tags=extra_tags)
    ctx = ray.get_runtime_context()
    client.set_tag(run_id, "ray_job_id", ctx.get_job_id())
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        client.set_tag(run_id, "ray_submission_id", os.environ["RAY_JOB_SUBMISSION_ID"])
    status = "FAILED"
    try:
        log.info("training %s (%s, %s, %s, T=%d) with %d worker(s); MLflow run %s at %s",
                 cfg.run.name, cfg.model.arch, cfg.model.neuron, cfg.objective.mode, cfg.model.timesteps,
                 cfg.run.num_workers, run_id, tracking_uri)
        trainer = build_trainer(cfg, run_id, tracking_uri, callbacks=callbacks, inline_validation=inline_validation)
        result = trainer.fit()
        outbox = RunLogger(client, run_id, outbox_for(cfg.run.resolved_storage(), cfg.run.name))
        if not outbox.flush(deadline_s=OUTBOX_DEADLINE_S):
            raise TrackingUnavailableError(
                f"MLflow tracking server {tracking_uri} stayed unreachable for {OUTBOX_DEADLINE_S:.0f} s after training: "
                f"{outbox.unsent} metric values wait in {outbox.outbox} and nothing was registered; the checkpoints "
                f"are intact in {cfg.run.resolved_storage()}/{cfg.run.name} (relaunch with the same run.name to finish)"
            )
        ckpt, metrics = best_checkpoint(result)
        if ckpt is None:
            raise RuntimeError("training reported no checkpoint")
        with ckpt.as_directory() as folder:
            state, _ = load_checkpoint(Path(folder))
        model = build_network(cfg)
        model.load_state_dict(state["model"])
        val = validation_history(client, run_id)
        history = [h | val.get(int(h["epoch"]), {}) for h in _latest_history(result, state)]
        log_figures(client, run_id, history, model.dlif_gains())
        best_epoch = int(state["epoch"])
        summary = {k: metrics.get(k) for k in ("val_clean_acc", "val_robust_acc")}
        client.set_tag(run_id, "best_epoch", str(best_epoch))
        client.set_tag(run_id, "best_checkpoint", ckpt.path)
        version = None
        if register:
            version = register_model(client, run_id, model, cfg, best_epoch, summary, alias)
        status = "FINISHED"
        return TrainingOutcome(run_id, best_epoch, summary, ckpt.path, version)
    finally:
        try:
            client.set_terminated(run_id, status=status)
        except Exception as e:  # the run keeps its status RUNNING; a relaunch resumes it
            log.warning("could not close MLflow run %s: %s", run_id, e)


def register_model(client, run_id: str, model, cfg: TrainConfig, epoch: int, summary: dict, alias: str):
    from .registry import log_and_register

    return log_and_register(
        client, run_id, model, cfg, name=cfg.registered_model_name, alias=alias,
        tags={"run_name": cfg.run.name, "epoch": epoch, "arch": cfg.model.arch, "mode": cfg.objective.mode,
              "rho": cfg.objective.rho, "chi": cfg.objective.chi,
              **{k: f"{v:.4f}" for k, v in summary.items() if v is not None}},
    )


def connect(cfg: TrainConfig):
    """Tracking URI (checked within seconds), an MLflow client, and a Ray connection."""
    from .tracking import check_reachable, configure_client_retries, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(cfg.run.tracking_uri)
    check_reachable(tracking_uri)
    configure_client_retries()
    import mlflow
    import ray
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    return tracking_uri, MlflowClient(tracking_uri)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    from .tracking import TrackingUnavailableError

    try:
        cfg = preflight(load_config(args.config, args.overrides))
        tracking_uri, client = connect(cfg)
    except TrackingUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        outcome = run_training(cfg, client, tracking_uri, register=not args.no_register, alias=args.alias)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if outcome.version is not None:
        print(f"registered model: models:/{outcome.version.name}@{args.alias} (version {outcome.version.version})")
    print(f"MLflow run: {outcome.run_id} ({cfg.run.experiment}/{cfg.run.name}) at {tracking_uri}")
    print("best checkpoint: epoch {}  val clean {}  val PGD-{} {}".format(
        outcome.best_epoch, _pct(outcome.metrics["val_clean_acc"]), cfg.validation.pgd_steps,
        _pct(outcome.metrics["val_robust_acc"])))
    return 0


def _latest_history(result, state) -> list[dict]:
    """Full per-epoch training history: from the last checkpoint when it is newer than the best one."""
    last = result.checkpoint
    if last is None:
        return state.get("history", [])
    from .checkpointing import load_checkpoint

    with last.as_directory() as folder:
        last_state, _ = load_checkpoint(Path(folder))
    return last_state.get("history", state.get("history", []))


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


if __name__ == "__main__":
    sys.exit(main())
