"""The weighted objective a search optimises, added to what Ray Train reports to Tune.

:class:`ScoreReportCallback` is pickled into each trial's Ray Train controller, so this module imports
neither MLflow nor the training code (``jobs.training.remote``)."""
from __future__ import annotations

from ray.tune.integration.ray_train import TuneReportCallback

from .space import SCORE, SearchSpace


def with_score(space: SearchSpace, metrics: dict) -> dict:
    """``metrics`` plus the weighted objective (:data:`~jobs.tune.space.SCORE`) when the space has one
    and the metrics it weighs are there."""
    if not space.objective or any(k not in metrics for k in space.objective):
        return metrics
    return {**metrics, SCORE: space.score(metrics)}


class ScoreReportCallback(TuneReportCallback):
    """Ray Train -> Tune reporting that adds the space's weighted objective to every report, so
    Tune's schedulers and searchers optimise what picks the registered trial."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        super().after_report(run_context, [with_score(self.space, metrics[0]), *metrics[1:]], checkpoint)
