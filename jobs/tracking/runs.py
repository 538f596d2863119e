"""Finding, opening, resuming and closing the MLflow runs of the jobs.

A run is found by two tags: the job's run name (``stable_snn.run_name``, the storage folder's
name) and the job kind (``stable_snn.job``: train, tune, evaluate).  Relaunching a training job
with the same ``run.name`` reopens its unfinished run instead of creating a new one.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from stable_snn.config import ConfigError, dump_config

from ..config import JobConfig
from .connect import configure_client_retries
from .datasets import dataset_inputs
from .views import add_views

log = logging.getLogger(__name__)

RUN_NAME_TAG = "stable_snn.run_name"
JOB_KIND_TAG = "stable_snn.job"
PARAMS_PER_BATCH = 90  # below MLflow's limit of 100 params per log_batch
# The experiment's kind as MLflow's UI records it ("custom model development": runs, metrics, charts,
# not GenAI traces). MLflow 3.17's UI picks its view from its own switch or a link's workflowType
# instead (jobs.tracking.views); the tag states the kind for readers of the API and other UI versions.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def client_for(uri: str) -> MlflowClient:
    """A client of ``uri`` with bounded retries (also made the default of MLflow's fluent API)."""
    configure_client_retries()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name`` (created if absent), with its kind and the saved views of its runs
    table (``jobs.tracking.views``); a kind or view already there is left as it is."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp = client.get_experiment(client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
        except MlflowException as e:  # another job created it since we looked: use theirs
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise e
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    add_views(client, exp.experiment_id, exp.tags)
    return exp.experiment_id


def find_run(client, exp_id: str, run_name: str, job: str = "train"):
    """The most recent MLflow run of this job kind tagged with ``run_name``, or None."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}' and tags.`{JOB_KIND_TAG}` = '{job}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def create_run(client, exp_id: str, name: str, job: str, tags: dict[str, str] | None = None) -> str:
    """A new run of ``job`` named ``name``; returns its id."""
    tags = {RUN_NAME_TAG: name, JOB_KIND_TAG: job, "mlflow.runName": name, **(tags or {})}
    return client.create_run(exp_id, run_name=name, tags=tags).info.run_id


def log_params(client, run_id: str, params: dict) -> None:
    batch = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(batch), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=batch[i : i + PARAMS_PER_BATCH])


def git_commit() -> str | None:
    if os.environ.get("STABLE_SNN_GIT_COMMIT"):
        return os.environ["STABLE_SNN_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def open_training_run(client, cfg: JobConfig, parent_run_id: str | None = None,
                      extra_tags: dict[str, str] | None = None) -> str:
    """Reuse the unfinished MLflow run of ``run.name`` (resume) or create one with the resolved
    config as params and ``config.yaml``, and the data it reads as dataset inputs; returns its id."""
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
        return existing.info.run_id
    tags = dict(extra_tags or {})
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    run_id = create_run(client, exp, cfg.run.name, "train", tags)
    log_params(client, run_id, {**cfg.flat(), **cfg.derived_params()})
    client.log_inputs(run_id, datasets=dataset_inputs(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(dump_config(cfg))
        client.log_artifact(run_id, str(path))
    return run_id


def close_run(client, run_id: str, status: str) -> None:
    """End a run with ``status``; when the server does not answer the run stays RUNNING (a relaunch resumes it)."""
    try:
        client.set_terminated(run_id, status=status)
    except Exception as e:  # the server's errors take many shapes; closing must not hide the job's outcome
        log.warning("could not close MLflow run %s: %s", run_id, e)


def validation_history(client, run_id: str) -> dict[int, dict[str, float]]:
    """``{epoch: {val_clean_acc, val_robust_acc and their standard errors}}`` as logged in the run."""
    out: dict[int, dict[str, float]] = {}
    for key in ("val_clean_acc", "val_robust_acc", "val_clean_acc_se", "val_robust_acc_se"):
        for m in client.get_metric_history(run_id, key):
            out.setdefault(int(m.step), {})[key] = m.value
    return out
