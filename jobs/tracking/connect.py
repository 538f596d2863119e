"""Where the tracking server is and whether it answers (within seconds); no MLflow import here,
so a job checks the server before it loads MLflow, Ray and the training code."""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import TrackingUnavailableError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(configured: str | None) -> str:
    """``$MLFLOW_TRACKING_URI``, else the configured URI, else a sqlite file (made absolute)."""
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


def reachable_uri(configured: str | None) -> str:
    """The resolved tracking URI, checked to answer."""
    uri = resolve_tracking_uri(configured)
    check_reachable(uri)
    return uri


def configure_client_retries() -> None:
    """Bound MLflow's HTTP retries so an outage costs seconds per call, not minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
