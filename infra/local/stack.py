# Over 400 lines: one lifecycle (start, pid records, status, process-tree stop) of two services that
# `ray stop` cannot scope; split, its halves would share every helper.
"""A local Ray head and MLflow tracking server for development, demos and tests.

    python -m infra.local.stack up     [--root DIR] [--ray-port 6379] [--dashboard-port 8265]
                                       [--mlflow-port 5000] [--host 127.0.0.1] [--num-cpus N]
    python -m infra.local.stack status [--root DIR]
    python -m infra.local.stack down   [--root DIR]

``ray start`` and ``mlflow server`` do the work; this module adds only what they lack here.
``ray stop`` stops every Ray instance on the host, so each service runs in a session (process
group) of its own with its own ``--temp-dir``, a pid file records its pid and start time, and
``down`` stops exactly those processes: the whole process tree, since Ray's workers leave the
group.  The servers bind 127.0.0.1, Ray runs with ``RAY_AUTH_MODE=disabled``, and ``up`` waits
until each service answers (MLflow ``/health``, the Ray job API).  ``up`` reuses a service it
started earlier, or one answering at the requested address (which ``down`` then leaves alone).

Layout under the root (default ``.local/`` in the repository, git-ignored): ``mlflow/`` (the
tracking server's stores), ``logs/<service>.log``, ``run/<service>.json`` (pid files),
``raytmp/`` (Ray's temp dir, or a short folder in the system temp dir when the root's path is too
long for Unix sockets), ``checkpoints/`` (the jobs' default storage path).  Linux only (/proc).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
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

from jobs.openmp import openmp_env

log = logging.getLogger("stable_snn.local_stack")

REPO = Path(__file__).resolve().parents[2]
MLFLOW, RAY_HEAD, RAY_WORKER = "mlflow", "ray-head", "ray-worker"
# Unix socket paths are limited to 107 bytes; Ray puts
# <temp-dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (~67 bytes) under its temp dir.
MAX_RAY_TEMP_DIR_LEN = 38
STARTED_LINE = "Process exit logs will be saved to:"  # the last start-up line of `ray start --block`
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class StackError(RuntimeError):
    """A service did not start, or a port it needs is taken."""


@dataclass
class Service:
    """A process started (or found answering) by this module.

    ``address``: the MLflow tracking URI, or the Ray dashboard / job API URL.  ``pid``: the process-group
    leader started here, None for a service found answering (``stop`` leaves it alone).  Ray services
    also carry ``gcs_address`` ("ip:port", for ``ray start --address`` / ``ray.init(address=...)``).
    """

    name: str
    address: str
    pid: int | None
    log: Path
    kind: str = ""
    gcs_address: str | None = None
    reused: bool = False
    started_at: int | None = field(default=None, repr=False)  # /proc start time of pid (pid-reuse guard)
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {f.name: str(v) if isinstance(v := getattr(self, f.name), Path) else v
                for f in dataclasses.fields(self) if f.name not in ("_proc", "reused")}

    @classmethod
    def from_json(cls, data: dict) -> Service:
        known = {f.name for f in dataclasses.fields(cls)} - {"_proc", "reused"}
        return cls(**{k: v for k, v in data.items() if k in known} | {"log": Path(data["log"])})


# -- ports and probes --------------------------------------------------------------------------


# Ray's worker processes take ports from 10002-19999 (`ray start --min/max-worker-port`), and every other
# port Ray opens itself (raylet, object manager, agents, metrics) is one the OS hands out for port 0, from its
# ephemeral range. A port we choose for a service to bind later comes from between the two, so that none of
# the processes a Ray head starts in the meantime is given it (one from the ephemeral range was: the Ray
# Client server then failed to bind it, "Address already in use").
PORTS_ABOVE_RAY_WORKERS = 20000
LINUX_EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports() -> tuple[int, int]:
    """The OS's range of ports for port 0 (Linux's setting; its default elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        lo, hi = map(int, LINUX_EPHEMERAL_PORTS.read_text().split())
        return lo, hi
    return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now, below the ephemeral range and above Ray's worker ports (see
    above); the OS's choice where that gap is too small. Another process may still take it later."""
    lo, hi = PORTS_ABOVE_RAY_WORKERS, ephemeral_ports()[0] - 1
    candidates = random.sample(range(lo, hi + 1), k=min(64, hi - lo + 1)) if hi - lo >= 1000 else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, contextlib.suppress(OSError):
            s.bind((host, port))
            return s.getsockname()[1]
    raise StackError(f"no free TCP port on {host}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


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
    jobs = _http_get(address.rstrip("/") + "/api/jobs/") if got and got[0] == 200 and "ray_version" in got[1] else None
    return jobs is not None and jobs[0] == 200


def _started(log_path: Path) -> bool:
    """``ray start --block`` has printed its last start-up line: the node runs."""
    with contextlib.suppress(OSError):
        return STARTED_LINE in _ANSI.sub("", log_path.read_text(errors="replace"))
    return False


def answers(service: Service) -> bool:
    """The service answers its clients (a worker node has no endpoint of its own: it runs)."""
    probe = {MLFLOW: mlflow_answers, RAY_HEAD: ray_answers}.get(service.kind)
    return probe(service.address) if probe else alive(service)


# -- processes (/proc) -------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, int, str, int] | None:
    """(ppid, pgid, state, start time in clock ticks) of ``pid``, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return int(rest[1]), int(rest[2]), rest[0], int(rest[19])


def _running(st) -> bool:
    return st is not None and st[2] not in ("Z", "X")


def alive(service: Service) -> bool:
    """The service's leader runs and is the process started here (not a reused pid)."""
    st = proc_stat(service.pid) if service.pid is not None else None
    return _running(st) and (service.started_at is None or st[3] == service.started_at)


def _table() -> dict[int, tuple[int, int, str, int]]:
    return {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := proc_stat(int(e))) is not None}


