"""Evaluate a registered model under a named attack protocol, log the results to MLflow.

    python -m jobs.evaluate --model-uri models:/<name>@<alias> --protocol paper-table1
        [--split test|validation] [--limit N] [--dataset-root DIR] [--workers K] [--batch-size B] [--seed S]
        [--promote champion]

* loads the model version from the MLflow registry (tracking URI from ``MLFLOW_TRACKING_URI``)
  and the images of ``--split``: the test split (default; it reports), or the validation split
  of the model's own run, rebuilt from its stored config and seed as the training run built it
  (promotion decides there, and only there); with ``--limit N`` a class-balanced subset of N
  images drawn with ``--data-seed`` (nested: a smaller N gives a prefix of the same order);
* opens the MLflow run at once (tagged with the model version, the split and a link to the
  source training run, whose parameters it copies), then runs the protocol
  (``stable_snn.attacks.protocols``; ``strict`` is the headline "robust accuracy (strict)")
  in-process (``--workers 0``) or on ``--workers`` Ray actors that each hold the model (Ray from
  ``--ray-address`` / ``RAY_ADDRESS``, else a local instance), with progress and an ETA per
  finished batch; results do not depend on the number of workers;
* records one metric per row, the worst case, the sanity flags (metrics, ``flag.*`` run tags, in
  the output and the report), the per-sample table (Parquet) and a Markdown report, the eps-curve
  plot for ``eps-curve``; the run ends FINISHED, or FAILED on an error;
* tags the model version with the headline numbers (``eval.<protocol>.<row>`` on the test split,
  ``eval.validation.<protocol>.<row>`` on the validation split, ``robust_accuracy_strict``) and,
  with ``--promote champion`` (validation split only), moves that alias to the version if its
  worst-case accuracy beats the current holder's on the same protocol and data cut.

Exit status (jobs.cli.ExitCode): 0 done; 2 bad input (unknown protocol or split, ``--promote``
on the test split, model URI not in the registry, --limit < 1, missing data), refused before any
attack runs; 3 the MLflow server is unreachable.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from stable_snn.attacks import Protocol, get_protocol
from stable_snn.attacks.protocols import list_protocols

from jobs.cli import job_parser, run_main
from jobs.evaluate import check_split
from jobs.errors import EvaluationInputError
from jobs.tracking.connect import reachable_uri

log = logging.getLogger("stable_snn.evaluate")


def parser() -> argparse.ArgumentParser:
    p = job_parser("jobs.evaluate", __doc__)
    p.add_argument("--model-uri", required=True, help="models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--protocol", required=True, help=f"one of: {', '.join(list_protocols())}")
    p.add_argument("--split", default="test", help="test (default: reports) or validation (the model's own "
                   "run's held-out images: where --promote decides)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a class-balanced subset of N images (default: all)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the --limit subset (default 0)")
    p.add_argument("--dataset-root", default=None,
                   help="data root (default: the model's data.root, $STABLE_SNN_DATA_ROOT or ./data)")
    p.add_argument("--workers", type=int, default=0, help="Ray actors holding the model (0: in-process)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (results depend on it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    p.add_argument("--promote", default=None, metavar="ALIAS",
                   help="move ALIAS (e.g. champion) to this version if its worst case beats the holder's "
                   "(needs --split validation)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the model's run.experiment)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device for --workers 0")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in-process (a Ray actor uses as many as its --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per actor")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="Ray GPUs per actor")
    p.add_argument("--ray-address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else a local instance)")
    return p


def validate_args(args: argparse.Namespace) -> Protocol:
    """Checks that need no service; returns the protocol."""
    try:
        protocol = get_protocol(args.protocol)
    except ValueError as e:
        raise EvaluationInputError(str(e)) from None
    at_least = {"--limit": (args.limit, 1), "--workers": (args.workers, 0), "--batch-size": (args.batch_size, 1),
                "--seed": (args.seed, 0), "--data-seed": (args.data_seed, 0), "--threads": (args.threads, 1)}
    for flag, (value, lo) in at_least.items():
        if value is not None and value < lo:
            raise EvaluationInputError(f"{flag}={value} is invalid: allowed an integer >= {lo}")
    if args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        raise EvaluationInputError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
    if not args.model_uri.startswith("models:/"):
        raise EvaluationInputError(f"--model-uri={args.model_uri!r} must look like models:/<name>@<alias> "
                                   "or models:/<name>/<version>")
    check_split(args.split)
    if args.promote is not None and not protocol.worst_case:
        raise EvaluationInputError(f"--promote needs a protocol with a worst case; {protocol.name!r} has none")
    if args.promote is not None and args.split != "validation":
        raise EvaluationInputError(
            f"--promote {args.promote} is refused on the {args.split} split: choosing among models on test data "
            "is model selection on the test set. Promote on the model's validation split (--split validation "
            "--promote ...), then evaluate on the test split without --promote to report")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise EvaluationInputError("--device cuda: no CUDA device is available")
    return protocol


def evaluate(args: argparse.Namespace) -> int:
    protocol = validate_args(args)
    uri = reachable_uri(None)
    # MLflow, Ray and the attack machinery load only once the input is known to be good.
    from jobs.evaluate.data import load_eval_set
    from jobs.evaluate.record import EvalProgress, open_eval_run, record_result, tag_and_promote
    from jobs.evaluate.workers import run_attacks
    from jobs.tracking.models import load_registered_model
    from jobs.tracking.runs import client_for, close_run, experiment_id

    client = client_for(uri)
    loaded = load_registered_model(args.model_uri, client=client)
    data = load_eval_set(loaded.config, args.split, args.dataset_root, args.limit, args.data_seed)
    exp_id = experiment_id(client, args.experiment or loaded.config.run.experiment)
    run_id = open_eval_run(client, experiment_id=exp_id, tracking_uri=uri, loaded=loaded, protocol=protocol,
                           data=data, args=args)
    log.info("MLflow run %s: evaluating %s (version %s of %s, run %s) with %r on %d %s images of the %s split, "
             "%d worker(s)", run_id, args.model_uri, loaded.version, loaded.name, loaded.run_id, protocol.name,
             len(data.labels), data.dataset, data.split, args.workers)
    status = "FAILED"
    try:
        progress = EvalProgress(client, run_id, protocol.name)
        start = time.perf_counter()
        result = run_attacks(args, protocol, loaded.model, data, progress)
        elapsed = time.perf_counter() - start
        record_result(client, run_id, loaded=loaded, protocol=protocol, result=result, data=data, args=args,
                      elapsed=elapsed, logger=progress.logger)
        tag_and_promote(client, loaded=loaded, result=result, data=data, run_id=run_id, promote=args.promote)
        status = "FINISHED"
    finally:
        close_run(client, run_id, status)
    print(result.to_markdown())
    for name, flag in result.flags.items():
        if flag.raised:
            log.warning("sanity flag %s raised: %s", name, flag.message)
    print(f"MLflow run {run_id}; {len(data.labels)} {data.split} images in {elapsed:.1f} s")
    return 0


def main(argv=None) -> int:
    return run_main(evaluate, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
