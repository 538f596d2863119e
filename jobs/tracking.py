"""MLflow wiring shared by the jobs: reachability, run reuse, and a logger that survives outages.

Only the driver and rank 0 (plus the validation task acting for rank 0) talk to MLflow.
"""
from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

RUN_NAME_TAG = "stable_snn.run_name"
JOB_KIND_TAG = "stable_snn.job"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server does not answer."""


def resolve_tracking_uri(configured: str | None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Ray Train changes the working directory of workers: make sqlite paths absolute.
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (within ``timeout`` seconds) with a message naming ``uri`` when it does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingUnavailableError(f"MLflow tracking server {uri} answered /health with HTTP {r.status}")
        except (urllib.error.URLError, OSError) as e:
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); start it (make stack-up) "
                "or set MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise TrackingUnavailableError(f"MLflow tracking URI {uri}: folder {folder} does not exist")


def configure_client_retries() -> None:
    """Bound MLflow's HTTP retries so an outage costs seconds per call, not minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def find_run(client, exp_id: str, run_name: str, job: str = "train"):
    """The most recent MLflow run of this job kind tagged with ``run_name``, or None."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}' and tags.`{JOB_KIND_TAG}` = '{job}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


class RunLogger:
    """Logs metrics to one MLflow run; on failure keeps them and retries at the next call.

    ``flush(deadline_s)`` retries until the server answers or the deadline passes; what is
    still pending then is reported, never silently dropped.
    """

    def __init__(self, client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.pending: list = []

    def log(self, metrics: dict[str, float], step: int) -> bool:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None)
        return self._try_flush()

    def _try_flush(self) -> bool:
        while self.pending:
            batch = self.pending[:500]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:  # network errors take many shapes; keep the metrics and move on
                log.warning("MLflow logging failed (%s); %d metric values kept for retry", type(e).__name__, len(self.pending))
                return False
            del self.pending[: len(batch)]
        return True

    def flush(self, deadline_s: float = 60.0, interval_s: float = 5.0) -> bool:
        end = time.monotonic() + deadline_s
        while not self._try_flush():
            if time.monotonic() > end:
                return False
            time.sleep(interval_s)
        return True
