"""One trial of a search: one training run (``jobs.training``) with its own Ray Train workers,
reporting per-epoch validation to Tune, logged as a child of the search's MLflow run."""
from __future__ import annotations

import json
import logging
from typing import Any

from mlflow import MlflowClient
from ray import tune

from stable_snn.config import apply_overrides

from ..config import JobConfig, job_config_from_dict
from ..logs import setup_logging
from ..tracking.connect import configure_client_retries
from ..tracking.runs import experiment_id, find_run
from ..training.driver import run_training
from .score import ScoreReportCallback, with_score
from .space import SEED_KEY, SearchSpace

log = logging.getLogger("stable_snn.tune")

SEARCH_TAG, TRIAL_TAG = "stable_snn.search", "stable_snn.trial_id"
POINT_TAG = "stable_snn.point"  # the trial's searched values without the seed (JSON): its group in the report
TRIAL_KEY = "trial"  # Tune's config key holding a grid or random trial's values


def trial_values(config: dict) -> dict[str, Any]:
    """The config-field values of a trial from Tune's config (a whole trial, or TPE's draws)."""
    return dict(config[TRIAL_KEY]) if TRIAL_KEY in config else dict(config)


def trial_config(space: SearchSpace, base: JobConfig, values: dict[str, Any], search: str, trial_id: str) -> JobConfig:
    """The training config of one trial: the base, the space's fixed fields and the drawn values
    (through :meth:`SearchSpace.overrides`, the one override builder), and a run name (its storage
    folder and MLflow run) made from the search and the trial."""
    return apply_overrides(base, [*space.overrides(values), f"run.name={search}-{trial_id}"])


def point_tag(values: dict[str, Any]) -> str:
    """The searched values of a trial without its seed, as the JSON the report groups by."""
    return json.dumps({k: v for k, v in values.items() if k != SEED_KEY}, sort_keys=True)


def trial(config: dict, base: dict, space: SearchSpace, search: str, parent_run_id: str, tracking_uri: str) -> None:
    """Tune's trainable: a full Ray Train run, reporting per-epoch validation to Tune."""
    setup_logging()
    configure_client_retries()
    trial_id = tune.get_context().get_trial_id()
    values = trial_values(config)
    cfg = trial_config(space, job_config_from_dict(base), values, search, trial_id)
    client = MlflowClient(tracking_uri)
    done = find_run(client, experiment_id(client, cfg.run.experiment), cfg.run.name)
    if done is not None and done.info.status == "FINISHED":
        # The search was interrupted after this trial finished but before Tune saved that:
        # report the finished run's results instead of training again.
        log.info("trial %s already finished (MLflow run %s); reporting its results", trial_id, done.info.run_id)
        tune.report(with_score(space, {k: done.data.metrics[k] for k in ("val_robust_acc", "val_clean_acc")
                                       if k in done.data.metrics}))
        return
    run_training(cfg, client, tracking_uri, register=False, parent_run_id=parent_run_id,
                 callbacks=[ScoreReportCallback(space)], inline_validation=True,
                 extra_tags={SEARCH_TAG: search, TRIAL_TAG: trial_id, POINT_TAG: point_tag(values)})
