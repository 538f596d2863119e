"""Suite-wide fixtures: where CIFAR-10 comes from, and the services of the slow tests."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.openmp import use_passive_openmp

use_passive_openmp()  # before torch loads OpenMP, here and in every process the tests start (jobs/openmp.py)

# torch.compile in the tests (the "compiled" backend's kernels; a user's setting wins):
# - the compiled code lives in the clone (.cache/torchinductor), not in a cache shared by the machine's
#   users: a fresh clone compiles everything, as CI does, and `make test` costs what CI pays;
# - one compiler process (no pool of compile workers to start on a 2-core machine);
# - g++ at -O0: the same C++ source, compiled in a third of the time. Results do not move with the
#   optimisation level: inductor states its floating-point flags (no fast-math, -ffp-contract=off).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torchinductor"))
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
os.environ.setdefault("TORCHINDUCTOR_DEBUG_COMPILE", "1")

from tests.fixtures_runs import shared_run  # noqa: E402
from tests.threads import torch_threads  # noqa: E402  (imports torch)

SERVICES = {"ray_head", "mlflow_server"}  # the session's services (tests/fixtures_services.py)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread in the test process: the tiny test models gain nothing from more, and on
    a loaded 2-core machine spinning OpenMP threads made them many times slower. Ray workers and
    job subprocesses choose their own."""
    with torch_threads(1):
        yield


@dataclass(frozen=True)
class Cifar10Source:
    """Where the data-hungry tests read CIFAR-10: the offline Parquet copy, or torchvision's download."""

    root: Path
    download: bool

    def overrides(self) -> list[str]:
        return ["--set", f"data.root={self.root}", "--set", f"data.download={'true' if self.download else 'false'}"]


def offline_cifar10() -> Path:
    env = os.environ.get("STABLE_SNN_CIFAR10_PARQUET")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar10() -> Cifar10Source:
    """The offline Parquet copy when present, else CIFAR-10 downloaded by torchvision into ./data."""
    parquet = offline_cifar10()
    if (parquet / "train.parquet").is_file():
        return Cifar10Source(parquet, False)
    return Cifar10Source(REPO / "data", True)


pytest_plugins = ["tests.fixtures_services", "tests.fixtures_runs", "tests.fixtures_model_env"]


@pytest.fixture
def all_torch_threads():
    """For the few tests that train for minutes: two torch threads while they run (the suite's other
    tests keep one). A fixed count, not the machine's cores, so that what they train, and the
    thresholds they assert, do not move with the machine's core count."""
    with torch_threads(2) as n:
        yield n


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's worker reads the groups
def pytest_collection_modifyitems(config, items):
    """Order and group the tests for ``make test``, which runs the whole suite on pytest-xdist
    workers (``--dist loadgroup``). The slow tests come first, so that the many short unit tests
    fill the workers' last minutes instead of one long test running alone at the end; and the slow
    tests that read one session-wide run (``tests.fixtures_runs.SHARED_RUNS``) form one group (``xdist_group``), run by one worker,
    and so do the tests that compile kernels (:func:`compiles`).
    The workers share one Ray head and one MLflow server (tests/fixtures_services.py): while one
    worker's test waits on a service or a process starting, the other's uses the cores.

    Every slow test states its own time limit (``@pytest.mark.timeout(seconds)``, about three times
    what it takes on a 2-core machine), so a hang fails within minutes and names the test; the fast
    tests share the suite's default (``timeout`` in pyproject.toml). The limits count the test's own
    call only (``timeout_func_only``): a session fixture's set-up is paid by whichever test comes
    first, and each fixture bounds its own subprocesses."""
    missing = [item.nodeid for item in items if item.get_closest_marker("slow") and not item.get_closest_marker("timeout")]
    if missing:
        raise pytest.UsageError("slow tests without @pytest.mark.timeout(seconds):\n  " + "\n  ".join(missing))
    unmarked = [item.nodeid for item in items if not item.get_closest_marker("slow") and
                (shared_run(item) or SERVICES & set(getattr(item, "fixturenames", ())))]
    if unmarked:  # `make test-fast` (-m "not slow") would start services or train for them
        raise pytest.UsageError("tests reading a session-wide run or a service without @pytest.mark.slow:\n  "
                                + "\n  ".join(unmarked))
    for item in items:
        if (run := shared_run(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(run))
        elif compiles(item):
            item.add_marker(pytest.mark.xdist_group(COMPILE_GROUP))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: collection order within each part


COMPILE_GROUP = "torch-compile"


def compiles(item) -> bool:
    """Whether a test runs torch.compile'd kernels (``@pytest.mark.compiles``, or a ``backend`` parameter of
    ``"compiled"``). They form one group, run by one worker: each kernel is compiled once, in one process,
    and serves every later test there (dynamo's cache of compiled functions is per process)."""
    callspec = getattr(item, "callspec", None)
    return bool(item.get_closest_marker("compiles")) or (callspec is not None and callspec.params.get("backend") == "compiled")


GROUPING_LOST = pytest.StashKey[str]()


def pytest_collection_finish(session):
    """Under ``--dist loadgroup`` a grouped test's id carries its group (``...::test@trained``), which is
    how pytest-xdist's scheduler sees it; under pytest 9.2 it silently does not, and every worker would
    make each shared run again (pytest-xdist#1386). The grouped tests then fail, saying why."""
    if not session.config.getoption("loadgroup", default=False):  # set in pytest-xdist's workers only
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid.rsplit("]", 1)[-1]]
    if lost:
        session.config.stash[GROUPING_LOST] = (
            f"pytest-xdist did not group {len(lost)} tests under --dist loadgroup: this pytest and pytest-xdist "
            "do not work together (pytest-xdist#1386); use the versions pinned in pyproject.toml")


def pytest_runtest_setup(item):
    if item.get_closest_marker("xdist_group") and GROUPING_LOST in item.config.stash:
        pytest.fail(item.config.stash[GROUPING_LOST], pytrace=False)