def process_tree(root_pid: int) -> dict[int, int]:
    """``{pid: start time}`` of ``root_pid``, its descendants and the members of its process group."""
    table, members, grew = _table(), {root_pid}, True
    while grew:
        new = {p for p, (ppid, pgid, _, _) in table.items() if p not in members and (ppid in members or pgid == root_pid)}
        members |= new
        grew = bool(new)
    return {p: table[p][3] for p in members if p in table}


def still_running(procs: dict[int, int]) -> dict[int, int]:
    """The processes of ``procs`` that still run (same pid and start time)."""
    return {p: s for p, s in procs.items() if _running(st := proc_stat(p)) and st[3] == s}


def _wait_gone(procs: dict[int, int], deadline: float, children: list[subprocess.Popen]) -> dict[int, int]:
    while True:
        for proc in children:
            proc.poll()  # reap our own children so they do not linger as zombies
        left = still_running(procs)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def stop_all(services: list[Service], timeout: float = 30.0) -> list[str]:
    """Stop the services started here: SIGTERM to each leader (``ray start --block`` then shuts its node
    down in order), SIGKILL to whatever of their trees and groups is left after ``timeout`` / 2.  A
    service with ``pid=None`` or whose pid now names another process is left alone.  Returns the names stopped."""
    ours = [s for s in services if s.pid is not None and alive(s)]
    for s in services:
        if s.pid is None:
            log.info("%s at %s was not started by this stack: leaving it running", s.name, s.address)
        elif s not in ours and s._proc is not None:
            s._proc.poll()
    if not ours:
        return []
    deadline = time.monotonic() + timeout
    procs = {p: t for s in ours for p, t in process_tree(s.pid).items()}
    children = [s._proc for s in ours if s._proc is not None]
    for s in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, signal.SIGTERM)
    left = _wait_gone(procs, time.monotonic() + timeout / 2, children)
    if left:
        table = _table()  # members started after the snapshot
        left |= {p: st[3] for s in ours for p, st in table.items() if st[1] == s.pid and st[3] >= (s.started_at or 0)
                 and _running(st)}
        log.warning("%s: %d processes ignored SIGTERM, killing them", ", ".join(s.name for s in ours), len(left))
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        left = _wait_gone(left, deadline, children)
    if left:
        raise StackError(f"processes {sorted(left)} of {', '.join(s.name for s in ours)} survived SIGKILL")
    return [s.name for s in ours]


def stop(service: Service, timeout: float = 30.0) -> None:
    stop_all([service], timeout)


# -- pid files and start-up --------------------------------------------------------------------


def default_root() -> Path:
    return REPO / ".local"


