"""What an evaluation records in MLflow.

* :func:`open_eval_run`: the run, opened when the evaluation starts (so its duration is the
  evaluation's), tagged with the model version, the split, and a link to the source training run
  (its id, its UI path and a note), with the source run's parameters copied beside the evaluation's
  own, so the compare view puts robust accuracy beside rho, chi and beta;
* :class:`EvalProgress`: progress while the attacks run (log lines with an ETA, progress metrics
  and a ``status`` tag per finished batch);
* :func:`record_result`: metrics, flags (metrics and tags), the per-sample table, the Markdown
  report and the eps curve;
* :func:`tag_and_promote`: the version's headline tags and, on the validation split, the alias.
"""
from __future__ import annotations

import logging
import tempfile
import time
from argparse import Namespace
from pathlib import Path

from mlflow.exceptions import MlflowException

from stable_snn.attacks import WORST_CASE, ProgressEvent, Protocol, ProtocolResult

from ..tracking.models import LoadedModel
from ..tracking.outbox import RunLogger
from ..tracking.runs import create_run, log_params
from .data import EvalSet
from .report import (
    EPS_CURVE_PNG, RESULTS_MARKDOWN, RESULTS_PARQUET, decide_promotion, flag_tags, metrics_of, plot_eps_curve,
    results_markdown, version_tags, write_results_parquet,
)

log = logging.getLogger("stable_snn.evaluate")

JOB = "evaluate"


def _source_run(client, run_id: str | None):
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        log.warning("source run %s of the model version is not readable (%s): no parameters copied", run_id, e)
        return None


def own_params(args: Namespace, protocol: Protocol, data: EvalSet, loaded: LoadedModel) -> dict:
    return {"protocol": protocol.name, "split": data.split, "limit": len(data.labels), "batch_size": args.batch_size,
            "seed": args.seed, "data_seed": args.data_seed, "workers": args.workers, "dataset": data.dataset,
            "model_uri": args.model_uri, "model_version": loaded.version}


def open_eval_run(client, *, experiment_id: str, tracking_uri: str, loaded: LoadedModel, protocol: Protocol,
                  data: EvalSet, args: Namespace) -> str:
    """Create the evaluation run (RUNNING) with its tags and parameters; returns its id."""
    source = _source_run(client, loaded.run_id)
    run_name = f"eval-{protocol.name}-{data.split}-{loaded.name}-v{loaded.version}"
    tags = {
        "model_name": loaded.name, "model_version": str(loaded.version), "source_run_id": loaded.run_id or "",
        "model_uri": args.model_uri, "protocol": protocol.name, "split": data.split, "dataset": data.dataset,
        "limit": str(len(data.labels)), "data": data.key, "seed": str(args.seed), "batch_size": str(args.batch_size),
        "status": "started",
    }
    if source is not None:
        path = f"#/experiments/{source.info.experiment_id}/runs/{source.info.run_id}"
        url = f"{tracking_uri.rstrip('/')}/{path}" if tracking_uri.startswith("http") else path
        tags |= {"source_run": path, "source_run_url": url, "mlflow.note.content": (
            f"Evaluation of [{loaded.name} version {loaded.version}]({url}) (training run "
            f"`{source.info.run_name}`) with protocol `{protocol.name}` on the {data.split} split.")}
    run_id = create_run(client, experiment_id, run_name, JOB, tags)
    try:
        own = own_params(args, protocol, data, loaded)
        copied = {k: v for k, v in (source.data.params.items() if source else ()) if k not in own}
        log_params(client, run_id, copied | own)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


