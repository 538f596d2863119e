"""The attack-evaluation job: ``python -m jobs.evaluate`` (a registered model under a named protocol)."""
from __future__ import annotations

from ..errors import EvaluationInputError

SPLITS = ("test", "validation")
"""What ``--split`` allows: the test split reports; the model's own validation split is where promotion decides."""


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise EvaluationInputError(f"--split={split!r} is invalid: allowed one of {', '.join(SPLITS)}")
    return split
