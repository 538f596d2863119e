"""Torch threads of the job's processes: as many as the CPUs each reserved from Ray, at least one."""
from __future__ import annotations

import math
import re

import pytest
import torch

from jobs.evaluate.workers import EvalWorker
from jobs.threads import threads_for
from stable_snn.attacks import get_protocol
from stable_snn.models import build_model
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


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_each_training_worker_runs_the_threads_it_reserved(quick_run):
    """Each 0.5-CPU training worker of the session's quick run (two workers, one on each of two 1-CPU nodes)
    runs one torch thread, although the environment the workers inherit asks OpenMP for two (as an
    image exporting OMP_NUM_THREADS=nproc does)."""
    found = re.findall(r"rank (\d) of 2 on cpu: (\d+) torch thread\(s\) for its 0.5 reserved CPU\(s\) "
                       r"\(OMP_NUM_THREADS=(\w+)\)", quick_run.output.stdout + quick_run.output.stderr)
    assert sorted(found) == [("0", "1", "2"), ("1", "1", "2")], found
