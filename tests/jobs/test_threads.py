"""Torch threads of the job's processes: as many as the CPUs each reserved from Ray, at least one."""
from __future__ import annotations

import math

import pytest
import torch

from jobs.config import load_job_config
from jobs.evaluate.workers import EvalWorker
from jobs.threads import threads_for
from stable_snn.attacks import get_protocol
from stable_snn.models import build_model
from tests.jobs.helpers import QUICK
from tests.threads import torch_threads


@pytest.mark.parametrize("cpus, threads", [(0.25, 1), (0.5, 1), (1, 1), (1.5, 1), (2.0, 2), (0.1 * 3 * 10, 3), (4, 4)])
def test_threads_for_a_reservation(cpus, threads):
    assert threads_for(cpus) == threads


@pytest.mark.parametrize("cpus", [-1.0, math.nan, math.inf, "2"])
def test_a_bad_reservation_is_refused(cpus):
    with pytest.raises(ValueError, match="a CPU reservation must be a finite number >= 0"):
        threads_for(cpus)


def test_an_evaluation_actor_uses_the_cpus_it_reserved():
    model = build_model("vgg5", 10, 2, "dlif", width=0.25, classifier_width=16)
    with torch_threads(1):
        worker = EvalWorker(model, get_protocol("quick"), 0, cpus=2.0)
        assert worker.threads == torch.get_num_threads() == 2


@pytest.mark.slow  # a two-worker Ray Train run that only builds its workers (about 20 s)
@pytest.mark.timeout(120)
def test_two_one_cpu_workers_on_a_two_cpu_node_use_one_thread_each(ray_head, cifar10, tmp_path, monkeypatch):
    """Each of two 1-CPU training workers runs one torch thread, even when the environment the
    workers inherit asks OpenMP for both cores (as an image exporting OMP_NUM_THREADS=nproc does)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = load_job_config(QUICK, [
        "run.num_workers=2", "run.cpus_per_worker=1", "data.train_subset=256", "data.val_size=256",
        f"data.root={cifar10.root}", f"data.download={str(cifar10.download).lower()}",
    ])
    out = tmp_path / "threads"
    out.mkdir()

    def build_and_count(config):  # nested: Ray pickles it by value
        import os

        import ray.train
        import torch

        from jobs.config import job_config_from_dict
        from jobs.training.worker import build_worker

        w = build_worker(job_config_from_dict(config["config"]))
        (config["out"] / f"rank{w.rank}").write_text(f"{torch.get_num_threads()} {os.environ.get('OMP_NUM_THREADS')}")
        ray.train.report({"rank": w.rank})

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(address=ray_head.gcs_address, runtime_env={"env_vars": {"OMP_NUM_THREADS": "2"}})
    try:
        TorchTrainer(
            build_and_count, train_loop_config={"config": cfg.to_dict(), "out": out},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name="threads", storage_path=str(tmp_path / "storage")),
        ).fit()
    finally:
        ray.shutdown()
    counts = {p.name: p.read_text().split() for p in out.iterdir()}
    assert counts == {"rank0": ["1", "2"], "rank1": ["1", "2"]}  # one thread each; the environment asked for 2