class EvalProgress:
    """Progress of the attacks: a log line per finished row and batch (running accuracy, ETA), and per
    finished batch the progress metrics, the running accuracies and a ``status`` tag in the run."""

    def __init__(self, client, run_id: str, protocol: str) -> None:
        self.client, self.run_id, self.protocol = client, run_id, protocol
        self.logger = RunLogger(client, run_id)
        self.start = time.perf_counter()
        self.complete = 0
        self.running: dict[str, float] = {}

    def __call__(self, e: ProgressEvent) -> None:
        log.info("[%s] %-22s batch %d/%d (%d done): running accuracy %6.2f%% (%.2f s)", self.protocol, e.row,
                 e.batches_done, e.num_batches, e.samples, 100 * e.running_accuracy, e.seconds)
        self.running[e.row] = e.running_accuracy
        if e.batches_complete > self.complete:
            self.complete = e.batches_complete
            self.batch_complete(e.num_batches)

    def batch_complete(self, num_batches: int) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.complete * (num_batches - self.complete)
        log.info("[%s] %d/%d batches done in %.0f s, ETA %.0f s", self.protocol, self.complete, num_batches, elapsed, eta)
        metrics = {"progress/batches_done": self.complete, "progress/fraction": self.complete / num_batches,
                   "progress/eta_s": eta} | {f"running/{row}": acc for row, acc in self.running.items()}
        self.logger.log(metrics, step=self.complete)
        try:
            self.client.set_tag(self.run_id, "status", f"attacking: {self.complete}/{num_batches} batches, "
                                                       f"ETA {eta:.0f} s")
        except Exception as e:  # progress must never stop an evaluation; the final record fails loudly instead
            log.warning("could not set the status of MLflow run %s: %s", self.run_id, e)


def record_result(client, run_id: str, *, loaded: LoadedModel, protocol: Protocol, result: ProtocolResult,
                  data: EvalSet, args: Namespace, elapsed: float, logger: RunLogger) -> None:
    """The metrics, flags, per-sample table, report and eps curve of a finished evaluation."""
    metrics = metrics_of(result) | {"seconds_total": elapsed}
    if not logger.log(metrics, step=0) and not logger.flush(deadline_s=60):
        raise RuntimeError(f"could not log {len(logger.pending)} metrics to MLflow run {run_id}")
    for key, value in flag_tags(result).items():
        client.set_tag(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        _write_artifacts(Path(tmp), loaded, protocol, result, data, args)
        for f in sorted(Path(tmp).iterdir()):
            client.log_artifact(run_id, str(f))
    client.set_tag(run_id, "status", f"finished in {elapsed:.0f} s")


def _write_artifacts(folder: Path, loaded: LoadedModel, protocol: Protocol, result: ProtocolResult, data: EvalSet,
                     args: Namespace) -> None:
    write_results_parquet(result, folder / RESULTS_PARQUET, data.indices)
    header = {"model": f"models:/{loaded.name}/{loaded.version}", "source run": loaded.run_id,
              "protocol": protocol.name, "split": data.split, "data": f"{data.key} ({len(data.labels)} images)",
              "seed": str(args.seed), "batch size": str(args.batch_size)}
    (folder / RESULTS_MARKDOWN).write_text(results_markdown(result, header))
    if protocol.name == "eps-curve":
        plot_eps_curve(result, folder / EPS_CURVE_PNG, f"{loaded.name} v{loaded.version}, {data.dataset}")


def tag_and_promote(client, *, loaded: LoadedModel, result: ProtocolResult, data: EvalSet, run_id: str,
                    promote: str | None) -> None:
    """Tag the version with the headline numbers; with ``promote`` (validation split only, checked before any
    attack), move that alias if the worst case beats the holder's."""
    for k, v in version_tags(result, data=data.key, run_id=run_id, split=data.split).items():
        client.set_model_version_tag(loaded.name, loaded.version, k, v)
    if promote is None:
        return
    if data.split != "validation":  # refused by the job's argument checks already; never decide on test data
        raise ValueError(f"promotion decides on the validation split only, not on {data.split!r}")
    try:
        holder = client.get_model_version_by_alias(loaded.name, promote)
    except MlflowException:
        holder = None
    decision = decide_promotion(
        protocol=result.protocol, data=data.key, candidate_version=str(loaded.version),
        candidate_score=result.accuracies[WORST_CASE], split=data.split,
        champion_version=None if holder is None else str(holder.version),
        champion_tags=None if holder is None else dict(holder.tags),
    )
    if decision.promote:
        client.set_registered_model_alias(loaded.name, promote, loaded.version)
        log.info("alias %r -> %s version %s: %s", promote, loaded.name, loaded.version, decision.reason)
    else:
        log.info("alias %r not moved: %s", promote, decision.reason)
    client.set_tag(run_id, f"promote.{promote}", f"{'moved' if decision.promote else 'kept'}: {decision.reason}")
