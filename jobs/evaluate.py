"""Evaluate a registered model under a named attack protocol, log the results to MLflow.

    python -m jobs.evaluate --model-uri models:/<name>@<alias> --protocol paper-table1
        [--limit N] [--dataset-root DIR] [--workers K] [--batch-size B] [--seed S] [--promote champion]

* loads the model version from the MLflow registry (tracking URI from ``MLFLOW_TRACKING_URI``)
  and its dataset's test split, or with ``--limit N`` a class-balanced subset of N test images
  drawn with ``--data-seed`` (nested: a smaller N gives a prefix of the same order; the Parquet
  copy is sorted by class, so "the first N" would be one class);
* runs the protocol (``stable_snn.attacks.protocols``) in-process (``--workers 0``) or on
  ``--workers`` Ray actors that each hold the model (Ray from ``--ray-address`` /
  ``RAY_ADDRESS``, else a local instance); results do not depend on the number of workers;
* logs a new MLflow run tagged with the model version: one metric per row, the worst case,
  the check flags, the per-sample table (Parquet, one row per sample and attack) and a
  Markdown report, the eps-curve plot for ``eps-curve``;
* tags the model version with the headline numbers (``eval.<protocol>.<row>``) and, with
  ``--promote champion``, moves that alias to the version if its worst-case accuracy beats
  the current holder's on the same protocol and data.

Bad input (unknown protocol, model URI not in the registry, --limit < 1, missing data) fails
with a message before any attack runs.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stable_snn.attacks import WORST_CASE, ProgressEvent, Protocol, ProtocolResult, evaluate_protocol, get_protocol
from stable_snn.attacks.protocols import list_protocols

from .logs import setup_logging

log = logging.getLogger("stable_snn.evaluate")

JOB = "evaluate"


class EvaluationInputError(ValueError):
    """Bad command-line input or a missing model / dataset; reported before any compute."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", required=True, help="models:/<name>@<alias> or models:/<name>/<version>")
    p.add_argument("--protocol", required=True, help=f"one of: {', '.join(list_protocols())}")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate a class-balanced subset of N test images (default: all)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the --limit subset (default 0)")
    p.add_argument("--dataset-root", default=None,
                   help="data root (default: the model's data.root, $STABLE_SNN_DATA_ROOT or ./data)")
    p.add_argument("--workers", type=int, default=0, help="Ray actors holding the model (0: in-process)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (results depend on it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    p.add_argument("--promote", default=None, metavar="ALIAS",
                   help="move ALIAS (e.g. champion) to this version if its worst case beats the holder's")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the model's run.experiment)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device for --workers 0")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in-process / per worker")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per actor")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="Ray GPUs per actor")
    p.add_argument("--ray-address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else a local instance)")
    return p.parse_args(argv)


def validate_args(args: argparse.Namespace) -> Protocol:
    """Checks that need no service; returns the protocol."""
    try:
        protocol = get_protocol(args.protocol)
    except ValueError as e:
        raise EvaluationInputError(str(e)) from None
    if args.limit is not None and args.limit < 1:
        raise EvaluationInputError(f"--limit={args.limit} is invalid: allowed an integer >= 1")
    if args.workers < 0:
        raise EvaluationInputError(f"--workers={args.workers} is invalid: allowed an integer >= 0")
    if args.batch_size < 1:
        raise EvaluationInputError(f"--batch-size={args.batch_size} is invalid: allowed an integer >= 1")
    if args.seed < 0:
        raise EvaluationInputError(f"--seed={args.seed} is invalid: allowed an integer >= 0")
    if args.data_seed < 0:
        raise EvaluationInputError(f"--data-seed={args.data_seed} is invalid: allowed an integer >= 0")
    if args.threads is not None and args.threads < 1:
        raise EvaluationInputError(f"--threads={args.threads} is invalid: allowed an integer >= 1")
    if args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        raise EvaluationInputError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
    if not args.model_uri.startswith("models:/"):
        raise EvaluationInputError(f"--model-uri={args.model_uri!r} must look like models:/<name>@<alias> "
                                   "or models:/<name>/<version>")
    if args.promote is not None and not protocol.worst_case:
        raise EvaluationInputError(f"--promote needs a protocol with a worst case; {protocol.name!r} has none")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise EvaluationInputError("--device cuda: no CUDA device is available")
    return protocol


