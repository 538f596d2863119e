"""Which checkpoint of a run to register, and registering it into the run's own MLflow run."""
from __future__ import annotations

import logging

from ray.train import Checkpoint

from ..config import JobConfig
from ..errors import CheckpointError, NothingToRegisterError
from ..tracking.models import register_model
from ..tracking.runs import experiment_id, find_run, validation_history
from ..training.checkpoints import list_checkpoints, load_checkpoint_at, network_of, verify_checkpoint_at
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
    valid = {}
    for e, path in found.items():
        try:
            verify_checkpoint_at(path)
            valid[e] = path
        except CheckpointError as err:
            if epoch is not None:
                raise
            log.warning("skipping epoch %d: %s", e, err)
    if not valid:
        raise NothingToRegisterError(f"run {name!r}: none of its checkpoints is valid (epochs {', '.join(map(str, found))})")
    return valid


def choose_checkpoint(client, run_id: str, cfg: JobConfig, tracking_uri: str, epoch: int | None) -> tuple[int, str, dict]:
    """``(epoch, path, {val_clean_acc, val_robust_acc})`` of the checkpoint to register: the best valid
    one by validation robust accuracy (ties: clean accuracy, then the later epoch).  A checkpoint whose
    validation never reached MLflow is validated first, and its metrics are logged at its epoch."""
    valid = valid_checkpoints(cfg, epoch)
    scores = validation_history(client, run_id)
    for e, path in valid.items():
        if "val_robust_acc" not in scores.get(e, {}):
            log.info("epoch %d has no validation metrics in MLflow: validating %s", e, path)
            scores[e] = validate_checkpoint(Checkpoint(path), epoch=e, run_id=run_id, tracking_uri=tracking_uri)
    best = max(valid, key=lambda e: (scores[e]["val_robust_acc"], scores[e].get("val_clean_acc", 0.0), e))
    return best, valid[best], {k: scores[best].get(k) for k in ("val_clean_acc", "val_robust_acc")}


def register_run(cfg: JobConfig, client, tracking_uri: str, epoch: int | None = None, alias: str = "candidate"):
    """Register the chosen checkpoint of ``cfg.run.name``; returns ``(ModelVersion, epoch, run_id)``."""
    run = find_run(client, experiment_id(client, cfg.run.experiment), cfg.run.name)
    if run is None:
        raise NothingToRegisterError(f"no MLflow training run named {cfg.run.name!r} in experiment {cfg.run.experiment!r} "
                                     f"at {tracking_uri}")
    run_id, status = run.info.run_id, run.info.status
    best, path, summary = choose_checkpoint(client, run_id, cfg, tracking_uri, epoch)
    state, ckpt_cfg = load_checkpoint_at(path)
    model = network_of(state, ckpt_cfg)
    try:
        version = register_model(client, run_id, model, ckpt_cfg, best, summary, alias)
        client.set_tag(run_id, "registered_epoch", str(best))
        client.set_tag(run_id, "registered_checkpoint", path)
    finally:
        if client.get_run(run_id).info.status != status:
            client.update_run(run_id, status=status)  # logging the model reopened the run: keep its outcome
    return version, best, run_id
