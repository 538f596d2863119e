"""The local stand-in for a cluster: the quick training job on two Ray nodes and the shared MLflow server.

A head and a worker node are started with ``ray start`` as separate processes (``infra.local.stack``),
one CPU and one custom resource each, on free ports under a temporary root. ``python -m jobs.train``
then runs the quick preset (cut down) against the head with two Ray Train workers placed
``STRICT_SPREAD``, checkpointing into one storage folder both nodes write to, and logging to the
session's MLflow tracking server.

That the two workers really ran on different nodes is read from Ray's state API after the run: the
``RayTrainWorker`` actors (dead by then, still listed) carry the id of the node they ran on, and the
nodes are told apart by their custom resources (``node_head`` / ``node_worker``).
"""
from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.stack import (
    Service, free_port, port_open, ray_temp_dir, start_ray_head, start_ray_worker, stop_all, wait_ready,
)
from tests.jobs.helpers import QUICK, TINY, job_env, run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NAME = "two-node"
MODEL = "test-two-node"
HEAD_RESOURCE, WORKER_RESOURCE = "node_head", "node_worker"
OBJECT_STORE_BYTES = 128 * 1024**2  # per node; the job passes checkpoints through storage, not the object store

# 2 CPUs in the whole cluster: one 0.5-CPU training worker per node, and the 0.5-CPU validation
# task beside one of them (the Train controller takes no CPU).
JOB_ARGS = [
    "--config", str(QUICK), "--set", f"run.name={NAME}", "--set", f"run.registered_model={MODEL}",
    "--set", "optim.epochs=1", "--set", "run.num_workers=2", "--set", "run.placement_strategy=STRICT_SPREAD",
    "--set", "run.cpus_per_worker=0.5", "--set", "run.validation_cpus=0.5",
    "--set", "run.max_failures=0",  # a restarted worker group would muddle the placement check
    *TINY, "--set", "data.train_subset=256", "--set", "validation.pgd_steps=2",  # 4 steps per worker, a short PGD
]


@contextlib.contextmanager
def two_nodes(root: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Service, Service, Service]]:
    """(MLflow server, Ray head, Ray worker node); both Ray nodes are stopped on the way out.

    Start-up overlaps where it can: the worker node is launched as soon as the head's GCS accepts
    connections (``ray start --address`` then waits for the head's raylet itself), and the session's
    MLflow server, when not up yet, starts while both Ray nodes do. Every Ray process gets
    ``RAY_ADDRESS`` of this cluster, so Ray's own state-API clients inside actors (Train's
    placement-group cleaner) find it even when another Ray instance runs on the host.
    """
    started: list[Service] = []
    try:
        gcs_port = free_port()
        gcs = f"127.0.0.1:{gcs_port}"  # Ray resolves loopback to the node's address
        head = start_ray_head(root, gcs_port, free_port(), num_cpus=1, resources={HEAD_RESOURCE: 1},
                              object_store_memory=OBJECT_STORE_BYTES, env={"RAY_ADDRESS": gcs}, wait=False)
        started.append(head)
        deadline = time.monotonic() + 120
        while not port_open("127.0.0.1", gcs_port):
            if head._proc.poll() is not None or time.monotonic() > deadline:
                wait_ready(head, timeout=0)  # raises StackError with the tail of the head's log
            time.sleep(0.2)
        worker = start_ray_worker(root, gcs, num_cpus=1, resources={WORKER_RESOURCE: 1},
                                  object_store_memory=OBJECT_STORE_BYTES, env={"RAY_ADDRESS": gcs}, wait=False)
        started.append(worker)
        mlflow = request.getfixturevalue("mlflow_server")
        wait_ready(head)
        wait_ready(worker)
        yield mlflow, head, worker
    finally:
        stop_all(started[::-1])
        temp_dir = ray_temp_dir(root)
        if not temp_dir.is_relative_to(root.resolve()):
            shutil.rmtree(temp_dir, ignore_errors=True)  # a short folder in the system temp dir


def _placement(address: str) -> tuple[dict[str, str], list]:
    """``{HEAD_RESOURCE: node id, WORKER_RESOURCE: node id}`` and the ``RayTrainWorker`` actors, from the state API."""
    from ray.util.state import list_actors, list_nodes

    nodes = list_nodes(address=address, detail=True, timeout=60, raise_on_missing_output=False)
    by_resource = {}
    for node in nodes:
        for key in (HEAD_RESOURCE, WORKER_RESOURCE):
            if node.resources_total.get(key):
                by_resource[key] = node.node_id
    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                         timeout=60, raise_on_missing_output=False)
    return by_resource, actors


def test_quick_job_on_two_node_cluster(tmp_path, request, cifar10, monkeypatch):
    """Two Ray nodes, one Train worker on each, checkpoints in shared storage, run and model in MLflow."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # for the state API client in this process
    storage = tmp_path / "shared-storage"  # one folder on this machine: shared by both nodes
    with two_nodes(tmp_path / "cluster", request) as (mlflow, head, worker):
        env = job_env(mlflow.address, storage, cifar10.root, ray_address=head.gcs_address)
        out = run_job("jobs.train", [*JOB_ARGS, *cifar10.overrides()], env, timeout=600)
        log = out.stdout + out.stderr
        (tmp_path / "job.log").write_text(log)
        assert out.returncode == 0, log[-6000:]
        nodes, actors = _placement(head.address)

    # the cluster had two nodes, told apart by their custom resources
    assert set(nodes) == {HEAD_RESOURCE, WORKER_RESOURCE} and len(set(nodes.values())) == 2, nodes
    # the job's one worker group (one placement group, never restarted) had a worker on each of them
    seen = [(a.actor_id, a.state, a.node_id, a.placement_group_id, a.num_restarts) for a in actors]
    assert len(actors) == 2 and len({a.placement_group_id for a in actors}) == 1, seen
    assert all(a.num_restarts == 0 for a in actors), seen
    assert sorted(a.node_id for a in actors) == sorted(nodes.values()), (nodes, seen)

    # the checkpoint went to the shared storage path, complete with its checksums
    ckpt = storage / NAME / "checkpoint_epoch_0001"
    assert (ckpt / "checksums.json").is_file(), sorted(str(p.relative_to(storage)) for p in storage.rglob("*"))

    # the run and the registered model are on the tracking server
    from mlflow import MlflowClient

    from jobs.tracking.runs import RUN_NAME_TAG

    client = MlflowClient(mlflow.address)
    exp = client.get_experiment_by_name("stable-snn")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{NAME}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_robust_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
    version = client.get_model_version_by_alias(MODEL, "candidate")
    assert version.run_id == run.info.run_id
