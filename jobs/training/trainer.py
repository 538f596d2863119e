"""The Ray Train ``TorchTrainer`` of a job config (which checkpoint stands for the run: :mod:`.selection`)."""
from __future__ import annotations

import ray.train
from ray.train.torch import TorchTrainer

from ..config import JobConfig
from .remote import train_loop_per_worker, validate_checkpoint  # by reference: the controller stays light


def build_trainer(cfg: JobConfig, run_id: str | None, tracking_uri: str | None, callbacks=None,
                  inline_validation: bool = False) -> TorchTrainer:
    """A ``TorchTrainer`` for ``cfg``: DDP workers, per-epoch checkpoints, PGD validation, best-k kept.

    Ray Train keeps the ``run.keep_checkpoints`` best checkpoints by validation robust accuracy and
    always the latest one: both checkpoints the selection rule can choose survive
    (:mod:`jobs.training.selection`).

    Validation runs as Ray Train's asynchronous validation task by default; with
    ``inline_validation`` rank 0 runs it before each report so the validation metrics are
    part of the reported metrics (Ray Tune's schedulers need them synchronously).
    """
    scaling = ray.train.ScalingConfig(
        num_workers=cfg.run.num_workers,
        use_gpu=cfg.run.use_gpu,
        resources_per_worker={"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if cfg.run.use_gpu else {})},
        placement_strategy=cfg.run.placement_strategy,
    )
    run_config = ray.train.RunConfig(
        name=cfg.run.name,
        storage_path=cfg.run.resolved_storage(),
        failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.run.keep_checkpoints,
            checkpoint_score_attribute="val_robust_acc",
            checkpoint_score_order="max",
        ),
        callbacks=callbacks,
    )
    validation = None if inline_validation else ray.train.ValidationConfig(
        fn=validate_checkpoint,
        task_config=ray.train.ValidationTaskConfig(fn_kwargs={"run_id": run_id, "tracking_uri": tracking_uri}),
        ray_remote_kwargs={"num_cpus": cfg.run.validation_cpus, "num_gpus": cfg.run.validation_gpus},
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(), "run_id": run_id, "tracking_uri": tracking_uri, "inline_validation": inline_validation,
        },
        scaling_config=scaling,
        run_config=run_config,
        validation_config=validation,
    )

