"""jobs.tracking: the tracking server's address and reachability, and the outbox logger that never
loses a metric to an outage nor logs one twice."""
from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from infra.local.stack import free_port
from jobs.errors import TrackingUnavailableError
from jobs.tracking.connect import check_reachable, configure_client_retries, reachable_uri, resolve_tracking_uri
from jobs.tracking.outbox import RunLogger, outbox_for


def _client(uri):
    return MlflowClient(uri)


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, key))


def test_tracking_uri_comes_from_the_environment_first_and_sqlite_paths_are_made_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("http://configured:5000") == "http://configured:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/m.db")
    assert resolve_tracking_uri("http://configured:5000") == f"sqlite:///{tmp_path / 'runs' / 'm.db'}"


def test_an_unreachable_server_is_refused_within_seconds_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as e:
        check_reachable(uri)
    assert time.monotonic() - t0 < 5
    assert f"MLflow tracking server {uri} is unreachable" in str(e.value) and "MLFLOW_TRACKING_URI" in str(e.value)
    with pytest.raises(TrackingUnavailableError, match=f"folder {tmp_path / 'absent'} does not exist"):
        reachable_uri(f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}")
    assert reachable_uri(f"sqlite:///{tmp_path / 'mlflow.db'}") == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_run_logger_parks_metrics_while_server_is_down_and_sends_them_once(tmp_path, mlflow_server):
    """Logged while the server does not answer: the metrics go to the outbox; once it answers, a flush
    sends them, and an outbox batch sent twice (a crash between sending and removing it) is logged once."""
    configure_client_retries()
    live = _client(mlflow_server.address)
    exp = live.get_experiment_by_name("outbox-test") or live.get_experiment(live.create_experiment("outbox-test"))
    run_id = live.create_run(exp.experiment_id).info.run_id
    outbox = tmp_path / "outbox"
    down = RunLogger(_client(f"http://127.0.0.1:{free_port()}"), run_id, outbox)
    assert down.log({"train_loss": 0.5, "val_robust_acc": 0.1}, step=1) is False
    assert down.log({"train_loss": 0.4, "val_robust_acc": 0.2}, step=2) is False
    assert down.unsent == 4 and len(list(outbox.glob("*.json"))) == 2
    first = sorted(outbox.glob("*.json"))[0]
    (outbox / ("0-" + first.name)).write_text(first.read_text())  # the same batch twice

    up = RunLogger(live, run_id, outbox)
    assert up.flush(deadline_s=30, interval_s=1)
    assert up.unsent == 0 and not list(outbox.glob("*.json"))
    assert up.log({"train_loss": 0.3, "val_robust_acc": 0.3}, step=3)
    assert up.log({"train_loss": 0.3, "val_robust_acc": 0.3}, step=3)  # a re-run of the same epoch
    for key in ("train_loss", "val_robust_acc"):
        assert _steps(live, run_id, key) == [1, 2, 3], key
    live.set_terminated(run_id)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_metrics_parked_on_s3_storage_outlive_the_logger_and_are_sent_once(mlflow_server, s3_server, monkeypatch):
    """Runs stored on ``s3://``: the outbox is a folder under the run's prefix in the bucket; metrics parked
    there during an outage are found by another logger (another process, after a restart) and sent once."""
    import pyarrow.fs as pafs

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    configure_client_retries()
    live = _client(mlflow_server.address)
    exp = live.get_experiment_by_name("outbox-test") or live.get_experiment(live.create_experiment("outbox-test"))
    run_id = live.create_run(exp.experiment_id).info.run_id
    outbox = outbox_for(s3_server.uri("outbox-test"), "run-s3")
    assert outbox == f"s3://{s3_server.bucket}/outbox-test/run-s3/mlflow-outbox"

    down = RunLogger(_client(f"http://127.0.0.1:{free_port()}"), run_id, outbox)
    assert down.log({"train_loss": 0.5, "val_robust_acc": 0.1}, step=1) is False
    assert down.log({"train_loss": 0.4, "val_robust_acc": 0.2}, step=2) is False
    assert down.pending == []
    fs, path = pafs.FileSystem.from_uri(outbox)
    parked = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]
    assert len(parked) == 2 and all(name.endswith(".json") for name in parked)

    up = RunLogger(live, run_id, outbox)  # nothing in memory: what it sends comes from the bucket
    assert up.unsent == 4
    assert up.flush(deadline_s=30, interval_s=1)
    assert up.unsent == 0 and fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)) == []
    for key in ("train_loss", "val_robust_acc"):
        assert _steps(live, run_id, key) == [1, 2], key
    live.set_terminated(run_id)
