"""A training run whose storage path is ``s3://`` (moto's S3 server standing in for S3 or MinIO), as a
cluster runs it: checkpoints go to the bucket, a worker lost mid-run resumes from the checkpoint it
reads back from the bucket, a relaunch finds the latest one there, and the run registers its model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.training.checkpoints import latest_registered_checkpoint, list_checkpoints, load_checkpoint_at
from jobs.training.faults import FAULT_PLAN_ENV
from tests.jobs.helpers import REPO

NAME, MODEL = "s3-run", "test-s3"
TINY = [
    "--set", "run.num_workers=1", "--set", "run.cpus_per_worker=0.5", "--set", "model.timesteps=2",
    "--set", "data.train_subset=256", "--set", "data.val_size=128", "--set", "optim.batch_size=32",
    "--set", "validation.subset=32", "--set", "validation.batch_size=32", "--set", "validation.pgd_steps=2",
]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_checkpoints_and_resume_on_s3_storage(mlflow_server, ray_head, s3_server, cifar10, monkeypatch):
    from mlflow import MlflowClient

    storage = s3_server.uri("runs")
    env_vars = {"MLFLOW_TRACKING_URI": mlflow_server.address, "STABLE_SNN_STORAGE_PATH": storage,
                "STABLE_SNN_DATA_ROOT": str(cifar10.root), "RAY_AUTH_MODE": "disabled", **s3_server.env,
                FAULT_PLAN_ENV: json.dumps({"crash_at_epoch": 2}),
                "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}  # the driver hands the fault plan on to its job again
    cmd = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_head.address,
           "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--",
           "python", "-m", "jobs.train", "--config", "jobs/configs/quick.yaml", "--set", f"run.name={NAME}",
           "--set", "optim.epochs=2", "--set", "run.max_failures=1", "--set", f"run.registered_model={MODEL}", *TINY,
           *cifar10.overrides()[2:]]
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                         capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in log.lower(), log[-6000:]
    assert log.count("fault plan crash_at_epoch=2: killing this worker") == 1

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    assert list_checkpoints(storage, NAME) == {e: f"{storage}/{NAME}/checkpoint_epoch_000{e}" for e in (1, 2)}
    latest = latest_registered_checkpoint(storage, NAME)  # what a relaunch would resume from
    assert latest == f"{storage}/{NAME}/checkpoint_epoch_0002"
    state, cfg = load_checkpoint_at(latest)  # checksums verified on the copy read from the bucket
    assert cfg.run.storage_path == storage
    assert state["resumes"] == [1] and [h["epoch"] for h in state["history"]] == [1, 2]

    client = MlflowClient(mlflow_server.address)
    exp = client.get_experiment_by_name("stable-snn")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`stable_snn.run_name` = '{NAME}'")
    assert run.info.status == "FINISHED" and run.data.tags["selected_checkpoint"].startswith(f"{storage}/{NAME}/")
    for key in ("train_loss", "val_robust_acc"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2], key
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
