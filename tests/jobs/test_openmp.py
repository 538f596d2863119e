"""OpenMP's wait policy: passive in every job process unless the user chose one (jobs/openmp.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from infra.local.stack import _ray_env
from jobs.openmp import openmp_env
from jobs.training.driver import job_runtime_env
from jobs.training.faults import FAULT_PLAN_ENV
from tests.jobs.helpers import REPO


def test_passive_unless_the_user_chose_a_policy():
    assert openmp_env({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_env({"OMP_WAIT_POLICY": ""}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_the_jobs_workers_and_the_local_ray_nodes_get_the_policy():
    assert job_runtime_env({}) == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    assert job_runtime_env({FAULT_PLAN_ENV: '{"nan_at_epoch": 2}', "OMP_WAIT_POLICY": "ACTIVE"}) == {
        "env_vars": {"OMP_WAIT_POLICY": "ACTIVE", FAULT_PLAN_ENV: '{"nan_at_epoch": 2}'}}
    assert _ray_env(None)["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


def _spin_count(code: str, policy: str | None) -> str:
    """GNU OpenMP's spin count as it read its environment when ``code`` loaded it (OMP_DISPLAY_ENV)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"OMP_DISPLAY_ENV": "VERBOSE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env | ({"OMP_WAIT_POLICY": policy} if policy else {}),
                         capture_output=True, text=True, check=True)
    lines = [line.split("=", 1)[1].strip(" '") for line in out.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("this torch build does not use GNU OpenMP")
    return lines[0]


def test_a_job_process_sets_it_before_torch_loads():
    """``python -m jobs.<job>`` imports ``jobs`` first, so OpenMP loads with the passive policy (its
    threads never spin); plain torch spins, and a user's choice is kept."""
    assert _spin_count("import jobs.threads", None) == "0"
    assert _spin_count("import torch", None) != "0"
    assert _spin_count("import jobs.threads", "ACTIVE") != "0"


def test_more_than_one_thread_without_the_passive_policy_is_warned_about(monkeypatch, caplog):
    from jobs.threads import use_reserved_cpus
    from tests.threads import torch_threads

    with torch_threads(1):
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
        use_reserved_cpus(2)
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        use_reserved_cpus(1)
        assert not caplog.records
        use_reserved_cpus(2)
    assert "2 torch threads with OMP_WAIT_POLICY=ACTIVE" in caplog.text and "OMP_WAIT_POLICY=PASSIVE" in caplog.text
