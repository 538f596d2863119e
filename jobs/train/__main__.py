"""Train a robust stable SNN on Ray Train, tracked in MLflow; register the best robust checkpoint.

    python -m jobs.train --config jobs/configs/quick.yaml [--set section.field=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m jobs.train --config ...

Relaunching with the same ``run.name`` resumes the run from its last checkpoint in the
storage path and keeps logging into the same MLflow run.

Exit status (jobs.cli.ExitCode): 0 done; 2 refused before any compute (bad config or data, a
corrupt checkpoint to resume from, the run still trained by another driver); 3 the MLflow server
is unreachable (at the start, or after training with the metrics kept in the outbox); 4 the loss
became NaN or Inf (the last good checkpoint is kept: ``python -m jobs.register`` registers it).
"""
from __future__ import annotations

import argparse
import sys

from jobs.cli import add_config_arguments, config_fields, job_parser, percent, run_main
from jobs.config import JobConfig, load_job_config
from jobs.tracking.connect import reachable_uri
from jobs.training.preflight import check_resumable, preflight


def parser() -> argparse.ArgumentParser:
    p = job_parser("jobs.train", __doc__, epilog=(
        f"Config sections and fields (override any with --set section.field=value): {config_fields(JobConfig)}. "
        "Environment: MLFLOW_TRACKING_URI (tracking server), STABLE_SNN_STORAGE_PATH (checkpoints), "
        "STABLE_SNN_DATA_ROOT (datasets)."
    ))
    add_config_arguments(p)
    p.add_argument("--no-register", action="store_true", help="do not register the selected checkpoint in the model registry")
    p.add_argument("--alias", default="candidate", help="alias given to the registered model version (default: candidate)")
    return p


def train(args: argparse.Namespace) -> int:
    cfg = load_job_config(args.config, args.overrides)
    tracking_uri = reachable_uri(cfg.run.tracking_uri)  # seconds, before Ray or MLflow is imported
    cfg = preflight(cfg)
    check_resumable(cfg)  # a relaunch that can only fail again is refused before Ray starts
    # Ray, MLflow and the training code load only once the input is known to be good.
    from jobs.tracking.runs import client_for
    from jobs.tracking.views import run_link, runs_link
    from jobs.training.driver import connect_ray, run_training

    client = client_for(tracking_uri)
    connect_ray()
    outcome = run_training(cfg, client, tracking_uri, register=not args.no_register, alias=args.alias)
    if outcome.version is not None:
        print(f"registered model: models:/{outcome.version.name}@{args.alias} (version {outcome.version.version})")
    print(f"MLflow run: {outcome.run_id} ({cfg.run.experiment}/{cfg.run.name}) at {tracking_uri}")
    if tracking_uri.startswith(("http://", "https://")):
        exp_id = client.get_run(outcome.run_id).info.experiment_id
        print(f"  in the MLflow UI: {run_link(tracking_uri, exp_id, outcome.run_id)}\n"
              f"  all training runs: {runs_link(tracking_uri, exp_id)}")
    print("selected checkpoint: epoch {}  val clean {}  val PGD-{} {}".format(
        outcome.selected_epoch, percent(outcome.metrics["val_clean_acc"]), cfg.validation.pgd_steps,
        percent(outcome.metrics["val_robust_acc"])))
    return 0


def main(argv=None) -> int:
    return run_main(train, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
