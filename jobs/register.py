"""Register a checkpoint of a training run that did not register one itself (it stopped on a
non-finite loss, or ran with ``--no-register``), into that run's MLflow run.

    python -m jobs.register --config jobs/configs/quick.yaml --set run.name=<name> [--epoch N] [--alias candidate]

The run's checkpoints are read from its storage folder (``run.storage_path`` /
``$STABLE_SNN_STORAGE_PATH``); each one's checksums are verified and a truncated or tampered
one is skipped (or, named with ``--epoch``, refused).  Without ``--epoch`` the valid checkpoint
with the best validation robust accuracy logged in the run is chosen (ties: clean accuracy,
then the later epoch); a checkpoint whose validation never reached MLflow is validated first,
and its metrics are logged at its epoch.  Registering twice is harmless: the version already
registered from the same run and epoch is reused.

Exit status: 0 registered; 2 nothing to register (no run, no valid checkpoint, bad input);
3 the MLflow server is unreachable.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stable_snn.config import ConfigError, TrainConfig, load_config

from .logs import setup_logging

log = logging.getLogger("stable_snn.register")


class NothingToRegisterError(LookupError):
    """The run has no MLflow run or no valid checkpoint to register."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.register", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the run's preset, e.g. jobs/configs/quick.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field; run.name names the run (repeatable)")
    p.add_argument("--epoch", type=int, default=None, help="register this epoch's checkpoint (default: the best valid one)")
    p.add_argument("--alias", default="candidate", help="alias given to the registered version (default: candidate)")
    return p.parse_args(argv)


def choose_checkpoint(client, run_id: str, cfg: TrainConfig, tracking_uri: str, epoch: int | None) -> tuple[int, str, dict]:
    """``(epoch, path, {val_clean_acc, val_robust_acc})`` of the checkpoint to register."""
    from .checkpointing import CheckpointError, list_checkpoints, verify_checkpoint_at
    from .train import validation_history

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
    scores = validation_history(client, run_id)
    for e, path in valid.items():
        if "val_robust_acc" not in scores.get(e, {}):
            scores[e] = _validate(path, e, run_id, tracking_uri)
    best = max(valid, key=lambda e: (scores[e]["val_robust_acc"], scores[e].get("val_clean_acc", 0.0), e))
    return best, valid[best], {k: scores[best].get(k) for k in ("val_clean_acc", "val_robust_acc")}


def _validate(path: str, epoch: int, run_id: str, tracking_uri: str) -> dict[str, float]:
    """Validate a checkpoint whose validation never reached MLflow, and log it at its epoch."""
    from ray.train import Checkpoint

    from .validation import validate_checkpoint

    log.info("epoch %d has no validation metrics in MLflow: validating %s", epoch, path)
    return validate_checkpoint(Checkpoint(path), epoch=epoch, run_id=run_id, tracking_uri=tracking_uri)


def register(cfg: TrainConfig, client, tracking_uri: str, epoch: int | None = None, alias: str = "candidate"):
    """Register the chosen checkpoint of ``cfg.run.name``; returns ``(ModelVersion, epoch, run_id)``."""
    from ray.train import Checkpoint

    from .checkpointing import load_checkpoint
    from .registry import build_network
    from .tracking import experiment_id, find_run
    from .train import register_model

    run = find_run(client, experiment_id(client, cfg.run.experiment), cfg.run.name)
    if run is None:
        raise NothingToRegisterError(f"no MLflow training run named {cfg.run.name!r} in experiment {cfg.run.experiment!r} "
                                     f"at {tracking_uri}")
    run_id, status = run.info.run_id, run.info.status
    best, path, summary = choose_checkpoint(client, run_id, cfg, tracking_uri, epoch)
    with Checkpoint(path).as_directory() as folder:
        state, ckpt_cfg = load_checkpoint(Path(folder))
    model = build_network(ckpt_cfg)
    model.load_state_dict(state["model"])
    try:
        version = register_model(client, run_id, model, ckpt_cfg, best, summary, alias)
        client.set_tag(run_id, "registered_epoch", str(best))
        client.set_tag(run_id, "registered_checkpoint", path)
    finally:
        if client.get_run(run_id).info.status != status:
            client.update_run(run_id, status=status)  # logging the model reopened the run: keep its outcome
    return version, best, run_id


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    from .checkpointing import CheckpointError
    from .tracking import TrackingUnavailableError, check_reachable, configure_client_retries, resolve_tracking_uri

    try:
        if args.epoch is not None and args.epoch < 1:
            raise ConfigError(f"--epoch={args.epoch} is invalid: allowed an integer >= 1")
        cfg = load_config(args.config, args.overrides)
        tracking_uri = resolve_tracking_uri(cfg.run.tracking_uri)
        check_reachable(tracking_uri)
    except TrackingUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_client_retries()
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        version, epoch, run_id = register(cfg, client, tracking_uri, args.epoch, args.alias)
    except (NothingToRegisterError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"registered model: models:/{version.name}@{args.alias} (version {version.version}) from epoch {epoch} "
          f"of run {cfg.run.name} (MLflow run {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
