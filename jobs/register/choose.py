"""Which checkpoint of a run to register, and registering it into the run's own MLflow run."""
from __future__ import annotations

import logging

from ray.train import Checkpoint

from ..config import JobConfig
from ..errors import NothingToRegisterError
from ..tracking.models import register_model
from ..tracking.runs import experiment_id, find_run, validation_history
from ..training.checkpoints import intact_checkpoints, list_checkpoints, load_checkpoint_at, network_of
from ..training.selection import Selection, record_selection, tag_version, validation_size
from ..training.validation import validate_checkpoint

log = logging.getLogger("stable_snn.register")


def valid_checkpoints(cfg: JobConfig, epoch: int | None) -> dict[int, str]:
    """``{epoch: path}`` of the run's checkpoints whose checksums hold (only ``epoch`` when given:
    then a damaged one is refused instead of skipped)."""
    storage, name = cfg.run.resolved_storage(), cfg.run.name
    found = list_checkpoints(storage, name)
    if not found:
        raise NothingToRegisterError(f"run {name!r} has no checkpoint_epoch_* folder in {storage}")
    if epoch is not None:
        if epoch not in found:
            raise NothingToRegisterError(f"run {name!r} has no checkpoint of epoch {epoch}; it has epochs "
                                         f"{', '.join(map(str, found))}")
        found = {epoch: found[epoch]}
    valid, damaged = intact_checkpoints(found)
    for e, err in damaged.items():
        if epoch is not None:
            raise err
        log.warning("skipping epoch %d: %s", e, err)
    if not valid:
        raise NothingToRegisterError(f"run {name!r}: none of its checkpoints is valid (epochs {', '.join(map(str, found))})")
    return valid


def choose_checkpoint(client, run_id: str, cfg: JobConfig, tracking_uri: str,
                      epoch: int | None) -> tuple[Selection, str, dict]:
    """``(selection, path, its validation metrics)`` of the checkpoint to register: the one the
    selection rule (:mod:`jobs.training.selection`) picks among the valid ones, or the one named by
    ``epoch``.  A checkpoint whose validation never reached MLflow is validated first, and its
    metrics are logged at its epoch.  The run is tagged with the selection."""
    valid = valid_checkpoints(cfg, epoch)
    scores = validation_history(client, run_id)
    for e, path in valid.items():
        if "val_robust_acc" not in scores.get(e, {}):
            log.info("epoch %d has no validation metrics in MLflow: validating %s", e, path)
            scores[e] = validate_checkpoint(Checkpoint(path), epoch=e, run_id=run_id, tracking_uri=tracking_uri)
    return record_selection(client, run_id, valid, scores, validation_size(cfg), named=epoch is not None)


def register_run(cfg: JobConfig, client, tracking_uri: str, epoch: int | None = None, alias: str = "candidate"):
    """Register the chosen checkpoint of ``cfg.run.name``; returns ``(ModelVersion, epoch, run_id)``."""
    run = find_run(client, experiment_id(client, cfg.run.experiment), cfg.run.name)
    if run is None:
        raise NothingToRegisterError(f"no MLflow training run named {cfg.run.name!r} in experiment {cfg.run.experiment!r} "
                                     f"at {tracking_uri}")
    run_id = run.info.run_id
    selection, path, summary = choose_checkpoint(client, run_id, cfg, tracking_uri, epoch)
    best = selection.epoch
    state, ckpt_cfg = load_checkpoint_at(path)
    model = network_of(state, ckpt_cfg)
    version = register_model(client, run_id, model, ckpt_cfg, best, summary, alias)  # keeps the run's status
    tag_version(client, version, selection)
    client.set_tag(run_id, "registered_epoch", str(best))
    client.set_tag(run_id, "registered_checkpoint", path)
    return version, best, run_id
