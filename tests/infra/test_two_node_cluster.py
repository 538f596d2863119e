"""The local stand-in for a cluster: the quick training job on two Ray nodes and the shared MLflow server.

The session's quick run (``quick_run``, tests/fixtures_runs.py) is the quick preset submitted with
``ray job submit`` to ``two_node_cluster``: a head and a worker node started with ``ray start`` as
separate processes (``infra.local.stack``), one CPU and one custom resource each, its two Ray Train
workers placed ``STRICT_SPREAD``, checkpointing into one storage folder both nodes write to, and
logging to the session's MLflow tracking server. What the run recorded (MLflow run, checkpoint,
registered model) is checked by the quick run's own tests (tests/jobs/train/test_train.py); this
test checks where it ran.

That the two workers really ran on different nodes is read from Ray's state API after the run, before
the cluster stops (``quick_run.placement``): the ``RayTrainWorker`` actors (dead by then, still listed)
carry the id of the node they ran on, and the nodes are told apart by their custom resources
(``node_head`` / ``node_worker``).
"""
from __future__ import annotations

import pytest

from tests.fixtures_services import HEAD_RESOURCE, WORKER_RESOURCE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def test_quick_job_on_two_node_cluster(quick_run):
    """Two Ray nodes, one Train worker of the quick run on each, its checkpoint in the storage both share."""
    nodes, actors = quick_run.placement.nodes, quick_run.placement.workers

    # the cluster had two nodes, told apart by their custom resources
    assert set(nodes) == {HEAD_RESOURCE, WORKER_RESOURCE} and len(set(nodes.values())) == 2, nodes
    # the job's one worker group (one placement group, never restarted) had a worker on each of them
    seen = [(a.actor_id, a.state, a.node_id, a.placement_group_id, a.num_restarts) for a in actors]
    assert len(actors) == 2 and len({a.placement_group_id for a in actors}) == 1, seen
    assert all(a.num_restarts == 0 for a in actors), seen
    assert sorted(a.node_id for a in actors) == sorted(nodes.values()), (nodes, seen)

    # the checkpoint went to the shared storage path, complete with its checksums
    assert [c.name for c in quick_run.checkpoints] == ["checkpoint_epoch_0001"]
    assert (quick_run.checkpoints[0] / "checksums.json").is_file()
