"""The run lock's actor lives in a module that imports only Ray: every run starts one, and its
process should not pay for importing torch, torchvision and the job config."""
from __future__ import annotations

import subprocess
import sys

from tests.jobs.helpers import REPO


def test_the_lock_actors_module_imports_neither_torch_nor_the_config():
    probe = ("import sys, jobs.training.lock; "
             "print(sorted(m for m in ('torch', 'torchvision', 'mlflow', 'jobs.config') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
