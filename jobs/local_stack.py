"""A local Ray head and MLflow tracking server for development, demos and tests.

    python -m jobs.local_stack up     [--root DIR] [--ray-port 6379] [--dashboard-port 8265]
                                      [--mlflow-port 5000] [--host 127.0.0.1] [--num-cpus N]
    python -m jobs.local_stack status [--root DIR]
    python -m jobs.local_stack down   [--root DIR]

``up`` is idempotent: a service this stack started earlier (its pid file names a live
process) or any service answering at the requested address is reused, not started
twice. ``down`` stops exactly the processes whose pid files lie under the root; it never
touches other Ray instances (no ``ray stop``).

Layout under the root (default ``.local/`` in the repository, git-ignored)::

    mlflow/mlflow.db  mlflow/artifacts/   the tracking server's stores
    logs/<service>.log                    stdout/stderr of each service
    run/<service>.json                    pid files: pid, start time, address
    raytmp/                               Ray's --temp-dir (session logs), or a short
                                          folder under the system temp dir when the
                                          root's path is too long for Unix sockets
    checkpoints/                          default STABLE_SNN_STORAGE_PATH for local jobs

Ray is started with ``ray start --block`` in its own session (process group), with
``RAY_AUTH_MODE=disabled``, the dashboard and job API on ``--host`` (127.0.0.1), and
``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`` so that stopping it takes seconds. Ray binds
its core ports (GCS, raylet, object manager, workers) on all interfaces whatever
``--host`` says; only the dashboard / job API (the part that runs code) follows ``--host``.

Linux only (process trees are read from /proc).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("stable_snn.local_stack")

REPO_ROOT = Path(__file__).resolve().parents[1]
MLFLOW = "mlflow"
RAY_HEAD = "ray-head"
RAY_WORKER = "ray-worker"
# Unix socket paths are limited to 107 bytes; Ray puts
# <temp-dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (~67 bytes) under its temp dir.
MAX_RAY_TEMP_DIR_LEN = 38
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Service:
    """A process started (or found answering) by this module.

    ``address`` is what clients use: the MLflow tracking URI, or the Ray dashboard / job API
    URL (``JobSubmissionClient(address)``, ``ray job submit --address``). ``pid`` is the
    process-group leader this stack started, ``None`` for a service found answering but
    started by someone else (``stop`` leaves it alone). Ray services also carry
    ``gcs_address`` ("ip:port", for ``ray start --address`` and ``ray.init(address=...)``)
    and ``log_dir`` (the Ray session's log folder).
    """

    name: str
    address: str
    pid: int | None
    log: Path
    kind: str = ""
    gcs_address: str | None = None
    log_dir: Path | None = None
    reused: bool = False
    started_at: float | None = field(default=None, repr=False)  # /proc start time of pid (pid-reuse guard)
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "address": self.address, "pid": self.pid,
            "log": str(self.log), "gcs_address": self.gcs_address,
            "log_dir": str(self.log_dir) if self.log_dir else None, "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, data: dict) -> Service:
        return cls(
            name=data["name"], kind=data.get("kind", ""), address=data["address"], pid=data.get("pid"),
            log=Path(data["log"]), gcs_address=data.get("gcs_address"),
            log_dir=Path(data["log_dir"]) if data.get("log_dir") else None, started_at=data.get("started_at"),
        )


class StackError(RuntimeError):
    """A service did not start, or a port it needs is taken."""


# ----------------------------------------------------------------------------- ports and probes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, OSError, ValueError):
        return None


def mlflow_answers(address: str) -> bool:
    """The tracking server at ``address`` answers ``GET /health`` with 200."""
    got = _http_get(address.rstrip("/") + "/health")
    return got is not None and got[0] == 200


def ray_answers(address: str) -> bool:
    """The Ray dashboard at ``address`` serves the job API (``/api/version`` and ``/api/jobs/``)."""
    got = _http_get(address.rstrip("/") + "/api/version")
    if got is None or got[0] != 200 or "ray_version" not in got[1]:
        return False
    jobs = _http_get(address.rstrip("/") + "/api/jobs/")
    return jobs is not None and jobs[0] == 200


def answers(service: Service) -> bool:
    """The service answers its clients (a worker node has no endpoint of its own: it runs)."""
    if service.kind == MLFLOW:
        return mlflow_answers(service.address)
    if service.kind == RAY_HEAD:
        return ray_answers(service.address)
    return _alive(service)


# ----------------------------------------------------------------------------- /proc process table


def _proc_stat(pid: int) -> tuple[int, int, str, int] | None:
    """(ppid, pgid, state, start time in clock ticks) of ``pid``, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return int(rest[1]), int(rest[2]), rest[0], int(rest[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[2] not in ("Z", "X")


def _alive(service: Service) -> bool:
    """The service's leader process runs and is the process this stack started (not a reused pid)."""
    if service.pid is None:
        return False
    st = _proc_stat(service.pid)
    if st is None or st[2] in ("Z", "X"):
        return False
    return service.started_at is None or st[3] == service.started_at


def _tree(root_pid: int) -> dict[int, int]:
    """Descendants of ``root_pid`` and members of its process group, with their start times."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            table[int(entry)] = st
    members = {root_pid}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, pgid, _, _) in table.items():
            if pid not in members and (ppid in members or pgid == root_pid):
                members.add(pid)
                grew = True
    return {pid: table[pid][3] for pid in members if pid in table}


def _still_running(procs: dict[int, int]) -> dict[int, int]:
    out = {}
    for pid, start in procs.items():
        st = _proc_stat(pid)
        if st is not None and st[3] == start and st[2] not in ("Z", "X"):
            out[pid] = start
    return out


def _wait_gone(procs: dict[int, int], deadline: float, children: list[subprocess.Popen]) -> dict[int, int]:
    while True:
        for proc in children:
            proc.poll()  # reap our own children so they do not linger as zombies
        left = _still_running(procs)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def _group_members(pgid: int, not_before: int) -> dict[int, int]:
    """Running members of process group ``pgid`` started no earlier than its leader (``not_before``)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            if st[1] == pgid and st[3] >= not_before and st[2] not in ("Z", "X"):
                out[int(entry)] = st[3]
    return out


def stop(service: Service, timeout: float = 30.0) -> None:
    """Stop a service this stack started: SIGTERM its leader, then SIGKILL whatever of its
    process tree and process group is left after ``timeout`` / 2. A service with ``pid=None``
    (found answering, started elsewhere) or whose pid now names another process is left alone."""
    stop_all([service], timeout)


def stop_all(services: list[Service], timeout: float = 30.0) -> list[str]:
    """Stop several services at once (same rules as ``stop``); returns the names of those stopped."""
    ours = []
    for svc in services:
        if svc.pid is None:
            log.info("%s at %s was not started by this stack: leaving it running", svc.name, svc.address)
        elif _alive(svc):
            ours.append(svc)
        elif svc._proc is not None:
            svc._proc.poll()
    if not ours:
        return []
    deadline = time.monotonic() + timeout
    trees = {svc.name: _tree(svc.pid) for svc in ours}
    procs = {pid: start for tree in trees.values() for pid, start in tree.items()}
    children = [svc._proc for svc in ours if svc._proc is not None]
    # Only the leaders get SIGTERM: `ray start --block` then shuts its node down in order
    # (signalling the whole group first would kill the GCS the raylet still talks to).
    for svc in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(svc.pid, signal.SIGTERM)
    left = _wait_gone(procs, time.monotonic() + timeout / 2, children)
    if left:
        for svc in ours:
            left.update(_group_members(svc.pid, svc.started_at or 0))  # members started after the snapshot
        log.warning("%s: %d processes ignored SIGTERM, killing them", ", ".join(t for t in trees), len(left))
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        left = _wait_gone(left, deadline, children)
    if left:
        raise StackError(f"processes {sorted(left)} of {', '.join(trees)} survived SIGKILL")
    return [svc.name for svc in ours]


# ----------------------------------------------------------------------------- layout and pid files


def project_dir() -> Path:
    """The repository (or the working directory, for an installed package)."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()


def default_root() -> Path:
    """``.local/`` in the repository."""
    return project_dir() / ".local"


def ray_temp_dir(root: Path) -> Path:
    """Ray's --temp-dir for ``root``: ``root/raytmp`` when short enough for Unix sockets, otherwise a
    folder under the system temp dir named after a hash of the root (so ``down`` finds it again)."""
    root = Path(root).resolve()
    candidate = root / "raytmp"  # not "ray": a folder named ray in a job's cwd would shadow the package
    if len(str(candidate)) <= MAX_RAY_TEMP_DIR_LEN:
        return candidate
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    short = Path(tempfile.gettempdir()) / f"ssnn-ray-{digest}"
    if len(str(short)) > MAX_RAY_TEMP_DIR_LEN:
        short = Path("/tmp") / f"ssnn-ray-{digest}"
    return short


def _state_file(root: Path, name: str) -> Path:
    return Path(root).resolve() / "run" / f"{name}.json"


def _save(root: Path, service: Service) -> None:
    path = _state_file(root, service.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(service.to_json(), indent=2) + "\n")


def _load(root: Path, name: str) -> Service | None:
    path = _state_file(root, name)
    try:
        return Service.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None


def recorded(root: Path) -> list[Service]:
    """Services whose pid files lie under ``root`` (live or stale), workers first, then head, then MLflow."""
    folder = Path(root).resolve() / "run"
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if (svc := _load(root, path.stem)) is not None:
            found.append(svc)
    order = {RAY_WORKER: 0, RAY_HEAD: 1, MLFLOW: 2}
    return sorted(found, key=lambda s: (order.get(s.kind, 3), s.name))


@contextlib.contextmanager
def _lock(root: Path):
    path = Path(root).resolve() / "run" / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not installed next to {sys.executable} nor on PATH")
    return found


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` detached, in its own session, writing a fresh ``log_path`` (readiness reads it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(cwd),
            start_new_session=True,  # own session and process group: survives the caller, stoppable as a group
        )


def _log_tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _ensure_port_free(host: str, port: int, what: str) -> None:
    if port_open(_client_host(host), port):
        raise StackError(f"{what}: port {port} on {host} is already in use; choose another port")


# ----------------------------------------------------------------------------- MLflow


def start_mlflow_server(root: Path, port: int, host: str = "127.0.0.1", timeout: float = 120.0,
                        wait: bool = True) -> Service:
    """Start ``mlflow server`` with a sqlite store and local artifacts under ``root/mlflow``.

    Detached in its own session, logging to ``root/logs/mlflow.log``, pid file ``root/run/mlflow.json``.
    With ``wait`` (default) returns once ``GET /health`` answers (about 14-25 s here). Raises
    ``StackError`` when the port is taken or the server dies or does not answer in ``timeout`` s.
    """
    root = Path(root).resolve()
    _ensure_port_free(host, port, "MLflow server")
    store = root / "mlflow"
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"),
        "--host", host, "--port", str(port), "--workers", "1",
    ]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log_path = root / "logs" / "mlflow.log"
    proc = _spawn(cmd, log_path, env, cwd=root)
    service = Service(name=MLFLOW, kind=MLFLOW, address=f"http://{_client_host(host)}:{port}", pid=proc.pid,
                      log=log_path, started_at=_proc_stat(proc.pid)[3], _proc=proc)
    _save(root, service)
    if wait:
        wait_ready(service, timeout)
    return service


# ----------------------------------------------------------------------------- Ray


def _ray_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    # `python` in a job's entrypoint must be this interpreter (the venv), even when it is not activated.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]])
    env.update(
        RAY_AUTH_MODE="disabled",  # a token left in ~/.ray by a local ray.init() would otherwise turn auth on
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # stop in seconds instead of draining for 30 s
    )
    env.update(extra or {})
    return env


def _node_ip_args(host: str) -> list[str]:
    # Ray maps loopback to the machine's address itself; pass an explicit non-loopback address through.
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""):
        return []
    return ["--node-ip-address", host]


def start_ray_head(root: Path, port: int, dashboard_port: int, host: str = "127.0.0.1",
                   num_cpus: int | None = None, resources: dict | None = None, timeout: float = 120.0,
                   wait: bool = True, env: dict[str, str] | None = None,
                   object_store_memory: int | None = None, cwd: Path | None = None) -> Service:
    """Start a Ray head (``ray start --head --block``) with the dashboard and job API on ``host``.

    ``port`` is the GCS port, ``dashboard_port`` the dashboard / job API port. ``env`` is added to the
    environment of every Ray process, hence of every job driver (e.g. ``MLFLOW_TRACKING_URI``). Job
    drivers submitted without ``--working-dir`` run in ``cwd`` (default: the repository). With ``wait``
    returns once the job API answers (about 9-30 s here) and ``gcs_address`` / ``log_dir`` are known.
    """
    root = Path(root).resolve()
    _ensure_port_free(host, dashboard_port, "Ray dashboard")
    _ensure_port_free(host, port, "Ray GCS")
    temp_dir = ray_temp_dir(root)
    temp_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        _executable("ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--port", str(port),
        "--include-dashboard", "true", "--dashboard-host", host, "--dashboard-port", str(dashboard_port),
        # Ray's fixed defaults (52365, 10001) would collide with any other Ray on the host.
        "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
        "--temp-dir", str(temp_dir), *_node_ip_args(host),
    ]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if resources:
        cmd += ["--resources", json.dumps(resources)]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(object_store_memory)]
    log_path = root / "logs" / f"{RAY_HEAD}.log"
    proc = _spawn(cmd, log_path, _ray_env(env), cwd=Path(cwd) if cwd else project_dir())
    service = Service(name=RAY_HEAD, kind=RAY_HEAD, address=f"http://{_client_host(host)}:{dashboard_port}",
                      pid=proc.pid, log=log_path, gcs_address=f"{_client_host(host)}:{port}",
                      log_dir=temp_dir / "session_latest" / "logs", started_at=_proc_stat(proc.pid)[3], _proc=proc)
    _save(root, service)
    if wait:
        wait_ready(service, timeout)
        _save(root, service)
    return service


def start_ray_worker(root: Path, gcs_address: str, num_cpus: int, resources: dict | None = None,
                     timeout: float = 120.0, env: dict[str, str] | None = None,
                     object_store_memory: int | None = None, cwd: Path | None = None,
                     wait: bool = True) -> Service:
    """Join a second Ray node on this machine to the head at ``gcs_address``.

    The worker gets no ``--temp-dir``: Ray gives a non-head node the head's temp dir (read from
    the GCS), so both nodes share one session folder and its logs (sockets are named per node).
    With ``wait`` (default) returns once ``ray start`` reports the node started; without, call
    ``wait_ready`` later (once the head's GCS accepts connections, ``ray start --address`` waits for
    the head's raylet itself).
    """
    root = Path(root).resolve()
    cmd = [
        _executable("ray"), "start", "--block", "--disable-usage-stats", "--address", gcs_address,
        "--num-cpus", str(num_cpus), "--dashboard-agent-listen-port", str(free_port()),
    ]
    if resources:
        cmd += ["--resources", json.dumps(resources)]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(object_store_memory)]
    n = 1
    while (known := _load(root, f"{RAY_WORKER}-{n}")) is not None and _alive(known):
        n += 1
    name = f"{RAY_WORKER}-{n}"
    log_path = root / "logs" / f"{name}.log"
    proc = _spawn(cmd, log_path, _ray_env(env), cwd=Path(cwd) if cwd else project_dir())
    service = Service(name=name, kind=RAY_WORKER, address=gcs_address, pid=proc.pid, log=log_path,
                      gcs_address=gcs_address, started_at=_proc_stat(proc.pid)[3], _proc=proc)
    _save(root, service)
    if wait:
        wait_ready(service, timeout)
        _save(root, service)
    return service


def _logged_log_dir(log_path: Path) -> Path | None:
    """The session log folder that ``ray start --block`` prints as its last start-up line
    ("Process exit logs will be saved to: <session>/logs/ray_process_exit.log"), once the node
    runs and its GCS address is written; None before that."""
    try:
        text = _ANSI.sub("", log_path.read_text(errors="replace"))
    except OSError:
        return None
    found = re.findall(r"Process exit logs will be saved to: (\S+)/ray_process_exit\.log", text)
    return Path(found[-1]) if found else None


def _ready(service: Service) -> bool:
    if service.kind == MLFLOW:
        return mlflow_answers(service.address)
    if service.kind == RAY_HEAD:
        if not ray_answers(service.address):
            return False
        if service.reused:
            return True
    return _logged_log_dir(service.log) is not None


def wait_ready(service: Service, timeout: float = 120.0) -> Service:
    """Block until ``service`` answers (MLflow ``/health``, Ray job API, worker node started).

    Raises ``StackError`` with the tail of its log if its process exits or ``timeout`` s pass;
    in both cases what was started is stopped first.
    """
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    while not _ready(service):
        if service.pid is not None and not _alive(service):
            raise StackError(f"{service.name} exited during start-up; log {service.log}:\n{_log_tail(service.log)}")
        if time.monotonic() >= deadline:
            stop(service)
            raise StackError(f"{service.name} did not answer within {timeout:.0f} s; log {service.log}:\n"
                             f"{_log_tail(service.log)}")
        time.sleep(0.25)
    if service.kind in (RAY_HEAD, RAY_WORKER) and not service.reused:
        service.log_dir = _logged_log_dir(service.log) or service.log_dir
        if service.kind == RAY_HEAD and service.log_dir is not None and service.gcs_address:
            # The canonical GCS address (node ip:port), written by `ray start` into its temp dir.
            marker = service.log_dir.parent.parent / "ray_current_cluster"
            with contextlib.suppress(OSError, IndexError):
                written = marker.read_text().split()[0]
                if written.rsplit(":", 1)[-1] == service.gcs_address.rsplit(":", 1)[-1]:
                    service.gcs_address = written
    log.info("%s ready at %s after %.1f s", service.name, service.address, time.monotonic() - t0)
    return service


# ----------------------------------------------------------------------------- the stack


def _reuse(root: Path, name: str, address: str, probe, timeout: float) -> Service | None:
    """Our own live service from its pid file, or a foreign one answering at ``address``."""
    own = _load(root, name)
    if own is not None and _alive(own):
        if own.address != address:
            log.warning("%s already runs at %s (not %s): reusing it", name, own.address, address)
        own.reused = True
        return wait_ready(own, timeout)
    if own is not None:
        _state_file(root, name).unlink(missing_ok=True)  # stale pid file
    if probe(address):
        log.warning("%s: something already answers at %s, not started by this stack: reusing it "
                    "(down will not stop it)", name, address)
        return Service(name=name, kind=name, address=address, pid=None, log=Path(os.devnull), reused=True)
    return None


def up(root: Path | None = None, ray_port: int = 6379, dashboard_port: int = 8265, mlflow_port: int = 5000,
       host: str = "127.0.0.1", num_cpus: int | None = None, timeout: float = 180.0) -> dict[str, Service]:
    """Start (or reuse) the MLflow server and the Ray head; returns ``{"mlflow": ..., "ray-head": ...}``.

    Both start in parallel. The Ray head gets ``MLFLOW_TRACKING_URI`` (this stack's server) and
    ``STABLE_SNN_STORAGE_PATH`` (``$STABLE_SNN_STORAGE_PATH`` or ``root/checkpoints``) in its
    environment, so jobs submitted to it log and checkpoint there without further settings.
    """
    root = Path(root or default_root()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    client = _client_host(host)
    with _lock(root):
        mlflow = _reuse(root, MLFLOW, f"http://{client}:{mlflow_port}", mlflow_answers, timeout)
        if mlflow is None:
            mlflow = start_mlflow_server(root, mlflow_port, host=host, wait=False)
        ray = _reuse(root, RAY_HEAD, f"http://{client}:{dashboard_port}", ray_answers, timeout)
        if ray is None:
            storage = os.environ.get("STABLE_SNN_STORAGE_PATH") or str(root / "checkpoints")
            env = {"MLFLOW_TRACKING_URI": mlflow.address, "STABLE_SNN_STORAGE_PATH": storage}
            ray = start_ray_head(root, ray_port, dashboard_port, host=host, num_cpus=num_cpus, env=env, wait=False)
        try:
            for svc in (mlflow, ray):
                wait_ready(svc, timeout)
                if not svc.reused:
                    _save(root, svc)  # now with the GCS address and log folder Ray reported
        except StackError:
            for svc in (ray, mlflow):
                if not svc.reused:
                    stop(svc)
                    _state_file(root, svc.name).unlink(missing_ok=True)
            raise
    return {MLFLOW: mlflow, RAY_HEAD: ray}


def down(root: Path | None = None, timeout: float = 30.0) -> list[str]:
    """Stop every service with a pid file under ``root`` (workers, head, MLflow); returns their names."""
    root = Path(root or default_root()).resolve()
    with _lock(root):
        services = recorded(root)
        stopped = stop_all(services, timeout)  # in parallel: one wait for all of them
        for svc in services:
            _state_file(root, svc.name).unlink(missing_ok=True)
    return stopped


def status(root: Path | None = None) -> list[tuple[Service, bool, bool]]:
    """``(service, process alive, answering)`` for every pid file under ``root``."""
    root = Path(root or default_root()).resolve()
    return [(svc, _alive(svc), _alive(svc) and answers(svc)) for svc in recorded(root)]


# ----------------------------------------------------------------------------- CLI


def _describe(svc: Service) -> str:
    how = "reused" if svc.reused else "started"
    owner = f"pid {svc.pid}" if svc.pid is not None else "not ours"
    if svc.kind == MLFLOW:
        return f"MLflow UI     {svc.address}  ({how}, {owner}, log {svc.log})"
    extra = f", GCS {svc.gcs_address}" if svc.gcs_address else ""
    logs = f", logs {svc.log_dir}" if svc.log_dir else ""
    return f"Ray dashboard {svc.address}  ({how}, {owner}{extra}{logs}, start log {svc.log})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.local_stack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--root", type=Path, default=None, help="state folder (default: .local/ in the repository)")
    p.add_argument("--ray-port", type=int, default=6379, help="Ray GCS port (0: pick a free one)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard / job API port")
    p.add_argument("--mlflow-port", type=int, default=5000, help="MLflow tracking server port")
    p.add_argument("--host", default="127.0.0.1", help="interface the dashboard and MLflow bind to")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs the Ray head offers (default: all)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each service")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = (args.root or default_root()).resolve()

    if args.command == "up":
        ray_port = args.ray_port or free_port()
        try:
            services = up(root, ray_port, args.dashboard_port, args.mlflow_port, args.host, args.num_cpus, args.timeout)
        except StackError as e:
            print(f"local stack: {e}", file=sys.stderr)
            return 1
        mlflow, ray = services[MLFLOW], services[RAY_HEAD]
        print(_describe(mlflow))
        print(_describe(ray))
        print("# for your shell (ray job submit reads RAY_API_SERVER_ADDRESS, ray.init() RAY_ADDRESS):")
        print(f"export MLFLOW_TRACKING_URI={mlflow.address}")
        print(f"export RAY_API_SERVER_ADDRESS={ray.address}")
        if ray.gcs_address:
            print(f"export RAY_ADDRESS={ray.gcs_address}")
        print("export RAY_AUTH_MODE=disabled")
        return 0
    if args.command == "down":
        stopped = down(root)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing to stop under {root}")
        return 0
    rows = status(root)
    if not rows:
        print(f"nothing started from {root}")
        return 1
    for svc, alive, ok in rows:
        state = "answering" if ok else ("running, not answering" if alive else "stopped (stale pid file)")
        print(f"{svc.name:<13} {state:<24} {svc.address}  pid {svc.pid}  log {svc.log}")
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
