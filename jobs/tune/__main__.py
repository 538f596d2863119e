"""Ray Tune search over the training config (rho, chi, beta, ...); every trial a Ray Train run.

    python -m jobs.tune --space tune_spaces/rho-grid.yaml --config jobs/configs/quick.yaml [--set ...]
    python -m jobs.tune ... --resume        # continue an interrupted search

MLflow: a parent run for the search (the space, the results table, the clean-vs-robust plot
with the Pareto front, the best config) and one child run per trial with the content of a
training run.  The best trial's best checkpoint is registered with the alias ``candidate``.

Exit status (jobs.cli.ExitCode): 0 done; 1 finished with errored trials; 2 refused before any
compute (bad config, space or data; an existing search without --resume); 3 the MLflow server
is unreachable.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.cli import ExitCode, add_config_arguments, job_parser, run_main
from jobs.config import load_job_config
from jobs.tracking.connect import reachable_uri
from jobs.training.preflight import preflight
from jobs.tune.space import load_space


def parser() -> argparse.ArgumentParser:
    p = job_parser("jobs.tune", __doc__)
    p.add_argument("--space", required=True, help="search space YAML, e.g. tune_spaces/rho-grid.yaml")
    add_config_arguments(p, example="jobs/configs/quick.yaml (the preset the trials start from)")
    p.add_argument("--name", default=None, help="name of the search (default: the space's name); also its storage folder")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search of this name (Tuner.restore)")
    p.add_argument("--trial-cpus", type=float, default=1.0, help="CPUs reserved for each trial's driver (default 1)")
    p.add_argument("--no-register", action="store_true", help="do not register the best trial's checkpoint")
    p.add_argument("--alias", default="candidate", help="alias of the registered version (default candidate)")
    return p


def search(args: argparse.Namespace) -> int:
    base = load_job_config(args.config, args.overrides)
    space = load_space(args.space, base)
    name = args.name or space.name
    tracking_uri = reachable_uri(base.run.tracking_uri)
    base = preflight(base)
    # Ray, MLflow and the training code load only once the input is known to be good.
    from jobs.tracking.runs import client_for, close_run
    from jobs.training.driver import connect_ray
    from jobs.tune.results import (
        best_trial, finished_trials, log_search_results, register_best, summary_lines, trial_rows,
    )
    from jobs.tune.search import build_tuner, open_parent_run

    client = client_for(tracking_uri)
    connect_ray()
    parent = open_parent_run(client, base, name, Path(args.space), args.resume)
    status = "FAILED"
    try:
        results = build_tuner(space, base, name, parent, tracking_uri, args.trial_cpus, args.resume).fit()
        errors = [r.error for r in results if r.error is not None]
        rows = trial_rows(client, parent, base.run.experiment, space)
        best = best_trial(rows, space)
        log_search_results(client, parent, rows, space, best)
        print("\n".join(summary_lines(name, rows, len(finished_trials(rows)), len(errors), space)))
        if best is not None and not args.no_register:
            version = register_best(client, best, args.alias)
            print(f"best trial {best['trial_id']}: registered models:/{version.name}@{args.alias} (version {version.version})")
        status = "FINISHED" if not errors else "FAILED"
        return ExitCode.DONE if not errors else ExitCode.FAILURES
    finally:
        close_run(client, parent, status)


def main(argv=None) -> int:
    return run_main(search, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
