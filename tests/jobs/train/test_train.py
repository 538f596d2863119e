"""The training job end to end on a real Ray cluster and a real MLflow tracking server."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _run_by_name(client, name):
    from jobs.tracking.runs import RUN_NAME_TAG

    exp = client.get_experiment_by_name("stable-snn")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")


def test_quick_preset_submitted_with_ray_job_submit(quick_run):
    """`ray job submit` of the quick preset (1 epoch, 2 workers): run, metrics, artifacts, registered model."""
    name, storage, out = quick_run.run_name, quick_run.storage, quick_run.output
    assert "succeeded" in (out.stdout + out.stderr).lower()
    assert f"[{name}] epoch 1/1" in out.stdout  # the per-epoch progress line

    client = _client(quick_run.tracking_uri)
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

    mlflow.set_tracking_uri(quick_run.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model("models:/test-quick@candidate")
    np.testing.assert_allclose(pyfunc.predict(x.numpy()), expected.numpy(), atol=1e-6)
