"""The experiment a job logs into, against a real MLflow server."""
from __future__ import annotations

import pytest

from jobs.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, experiment_id


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_an_experiment_another_job_created_meanwhile_is_used(mlflow_server):
    """Two jobs starting at once against a server without the experiment both find it missing; the one
    whose ``create_experiment`` comes second uses the experiment the first created."""
    from mlflow import MlflowClient

    class SecondJobsClient(MlflowClient):
        """A real client that looks before the first job has created the experiment."""

        looked = False

        def get_experiment_by_name(self, name):
            if not self.looked:
                self.looked = True
                return None
            return super().get_experiment_by_name(name)

    first = MlflowClient(mlflow_server.address).create_experiment("created-meanwhile")
    assert experiment_id(SecondJobsClient(mlflow_server.address), "created-meanwhile") == first
    exp = MlflowClient(mlflow_server.address).get_experiment(first)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # tagged as the jobs' own, like one they create
