"""System metrics of a training run (CPU, memory, disk, network, GPU when there is one), sampled by
MLflow's monitor on the node of rank 0 and logged to the run as ``system/*`` (MLflow's "System
metrics" charts).  MLflow reads them through psutil (and pynvml for GPUs)."""
from __future__ import annotations

import logging

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

log = logging.getLogger(__name__)

# Seconds between samples (MLflow's default); $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it.
SAMPLING_INTERVAL_S = 10.0


def start_system_metrics(run_id: str | None, tracking_uri: str | None) -> SystemMetricsMonitor | None:
    """Start MLflow's system-metrics monitor on ``run_id``, continuing its steps after a restart.

    This is what ``mlflow.start_run(log_system_metrics=True)`` starts; it is used directly because
    the fluent run would make this process end the run, which only the driver does.  The monitor
    stops by itself once the run is no longer RUNNING; :meth:`~SystemMetricsMonitor.finish` stops
    it at once.  None (and a warning) when it cannot start: system metrics never stop training.
    """
    if not (run_id and tracking_uri):
        return None
    try:
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLING_INTERVAL_S, resume_logging=True,
                                       tracking_uri=tracking_uri)
    except Exception as e:  # the server's errors take many shapes; training goes on without them
        log.warning("system metrics of MLflow run %s are not logged: %s", run_id, e)
        return None
    monitor.start()
    return monitor