def ray_temp_dir(root: Path) -> Path:
    """Ray's --temp-dir for ``root``: ``root/raytmp`` when short enough for Unix sockets, otherwise a
    folder in the system temp dir named after a hash of the root (so ``down`` finds it again)."""
    candidate = Path(root).resolve() / "raytmp"  # not "ray": a folder named ray in a job's cwd would shadow the package
    if len(str(candidate)) <= MAX_RAY_TEMP_DIR_LEN:
        return candidate
    digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]
    short = Path(tempfile.gettempdir()) / f"ssnn-ray-{digest}"
    return short if len(str(short)) <= MAX_RAY_TEMP_DIR_LEN else Path("/tmp") / f"ssnn-ray-{digest}"


def worker_temp_dir(root: Path, name: str) -> Path:
    """Ray's --temp-dir for the worker node ``name`` started under ``root``."""
    return ray_temp_dir(Path(root).resolve() / name)


def _pid_file(root: Path, name: str) -> Path:
    return Path(root).resolve() / "run" / f"{name}.json"


def save(root: Path, service: Service) -> None:
    path = _pid_file(root, service.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(service.to_json(), indent=2) + "\n")


def _load(root: Path, name: str) -> Service | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return Service.from_json(json.loads(_pid_file(root, name).read_text()))
    return None


