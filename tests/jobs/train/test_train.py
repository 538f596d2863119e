"""The training job end to end on a real Ray cluster and a real MLflow tracking server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.jobs.helpers import REPO, TINY, job_env

pytestmark = pytest.mark.slow


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _run_by_name(client, name):
    from jobs.tracking.runs import RUN_NAME_TAG

    exp = client.get_experiment_by_name("stable-snn")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")


def test_quick_preset_submitted_with_ray_job_submit(tmp_path, mlflow_server, ray_head, cifar10):
    """`ray job submit` of the quick preset (1 epoch, 2 workers): run, metrics, artifacts, registered model."""
    name = "quick-submit"
    storage = tmp_path / "storage"
    env = job_env(mlflow_server.address, storage, cifar10.root)
    runtime_env = {"env_vars": {k: env[k] for k in ("MLFLOW_TRACKING_URI", "STABLE_SNN_STORAGE_PATH", "STABLE_SNN_DATA_ROOT", "RAY_AUTH_MODE")}}
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_head.address,
        "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "-m", "jobs.train", "--config", "jobs/configs/quick.yaml", "--set", f"run.name={name}",
        "--set", "optim.epochs=1", "--set", "run.registered_model=test-quick", *TINY, *cifar10.overrides()[2:],
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "succeeded" in (out.stdout + out.stderr).lower()
    assert f"[{name}] epoch 1/1" in out.stdout  # the per-epoch progress line

    client = _client(mlflow_server.address)
    runs = _run_by_name(client, name)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "vgg5" and run.data.params["objective.rho"] == "1.0"
    for key in ("train_loss", "train_task_loss", "train_ms_mppd", "train_acc", "images_per_s", "val_clean_acc", "val_robust_acc", "sops_per_image"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1], key
    assert any(k.startswith("dlif_gain/") for k in run.data.metrics)
    assert any(k.startswith("mppd_gain/") for k in run.data.metrics)
    assert any(k.startswith("firing_rate/") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "figures")
    }
    assert {"config.yaml", "figures/training_curves.png", "figures/dlif_gains.png"} <= artifacts

    mv = client.get_model_version_by_alias("test-quick", "candidate")
    assert mv.run_id == run.info.run_id
    assert "val_robust_acc" in mv.tags and "epoch" in mv.tags

    # loaded by alias, the model predicts like the checkpoint it came from
    from jobs.tracking.models import load_registered_model
    from jobs.training.checkpoints import load_checkpoint
    from stable_snn.config import build_network

    ckpts = sorted((storage / name).glob("checkpoint_epoch_*"))
    assert [c.name for c in ckpts] == ["checkpoint_epoch_0001"]
    state, cfg = load_checkpoint(ckpts[0])
    reference = build_network(cfg)
    reference.load_state_dict(state["model"])
    reference.eval()
    loaded = load_registered_model("models:/test-quick@candidate", client)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.softmax(reference(x).mean(0), 1)
        assert torch.equal(loaded.model(x), reference(x))
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.address)
    pyfunc = mlflow.pyfunc.load_model("models:/test-quick@candidate")
    np.testing.assert_allclose(pyfunc.predict(x.numpy()), expected.numpy(), atol=1e-6)
