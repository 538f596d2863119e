"""infra.local.environment: the lock agrees with pyproject.toml and with this environment, and the
install runs the pins of a lock made here as two disjoint --no-deps installs, or resolves elsewhere."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from infra.local import environment as env
from jobs.dependencies import pin_mismatches, requirement_name

REPO = Path(__file__).resolve().parents[3]


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    return {requirement_name(r): r.split("==")[1].split(";")[0].strip() for r in requirements}


def test_the_lock_has_every_pin_of_pyproject_at_its_version():
    _, locked = env.read_lock()
    assert {name: locked.get(name) for name in pyproject_pins()} == pyproject_pins()


def test_this_environment_has_the_locked_versions():
    tag, locked = env.read_lock()
    if tag != env.platform_tag():
        pytest.skip(f"the lock is for {tag}; this environment was resolved from pyproject.toml")
    assert pin_mismatches([f"{name}=={version}" for name, version in locked.items()]) == []


def test_lock_text_keeps_the_pins_sorted_without_pip_or_the_project():
    freeze = "\n".join([
        "torch==2.14.1",
        "pip==26.3",
        "stable-snn @ file:///src/stable-snn",
        "Flask==3.1.3",
        "aiohttp==3.14.5",
        "",
        "typing_extensions==4.16.0",
    ])
    lines = env.lock_text(freeze, "linux-x86_64-py3.11").splitlines()
    assert lines[0] == "# platform: linux-x86_64-py3.11"
    assert [line for line in lines if not line.startswith("#")] == [
        "aiohttp==3.14.5", "Flask==3.1.3", "torch==2.14.1", "typing_extensions==4.16.0"]


def test_lock_text_refuses_a_line_that_is_not_a_pin():
    with pytest.raises(ValueError, match="git\\+https://example.org/x.git"):
        env.lock_text("numpy==2.4.6\nx @ git+https://example.org/x.git\n", "linux-x86_64-py3.11")


def test_read_lock_round_trips_lock_text(tmp_path):
    lock = tmp_path / "environment.lock"
    lock.write_text(env.lock_text("PyYAML==6.0.4\nnumpy==2.4.6\n", "darwin-arm64-py3.11"))
    assert env.read_lock(lock) == ("darwin-arm64-py3.11", {"pyyaml": "6.0.4", "numpy": "2.4.6"})


@pytest.mark.parametrize("text, message", [
    ("numpy==2.4.6\n", "first line must be '# platform: <tag>'"),
    ("# platform: linux-x86_64-py3.11\nnumpy==2.4.6\nNumPy==2.4.5\n", ":3: numpy is pinned twice"),
    ("# platform: linux-x86_64-py3.11\nnumpy>=2\n", ":2: 'numpy>=2' is not a name==version pin"),
])
def test_read_lock_refuses_a_malformed_lock(tmp_path, text, message):
    lock = tmp_path / "environment.lock"
    lock.write_text(text)
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace("[", "\\[")):
        env.read_lock(lock)


def test_the_install_groups_split_the_lock_into_the_torch_stack_and_the_rest():
    _, locked = env.read_lock()
    groups = env.install_groups(locked)
    assert len(groups) == 2
    pinned = [pin for group in groups for pin in group]
    assert sorted(pinned) == sorted(f"{n}=={v}" for n, v in locked.items())  # each pin exactly once
    torch_stack = {pin.split("==")[0] for pin in groups[0]}
    assert {"torch", "torchvision", "triton", "nvidia-cudnn-cu13", "cuda-bindings"} <= torch_stack
    assert {"torchattacks", "ray", "mlflow", "numpy", "setuptools"} <= {pin.split("==")[0] for pin in groups[1]}


def test_a_lock_made_here_installs_its_pins_at_once_without_resolving():
    pins = {"torch": "2.14.1", "numpy": "2.4.6"}
    concurrent, in_order = env.install_plan(env.platform_tag(), pins, "/venv/bin/python")
    assert concurrent == [
        ["/venv/bin/python", "-m", "pip", "install", "--quiet", "--no-deps", "torch==2.14.1"],
        ["/venv/bin/python", "-m", "pip", "install", "--quiet", "--no-deps", "numpy==2.4.6"],
    ]
    assert in_order == [
        ["/venv/bin/python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
        ["/venv/bin/python", "-m", "pip", "check"],
    ]


def test_a_lock_made_elsewhere_resolves_pyproject():
    other = "win32-AMD64-py3.11" if sys.platform != "win32" else "linux-x86_64-py3.11"
    concurrent, in_order = env.install_plan(other, {"torch": "2.14.1"}, "/venv/bin/python")
    assert concurrent == []
    assert in_order == [
        ["/venv/bin/python", "-m", "pip", "install", "--quiet", "-e", f"{REPO}[test]"],
        ["/venv/bin/python", "-m", "pip", "check"],
    ]
