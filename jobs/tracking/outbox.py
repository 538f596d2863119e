"""A metrics logger for one MLflow run that survives outages: the outbox.

Metrics that cannot be sent wait in a folder of the run's storage path (on any filesystem the
runs are stored on: a local or NFS path, or ``s3://``) and are sent exactly once by whichever
process logs next (rank 0, the validation task or the driver).
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid

from mlflow.entities import Metric

from ..config import RunConfig
from ..storage import delete_file, list_files, read_text, run_path, write_text

log = logging.getLogger(__name__)


class RunLogger:
    """Logs metrics to one MLflow run and never loses them to an outage, nor logs them twice.

    Metrics that cannot be sent are written to an outbox folder (one JSON file per batch, in
    the run's storage folder, wherever that is stored) and sent by a
    later :meth:`log` or :meth:`flush` of any process that logs to the same run: the
    rank-0 worker, the validation task or the driver.  ``flush(deadline_s)`` retries until
    the server answers or the deadline passes and reports whether everything was sent.

    Sending is idempotent per step: the metrics of one step go out in one ``log_batch``
    (atomic on the server), and a batch whose first metric already has a value at that
    step is dropped, so a batch sent again after a crash (between sending and removing
    its outbox file, or a re-run of an epoch's validation) never duplicates a value.
    """

    def __init__(self, client, run_id: str, outbox: str | os.PathLike | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.outbox = str(outbox) if outbox is not None else None  # a local path or a URI
        self.pending: list[dict] = []

    def log(self, metrics: dict[str, float], step: int) -> bool:
        now = int(time.time() * 1000)
        self.pending.extend({"key": k, "value": float(v), "timestamp": now, "step": int(step)} for k, v in metrics.items() if v is not None)
        return self._try_flush()

    def _send(self, batch: list[dict]) -> None:
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

    def _outbox_files(self) -> list[str]:
        return [] if self.outbox is None else list_files(self.outbox, ".json")

    def _try_flush(self) -> bool:
        try:
            for path in self._outbox_files():
                self._send(json.loads(read_text(path) or "[]"))
                delete_file(path)
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
            write_text(f"{self.outbox}/{time.time_ns()}-{uuid.uuid4().hex[:8]}.json", json.dumps(self.pending))
            self.pending = []
        except OSError as e:
            log.warning("could not write the MLflow outbox %s (%s); metrics stay in memory", self.outbox, e)

    @property
    def unsent(self) -> int:
        return len(self.pending) + sum(len(json.loads(read_text(p) or "[]")) for p in self._outbox_files())

    def flush(self, deadline_s: float = 60.0, interval_s: float = 5.0) -> bool:
        end = time.monotonic() + deadline_s
        while not self._try_flush():
            if time.monotonic() > end:
                return False
            time.sleep(interval_s)
        return True


def outbox_for(storage: str, run_name: str) -> str:
    """The outbox folder of a run, in its storage folder (a local path or a URI)."""
    return f"{run_path(storage, run_name)}/mlflow-outbox"


def run_logger(client, run_id: str, run: RunConfig) -> RunLogger:
    """The logger of a training run, its outbox in the run's storage folder."""
    return RunLogger(client, run_id, outbox_for(run.resolved_storage(), run.name))