@dataclass
class TestSet:
    images: torch.Tensor  # [N, 3, 32, 32] float in [0, 1]
    labels: torch.Tensor  # [N] int64
    indices: torch.Tensor  # [N] positions in the test split
    dataset: str
    root: str
    key: str  # what "the same data" means when comparing model versions


def load_test_set(cfg, dataset_root: str | None, limit: int | None, data_seed: int = 0) -> TestSet:
    import numpy as np

    from stable_snn.data import DatasetNotFoundError, load_arrays
    from stable_snn.data.splits import subset_indices

    from .eval_report import data_key

    dataset = cfg.data.dataset
    root = Path(dataset_root).expanduser().resolve() if dataset_root else cfg.data.resolved_root()
    try:
        arrays = load_arrays(dataset, root, "test", format=cfg.data.format if not dataset_root else "auto",
                             download=cfg.data.download)
    except (DatasetNotFoundError, ValueError) as e:
        raise EvaluationInputError(str(e)) from None
    total = len(arrays.labels)
    size = None if limit is None or limit >= total else limit
    idx = subset_indices(arrays.labels, size, np.random.default_rng(data_seed))
    images = torch.from_numpy(arrays.images[idx]).permute(0, 3, 1, 2).float().div_(255)
    labels = torch.from_numpy(arrays.labels[idx]).long()
    return TestSet(images, labels, torch.from_numpy(idx).long(), dataset, str(root),
                   data_key(dataset, size, data_seed))


def progress_logger(protocol: str):
    def report(e: ProgressEvent) -> None:
        log.info("[%s] %-18s batch %d/%d (%d done): running accuracy %6.2f%% (%.2f s)", protocol, e.row,
                 e.batches_done, e.num_batches, e.samples, 100 * e.running_accuracy, e.seconds)
    return report


def run_attacks(args, protocol: Protocol, model, test: TestSet) -> ProtocolResult:
    report = progress_logger(protocol.name)
    if args.workers == 0:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        model = model.to(device).eval()
        return evaluate_protocol(model, test.images, test.labels, protocol, batch_size=args.batch_size,
                                 generator_seed=args.seed, progress=report)
    import ray

    from .eval_workers import evaluate_distributed

    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=args.ray_address, log_to_driver=True)
        started = True
    try:
        return evaluate_distributed(model, test.images, test.labels, protocol, batch_size=args.batch_size,
                                    generator_seed=args.seed, workers=args.workers, progress=report,
                                    cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker)
    finally:
        if started:
            ray.shutdown()


