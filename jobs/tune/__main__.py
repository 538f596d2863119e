"""Ray Tune search over the training config (rho, chi, beta, seeds, ...); every trial a Ray Train run.

    python -m jobs.tune --space tune_spaces/rho-grid.yaml --config jobs/configs/quick.yaml [--set ...]
    python -m jobs.tune ... --dry-run       # print every trial's overrides; no Ray, no MLflow
    python -m jobs.tune ... --resume        # continue an interrupted search

MLflow: a parent run for the search (the space, the trials table, the clean-vs-robust plot with
the Pareto front, the best config, and the report: trials grouped by their searched values, mean
+- sd over seeds, validation at the selected checkpoint and at the final epoch, and with a test
limit the selected checkpoints on the test split) and one child run per trial with the content of
a training run; trials a scheduler stops early end KILLED with a ``stopped_early`` tag.  The best
finished trial's selected checkpoint is registered with the alias ``candidate``.

Exit status (jobs.cli.ExitCode): 0 done; 1 finished with errored trials; 2 refused before any
compute (bad config, space or data; an existing search without --resume); 3 the MLflow server
is unreachable.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stable_snn.config import ConfigError

from jobs.cli import ExitCode, add_config_arguments, job_parser, run_main
from jobs.config import load_job_config
from jobs.tracking.connect import reachable_uri
from jobs.training.preflight import preflight
from jobs.tune.space import SearchSpace, load_space


def parser() -> argparse.ArgumentParser:
    p = job_parser("jobs.tune", __doc__)
    p.add_argument("--space", required=True, help="search space YAML, e.g. tune_spaces/rho-grid.yaml")
    add_config_arguments(p, example="jobs/configs/quick.yaml (the preset the trials start from)")
    p.add_argument("--name", default=None, help="name of the search (default: the space's name); also its storage folder")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search of this name (Tuner.restore)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every trial's resolved overrides and exit, without starting Ray or touching MLflow")
    p.add_argument("--test-images", type=int, default=None,
                   help="evaluate each finished trial's selected checkpoint on this many test images (protocol "
                        "quick) for the report; default: the space's test_images, 0 for none")
    p.add_argument("--trial-cpus", type=float, default=None,
                   help="CPUs reserved for each trial's driver, which waits on its Ray Train run (default: the "
                        "space's trial_cpus, else 1)")
    p.add_argument("--no-register", action="store_true", help="do not register the best trial's checkpoint")
    p.add_argument("--alias", default="candidate", help="alias of the registered version (default candidate)")
    return p


def dry_run_lines(space: SearchSpace) -> list[str]:
    """Every trial's ``--set`` overrides (fixed fields, then its values), as the search would run them."""
    from jobs.tune.space import expand_trials

    metric, mode = space.tune_metric
    head = (f"search {space.name}: {space.search}, scheduler {space.scheduler}, Tune metric {metric} ({mode}), "
            f"seed {space.seed}")
    if space.search == "tpe":
        from jobs.tune.search import tpe_samples  # imports Ray Tune and Optuna, starts nothing

        trials = tpe_samples(space)
        head += f"; TPE: trials after the first {min(len(trials), 10)} depend on earlier results"
    else:
        trials = expand_trials(space)
    return [f"{head}; {len(trials)} trial(s)"] + [
        f"  trial {i + 1}: {' '.join(space.overrides(values))}" for i, values in enumerate(trials)]


def reserved_trial_cpus(flag: float | None, space: SearchSpace) -> float:
    """CPUs each trial's driver reserves: ``--trial-cpus``, else the space's ``trial_cpus``, else 1."""
    return next(c for c in (flag, space.trial_cpus, 1.0) if c is not None)


def search(args: argparse.Namespace) -> int:
    base = load_job_config(args.config, args.overrides)
    space = load_space(args.space, base)
    if args.test_images is not None and args.test_images < 0:
        raise ConfigError(f"--test-images={args.test_images} is invalid: allowed an integer >= 0")
    if args.trial_cpus is not None and not args.trial_cpus > 0:
        raise ConfigError(f"--trial-cpus={args.trial_cpus} is invalid: allowed a number > 0")
    if args.dry_run:
        print("\n".join(dry_run_lines(space)))
        return ExitCode.DONE
    name = args.name or space.name
    test_images = space.test_images if args.test_images is None else args.test_images
    trial_cpus = reserved_trial_cpus(args.trial_cpus, space)
    tracking_uri = reachable_uri(base.run.tracking_uri)
    base = preflight(base)
    # Ray, MLflow and the training code load only once the input is known to be good.
    from jobs.tracking.runs import client_for, close_run
    from jobs.training.driver import connect_ray
    from jobs.tune.report import aggregate, evaluate_on_test, log_report
    from jobs.tune.results import (
        best_trial, end_stopped_trials, finished_trials, log_search_results, register_best, summary_lines, trial_rows,
    )
    from jobs.tune.search import build_tuner, open_parent_run

    client = client_for(tracking_uri)
    connect_ray()
    parent = open_parent_run(client, base, space, name, Path(args.space), args.resume)
    status = "FAILED"
    try:
        results = build_tuner(space, base, name, parent, tracking_uri, trial_cpus, args.resume).fit()
        errors = [r for r in results if r.error is not None]
        errored = {(r.metrics or {}).get("trial_id") for r in errors}
        end_stopped_trials(client, parent, base.run.experiment, base.run.resolved_storage(), errored)
        rows = trial_rows(client, parent, base.run.experiment, space)
        best = best_trial(rows, space)
        log_search_results(client, parent, rows, space, best)
        print("\n".join(summary_lines(name, rows, len(finished_trials(rows)), len(errors), space)))
        if test_images:
            rows = evaluate_on_test(rows, test_images)
        print(log_report(client, parent, aggregate(rows, space), space))
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
