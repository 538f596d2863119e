"""What Ray Train's controller of every run unpickles, and so imports: nothing of the training code."""
from __future__ import annotations

import pickle
import subprocess
import sys

from tests.jobs.helpers import REPO


def test_what_the_train_controller_unpickles_imports_neither_mlflow_nor_the_training_code():
    """The workers' loop, the validation function and the callbacks a run hands Ray Train are pickled into
    its controller by reference to their modules, which the controller then imports."""
    probe = ("import sys, jobs.training.remote, jobs.training.faults, jobs.tune.score; "
             "print(sorted(m for m in ('mlflow', 'jobs.training.worker', 'jobs.training.validation', 'stable_snn.attacks')"
             " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

    from jobs.training.trainer import train_loop_per_worker, validate_checkpoint
    for fn in (train_loop_per_worker, validate_checkpoint):
        assert b"jobs.training.remote" in pickle.dumps(fn)
