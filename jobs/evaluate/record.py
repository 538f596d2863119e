"""What an evaluation records: a new MLflow run linked to the model version, the version's headline
tags, and the champion alias moved when the version's worst case beats the holder's."""
from __future__ import annotations

import logging
import tempfile
from argparse import Namespace
from pathlib import Path

from mlflow.exceptions import MlflowException

from stable_snn.attacks import WORST_CASE, Protocol, ProtocolResult

from ..tracking.models import LoadedModel
from ..tracking.outbox import RunLogger
from ..tracking.runs import JOB_KIND_TAG, RUN_NAME_TAG, log_params
from .data import TestSet
from .report import (
    EPS_CURVE_PNG, RESULTS_MARKDOWN, RESULTS_PARQUET, decide_promotion, metrics_of, plot_eps_curve, results_markdown,
    version_tags, write_results_parquet,
)

log = logging.getLogger("stable_snn.evaluate")

JOB = "evaluate"


def log_run(client, *, experiment_id: str, loaded: LoadedModel, protocol: Protocol, result: ProtocolResult,
            test: TestSet, args: Namespace, elapsed: float) -> str:
    """A new MLflow run with the metrics, the per-sample table, the report and the eps curve; returns its id."""
    run_name = f"eval-{protocol.name}-{loaded.name}-v{loaded.version}"
    tags = {
        JOB_KIND_TAG: JOB, RUN_NAME_TAG: run_name,
        "model_name": loaded.name, "model_version": str(loaded.version), "source_run_id": loaded.run_id or "",
        "model_uri": args.model_uri, "protocol": protocol.name, "dataset": test.dataset,
        "limit": str(len(test.labels)), "data": test.key, "seed": str(args.seed),
        "batch_size": str(args.batch_size),
    }
    run_id = client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
    status = "FAILED"
    try:
        log_params(client, run_id, {"protocol": protocol.name, "limit": len(test.labels), "batch_size": args.batch_size,
                                    "seed": args.seed, "data_seed": args.data_seed, "workers": args.workers,
                                    "dataset": test.dataset})
        metrics = metrics_of(result) | {"seconds_total": elapsed}
        logger = RunLogger(client, run_id)
        if not logger.log(metrics, step=0) and not logger.flush(deadline_s=60):
            raise RuntimeError(f"could not log {len(logger.pending)} metrics to MLflow run {run_id}")
        with tempfile.TemporaryDirectory() as tmp:
            _write_artifacts(Path(tmp), loaded, protocol, result, test, args)
            for f in sorted(Path(tmp).iterdir()):
                client.log_artifact(run_id, str(f))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def _write_artifacts(folder: Path, loaded: LoadedModel, protocol: Protocol, result: ProtocolResult, test: TestSet,
                     args: Namespace) -> None:
    write_results_parquet(result, folder / RESULTS_PARQUET, test.indices)
    header = {"model": f"models:/{loaded.name}/{loaded.version}", "source run": loaded.run_id,
              "protocol": protocol.name, "data": f"{test.key} ({len(test.labels)} images)",
              "seed": str(args.seed), "batch size": str(args.batch_size)}
    (folder / RESULTS_MARKDOWN).write_text(results_markdown(result, header))
    if protocol.name == "eps-curve":
        plot_eps_curve(result, folder / EPS_CURVE_PNG, f"{loaded.name} v{loaded.version}, {test.dataset}")


def tag_and_promote(client, *, loaded: LoadedModel, result: ProtocolResult, test: TestSet, run_id: str,
                    promote: str | None) -> None:
    """Tag the version with the headline numbers; with ``promote``, move that alias if the worst case beats the holder's."""
    for k, v in version_tags(result, data=test.key, run_id=run_id).items():
        client.set_model_version_tag(loaded.name, loaded.version, k, v)
    if promote is None:
        return
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