def recorded(root: Path) -> list[Service]:
    """Services with a pid file under ``root`` (live or stale): workers, then the head, then MLflow."""
    folder = Path(root).resolve() / "run"
    found = [s for p in (sorted(folder.glob("*.json")) if folder.is_dir() else []) if (s := _load(root, p.stem))]
    return sorted(found, key=lambda s: ({RAY_WORKER: 0, RAY_HEAD: 1, MLFLOW: 2}.get(s.kind, 3), s.name))


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` is not installed next to {sys.executable} nor on PATH")
    return found


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _ensure_port_free(host: str, port: int, what: str) -> None:
    if port_open(_client_host(host), port):
        raise StackError(f"{what}: port {port} on {host} is already in use; choose another port")


def _log_tail(path: Path, n: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return "(no log)"


def _spawn(root: Path, service: Service, cmd: list[str], env: dict[str, str], cwd: Path, wait: bool,
           timeout: float) -> Service:
    """Start ``cmd`` detached in a session of its own (its own process group, surviving the caller),
    logging to ``service.log``; record its pid file; with ``wait``, return once it answers."""
    service.log.parent.mkdir(parents=True, exist_ok=True)
    with open(service.log, "wb") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        service._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         cwd=str(cwd), start_new_session=True)
    service.pid, service.started_at = service._proc.pid, proc_stat(service._proc.pid)[3]
    try:
        save(root, service)
        if wait:
            wait_ready(service, timeout)
    except BaseException:  # nothing started here is left running unrecorded
        stop(service)
        raise
    return service


def start_mlflow_server(root: Path, port: int, host: str = "127.0.0.1", timeout: float = 120.0,
                        wait: bool = True) -> Service:
    """``mlflow server`` with a sqlite store and local artifacts under ``root/mlflow`` (ready in 14-25 s here)."""
    root = Path(root).resolve()
    _ensure_port_free(host, port, "MLflow server")
    store = root / "mlflow"
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
           "--artifacts-destination", str(store / "artifacts"), "--host", host, "--port", str(port), "--workers", "1"]
    service = Service(MLFLOW, f"http://{_client_host(host)}:{port}", None, root / "logs" / "mlflow.log", kind=MLFLOW)
    return _spawn(root, service, cmd, dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), root, wait, timeout)


def _ray_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # `python` in a job's entrypoint must be this interpreter (the venv), even when it is not activated.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]])
    env.update(
        RAY_AUTH_MODE="disabled",  # a token left in ~/.ray by a local ray.init() would otherwise turn auth on
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # stop in seconds instead of draining for 30 s
        # Ray Train's preemption watcher polls for draining nodes and only logs them; the local stack is
        # one machine, and the watcher an actor process (about 4 s of CPU) per training run and restart
        RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0",
        # no Python workers started ahead of demand (a driver's first connection starts two): a job's
        # runtime env differs from theirs, so its tasks and actors could not use them, and each one is a
        # process importing Ray (about 3 s of CPU) for nothing
        RAY_enable_worker_prestart="0",
        RAY_prestart_worker_first_driver="0",
    )
    env.update(openmp_env(env))  # every worker, of submitted jobs too (jobs/openmp.py)
    return env | (extra or {})


def _ray_options(num_cpus, resources, object_store_memory) -> list[str]:
    # Ray's fixed default agent port (52365) would collide with any other Ray on the host.
    opts = ["--block", "--disable-usage-stats", "--dashboard-agent-listen-port", str(free_port())]
    opts += ["--num-cpus", str(num_cpus)] if num_cpus is not None else []
    opts += ["--resources", json.dumps(resources)] if resources else []
    return opts + (["--object-store-memory", str(object_store_memory)] if object_store_memory is not None else [])


def start_ray_head(root: Path, port: int, dashboard_port: int, host: str = "127.0.0.1", num_cpus: int | None = None,
                   resources: dict | None = None, timeout: float = 120.0, wait: bool = True,
                   env: dict[str, str] | None = None, object_store_memory: int | None = None,
                   cwd: Path | None = None) -> Service:
    """``ray start --head`` with the dashboard and job API on ``host``; ``env`` reaches every Ray process,
    hence every job driver, and drivers submitted without ``--working-dir`` run in ``cwd`` (the repository)."""
    root = Path(root).resolve()
    _ensure_port_free(host, dashboard_port, "Ray dashboard")
    _ensure_port_free(host, port, "Ray GCS")
    ray_temp_dir(root).mkdir(parents=True, exist_ok=True)
    cmd = [_executable("ray"), "start", "--head", "--port", str(port), "--include-dashboard", "true",
           "--dashboard-host", host, "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(free_port()),
           "--temp-dir", str(ray_temp_dir(root)), *_ray_options(num_cpus, resources, object_store_memory)]
    if host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""):
        cmd += ["--node-ip-address", host]  # Ray maps loopback to the machine's address itself
    client = _client_host(host)
    service = Service(RAY_HEAD, f"http://{client}:{dashboard_port}", None, root / "logs" / f"{RAY_HEAD}.log",
                      kind=RAY_HEAD, gcs_address=f"{client}:{port}")
    return _spawn(root, service, cmd, _ray_env(env), Path(cwd) if cwd else REPO, wait, timeout)


def start_ray_worker(root: Path, gcs_address: str, num_cpus: int, resources: dict | None = None,
                     timeout: float = 120.0, env: dict[str, str] | None = None,
                     object_store_memory: int | None = None, cwd: Path | None = None, wait: bool = True) -> Service:
    """Join a second Ray node on this machine to the head at ``gcs_address``, with a temp dir of its own
    (:func:`worker_temp_dir`), as on a machine of its own: in the head's, its runtime-env agent deleted
    the working dir a job submitted with ``--working-dir`` still ran in when its own workers ended."""
    root = Path(root).resolve()
    n = 1
    while (known := _load(root, f"{RAY_WORKER}-{n}")) is not None and alive(known):
        n += 1
    name = f"{RAY_WORKER}-{n}"
    worker_temp_dir(root, name).mkdir(parents=True, exist_ok=True)
    cmd = [_executable("ray"), "start", "--address", gcs_address, "--temp-dir", str(worker_temp_dir(root, name)),
           *_ray_options(num_cpus, resources, object_store_memory)]
    service = Service(name, gcs_address, None, root / "logs" / f"{name}.log", kind=RAY_WORKER, gcs_address=gcs_address)
    return _spawn(root, service, cmd, _ray_env(env), Path(cwd) if cwd else REPO, wait, timeout)


def _ready(service: Service) -> bool:
    if service.kind == MLFLOW:
        return mlflow_answers(service.address)
    if service.kind == RAY_HEAD and not ray_answers(service.address):
        return False
    return service.reused or _started(service.log)


def wait_ready(service: Service, timeout: float = 120.0) -> Service:
    """Block until ``service`` answers; if its process exits or ``timeout`` s pass, stop it and raise
    :class:`StackError` with the tail of its log."""
    deadline, t0 = time.monotonic() + timeout, time.monotonic()
    while not _ready(service):
        if service.pid is not None and not alive(service):
            raise StackError(f"{service.name} exited during start-up; log {service.log}:\n{_log_tail(service.log)}")
        if time.monotonic() >= deadline:
            stop(service)
            raise StackError(f"{service.name} did not answer within {timeout:.0f} s; log {service.log}:\n"
                             f"{_log_tail(service.log)}")
        time.sleep(0.25)
    log.info("%s ready at %s after %.1f s", service.name, service.address, time.monotonic() - t0)
    return service


# -- the stack ---------------------------------------------------------------------------------


def _reuse(root: Path, name: str, address: str, probe, timeout: float) -> Service | None:
    """Our own live service from its pid file, or a foreign one answering at ``address``."""
    own = _load(root, name)
    if own is not None and alive(own):
        own.reused = True
        return wait_ready(own, timeout)
    _pid_file(root, name).unlink(missing_ok=True)  # a stale pid file, if any
    if probe(address):
        log.warning("%s: something already answers at %s, not started by this stack: reusing it "
                    "(down will not stop it)", name, address)
        return Service(name, address, None, Path(os.devnull), kind=name, reused=True)
    return None


def up(root: Path | None = None, ray_port: int = 6379, dashboard_port: int = 8265, mlflow_port: int = 5000,
       host: str = "127.0.0.1", num_cpus: int | None = None, timeout: float = 180.0) -> dict[str, Service]:
    """Start (or reuse) the MLflow server and the Ray head, in parallel.  The head gets
    ``MLFLOW_TRACKING_URI`` (this server) and ``STABLE_SNN_STORAGE_PATH`` (``root/checkpoints`` unless
    set), so jobs submitted to it log and checkpoint there without further settings."""
    root = Path(root or default_root()).resolve()
    client = _client_host(host)
    mlflow = _reuse(root, MLFLOW, f"http://{client}:{mlflow_port}", mlflow_answers, timeout) or \
        start_mlflow_server(root, mlflow_port, host=host, wait=False)
    ray = _reuse(root, RAY_HEAD, f"http://{client}:{dashboard_port}", ray_answers, timeout)
    if ray is None:
        env = {"MLFLOW_TRACKING_URI": mlflow.address,
               "STABLE_SNN_STORAGE_PATH": os.environ.get("STABLE_SNN_STORAGE_PATH") or str(root / "checkpoints")}
        ray = start_ray_head(root, ray_port, dashboard_port, host=host, num_cpus=num_cpus, env=env, wait=False)
    try:
        for service in (mlflow, ray):
            wait_ready(service, timeout)
    except StackError:
        stop_all([s for s in (ray, mlflow) if not s.reused])
        for s in (ray, mlflow):
            if not s.reused:
                _pid_file(root, s.name).unlink(missing_ok=True)
        raise
    return {MLFLOW: mlflow, RAY_HEAD: ray}


def down(root: Path | None = None, timeout: float = 30.0) -> list[str]:
    """Stop every service with a pid file under ``root`` (workers, head, MLflow); returns their names."""
    root = Path(root or default_root()).resolve()
    services = recorded(root)
    stopped = stop_all(services, timeout)
    for s in services:
        _pid_file(root, s.name).unlink(missing_ok=True)
    return stopped


def status(root: Path | None = None) -> list[tuple[Service, bool, bool]]:
    """``(service, process alive, answering)`` for every pid file under ``root``."""
    return [(s, alive(s), alive(s) and answers(s)) for s in recorded(Path(root or default_root()).resolve())]


# -- command line ------------------------------------------------------------------------------


def _describe(s: Service) -> str:
    what = f"({'reused' if s.reused else 'started'}, {f'pid {s.pid}' if s.pid is not None else 'not ours'}"
    if s.kind == MLFLOW:
        return f"MLflow UI     {s.address}  {what}, log {s.log})"
    return f"Ray dashboard {s.address}  {what}{f', GCS {s.gcs_address}' if s.gcs_address else ''}, log {s.log})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__,
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
        try:
            services = up(root, args.ray_port or free_port(), args.dashboard_port, args.mlflow_port, args.host,
                          args.num_cpus, args.timeout)
        except StackError as e:
            print(f"local stack: {e}", file=sys.stderr)
            return 1
        mlflow, ray = services[MLFLOW], services[RAY_HEAD]
        print(f"{_describe(mlflow)}\n{_describe(ray)}")
        print("# for your shell (ray job submit reads RAY_API_SERVER_ADDRESS, ray.init() RAY_ADDRESS):")
        print(f"export MLFLOW_TRACKING_URI={mlflow.address}\nexport RAY_API_SERVER_ADDRESS={ray.address}")
        if ray.gcs_address:
            print(f"export RAY_ADDRESS={ray.gcs_address}")
        print("export RAY_AUTH_MODE=disabled")
        return 0
    if args.command == "down":
        stopped = down(root)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing to stop under {root}")
        return 0
    rows = status(root)
    for s, running, ok in rows:
        state = "answering" if ok else ("running, not answering" if running else "stopped (stale pid file)")
        print(f"{s.name:<13} {state:<24} {s.address}  pid {s.pid}  log {s.log}")
    if not rows:
        print(f"nothing started from {root}")
    return 0 if rows and all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
