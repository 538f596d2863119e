"""Register a checkpoint of a training run that did not register one itself (it stopped on a
non-finite loss, or ran with ``--no-register``), into that run's MLflow run.

    python -m jobs.register --config jobs/configs/quick.yaml --set run.name=<name> [--epoch N] [--alias candidate]

The run's checkpoints are read from its storage folder (``run.storage_path`` /
``$STABLE_SNN_STORAGE_PATH``); each one's checksums are verified and a truncated or tampered
one is skipped (or, named with ``--epoch``, refused).  Without ``--epoch`` the selection rule that
training applies chooses among the valid checkpoints, on the validation split only: the latest one
unless an earlier one has a higher validation robust accuracy by more than two standard errors
(``jobs.training.selection``); a checkpoint whose validation never reached MLflow is validated first,
and its metrics are logged at its epoch.  Registering twice is harmless: the version already
registered from the same run and epoch is reused.

Exit status (jobs.cli.ExitCode): 0 registered; 2 nothing to register (no run, no valid
checkpoint, bad input); 3 the MLflow server is unreachable.
"""
from __future__ import annotations

import argparse
import sys

from stable_snn.config import ConfigError

from jobs.cli import add_config_arguments, job_parser, run_main
from jobs.config import load_job_config
from jobs.tracking.connect import reachable_uri


def parser() -> argparse.ArgumentParser:
    p = job_parser("jobs.register", __doc__)
    add_config_arguments(p, example="the run's preset; run.name names the run")
    p.add_argument("--epoch", type=int, default=None, help="register this epoch's checkpoint (default: the best valid one)")
    p.add_argument("--alias", default="candidate", help="alias given to the registered version (default: candidate)")
    return p


def register(args: argparse.Namespace) -> int:
    if args.epoch is not None and args.epoch < 1:
        raise ConfigError(f"--epoch={args.epoch} is invalid: allowed an integer >= 1")
    cfg = load_job_config(args.config, args.overrides)
    tracking_uri = reachable_uri(cfg.run.tracking_uri)
    # Ray, MLflow and the checkpoint code load only once the input is known to be good.
    from jobs.register.choose import register_run
    from jobs.tracking.runs import client_for

    version, epoch, run_id = register_run(cfg, client_for(tracking_uri), tracking_uri, args.epoch, args.alias)
    print(f"registered model: models:/{version.name}@{args.alias} (version {version.version}) from epoch {epoch} "
          f"of run {cfg.run.name} (MLflow run {run_id})")
    return 0


def main(argv=None) -> int:
    return run_main(register, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
