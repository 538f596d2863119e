"""infra.local.stack: the local Ray head + MLflow server, their pid files, and stopping exactly them."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from infra.local import stack as ls
from tests.fixtures_services import remove_ray_temp_dirs

REPO = Path(__file__).resolve().parents[3]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.local.stack", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def spawn_tree() -> subprocess.Popen:
    """A group leader with two children, one of them in a process group of its own (as Ray's workers are)."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & setsid sleep 300 & wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(ls.process_tree(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def service_for(proc: subprocess.Popen, **kw) -> ls.Service:
    return ls.Service(name="test", address="", pid=proc.pid, log=Path(os.devnull), kind="test",
                      started_at=ls.proc_stat(proc.pid)[3], _proc=proc, **kw)


# ----------------------------------------------------------------------------- fast: processes and pid files


def test_free_port_is_bindable_and_outside_the_ports_ray_and_the_os_hand_out():
    lo, _ = ls.ephemeral_ports()
    ports = {ls.free_port() for _ in range(20)}
    for port in ports:
        assert 20000 <= port < lo, port  # above Ray's worker ports (10002-19999), below the ephemeral range
        assert not ls.port_open("127.0.0.1", port)
    assert len(ports) > 1  # drawn at random: two stacks started at once do not pick the same port


def test_free_port_skips_a_taken_port(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # the first candidate drawn is the taken port
        monkeypatch.setattr(ls.random, "sample", lambda population, k: [busy, *list(population)[:k - 1]])
        monkeypatch.setattr(ls, "PORTS_ABOVE_RAY_WORKERS", busy - 10)
        monkeypatch.setattr(ls, "ephemeral_ports", lambda: (busy + 2000, 60999))
        port = ls.free_port()
    assert port != busy and busy - 10 <= port


def test_ray_temp_dir_stays_short_enough_for_unix_sockets(tmp_path):
    long_root = tmp_path / ("x" * 80)
    short = ls.ray_temp_dir(long_root)
    assert len(str(short)) <= ls.MAX_RAY_TEMP_DIR_LEN
    assert short == ls.ray_temp_dir(long_root)  # found again by `down` / `status`
    assert short != ls.ray_temp_dir(tmp_path / ("y" * 80))
    assert ls.ray_temp_dir(Path("/srv/s")) == Path("/srv/s/raytmp")


def test_stop_ends_the_whole_tree_including_own_group_children():
    proc = spawn_tree()
    tree = ls.process_tree(proc.pid)
    assert len(tree) == 3
    ls.stop(service_for(proc), timeout=4)
    assert ls.still_running(tree) == {}
    assert proc.returncode is not None  # reaped, no zombie left behind


def test_stop_leaves_foreign_services_and_reused_pids_alone():
    ls.stop(ls.Service(name="foreign", address="http://127.0.0.1:1", pid=None, log=Path(os.devnull)))
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        recycled = service_for(proc)
        recycled.started_at += 1  # the pid file's process ended and the pid went to another process
        ls.stop(recycled, timeout=2)
        assert ls.alive(service_for(proc))
    finally:
        proc.kill()
        proc.wait()


def test_stale_pid_files_are_reported_and_cleared(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    ls.save(tmp_path, ls.Service(name=ls.MLFLOW, kind=ls.MLFLOW, address="http://127.0.0.1:1", pid=dead.pid,
                                  log=tmp_path / "logs" / "mlflow.log", started_at=1))
    [(svc, alive, answering)] = ls.status(tmp_path)
    assert svc.name == ls.MLFLOW and not alive and not answering
    result = cli("status", "--root", str(tmp_path))
    assert result.returncode == 1 and "stale" in result.stdout
    assert ls.down(tmp_path) == []
    assert ls.recorded(tmp_path) == []


class _FakeServices(http.server.BaseHTTPRequestHandler):
    """Answers like an MLflow server and a Ray dashboard (for the reuse path; starts nothing)."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = {"/health": b"OK", "/api/version": json.dumps({"ray_version": "2.60.0"}).encode(),
                "/api/jobs/": b"[]"}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


def test_up_reuses_services_it_did_not_start_and_down_leaves_them(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServices)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        services = ls.up(tmp_path, ray_port=ls.free_port(), dashboard_port=port, mlflow_port=port, timeout=10)
        assert all(s.reused and s.pid is None for s in services.values())
        assert ls.recorded(tmp_path) == []  # nothing of ours to stop
        assert ls.down(tmp_path) == []
        assert ls.mlflow_answers(f"http://127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()


# ----------------------------------------------------------------------------- slow: the real services


@pytest.fixture
def stack_root(tmp_path):
    """A root for a stack of this test's own; whatever is left running is stopped afterwards."""
    root = tmp_path / "stack"
    yield root
    ls.down(root)
    remove_ray_temp_dirs(root, [f"{ls.RAY_WORKER}-1"])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_up_twice_reuses_then_down_stops_everything(stack_root, monkeypatch):
    root = stack_root
    ports = {"--ray-port": ls.free_port(), "--dashboard-port": ls.free_port(), "--mlflow-port": ls.free_port()}
    args = [x for k, v in ports.items() for x in (k, str(v))]

    t0 = time.monotonic()
    first = cli("up", "--root", str(root), *args, timeout=200)
    assert first.returncode == 0, first.stderr
    started_in = time.monotonic() - t0
    mlflow_uri = f"http://127.0.0.1:{ports['--mlflow-port']}"
    dashboard = f"http://127.0.0.1:{ports['--dashboard-port']}"
    assert f"export MLFLOW_TRACKING_URI={mlflow_uri}" in first.stdout
    assert ls.mlflow_answers(mlflow_uri) and ls.ray_answers(dashboard)
    pids = {s.name: s.pid for s in ls.recorded(root)}
    assert set(pids) == {ls.MLFLOW, ls.RAY_HEAD}

    second = cli("up", "--root", str(root), *args)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("(reused, pid") == 2
    assert {s.name: s.pid for s in ls.recorded(root)} == pids

    head = next(s for s in ls.recorded(root) if s.name == ls.RAY_HEAD)
    t0 = time.monotonic()
    worker = ls.start_ray_worker(root, head.gcs_address, num_cpus=1, resources={"second_node": 1})

    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_nodes

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert len([n for n in list_nodes(address=dashboard) if n.state == "ALIVE"]) == 2
    worker_in = time.monotonic() - t0
    client = JobSubmissionClient(dashboard)
    t0 = time.monotonic()
    assert client.list_jobs() == []
    # A driver gets this interpreter as `python`, the repository as cwd, and the stack's settings.
    job = client.submit_job(entrypoint=(
        "python -c \"import os, ray; ray.init(); "
        "print('RES', ray.cluster_resources().get('second_node'), os.environ['MLFLOW_TRACKING_URI'], os.getcwd())\""
    ))
    deadline = time.monotonic() + 90
    while not client.get_job_status(job).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    job_in = time.monotonic() - t0
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs
    assert f"RES 1.0 {mlflow_uri} {REPO}" in logs

    trees = [ls.process_tree(s.pid) for s in ls.recorded(root)]
    t0 = time.monotonic()
    down = cli("down", "--root", str(root))
    stopped_in = time.monotonic() - t0
    assert down.returncode == 0, down.stderr
    assert set(down.stdout.removeprefix("stopped: ").strip().split(", ")) == {worker.name, ls.RAY_HEAD, ls.MLFLOW}
    assert all(ls.still_running(tree) == {} for tree in trees)
    assert not ls.port_open("127.0.0.1", ports["--mlflow-port"])
    assert not ls.port_open("127.0.0.1", ports["--dashboard-port"])
    assert not ls.port_open("127.0.0.1", ports["--ray-port"])
    assert ls.recorded(root) == []
    assert cli("status", "--root", str(root)).returncode == 1
    print(f"up {started_in:.1f} s, worker {worker_in:.1f} s, job {job_in:.1f} s, down {stopped_in:.1f} s")


def test_a_pid_file_round_trips_a_started_service(tmp_path):
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        service = service_for(proc, gcs_address="127.0.0.1:1")
        ls.save(tmp_path, service)
        [loaded] = ls.recorded(tmp_path)
        assert (loaded.name, loaded.pid, loaded.started_at, loaded.gcs_address) == ("test", proc.pid, service.started_at,
                                                                                    "127.0.0.1:1")
        assert ls.alive(loaded) and loaded._proc is None
    finally:
        proc.kill()
        proc.wait()
