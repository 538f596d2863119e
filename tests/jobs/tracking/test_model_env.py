"""A registered model loads anywhere: in a fresh virtual environment holding only the model's logged
requirements (no repository, no project install), ``mlflow.pyfunc.load_model("models:/…@candidate")``
serves it from the code logged with it, and predicts what the checkpoint it came from predicts."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from jobs.dependencies import requirement_name
from jobs.training.checkpoints import load_checkpoint, network_of
from tests.jobs.helpers import REPO

LOAD = """
import json, sys
import importlib.metadata as metadata
import mlflow, numpy as np, torch
torch.set_num_threads(1)
model = mlflow.pyfunc.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))
import jobs, stable_snn
print(json.dumps({"jobs": jobs.__file__, "stable_snn": stable_snn.__file__,
                  "versions": {d: metadata.version(d) for d in sys.argv[4:]}}))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_registered_model_loads_in_a_fresh_environment_from_its_requirements(quick_run, model_env, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(quick_run.tracking_uri)
    mv = client.get_model_version_by_alias(quick_run.registered_model, "candidate")
    logged = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{client.get_model_version_download_uri(mv.name, mv.version)}/requirements.txt",
        dst_path=str(tmp_path / "logged"), tracking_uri=quick_run.tracking_uri)
    assert open(logged).read().split() == model_env.requirements  # what the environment was built from

    waited, built = model_env.wait(timeout=1500)
    print(f"the model environment took {built:.0f} s to build in the background; this test waited {waited:.0f} s")

    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    np.save(tmp_path / "x.npy", x.numpy())
    names = [requirement_name(r) for r in model_env.requirements]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": quick_run.tracking_uri}
    out = subprocess.run([str(model_env.python), "-c", LOAD, quick_run.model_uri, str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy"), *names], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    where = json.loads(out.stdout.strip().splitlines()[-1])
    for package in ("jobs", "stable_snn"):  # the code logged with the model, not a checkout
        assert where[package].endswith(f"/code/{package}/__init__.py") and not where[package].startswith(str(REPO))
    assert {n: v.split("+")[0] for n, v in where["versions"].items()} == {
        requirement_name(r): r.split("==")[1] for r in model_env.requirements}

    state, cfg = load_checkpoint(quick_run.storage / quick_run.run_name / f"checkpoint_epoch_{int(mv.tags['epoch']):04d}")
    model = network_of(state, cfg).eval()
    with torch.no_grad():
        expected = torch.softmax(model(x).mean(0), dim=1).numpy()
    predicted = np.load(tmp_path / "y.npy")
    assert predicted.shape == (6, 10)
    np.testing.assert_array_equal(predicted, expected)
