"""MLflow wiring shared by the jobs: reachability, run reuse, and a logger that survives outages.

Only the driver and rank 0 (plus the validation task acting for rank 0) talk to MLflow.
"""
from __future__ import annotations

import logging
import json
import os
import time
import uuid
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
    """Logs metrics to one MLflow run and never loses them to an outage, nor logs them twice.

    Metrics that cannot be sent are written to an outbox folder (one JSON file per batch,
    in the run's storage folder when it is a local or shared file system) and sent by a
    later :meth:`log` or :meth:`flush` of any process that logs to the same run: the
    rank-0 worker, the validation task or the driver.  ``flush(deadline_s)`` retries until
    the server answers or the deadline passes and reports whether everything was sent.

    Sending is idempotent per step: the metrics of one step go out in one ``log_batch``
    (atomic on the server), and a batch whose first metric already has a value at that
    step is dropped, so a batch sent again after a crash (between sending and removing
    its outbox file, or a re-run of an epoch's validation) never duplicates a value.
    """

    def __init__(self, client, run_id: str, outbox: Path | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.outbox = Path(outbox) if outbox is not None else None
        self.pending: list[dict] = []

    def log(self, metrics: dict[str, float], step: int) -> bool:
        now = int(time.time() * 1000)
        self.pending.extend({"key": k, "value": float(v), "timestamp": now, "step": int(step)} for k, v in metrics.items() if v is not None)
        return self._try_flush()

    def _send(self, batch: list[dict]) -> None:
        from mlflow.entities import Metric

        by_step: dict[int, list[dict]] = {}
        for m in batch:
            by_step.setdefault(int(m["step"]), []).append(m)
        for step, metrics in sorted(by_step.items()):
            for i in range(0, len(metrics), 500):
                chunk = metrics[i : i + 500]
                if self.is_logged(chunk[0]["key"], step):
                    log.info("MLflow run %s already has %s at step %d: not logging that batch again", self.run_id, chunk[0]["key"], step)
                    continue
                self.client.log_batch(self.run_id, metrics=[Metric(**m) for m in chunk])

    def is_logged(self, key: str, step: int) -> bool:
        """Whether the run has a value of ``key`` at ``step`` on the server (raises when unreachable)."""
        return any(int(m.step) == int(step) for m in self.client.get_metric_history(self.run_id, key))

    def _outbox_files(self) -> list[Path]:
        if self.outbox is None or not self.outbox.is_dir():
            return []
        return sorted(self.outbox.glob("*.json"))

    def _try_flush(self) -> bool:
        try:
            for path in self._outbox_files():
                self._send(json.loads(path.read_text()))
                path.unlink()
            if self.pending:
                self._send(self.pending)
                self.pending = []
            return True
        except Exception as e:  # network errors take many shapes; keep the metrics, never drop them
            log.warning("MLflow logging to run %s failed (%s: %s); metrics kept for retry", self.run_id, type(e).__name__, e)
            self._park()
            return False

    def _park(self) -> None:
        """Move pending metrics to the outbox (durable across process restarts)."""
        if self.outbox is None or not self.pending:
            return
        try:
            self.outbox.mkdir(parents=True, exist_ok=True)
            tmp = self.outbox / f".{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps(self.pending))
            tmp.rename(self.outbox / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json")
            self.pending = []
        except OSError as e:
            log.warning("could not write the MLflow outbox %s (%s); metrics stay in memory", self.outbox, e)

    @property
    def unsent(self) -> int:
        return len(self.pending) + sum(len(json.loads(p.read_text())) for p in self._outbox_files())

    def flush(self, deadline_s: float = 60.0, interval_s: float = 5.0) -> bool:
        end = time.monotonic() + deadline_s
        while not self._try_flush():
            if time.monotonic() > end:
                return False
            time.sleep(interval_s)
        return True


def outbox_for(storage: str, run_name: str) -> Path | None:
    """The outbox folder of a run, when its storage path is a file system path."""
    return None if "://" in storage else Path(storage) / run_name / "mlflow-outbox"