def log_run(client, *, experiment_id: str, loaded, protocol: Protocol, result: ProtocolResult, test: TestSet,
            args, elapsed: float) -> str:
    """A new MLflow run with the metrics, the per-sample table, the report and the eps curve; returns its id."""
    from .eval_report import (
        EPS_CURVE_PNG, RESULTS_MARKDOWN, RESULTS_PARQUET, metrics_of, plot_eps_curve, results_markdown,
        write_results_parquet,
    )
    from .tracking import JOB_KIND_TAG, RUN_NAME_TAG, RunLogger

    run_name = f"eval-{protocol.name}-{loaded.name}-v{loaded.version}"
    tags = {
        JOB_KIND_TAG: JOB, RUN_NAME_TAG: run_name,
        "model_name": loaded.name, "model_version": str(loaded.version), "source_run_id": loaded.run_id or "",
        "model_uri": args.model_uri, "protocol": protocol.name, "dataset": test.dataset,
        "limit": str(len(test.labels)), "data": test.key, "seed": str(args.seed),
        "batch_size": str(args.batch_size),
    }
    run = client.create_run(experiment_id, tags=tags, run_name=run_name)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        for k, v in {"protocol": protocol.name, "limit": len(test.labels), "batch_size": args.batch_size,
                     "seed": args.seed, "data_seed": args.data_seed, "workers": args.workers,
                     "dataset": test.dataset}.items():
            client.log_param(run_id, k, v)
        metrics = metrics_of(result)
        metrics["seconds_total"] = elapsed
        logger = RunLogger(client, run_id)
        if not logger.log(metrics, step=0) and not logger.flush(deadline_s=60):
            raise RuntimeError(f"could not log {len(logger.pending)} metrics to MLflow run {run_id}")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_results_parquet(result, tmp / RESULTS_PARQUET, test.indices)
            header = {"model": f"models:/{loaded.name}/{loaded.version}", "source run": loaded.run_id,
                      "protocol": protocol.name, "data": f"{test.key} ({len(test.labels)} images)",
                      "seed": str(args.seed), "batch size": str(args.batch_size)}
            (tmp / RESULTS_MARKDOWN).write_text(results_markdown(result, header))
            if protocol.name == "eps-curve":
                plot_eps_curve(result, tmp / EPS_CURVE_PNG, f"{loaded.name} v{loaded.version}, {test.dataset}")
            for f in sorted(tmp.iterdir()):
                client.log_artifact(run_id, str(f))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def tag_and_promote(client, *, loaded, result: ProtocolResult, test: TestSet, run_id: str, promote: str | None) -> None:
    from .eval_report import decide_promotion, version_tags

    for k, v in version_tags(result, data=test.key, run_id=run_id).items():
        client.set_model_version_tag(loaded.name, loaded.version, k, v)
    if promote is None:
        return
    from mlflow.exceptions import MlflowException

    try:
        holder = client.get_model_version_by_alias(loaded.name, promote)
    except MlflowException:
        holder = None
    decision = decide_promotion(
        protocol=result.protocol, data=test.key, candidate_version=str(loaded.version),
        candidate_score=result.accuracies[WORST_CASE],
        champion_version=None if holder is None else str(holder.version),
        champion_tags=None if holder is None else dict(holder.tags),
    )
    if decision.promote:
        client.set_registered_model_alias(loaded.name, promote, loaded.version)
        log.info("alias %r -> %s version %s: %s", promote, loaded.name, loaded.version, decision.reason)
    else:
        log.info("alias %r not moved: %s", promote, decision.reason)
    client.set_tag(run_id, f"promote.{promote}", f"{'moved' if decision.promote else 'kept'}: {decision.reason}")


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        protocol = validate_args(args)
        from mlflow import MlflowClient

        from .registry import ModelNotFoundError, load_registered_model, resolve_model_version
        from .tracking import (
            TrackingUnavailableError, check_reachable, configure_client_retries, experiment_id, resolve_tracking_uri,
        )

        configure_client_retries()
        uri = resolve_tracking_uri(None)
        try:
            check_reachable(uri)
        except TrackingUnavailableError as e:
            raise EvaluationInputError(str(e)) from None
        client = MlflowClient(uri)
        try:
            resolve_model_version(client, args.model_uri)
            loaded = load_registered_model(args.model_uri, client=client)
        except ModelNotFoundError as e:
            raise EvaluationInputError(str(e)) from None
        test = load_test_set(loaded.config, args.dataset_root, args.limit, args.data_seed)
        exp_id = experiment_id(client, args.experiment or loaded.config.run.experiment)
    except EvaluationInputError as e:
        print(f"jobs.evaluate: error: {e}", file=sys.stderr)
        return 2
    log.info("evaluating %s (version %s of %s, run %s) with %r on %d %s test images, %d worker(s)",
             args.model_uri, loaded.version, loaded.name, loaded.run_id, protocol.name, len(test.labels),
             test.dataset, args.workers)
    start = time.perf_counter()
    result = run_attacks(args, protocol, loaded.model, test)
    elapsed = time.perf_counter() - start
    run_id = log_run(client, experiment_id=exp_id, loaded=loaded, protocol=protocol, result=result, test=test,
                     args=args, elapsed=elapsed)
    tag_and_promote(client, loaded=loaded, result=result, test=test, run_id=run_id, promote=args.promote)
    print(result.to_markdown())
    for name, flag in result.flags.items():
        if flag.raised:
            log.warning("check %s raised: %s", name, flag.message)
    print(f"MLflow run {run_id}; {len(test.labels)} images in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
