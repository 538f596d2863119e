"""What the quick training run (the session's ``quick_run``, submitted with ``ray job submit``) leaves in
MLflow beyond its metrics: the experiment's kind and saved views, the datasets it read, system
metrics, the progress of its epoch, and a registered model that carries its code and the project's
pinned requirements."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.dependencies import model_requirements
from jobs.tracking.views import TRAINING_VIEW, VIEW_TAG_PREFIX, view_states

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _run(quick_run):
    from jobs.tracking.runs import RUN_NAME_TAG

    client = _client(quick_run.tracking_uri)
    exp = client.get_experiment_by_name("stable-snn")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{quick_run.run_name}'")
    return client, exp, run


def test_the_experiment_has_its_kind_and_the_saved_views(quick_run):
    _, exp, _ = _run(quick_run)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    envelope = json.loads(exp.tags[VIEW_TAG_PREFIX + TRAINING_VIEW])
    assert envelope["name"] == view_states()[TRAINING_VIEW][0]
    assert json.loads(envelope["state"])["selectedColumns"][:2] == ["metrics.`val_robust_acc`", "metrics.`val_clean_acc`"]


def test_the_run_logs_its_datasets_and_system_metrics(quick_run):
    client, _, run = _run(quick_run)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"cifar10-train", "cifar10-val"}
    assert [t.value for t in inputs["cifar10-train"].tags] == ["training"]
    assert json.loads(inputs["cifar10-train"].dataset.profile)["images"] == 512  # the TINY cut
    assert json.loads(inputs["cifar10-val"].dataset.profile)["images"] == 256
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system


def test_rank_0_reports_progress_inside_the_epoch(quick_run):
    out = quick_run.output.stdout
    lines = [line for line in out.splitlines() if f"[{quick_run.run_name}] epoch 1/1" in line and "ETA" in line]
    assert lines and "100% (" in lines[-1] and "img/s" in lines[-1]


def test_the_registered_model_carries_its_code_requirements_signature_and_example(quick_run, tmp_path):
    import mlflow

    client = _client(quick_run.tracking_uri)
    mv = client.get_model_version_by_alias(quick_run.registered_model, "candidate")
    local = mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri(mv.name, mv.version),
                                                dst_path=str(tmp_path), tracking_uri=quick_run.tracking_uri)
    model_dir = Path(local)
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["code"] == "code"
    assert (model_dir / "code" / "jobs" / "tracking" / "models.py").is_file()
    assert (model_dir / "code" / "stable_snn" / "models" / "vgg.py").is_file()
    assert not list((model_dir / "code").rglob("__pycache__"))
    assert (model_dir / "requirements.txt").read_text().split() == model_requirements()
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 32, 32]}}]
    assert mlmodel["saved_input_example_info"]["type"] == "ndarray" and (model_dir / "input_example.json").is_file()
