"""One trial of a search: one training run (``jobs.training``) with its own Ray Train workers,
reporting per-epoch validation to Tune, logged as a child of the search's MLflow run."""
from __future__ import annotations

import logging
from typing import Any

from mlflow import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from stable_snn.config import apply_overrides

from ..config import JobConfig, job_config_from_dict
from ..logs import setup_logging
from ..tracking.connect import configure_client_retries
from ..tracking.runs import experiment_id, find_run
from ..training.driver import run_training
from .space import SearchSpace

log = logging.getLogger("stable_snn.tune")

SEARCH_TAG, TRIAL_TAG = "stable_snn.search", "stable_snn.trial_id"


def trial_config(space: SearchSpace, base: JobConfig, values: dict[str, Any], search: str, trial_id: str) -> JobConfig:
    """The training config of one trial: the base, the space's fixed fields and the drawn values,
    and a run name (its storage folder and MLflow run) made from the search and the trial."""
    return apply_overrides(base, [*space.overrides(values), f"run.name={search}-{trial_id}"])


def trial(values: dict, base: dict, space: SearchSpace, search: str, parent_run_id: str, tracking_uri: str) -> None:
    """Tune's trainable: a full Ray Train run, reporting per-epoch validation to Tune."""
    setup_logging()
    configure_client_retries()
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(space, job_config_from_dict(base), values, search, trial_id)
    client = MlflowClient(tracking_uri)
    done = find_run(client, experiment_id(client, cfg.run.experiment), cfg.run.name)
    if done is not None and done.info.status == "FINISHED":
        # The search was interrupted after this trial finished but before Tune saved that:
        # report the finished run's results instead of training again.
        log.info("trial %s already finished (MLflow run %s); reporting its results", trial_id, done.info.run_id)
        tune.report({k: done.data.metrics[k] for k in ("val_robust_acc", "val_clean_acc") if k in done.data.metrics})
        return
    run_training(cfg, client, tracking_uri, register=False, parent_run_id=parent_run_id,
                 callbacks=[TuneReportCallback()], inline_validation=True,
                 extra_tags={SEARCH_TAG: search, TRIAL_TAG: trial_id})
