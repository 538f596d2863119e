"""Ray Train's record of a run's checkpoints as Ray 2.60.0 writes it (``checkpoint_manager_snapshot.json``
in the run's folder; private to Ray).  The jobs read it only through ``ray.train.Result.from_path``;
the tests that need a run's folder without training one write it with :func:`write_snapshot`, and
``tests/jobs/training/test_ray_layout.py`` checks this layout against a real run's."""
from __future__ import annotations

import json
from pathlib import Path

SNAPSHOT = "checkpoint_manager_snapshot.json"
RAY_VERSION = "2.60.0"


def snapshot(checkpoint_dirs: list[str]) -> dict:
    """The record of a run whose checkpoints ``checkpoint_dirs`` were reported in that order, each validated."""
    results = [{"version": 0, "checkpoint_dir_name": name, "metrics": {"epoch": i + 1}}
               for i, name in enumerate(checkpoint_dirs)]
    return {
        "ray_version": RAY_VERSION,
        "checkpoint_results": results,
        "checkpoint_report_indices": list(range(len(results))),
        "latest_checkpoint_result": results[-1] if results else None,
        "pending_training_results": [],
        "pending_validation_specs": [],
        "current_report_index": len(results),
        "validated_checkpoint_dir_names": list(checkpoint_dirs),
        "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": [],
    }


def write_snapshot(run_dir: Path, checkpoint_dirs: list[str]) -> Path:
    path = Path(run_dir) / SNAPSHOT
    path.write_text(json.dumps(snapshot(checkpoint_dirs)))
    return path
